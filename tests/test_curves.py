"""TensorBoard curves (convit/train/curves.py), read back by TensorBoard's own EventAccumulator."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from convit.train.curves import TrainingCurves
from tests.support.tensorboard import raw_steps, shown, sync_copy


def _log(curves: TrainingCurves, steps: range, offset: float) -> None:
    for step in steps:
        curves.train(step, loss=offset + step, lr=1e-3 * step, images_per_s=100.0, overflows=0)
    curves.validation(steps[-1], top1=offset + 50.0, top5=offset + 90.0)


def test_a_restart_appends_and_tensorboard_shows_each_step_once(bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{bucket}/run"
    # First start: steps 1-8 uploaded, then it dies with its last checkpoint at step 4.
    first = TrainingCurves(uri, tmp_path / "pod-a", first_step=1, enabled=True)
    _log(first, range(1, 9), 0.0)
    first.close()
    # The restart resumes from step 4 (in another pod, or the same second on the same host) and logs 5-8 again.
    second = TrainingCurves(uri, tmp_path / "pod-b", first_step=5, enabled=True)
    _log(second, range(5, 9), 100.0)
    second.close()

    copy = sync_copy(uri, tmp_path / "synced")
    assert len(list(copy.iterdir())) == 2  # one file per start, the first one untouched
    assert sorted(raw_steps(copy, "train/loss")) == sorted([*range(1, 9), *range(5, 9)])  # written twice...
    curves = shown(copy)
    loss = curves["train/loss"]
    assert [s for s, _ in loss] == list(range(1, 9))  # ...shown once
    assert [v for _, v in loss] == [1, 2, 3, 4, 105, 106, 107, 108]  # the run that kept going wins
    assert curves["train/lr"][-1] == (8, pytest.approx(8e-3))
    assert curves["val/top1"] == [(8, 150.0)] and curves["val/top5"] == [(8, 190.0)]
    assert {"train/images_per_s", "train/overflow_steps"} <= set(curves)


def test_background_sync_uploads_while_training_goes_on(local_uri: str, tmp_path: Path) -> None:
    curves = TrainingCurves(local_uri, tmp_path / "stage", first_step=1, enabled=True)
    _log(curves, range(1, 4), 0.0)
    curves.sync()  # background, as after each checkpoint
    _log(curves, range(4, 6), 0.0)  # written while the upload may be running
    assert curves._upload is not None
    curves._upload.join()
    mid = shown(sync_copy(local_uri, tmp_path / "mid"))["train/loss"]
    assert [s for s, _ in mid][:3] == [1, 2, 3]  # whole records of what was flushed, nothing torn
    curves.close()
    assert [s for s, _ in shown(sync_copy(local_uri, tmp_path / "end"))["train/loss"]] == [1, 2, 3, 4, 5]


def test_disabled_curves_write_nothing(local_uri: str, tmp_path: Path) -> None:
    curves = TrainingCurves(local_uri, tmp_path / "stage", first_step=1, enabled=False)
    _log(curves, range(1, 3), 0.0)
    curves.close()
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "stage").exists()


def test_an_upload_failure_warns_once_and_never_stops_training(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the checkpoint folder should be")
    curves = TrainingCurves(f"file://{blocked}", tmp_path / "stage", first_step=1, enabled=True)
    with caplog.at_level(logging.WARNING, logger="convit.train"):
        _log(curves, range(1, 3), 0.0)
        curves.sync(wait=True)
        curves.close()
    warnings = [r.getMessage() for r in caplog.records if "training curves not uploaded" in r.getMessage()]
    assert len(warnings) == 1


def test_plot_from_tensorboard_draws_the_whole_run_across_restarts(
    bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`launcher plot NAME --from-tensorboard URI` reads every start's event files from object storage (no cluster,
    no log): each step once, with the values of the start that kept it, as TensorBoard shows them."""
    from launcher.__main__ import main
    from launcher.plot import tensorboard_curves

    uri = f"s3://{bucket}/run"
    first = TrainingCurves(uri, tmp_path / "pod-a", first_step=1, enabled=True)
    _log(first, range(1, 9), 0.0)
    first.close()
    second = TrainingCurves(uri, tmp_path / "pod-b", first_step=5, enabled=True)
    _log(second, range(5, 13), 100.0)
    second.close()
    curves = tensorboard_curves(uri)
    assert curves.steps == list(range(1, 13)) and curves.loss == [1, 2, 3, 4, *range(105, 113)]
    assert curves.val_steps == [12] and curves.top1 == [150.0]  # the first start's step-8 validation was purged
    png = tmp_path / "run.png"
    assert main(["plot", "run", "--from-tensorboard", uri, "-o", str(png)]) == 0
    assert capsys.readouterr().out == f"wrote {png}: loss and lr at 12 steps (1-12), top-1/top-5 at 1 validations\n"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot", "run", "--from-tensorboard", f"s3://{bucket}/nothing-here"]) == 1
    assert "no training curves under tensorboard/" in capsys.readouterr().err
