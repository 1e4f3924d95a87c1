"""Local mode end to end: the rendered pods as process groups on the CPU, with real training, checkpoints,
resume, restart after a killed worker (weights equal to an uninterrupted run), and delete with SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from launcher.__main__ import main
from launcher.backends.local import LocalBackend
from tests.support.s3server import SECRET_KEY
from tests.support.tensorboard import shown
from tests.support.trainrun import make_sample, seed_compile_cache

pytestmark = pytest.mark.slow

JOB = [
    "convit_tiny",
    "--local",
    "--set",
    "data.layout=imagefolder",
    "--set",
    "data.workers=1",
    "--set",
    "train.batch_size=4",
    "--set",
    "train.epochs=2",
    "--set",
    "train.warmup_epochs=1",
    "--set",
    "cluster.pods=1",
    "--set",
    "cluster.npus_per_pod=2",
    "--set",
    "logging.interval_steps=1",
    "--set",
    "model.drop_path_rate=0.1",
    "--set",
    "model.num_classes=4",  # the sample's classes
]


@pytest.fixture()
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CONVIT_LOCAL_HOME", str(tmp_path / "jobs"))
    yield tmp_path / "jobs"
    for job in LocalBackend().list():  # a failed test must not leave training processes behind
        if job.phase not in ("Succeeded", "Failed", "Stopped"):
            LocalBackend().delete(job.name)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("sample")
    make_sample(f"file://{root}", 4, 12, 2)
    return f"file://{root}"


def test_local_job_trains_checkpoints_and_resumes(
    local_home: Path, sample: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = f"file://{tmp_path}/ckpt"
    args = ["submit", *JOB, "--name", "demo", "--data", sample, "--output", out, "--follow"]
    # The recipes' AMP O2 graph (the Ascend path) trains on the CPU and says so in the start line.
    assert main([*args, "--set", "train.max_steps=4", "--set", "train.amp_level=O2"]) == 0
    text = capsys.readouterr().out
    assert "world_size=2" in text and "step 4/4" in text and "checkpoint step 4 saved" in text
    assert "amp=O2" in text and "overflows 0" in text
    # MindSpore's C++ start-up/shutdown lines go to files, not to the logs people read.
    assert "Event base dispatch" not in text and "[WARNING]" not in text and "[INFO]" not in text
    assert "Warning:" not in text  # nor Python's (the resource tracker's, for a loader left open at the exit)
    assert text.rstrip().endswith("job demo succeeded")
    assert main([*args, "--set", "train.max_steps=8"]) == 0
    text = capsys.readouterr().out
    assert "resume=step 4 (epoch 1, 32 of 48 samples)" in text and "step 8/8" in text
    assert "[WARNING]" not in text and "Warning:" not in text  # a resume's log is as clean as a first start's
    assert main(["status", "demo", "--local"]) == 0
    status = capsys.readouterr().out
    assert "Succeeded" in status and "progress: epoch 2/2 step 8/8" in status
    # Curves: a PNG of the steps in the job's log (the resubmitted job's: 5-8), and TensorBoard files next to
    # the checkpoints with the whole run.
    png = tmp_path / "curves.png"
    assert main(["plot", "demo", "--local", "-o", str(png)]) == 0
    said = capsys.readouterr().out
    assert "loss and lr at 4 steps (5-8), top-1/top-5 at 2 validations" in said, said
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    board = shown(tmp_path / "ckpt" / "tensorboard")
    assert [step for step, _ in board["train/loss"]] == list(range(1, 9))
    assert [step for step, _ in board["val/top1"]] == [4, 6, 8]
    assert main(["list", "--local"]) == 0
    assert capsys.readouterr().out.split()[:2] == ["demo", "Succeeded"]
    assert sorted(p.name for p in (tmp_path / "ckpt" / "checkpoints").iterdir())[-1] == "step-000000008"
    assert main(["delete", "demo", "--local"]) == 0
    assert not (local_home / "demo").exists() and (tmp_path / "ckpt" / "latest.json").exists()  # user data kept


def _weights(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def _wait(name: str, timeout: float = 600) -> str:
    backend = LocalBackend()
    deadline = time.monotonic() + timeout
    while not (status := backend.status(name)).finished:
        assert time.monotonic() < deadline, f"{name} did not finish"
        time.sleep(1)
    return status.phase


def _worker_pids(state_dir: Path) -> list[int]:
    """Training workers of the job: processes whose environment says MS_ROLE=MS_WORKER under this state dir."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        mine = any(e.startswith(f"CONVIT_CACHE_DIR={state_dir}/pods/".encode()) for e in env)
        if b"convit.train" in cmdline and b"MS_ROLE=MS_WORKER" in env and mine:
            pids.append(int(proc.name))
    return pids


