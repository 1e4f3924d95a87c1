"""The container's termination message (convit/train/termination.py): the last lines that fit in Kubernetes' 4096
bytes; a finished training run ends it with its result line, a failed one with its ERROR line, an evaluation
writes its result line; a file that cannot be written never fails a run, and outside a pod nothing lands in /dev."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from convit.cluster import contract
from convit.train import termination
from convit.train.termination import ENV_TERMINATION_LOG, LIMIT, TerminationMessage, fit, write_message
from tests.support.trainrun import REPO, make_sample


# ---- unit ---------------------------------------------------------------------------------------------------------
def test_lines_that_fit_are_kept_whole_oldest_first() -> None:
    assert fit(["a", "b c", "done"]) == b"a\nb c\ndone\n"
    assert fit([]) == b""
    assert fit(["one\ntwo"]) == b"one two\n"  # a line stays one line


def test_the_last_lines_that_fit_in_4096_bytes() -> None:
    lines = [f"epoch 1/3 step {i}/500 loss 6.9{i:03d}" for i in range(500)]
    data = fit(lines)
    assert len(data) <= LIMIT == 4096
    kept = data.decode().splitlines()
    assert kept[-1] == lines[-1] and kept == lines[-len(kept) :]
    assert len(data) + len(lines[-len(kept) - 1]) + 1 > LIMIT  # the next older line would not have fit


def test_a_line_longer_than_the_limit_keeps_its_end_on_a_character_boundary() -> None:
    data = fit(["short", "é" * 3000 + " the end"])  # 6008 bytes of UTF-8
    assert len(data) <= LIMIT and data.endswith(b" the end\n")
    data.decode()  # no half character
    assert fit(["x" * 10], limit=4) == b"xxx\n"


def test_an_explicit_path_is_created_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "termination-log"
    assert write_message(["first", "second"], str(path))
    assert path.read_text() == "first\nsecond\n"
    assert write_message(["third"], str(path))
    assert path.read_text() == "third\n"  # replaced, not appended


def test_unwritable_paths_are_silent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not write_message(["x"], str(tmp_path / "no" / "such" / "dir" / "log"))
    assert not write_message(["x"], str(tmp_path))  # a directory
    assert not write_message(["x"], "")
    TerminationMessage(enabled=True, path=str(tmp_path / "missing" / "log")).write(["x"])
    assert capsys.readouterr() == ("", "")


def test_the_default_path_is_written_only_when_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kubelet creates /dev/termination-log in a pod; outside one (even as root) nothing is created there."""
    default = tmp_path / "termination-log"
    monkeypatch.setattr(contract, "TERMINATION_LOG", str(default))
    monkeypatch.delenv(ENV_TERMINATION_LOG, raising=False)
    assert termination.message_path() == (str(default), False)
    TerminationMessage(enabled=True).write(["result"])
    assert not default.exists()
    default.write_text("")
    TerminationMessage(enabled=True).write(["result"])
    assert default.read_text() == "result\n"
    TerminationMessage(enabled=False).write(["other rank"])  # only rank 0 writes: the ranks share a container
    assert default.read_text() == "result\n"
    monkeypatch.setenv(ENV_TERMINATION_LOG, "")  # turned off
    TerminationMessage(enabled=True).write(["off"])
    assert default.read_text() == "result\n"


# ---- real runs ----------------------------------------------------------------------------------------------------
SETS = [
    "train.batch_size=4",
    "train.epochs=3",
    "train.warmup_epochs=1",
    "train.amp_level=O0",
    "data.workers=1",
    "data.layout=imagefolder",
    "logging.interval_steps=1",
    "model.drop_path_rate=0.0",
    "model.num_classes=2",  # the sample's classes
]


