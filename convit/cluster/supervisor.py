"""The pod supervisor: one training pod becomes the processes its controller expects of it.

What a pod runs depends on who started it (see contract.py for the controllers' variables):

- Indexed Job, Volcano Job and local mode leave MS_ROLE unset: pod 0 starts the MindSpore scheduler, and every
  pod one worker per NPU (what msrun does with --node_rank);
- MindX DL's ascend-operator sets MS_ROLE=MS_WORKER in each Worker pod (with MS_LOCAL_WORKER, MS_NODE_RANK and
  the scheduler's address) and runs the container's command once: the pod starts one worker per NPU and no
  scheduler, because the Scheduler pod (MS_ROLE=MS_SCHED) runs it;
- a process that already has its MS_NODE_ID, or runs outside a pod (no MS_LOCAL_WORKER), trains by itself.

Workers inherit stdout and stderr (rank 0 prints progress; the others print only warnings and errors). SIGTERM is
forwarded so that rank 0 can write its last checkpoint; when one worker fails, the others are stopped and the pod
fails, so the job's restart policy restarts it from its checkpoint instead of leaving ranks hanging in a collective.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from convit.cluster import contract
from convit.errors import ConvitError


@dataclass(frozen=True)
class PodPlan:
    """The processes of one pod: the scheduler or not, and the MindSpore node ids of its workers."""

    pod: int
    local: int
    world: int
    scheduler: bool
    workers: tuple[int, ...]


def pod_index(environ: Mapping[str, str] | None = None) -> int:
    env = os.environ if environ is None else environ
    for name in (contract.ENV_NODE_RANK, *contract.POD_INDEX_FALLBACKS):
        value = env.get(name)
        if value is not None and value != "":
            if not value.isdigit():
                raise ConvitError(f"{name}={value!r} is not a pod index")
            return int(value)
    return 0


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name, "")
    if value == "" and default is not None:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ConvitError(f"{name}={value!r} must be a positive integer")
    return int(value)


def pod_plan(environ: Mapping[str, str] | None = None) -> PodPlan | None:
    """What this pod runs, from its environment; None when this process should train (or schedule) itself."""
    env = os.environ if environ is None else environ
    role = env.get(contract.ENV_ROLE) or None
    if not env.get(contract.ENV_LOCAL) or env.get(contract.ENV_NODE_ID) or role == contract.ROLE_SCHED:
        return None  # a worker with its node id, a plain run, or the scheduler (AscendJob's Scheduler pod)
    if role not in (None, contract.ROLE_WORKER):
        raise ConvitError(
            f"{contract.ENV_ROLE}={role!r}: expected {contract.ROLE_WORKER}, {contract.ROLE_SCHED} or unset"
        )
    local = _int(env, contract.ENV_LOCAL)
    world = _int(env, contract.ENV_WORLD, local)
    pod = pod_index(env)
    if (pod + 1) * local > world:
        raise ConvitError(f"pod index {pod} with {local} workers each exceeds world size {world}")
    # Without a role the pods form the cluster themselves (pod 0 hosts the scheduler); with MS_ROLE=MS_WORKER the
    # ascend-operator runs the scheduler in a pod of its own.
    return PodPlan(pod, local, world, role is None and pod == 0, tuple(pod * local + i for i in range(local)))


def supervises(environ: Mapping[str, str] | None = None) -> bool:
    """True when this process is a pod's entrypoint that must start the pod's processes."""
    return pod_plan(environ) is not None


def worker_env(base: Mapping[str, str], pod: int, local: int, index: int) -> dict[str, str]:
    env = dict(base)
    env[contract.ENV_ROLE] = contract.ROLE_WORKER
    env[contract.ENV_NODE_ID] = str(pod * local + index)
    env["DEVICE_ID"] = str(index)
    env.setdefault("GLOG_v", "2")  # MindSpore's own log: warnings and errors only
    return framework_log_to_files(env)


def scheduler_env(base: Mapping[str, str]) -> dict[str, str]:
    env = {**base, contract.ENV_ROLE: contract.ROLE_SCHED}
    env.setdefault("GLOG_v", "3")
    env.pop(contract.ENV_NODE_ID, None)
    return framework_log_to_files(env)


def framework_log_to_files(env: dict[str, str]) -> dict[str, str]:
    """MindSpore's C++ log (glog) goes to files under the cache dir instead of the pod's stdout/stderr.

    Its start-up and shutdown lines (`[INFO] ... tcp_server.cc ... Event base dispatch success!`, cluster
    [WARNING]s) are printed whatever GLOG_v says, so only the destination silences them at the source:
    GLOG_logtostderr=0 with GLOG_log_dir; errors still reach stderr (GLOG_stderrthreshold=2). CONVIT_DEBUG_LOG=1
    (or a GLOG_logtostderr the user set) keeps everything on stderr."""
    if env.get("CONVIT_DEBUG_LOG") == "1" or "GLOG_logtostderr" in env:
        return env
    log_dir = Path(env.get(contract.ENV_CACHE_DIR) or "/tmp/convit-cache") / "mindspore-log"
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError:
        return env  # nowhere to write: keep the framework's lines rather than lose them
    return {**env, "GLOG_logtostderr": "0", "GLOG_log_dir": str(log_dir), "GLOG_stderrthreshold": "2"}


# What a pod's processes can run: the trainer, or the evaluation of a checkpoint (`launcher submit --evaluate`).
MODULES = ("convit.train", "convit.evaluate")


def supervise(argv: list[str], environ: Mapping[str, str] | None = None, module: str = "convit.train") -> int:
    """Start this pod's processes, each running `python -m <module> <argv>`, and wait for them."""
    if module not in MODULES:
        raise ConvitError(f"module {module!r}: a pod runs one of {', '.join(MODULES)}")
    plan = pod_plan(environ)
    if plan is None:
        raise ConvitError("not a training pod: MS_LOCAL_WORKER is unset, or this process is a scheduler or worker")
    env = dict(os.environ if environ is None else environ)
    base = {**env, contract.ENV_WORLD: str(plan.world), contract.ENV_NODE_RANK: str(plan.pod)}
    command = [sys.executable, "-m", module, *argv]
    scheduler = subprocess.Popen(command, env=scheduler_env(base)) if plan.scheduler else None
    workers = [subprocess.Popen(command, env=worker_env(base, plan.pod, plan.local, i)) for i in range(plan.local)]

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
            print(f"ERROR: a worker of pod {plan.pod} exited with code {failed}; stopping the pod", file=sys.stderr)
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