def test_killed_worker_restarts_the_job_which_ends_with_the_uninterrupted_weights(
    local_home: Path, s3: dict[str, str], bucket: str, sample: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from convit.storage import open_storage

    src, dst = open_storage(sample), open_storage(f"s3://{bucket}/data")
    for key in src.list():
        dst.put(key, src.get(key))
    common = [
        *JOB,
        "--data",
        f"s3://{bucket}/data",
        "--set",
        "train.max_steps=7",
        "--set",
        "checkpoint.interval_steps=2",
    ]
    assert main(["submit", *common, "--name", "straight", "--output", f"s3://{bucket}/straight"]) == 0
    assert _wait("straight") == "Succeeded"
    seed_compile_cache(f"s3://{bucket}/straight", f"s3://{bucket}/killed")

    assert main(["submit", *common, "--name", "killed", "--output", f"s3://{bucket}/killed"]) == 0
    log = local_home / "killed" / "pod-0.log"
    deadline = time.monotonic() + 400
    while "checkpoint step 4 saved" not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < deadline and not LocalBackend().status("killed").finished, log.read_text()[-2000:]
        time.sleep(0.3)
    victims = _worker_pids(local_home / "killed")
    assert len(victims) == 2
    os.kill(victims[1], signal.SIGKILL)  # rank 1 dies without warning
    assert _wait("killed") == "Succeeded"
    text = log.read_text(errors="replace")
    assert "restarted (1/6)" in text and "resume=step " in text
    # The restarted pods were new pods: new, empty emptyDirs (cache, home), each removed when its pod ended.
    state = json.loads((local_home / "killed" / "state.json").read_text())
    assert state["incarnations"] == 2 and not any((local_home / "killed" / "pods").iterdir())
    capsys.readouterr()
    assert main(["status", "killed", "--local"]) == 0
    assert "restarts 1" in capsys.readouterr().out

    tmp = local_home / "cmp"
    tmp.mkdir()
    for name in ("straight", "killed"):
        (tmp / f"{name}.ckpt").write_bytes(
            open_storage(f"s3://{bucket}/{name}").get("checkpoints/step-000000007/weights.ckpt")
        )
    a, b = _weights(tmp / "straight.ckpt"), _weights(tmp / "killed.ckpt")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a), "the restarted job diverged from the uninterrupted one"
    for path in local_home.rglob("*"):
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), f"secret leaked into {path}"