def _train(tmp: Path, message: str | None, *sets: str) -> subprocess.CompletedProcess[str]:
    args = ["--job", "convit_tiny", *[a for s in [*SETS, *sets] for a in ("--set", s)]]
    env = {**os.environ, "CONVIT_DEVICE": "CPU", "CONVIT_CACHE_DIR": str(tmp / "cache"), "CONVIT_METRICS_PORT": "0"}
    for key in ("MS_ROLE", "MS_WORKER_NUM", "MS_LOCAL_WORKER", "MS_NODE_ID", ENV_TERMINATION_LOG):
        env.pop(key, None)
    if message is not None:
        env[ENV_TERMINATION_LOG] = message
    return subprocess.run(
        [sys.executable, "-m", "convit.train", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A short run to its end: 2 steps, validation, final checkpoint."""
    tmp = tmp_path_factory.mktemp("finished")
    data, ckpt = f"file://{tmp}/data", f"file://{tmp}/ckpt"
    make_sample(data, classes=2, per_class=4, val_per_class=1)
    message = tmp / "termination-log"
    proc = _train(tmp, str(message), f"data.uri={data}", f"checkpoint.uri={ckpt}", "train.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"tmp": tmp, "data": data, "ckpt": ckpt, "message": message, "proc": proc}


@pytest.mark.slow
def test_a_finished_run_leaves_its_last_lines_and_result(finished: dict[str, Any]) -> None:
    raw = finished["message"].read_bytes()
    assert 0 < len(raw) <= LIMIT
    lines = raw.decode().splitlines()
    stdout = finished["proc"].stdout.splitlines()
    ckpt = f"{finished['ckpt']}/checkpoints/step-000000002"
    progress = [line for line in stdout if line.startswith("epoch ")]
    validation = [line for line in stdout if line.startswith("validation ")]
    checkpoint = [line for line in stdout if line.startswith("checkpoint step 2 ")]
    assert lines[:-1] == [progress[-1], validation[-1], checkpoint[-1]]  # the log's own lines, oldest first
    loss = progress[-1].split(" loss ")[1].split()[0]
    top1, top5 = validation[-1].split(" top1 ")[1].split()[0], validation[-1].split(" top5 ")[1].split()[0]
    assert lines[-1] == f"trained 2 steps (finished): loss {loss} top1 {top1} top5 {top5} checkpoint {ckpt}"


@pytest.mark.slow
def test_an_unwritable_message_file_does_not_fail_the_run(finished: dict[str, Any]) -> None:
    """The same job again: already complete (it resumes its final checkpoint), its message file in no directory."""
    tmp = finished["tmp"]
    nowhere = tmp / "no" / "such" / "dir" / "termination-log"
    proc = _train(tmp, str(nowhere), f"data.uri={finished['data']}", f"checkpoint.uri={finished['ckpt']}",
                  "train.max_steps=2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done step 2 (already complete)" in proc.stdout
    assert "termination" not in proc.stdout + proc.stderr and not nowhere.parent.exists()


@pytest.mark.slow
def test_a_failed_run_ends_its_message_with_its_error_line(tmp_path: Path) -> None:
    message = tmp_path / "termination-log"
    proc = _train(tmp_path, str(message), f"data.uri=file://{tmp_path}/nothing", f"checkpoint.uri=file://{tmp_path}/c")
    assert proc.returncode == 1
    (error,) = [line for line in proc.stderr.splitlines() if line.startswith("ERROR: ")]
    assert message.read_text().splitlines() == [error]


@pytest.mark.slow
def test_an_evaluation_writes_its_result_line(
    finished: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from convit.evaluate import main as evaluate_main

    message = finished["tmp"] / "eval-termination-log"
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(message))
    monkeypatch.setenv("CONVIT_DEVICE", "CPU")
    for key in ("MS_ROLE", "MS_WORKER_NUM", "MS_LOCAL_WORKER", "MS_NODE_ID"):
        monkeypatch.delenv(key, raising=False)
    args = ["--job", "convit_tiny", "--set", "data.layout=imagefolder", "--set", "data.workers=1"]
    args += ["--set", "model.num_classes=2"]
    code = evaluate_main([*args, "--data", finished["data"], "--weights", finished["ckpt"], "--batch-size", "2"])
    out = capsys.readouterr().out
    assert code == 0
    (result,) = [line for line in out.splitlines() if line.startswith("evaluated ")]
    assert result.startswith("evaluated 2 samples: top1 ")
    assert message.read_text() == result + "\n"
