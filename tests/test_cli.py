"""The launcher's command line without a cluster: evaluation manifests, flag checks, wait's exit codes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from launcher.__main__ import main
from launcher.backends.base import JobStatus
from launcher.cli import final_line


def test_render_evaluate_prints_the_evaluation_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "convit_tiny", "--evaluate", "--weights", "s3://ckpt/run", "--backend", "volcano"]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [o["metadata"]["name"] for o in objects] == ["convit-tiny-eval-job", "convit-tiny-eval"]
    container = objects[-1]["spec"]["tasks"][0]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "convit.cluster"]
    assert container["args"] == [
        "--module",
        "convit.evaluate",
        "--job",
        "/etc/convit/job.json",
        "--weights",
        "s3://ckpt/run",
        "--out",
        "s3://checkpoints/convit-tiny/evaluations/convit-tiny-eval",
    ]


def test_an_explicit_eval_name_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["render", "convit_tiny", "--name", "nightly-eval", "--evaluate", "--weights", "s3://ckpt/run"]
    assert main(args) == 0
    assert [o["metadata"]["name"] for o in yaml.safe_load_all(capsys.readouterr().out)][-1] == "nightly-eval"


def test_final_line_carries_an_evaluation_result() -> None:
    done = JobStatus("e", "ml", "Succeeded", result="evaluated 8 samples: top1 50.000 top5 100.000 loss 1.2000")
    assert final_line(done) == "job e succeeded: evaluated 8 samples: top1 50.000 top5 100.000 loss 1.2000"
    assert final_line(JobStatus("t", "ml", "Failed")) == "job t failed"


def _log_lines(fmt: str) -> list[str]:
    """A rank-0 log: steps 1-6 and the epoch-1 validation, then a restart from the step-4 checkpoint to step 8."""
    from convit.train.progress import Progress

    out = io.StringIO()
    p = Progress(fmt, enabled=True, stream=out)

    def step(n: int, loss: float) -> None:
        p.step(epoch=1, epochs=2, step=n, steps=8, loss=loss, lr=1e-4 * n, images_per_s=9.0, step_time=1.0, eta_s=5)

    for n in range(1, 7):
        step(n, 7.0 - 0.1 * n)
    p.validation(epoch=1, step=6, top1=25.0, top5=80.0, samples=8, seconds=1.0)
    out.write("[WARNING] something MindSpore printed\n")
    p.start(model="convit_tiny", resume="step 4")
    for n in range(5, 9):
        step(n, 5.0 - 0.1 * n)
        if n == 6:
            p.validation(epoch=1, step=6, top1=50.0, top5=100.0, samples=8, seconds=1.0)
    p.validation(epoch=2, step=8, top1=75.0, top5=100.0, samples=8, seconds=1.0)
    return out.getvalue().splitlines()


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_curves_of_a_restarted_log_keep_each_step_once_from_the_run_that_went_on(fmt: str) -> None:
    from launcher.progress import curves

    c = curves(_log_lines(fmt))
    assert c.steps == list(range(1, 9))
    assert c.loss == pytest.approx([6.9, 6.8, 6.7, 6.6, 4.5, 4.4, 4.3, 4.2])
    assert c.lr == pytest.approx([1e-4 * n for n in range(1, 9)])
    assert c.val_steps == [6, 8] and c.top1 == [50.0, 75.0] and c.top5 == [100.0, 100.0]


def test_plot_draws_every_point_into_a_png(tmp_path: Path) -> None:
    from matplotlib.image import imread

    from launcher.plot import draw, points, save_png
    from launcher.progress import curves

    fig = draw(curves(_log_lines("text")), "demo")
    assert points(fig) == {"loss": 8, "lr": 8, "top-1": 2, "top-5": 2}
    save_png(fig, tmp_path / "out" / "curves.png")
    png = tmp_path / "out" / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and imread(png).shape[:2] == (700, 900)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["curves.png"]