def test_delete_stops_a_running_job_after_its_checkpoint(
    local_home: Path, sample: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt"
    assert (
        main(
            [
                "submit",
                *JOB,
                "--name",
                "stopme",
                "--data",
                sample,
                "--output",
                f"file://{out}",
                "--set",
                "train.max_steps=100",
            ]
        )
        == 0
    )
    log = local_home / "stopme" / "pod-0.log"
    deadline = time.monotonic() + 400
    while "step 2/" not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < deadline
        time.sleep(0.3)
    assert main(["delete", "stopme", "--local"]) == 0
    latest = json.loads((out / "latest.json").read_text())
    assert 2 <= latest["step"] < 100
    assert not (local_home / "stopme").exists()
    assert _worker_pids(local_home / "stopme") == []


def test_s3_uris_without_an_endpoint_are_a_clear_error(
    local_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for key in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    assert main(["submit", "convit_tiny", "--local"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: local job convit-tiny: data.uri is s3://imagenet/shards but no S3 endpoint")


def test_evaluation_job_of_a_trained_checkpoint_and_wait(
    local_home: Path, sample: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Train 2 steps (submit --wait), then evaluate that checkpoint as a job of the same backend: 2 ranks,
    rank 0 prints the result line, which status and wait show."""
    out = f"file://{tmp_path}/ckpt"
    common = [*JOB, "--name", "demo", "--data", sample]
    assert main(["submit", *common, "--output", out, "--set", "train.max_steps=2", "--wait"]) == 0
    text = capsys.readouterr().out
    assert text.rstrip().endswith("job demo succeeded")
    assert main(["submit", *common, "--evaluate", "--weights", out, "--output", out]) == 0
    assert capsys.readouterr().out.startswith(
        f"submitted evaluation job demo-eval: convit_tiny, 1 pod(s) x 2 CPU workers, weights {out}"
    )
    assert main(["wait", "demo-eval", "--local"]) == 0
    final = capsys.readouterr().out.strip()
    assert final.startswith("job demo-eval succeeded: evaluated 8 samples: top1 "), final
    assert main(["status", "demo-eval", "--local"]) == 0
    status = capsys.readouterr().out.splitlines()
    assert status[0] == "job local/demo-eval: Succeeded"
    assert status[-1].startswith("  result: evaluated 8 samples: top1 ") and " loss " in status[-1]
    log = (local_home / "demo-eval" / "pod-0.log").read_text()
    assert log.count("evaluated 8 samples") == 1  # rank 0 only, every sample once over the 2 ranks
    written = tmp_path / "ckpt" / "evaluations" / "demo-eval"  # beside the checkpoints, by the job's name
    per_class = (written / "per_class.csv").read_text().splitlines()
    assert per_class[0] == "index,class,samples,correct,top1" and len(per_class) == 1 + 4
    assert sum(int(line.split(",")[2]) for line in per_class[1:]) == 8
    assert (written / "confusion_matrix.csv").is_file() and (written / "confusion_matrix.png").is_file()
    assert main(["list", "--local"]) == 0
    assert [line.split()[:2] for line in capsys.readouterr().out.splitlines()] == [
        ["demo", "Succeeded"],
        ["demo-eval", "Succeeded"],
    ]


def test_suspend_checkpoints_and_resume_continues_and_wait_times_out(
    local_home: Path, sample: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ckpt"
    args = [*JOB, "--name", "pausable", "--data", sample, "--output", f"file://{out}", "--set", "train.max_steps=100"]
    assert main(["submit", *args]) == 0
    log = local_home / "pausable" / "pod-0.log"
    deadline = time.monotonic() + 400
    while "step 2/" not in (log.read_text(errors="replace") if log.exists() else ""):
        assert time.monotonic() < deadline, log.read_text()[-2000:] if log.exists() else "no log"
        time.sleep(0.3)
    capsys.readouterr()
    assert main(["suspend", "pausable", "--local"]) == 0
    assert capsys.readouterr().out.startswith("suspended local job pausable: its pods saved a checkpoint")
    saved = json.loads((out / "latest.json").read_text())["step"]
    assert 2 <= saved < 100
    assert _worker_pids(local_home / "pausable") == []
    assert main(["status", "pausable", "--local"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "job local/pausable: Suspended"
    assert main(["wait", "pausable", "--local", "--timeout", "1"]) == 124  # suspended is not ended
    assert capsys.readouterr().out == "job pausable still suspended after 1s: timed out waiting\n"
    assert main(["resume", "pausable", "--local"]) == 0
    assert capsys.readouterr().out.startswith("resumed local job pausable")
    deadline = time.monotonic() + 400
    while f"resume=step {saved} " not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline and not LocalBackend().status("pausable").finished, log.read_text()[-3000:]
        time.sleep(0.3)
    assert main(["status", "pausable", "--local"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "job local/pausable: Running"
    assert main(["resume", "pausable", "--local"]) == 1
    assert capsys.readouterr().err == "ERROR: local job pausable is running, not suspended\n"
    assert main(["delete", "pausable", "--local"]) == 0
    assert _worker_pids(local_home / "pausable") == []


@pytest.mark.parametrize("name", ["../outside", "/tmp/outside", "a/../../outside", "Upper", "x" * 46])
def test_a_local_job_name_is_never_a_path(
    name: str, local_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "state.json").write_text(json.dumps({"phase": "Succeeded", "pods": []}))
    for command in ("delete", "status", "logs", "suspend", "resume"):
        assert main([command, name, "--local"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("ERROR: ") and "is not a job name" in err and err.count("\n") == 1
    assert (outside / "state.json").exists()  # nothing outside the local job home was touched


def test_a_recorded_pid_now_owned_by_another_process_is_never_signalled(
    local_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The supervisor died and its PID went to an unrelated process: suspend and delete must leave that alone."""
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        job = local_home / "ghost"
        job.mkdir(parents=True)
        state = {
            "phase": "Running",
            "supervisor": bystander.pid,
            "supervisor_start": "1",  # the start time of the process it used to be
            "pods": [{"index": 0, "pid": bystander.pid, "start": "1", "phase": "Running"}],
        }
        (job / "state.json").write_text(json.dumps(state))
        (job / "spec.json").write_text("{}")
        assert main(["suspend", "ghost", "--local"]) == 1
        assert (
            capsys.readouterr().err
            == "ERROR: local job ghost: its supervisor is no longer running; nothing to suspend\n"
        )
        assert main(["delete", "ghost", "--local"]) == 0
        time.sleep(0.5)
        assert bystander.poll() is None, "an unrelated process was signalled"
        assert not job.exists()
    finally:
        bystander.kill()
        bystander.wait()
