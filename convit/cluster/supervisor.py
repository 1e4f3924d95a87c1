"""The pod supervisor: one training pod becomes the MindSpore scheduler (pod 0) plus one worker per NPU.

This does what MindX DL's ascend-operator start scripts and msrun do, from the variables of contract.py, so
that the same pod spec works on a plain Indexed Job, on Volcano and in local mode. Workers inherit stdout and
stderr (rank 0 prints progress; the others print only warnings and errors). SIGTERM is forwarded so that
rank 0 can write its last checkpoint; when one worker fails, the others are stopped and the pod fails, so
the job's restart policy restarts it from its checkpoint instead of leaving ranks hanging in a collective.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from types import FrameType

from convit.cluster import contract
from convit.errors import ConvitError


def pod_index() -> int:
    for name in (contract.ENV_NODE_RANK, *contract.POD_INDEX_FALLBACKS):
        value = os.environ.get(name)
        if value is not None and value != "":
            if not value.isdigit():
                raise ConvitError(f"{name}={value!r} is not a pod index")
            return int(value)
    return 0


def worker_env(base: dict[str, str], pod: int, local: int, index: int) -> dict[str, str]:
    env = dict(base)
    env[contract.ENV_ROLE] = "MS_WORKER"
    env[contract.ENV_NODE_ID] = str(pod * local + index)
    env["DEVICE_ID"] = str(index)
    env.setdefault("GLOG_v", "2")  # MindSpore's own log: warnings and errors only
    return env


def supervise(argv: list[str]) -> int:
    local = int(os.environ[contract.ENV_LOCAL])
    world = int(os.environ.get(contract.ENV_WORLD, str(local)))
    pod = pod_index()
    if (pod + 1) * local > world:
        raise ConvitError(f"pod index {pod} with {local} workers each exceeds world size {world}")
    base = {**os.environ, contract.ENV_WORLD: str(world), contract.ENV_NODE_RANK: str(pod)}
    command = [sys.executable, "-m", "convit.train", *argv]
    children: list[subprocess.Popen[bytes]] = []
    if pod == 0:
        sched_env = {**base, contract.ENV_ROLE: "MS_SCHED", "GLOG_v": base.get("GLOG_v", "3")}
        children.append(subprocess.Popen(command, env=sched_env))
    scheduler = children[0] if children else None
    workers = [subprocess.Popen(command, env=worker_env(base, pod, local, i)) for i in range(local)]
    children.extend(workers)

    def forward(signum: int, _frame: FrameType | None) -> None:
        for child in workers:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = 0
    while any(w.poll() is None for w in workers):
        time.sleep(0.5)
        codes = [w.returncode for w in workers if w.returncode not in (None, 0)]
        if codes and not failed:
            failed = codes[0]
            print(f"ERROR: a worker of pod {pod} exited with code {failed}; stopping the pod", file=sys.stderr)
            for w in workers:
                if w.poll() is None:
                    w.terminate()
            deadline = time.monotonic() + 30
            while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
                time.sleep(0.5)
            for w in workers:
                if w.poll() is None:
                    w.kill()
    if scheduler is not None:
        try:
            scheduler.wait(timeout=60)
        except subprocess.TimeoutExpired:
            scheduler.kill()
    codes = [w.returncode for w in workers]
    return failed or next((c for c in codes if c), 0)
