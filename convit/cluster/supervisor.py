"""The pod supervisor: one training pod becomes the processes its controller expects of it.

What a pod runs depends on who started it (see contract.py for the controllers' variables):

- Indexed Job, Volcano Job and local mode leave MS_ROLE unset: pod 0 starts the MindSpore scheduler, and every
  pod one worker per NPU (what msrun does with --node_rank);
- MindX DL's ascend-operator sets MS_ROLE=MS_WORKER in each Worker pod (with MS_LOCAL_WORKER, MS_NODE_RANK and
  the scheduler's address) and runs the container's command once: the pod starts one worker per NPU and no
  scheduler, because the Scheduler pod (MS_ROLE=MS_SCHED) runs it;
- a process that already has its MS_NODE_ID, or runs outside a pod (no MS_LOCAL_WORKER), trains by itself.

Workers inherit stdout and stderr (rank 0 prints progress; the others print only warnings and errors). SIGTERM is
forwarded so that rank 0 can write its last checkpoint; the ranks then stop together and the pod exits STOPPED_EXIT
(143, never 0: a pod that exits 0 counts as finished), or LOST_PEER_EXIT when it was not signalled itself but
another pod of the job was. Every process of the pod is polled every tick: when a worker dies (non-zero exit or a
signal), or the scheduler dies while workers still run, the supervisor prints one line naming the pod, the rank (its
MindSpore node id), how it ended and the last step it finished, stops the others (SIGTERM, STOP_GRACE_S, then
SIGKILL) and fails the pod with LOST_PEER_EXIT (a signal) or the process's own code, so that the job's restart
policy restarts it from its checkpoint instead of leaving ranks hanging in a collective.
The processes leave their last step and their own report of a lost peer in a directory of the pod's (PodState in
convit/train/progress.py), so a pod says what it lost in one line, however many of its processes noticed.

A rank lost in another pod is noticed by MindSpore itself (measured with 2.10 on the CPU): the scheduler declares a
rank dead when its heartbeats stop for MS_NODE_TIMEOUT (default 30 s; its init() raises within 5 s more), a CPU
collective waiting for a dead peer fails after MS_CPU_COMM_OP_TIMEOUT (default: MS_NODE_TIMEOUT, then 30 s) and the
RuntimeError reaches Python about 3 s later, and a worker that loses the scheduler retries its heartbeat for about
20 s, then SIGTERMs itself. The trainer turns that RuntimeError into its one line (convit/train/loop.py), the
scheduler names the rank it lost (convit/train/runtime.py), and both exit at once with LOST_PEER_EXIT: MindSpore's
exit-time finalization would wait for the lost peer first. A collective that waits longer (HCCL's 1836 s on Ascend)
does not hold a worker either: the SIGTERM for the lost scheduler ends it 15 s later when its Python handler cannot
run (convit/train/stop.py). Before it forwards a SIGTERM of its own, the supervisor marks the stop as the pod's
(request_stop), and the processes then take the pod's grace period to save.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from convit.cluster import contract
from convit.errors import LOST_PEER_EXIT, STALE_CLUSTER_EXIT, STOPPED_EXIT, ConvitError
from convit.train.progress import ENV_POD_STATE, SCHEDULER, lost_report, recorded_step, request_stop

STOP_GRACE_S = 10.0  # what the other processes of a pod that lost one get after SIGTERM, before SIGKILL
REJOIN_DELAY_S = 3.0  # between attempts of a worker to join while the previous cluster still holds its rank
POLL_S = 0.2


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
    state = pod_state_dir(env)
    base[ENV_POD_STATE] = str(state)
    try:
        scheduler = subprocess.Popen(command, env=scheduler_env(base)) if plan.scheduler else None

        def start(rank: int) -> subprocess.Popen[bytes]:
            return subprocess.Popen(command, env=worker_env(base, plan.pod, plan.local, rank - plan.workers[0]))

        workers = {rank: start(rank) for rank in plan.workers}
        signalled: list[int] = []

        def forward(signum: int, _frame: FrameType | None) -> None:
            signalled.append(signum)
            request_stop(state)  # before the signal: the processes must see the pod's own stop (train/stop.py)
            for child in list(workers.values()):
                if child.poll() is None:
                    child.send_signal(signum)

        signal.signal(signal.SIGTERM, forward)
        signal.signal(signal.SIGINT, forward)
        rejoin = float(env.get(contract.ENV_TOPO_TIMEOUT) or 600)
        code = watch(plan.pod, workers, scheduler, state, respawn=start, rejoin_seconds=rejoin)
        if code == STOPPED_EXIT and not signalled:
            # The ranks stopped together because another pod was stopped (deleted, evicted, preempted): this pod
            # did not finish either, and its controller must restart it with the others.
            step = max((s for r in workers if (s := recorded_step(state, str(r))) is not None), default=None)
            print(
                f"ERROR: pod {plan.pod}: another pod of the job was stopped {after(step, 'the')}; its ranks saved a "
                "checkpoint and stopped with it; exiting so the controller restarts the job",
                file=sys.stderr,
                flush=True,
            )
            return LOST_PEER_EXIT
        return code
    finally:
        shutil.rmtree(state, ignore_errors=True)


def pod_state_dir(env: Mapping[str, str]) -> Path:
    """A fresh directory for the pod's processes to leave their last step and reports in (PodState)."""
    cache = Path(env.get(contract.ENV_CACHE_DIR) or "/tmp/convit-cache")
    try:
        cache.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="pod-state-", dir=cache))
    except OSError:
        return Path(tempfile.mkdtemp(prefix="convit-pod-state-"))


