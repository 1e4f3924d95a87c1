"""The process's place in the cluster: device, graph mode, and the data-parallel group."""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from typing import Any, NoReturn

from convit.cluster import contract
from convit.errors import LOST_PEER_EXIT, STALE_CLUSTER_EXIT, ConvitError


@dataclass(frozen=True)
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def cluster_world_size() -> int:
    """World size promised by the environment (1 outside a MindSpore cluster)."""
    if os.environ.get(contract.ENV_ROLE) not in ("MS_WORKER", "MS_SCHED"):
        return 1
    return int(os.environ.get(contract.ENV_WORLD, "1"))


def init_runtime(device: str | None, pynative: bool = False) -> Runtime:
    """Set the MindSpore context and join the data-parallel group when MS_* variables say so."""
    import mindspore as ms

    device = device or os.environ.get(contract.ENV_DEVICE) or "CPU"
    local_rank = int(os.environ.get("DEVICE_ID", "0"))
    ms.set_context(mode=ms.PYNATIVE_MODE if pynative else ms.GRAPH_MODE)
    if device == "Ascend":
        ms.set_device("Ascend", local_rank)
    else:
        ms.set_device("CPU")
    if cluster_world_size() > 1:
        from mindspore.communication import get_group_size, get_rank, init

        try:
            init()  # HCCL on Ascend, MindSpore's mccl over TCP on the CPU; the scheduler serves the cluster in it
        except RuntimeError as exc:
            if "Repeated registration" in str(exc):  # the previous cluster still holds this rank: try again later
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(STALE_CLUSTER_EXIT)
            lost = lost_ranks(str(exc))
            if lost:  # the cluster formed and ran, then ranks stopped answering (the scheduler's heartbeat check)
                names = ", ".join(f"rank {r}" for r in lost[:8]) + (" ..." if len(lost) > 8 else "")
                exit_lost_peer(
                    f"lost {names} (no heartbeat for {os.environ.get('MS_NODE_TIMEOUT') or 30}s; MindSpore: "
                    f"{short_reason(str(exc))}); exiting so the controller restarts the job"
                )
            raise ConvitError(cluster_failure(str(exc))) from None
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
        return Runtime(rank=get_rank(), world_size=get_group_size(), local_rank=local_rank, device=device)
    return Runtime(rank=0, world_size=1, local_rank=local_rank, device=device)


def cluster_failure(detail: str) -> str:
    """One line for a cluster that did not form: who we are, how many ranks were expected, who is missing."""
    world = int(os.environ.get(contract.ENV_WORLD, "1"))
    me = os.environ.get(contract.ENV_NODE_ID, "?")
    local = int(os.environ.get(contract.ENV_LOCAL) or 1)
    pod = int(os.environ.get(contract.ENV_NODE_RANK) or 0)
    here = set(range(pod * local, (pod + 1) * local))
    reported = sorted(
        {int(n) for n in re.findall(r"node(?:_id)?[:= ]+(\d+)", detail)} - {int(me)} if me.isdigit() else set()
    )
    missing = reported or sorted(set(range(world)) - here)
    where = f"{os.environ.get(contract.ENV_SCHED_HOST)}:{os.environ.get(contract.ENV_SCHED_PORT)}"
    timeout = os.environ.get(contract.ENV_TOPO_TIMEOUT, "the default")
    ranks = ", ".join(f"rank {r}" for r in missing[:8]) + (" ..." if len(missing) > 8 else "")
    return (
        f"the MindSpore cluster did not form within {timeout}s: rank {me} of {world} waited at scheduler {where}; "
        f"not joined: {ranks or 'unknown'}"
    )


def lost_ranks(detail: str) -> list[int]:
    """The ranks the scheduler declared dead after the cluster formed, from the error its init() raises then
    (MindSpore 2.10: "The total number of timed out node is 1. Timed out node list is: [const vector]{1}, worker 1 is
    the first one timed out, please check its log."); [] for any other error, e.g. a cluster that never formed
    ("... some processes in the cluster are not successfully spawned ...")."""
    found = re.search(r"Timed out node list is: (?:\[const vector\])?\{([\d, ]*)\}", detail)
    if found is None:
        return []
    return [int(n) for n in re.findall(r"\d+", found.group(1))]


# What a collective, or the cluster's TCP links, raise when a peer is gone (MindSpore 2.10). On the CPU: the ring
# AllReduce times out ("Launch kernel failed: Default/AllReduce-op0"), or the cluster's abnormal callback has run
# ("It is possible that an exception has occurred in the TCP connection between the scheduler and the worker").
_PEER_FAILURE = re.compile(
    r"AllReduce|AllGather|ReduceScatter|\bBroadcast\b|HCCL|hccl|TCP connection between the scheduler and the worker"
    r"|meta server|heartbeat|timed out node"
)


def peer_failure(detail: str) -> str | None:
    """A short reason when a MindSpore RuntimeError says a peer of the cluster is gone, else None."""
    return short_reason(detail) if _PEER_FAILURE.search(detail) else None


def short_reason(detail: str) -> str:
    """The first line of a MindSpore error that says something (not its banners and call stacks), shortened."""
    for line in detail.splitlines():
        line = line.strip()
        if line and not line.startswith("-") and not line.startswith("#"):
            line = line.split(". ")[0].rstrip(".")
            return line if len(line) <= 160 else line[:157] + "..."
    return "no detail"


def exit_lost_peer(message: str) -> NoReturn:
    """Report a lost peer once (to the pod supervisor, or as this process's `ERROR:` line) and end the process now
    with LOST_PEER_EXIT: MindSpore's exit-time finalization would wait for the lost peer first (measured: 35 s)."""
    from convit.train.progress import PodState

    PodState(node_name()).lost(message)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(LOST_PEER_EXIT)


def node_name() -> str:
    """This process's name in the pod supervisor's state directory: its MindSpore node id, or `scheduler`."""
    from convit.train.progress import SCHEDULER

    if os.environ.get(contract.ENV_ROLE) == contract.ROLE_SCHED:
        return SCHEDULER
    return os.environ.get(contract.ENV_NODE_ID) or "0"


class AllReduceSum:
    """Sum a small float vector over all ranks (stop agreement, validation counts)."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._op: Any = None

    def __call__(self, values: list[float]) -> list[float]:
        if not self.runtime.distributed:
            return list(values)
        import mindspore as ms
        import numpy as np
        from mindspore import nn, ops

        if self._op is None:

            class _Sum(nn.Cell):  # type: ignore[misc]
                def __init__(self) -> None:
                    super().__init__()
                    self.reduce = ops.AllReduce()

                def construct(self, x: Any) -> Any:
                    return self.reduce(x)

            self._op = _Sum()
        out = self._op(ms.Tensor(np.asarray(values, dtype=np.float32)))
        return [float(v) for v in out.asnumpy()]
