"""Run the real trainer as the cluster would: a pod supervisor process per pod, with the contract's env."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.s3server import free_port

REPO = Path(__file__).resolve().parents[2]

# A recipe small enough for a 2-core machine: convit_tiny, a few steps, tiny batches.
SMALL_RUN = [
    "train.batch_size=4",
    "train.epochs=3",
    "train.warmup_epochs=1",
    "data.workers=1",
    "logging.interval_steps=1",
    "eval.interval_epochs=1",
    "model.num_classes=4",  # the 4-class samples (make_sample(..., classes=4)) the tests using it train on
]


def make_sample(dst: str, classes: int, per_class: int, val_per_class: int) -> None:
    """A generated ImageNet-format data set (python -m convit.data make-sample), written in-process."""
    from convit.data.__main__ import main

    args = ["make-sample", "--dst", dst, "--classes", str(classes), "--per-class", str(per_class)]
    assert main([*args, "--val-per-class", str(val_per_class)]) == 0


def seed_compile_cache(src: str, dst: str) -> int:
    """Copy the compiled graphs a finished run kept beside its checkpoints (`<src>/compile-cache/`) to `<dst>`, as a
    resubmitted job finds them in object storage: a test of recovery then spends its time on recovery, not on a
    second compile (test_compile_cache.py tests the compile and the fetch). Returns the objects copied."""
    from convit.storage import open_storage

    source, target = open_storage(src), open_storage(dst)
    keys = list(source.list("compile-cache/"))
    for key in keys:
        target.put(key, source.get(key))
    assert keys, f"no compile cache in {src}"
    return len(keys)


def pod_env(pods: int, local: int, index: int, port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "MS_WORKER_NUM": str(pods * local),
        "MS_LOCAL_WORKER": str(local),
        "MS_NODE_RANK": str(index),
        "MS_SCHED_HOST": "127.0.0.1",
        "MS_SCHED_PORT": str(port),
        "MS_TOPO_TIMEOUT": "120",
        "CONVIT_DEVICE": "CPU",
        "PYTHONUNBUFFERED": "1",
        "GLOG_v": "3",
        **(extra or {}),
    }
    env.pop("MS_ROLE", None)
    return env


class PodRun:
    """One pod: the container's command (`python -m convit.cluster`, the pod entrypoint), output captured."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self.handle = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convit.cluster", *args],
            env=env,
            cwd=REPO,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.handle.close()

    def wait_for(self, needle: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text():
            if self.proc.poll() is not None:
                raise AssertionError(f"pod exited ({self.proc.returncode}) before {needle!r}:\n{self.text()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {needle!r}:\n{self.text()[-3000:]}")
            time.sleep(0.2)

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        os.killpg(self.proc.pid, sig)


def run_pod(
    args: list[str], tmp: Path, name: str, local: int = 2, timeout: float = 600, extra_env: dict[str, str] | None = None
) -> tuple[int, str]:
    pod = PodRun(args, pod_env(1, local, 0, free_port(), extra_env), tmp / f"{name}.log")
    code = pod.wait(timeout)
    return code, pod.text()