def watch(
    pod: int,
    workers: MutableMapping[int, subprocess.Popen[bytes]],
    scheduler: subprocess.Popen[bytes] | None,
    state: Path,
    *,
    grace: float = STOP_GRACE_S,
    poll: float = POLL_S,
    respawn: Callable[[int], subprocess.Popen[bytes]] | None = None,
    rejoin_seconds: float = 0.0,
    rejoin_delay: float = REJOIN_DELAY_S,
) -> int:
    """Wait for the pod's processes (workers by MindSpore node id): 0 once every worker succeeded, STOPPED_EXIT once
    every worker ended and they stopped on a signal (they stop together, after one step, with a checkpoint); on the
    first failure one `ERROR:` line, the others stopped, and the pod's exit code (see the module's docstring).

    A worker refused because the previous cluster still holds its rank (STALE_CLUSTER_EXIT: this pod replaced a
    failed one while the old pods of the job were still running, as the Indexed Job does) is started again every
    `rejoin_delay` seconds for up to `rejoin_seconds`, without failing the pod: the old cluster ends once its
    survivors notice the lost rank, and each failure the pod saved is one the job's restart budget keeps."""
    rejoin_until = time.monotonic() + rejoin_seconds
    said_rejoin = False
    while True:
        codes = {rank: proc.poll() for rank, proc in workers.items()}  # every one of them, every tick
        stale = [r for r, c in codes.items() if c == STALE_CLUSTER_EXIT]
        if stale and respawn is not None and time.monotonic() < rejoin_until:
            if not said_rejoin:
                print(
                    f"pod {pod}: the previous MindSpore cluster still holds rank {stale[0]} (this pod replaced a "
                    f"failed one before the others ended); joining again until it ends (up to {rejoin_seconds:g}s)",
                    file=sys.stderr,
                    flush=True,
                )
                said_rejoin = True
            time.sleep(rejoin_delay)
            for rank in stale:
                workers[rank] = respawn(rank)
            continue
        sched = scheduler.poll() if scheduler is not None else None
        failed = {rank: code for rank, code in codes.items() if code not in (None, 0, STOPPED_EXIT)}
        running = [rank for rank, code in codes.items() if code is None]
        if failed:
            # The root cause first: a rank that died of its own, rather than one that reported losing a peer.
            rank = min(failed, key=lambda r: (failed[r] == LOST_PEER_EXIT, r))
            code = failed[rank]
            report = lost_report(state, str(rank)) if code == LOST_PEER_EXIT else None
            step = recorded_step(state, str(rank))
            line = report or f"pod {pod} lost rank {rank} ({how_it_ended(code)}) {after(step, 'its')}"
            return stop_pod(pod, line, "other workers", code, [*workers.values(), scheduler], grace)
        if sched is not None and sched != 0 and running:
            report = lost_report(state, SCHEDULER) if sched == LOST_PEER_EXIT else None
            step = max((s for r in workers if (s := recorded_step(state, str(r))) is not None), default=None)
            line = report or f"pod {pod} lost the MindSpore scheduler ({how_it_ended(sched)}) {after(step, 'the')}"
            return stop_pod(pod, line, "workers", sched, [*workers.values()], grace)
        if not running:
            break
        time.sleep(poll)
    stopped = STOPPED_EXIT in codes.values()
    if scheduler is not None:
        if stopped:
            # The job goes on without this cluster: a scheduler left running would take a replacement pod's worker
            # into it (the Indexed Job replaces a stopped pod at once), and that worker would hang in the dead
            # cluster's formation, then re-register with the next scheduler at the same address.
            scheduler.terminate()
        try:
            scheduler.wait(timeout=grace if stopped else 60)
        except subprocess.TimeoutExpired:
            scheduler.kill()
            scheduler.wait()
    return STOPPED_EXIT if stopped else 0


def how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def after(step: int | None, whose: str) -> str:
    return f"after step {step}" if step is not None else f"before {whose} first step"


def stop_pod(
    pod: int,
    line: str,
    others: str,
    code: int,
    procs: Sequence[subprocess.Popen[bytes] | None],
    grace: float = STOP_GRACE_S,
) -> int:
    """Print the pod's one line, stop its other processes (SIGTERM, `grace`, SIGKILL), and return the pod's exit code:
    the failed process's own (2 only from a process that judged the job unrunnable: the controller does not retry it),
    or LOST_PEER_EXIT for a signal."""
    if not line.startswith(f"pod {pod}"):
        line = f"pod {pod}: {line}"
    print(f"ERROR: {line}; stopping the pod's {others}", file=sys.stderr, flush=True)
    alive = [p for p in procs if p is not None and p.poll() is None]
    for proc in alive:
        proc.terminate()
    deadline = time.monotonic() + grace
    while any(p.poll() is None for p in alive) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for proc in alive:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code if code > 0 else LOST_PEER_EXIT
