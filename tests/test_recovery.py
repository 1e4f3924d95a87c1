"""Recovery under each controller's real lifecycle: a 2-pod job trained on the CPU under the emulated controller
(tests/support/controllers.py, written from each controller's source), faults injected at chosen moments
(tests/support/lifecycle.py), and the controller's decision carried out as it would be: the failed index replaced
alone (Indexed Job), every pod recreated (Volcano, MindCluster's rescheduling of an AscendJob), or the job failed.

Each run has two faults, the second in the restarted job (SIGKILL of either rank, of the scheduler, a pod deleted
or evicted), and must end as the uninterrupted run does, bit for bit, after the restarts the controller's rules
predict, and without waiting on a MindSpore timeout: a lost peer ends every pod promptly (convit/cluster/supervisor.py).
Every restarted pod is a new pod with empty emptyDirs; its compiled graphs come from object storage.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from convit.jobspec import load_job
from launcher.render import render_objects
from tests.support.controllers import DISRUPTION, EVICTED, RECREATE_POD, RESTART_JOB, SUCCEEDED, emulator
from tests.support.lifecycle import Fault, Lifecycle, Outcome
from tests.support.s3server import free_port
from tests.support.trainrun import SMALL_RUN, make_sample

pytestmark = pytest.mark.slow

STEPS = 6
# Collectives that wait for a lost peer as long as HCCL's do on Ascend (HCCL_EXEC_TIMEOUT, 1836 s by default),
# instead of the CPU's 30 s: a survivor must end through MindSpore's own notice of the loss, never a timeout.
HCCL_LIKE = {"MS_CPU_COMM_OP_TIMEOUT": "1836"}
# The seconds a survivor may take to notice a lost peer and end its pod, far below cluster_timeout (MS_TOPO_TIMEOUT)
PROMPT = 60.0


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("sample")
    make_sample(f"file://{root}", 4, 6, 1)  # 24 training images: 3 steps per epoch at a global batch of 8
    return f"file://{root}"


def _objects(backend: str, sample: str, out: Path, *sets: str) -> list[dict]:  # type: ignore[type-arg]
    spec = load_job(
        "convit_tiny",
        [
            f"cluster.backend={backend}",
            "name=rec",
            "cluster.pods=2",
            "cluster.npus_per_pod=1",
            "cluster.backoff_limit=2",
            f"cluster.master_port={free_port()}",
            "cluster.cluster_timeout=300",
            "cluster.step_timeout=30",
            f"data.uri={sample}",
            "data.layout=imagefolder",
            f"checkpoint.uri=file://{out}",
            "checkpoint.interval_steps=2",
            f"train.max_steps={STEPS}",
            "train.amp_level=O0",
            *SMALL_RUN,
            *sets,
        ],
    )
    return render_objects(spec)


def _run(
    backend: str, sample: str, tmp: Path, faults: list[Fault], timeout: float = 780, graphs: Path | None = None
) -> tuple[Outcome, Path]:
    out = tmp / "ckpt"
    if graphs is not None:  # the uninterrupted run's compiled graphs, kept in object storage as every job keeps them
        shutil.copytree(graphs, out / "compile-cache")
    objects = _objects(backend, sample, out)
    outcome = Lifecycle(emulator(objects[-1]), objects, tmp / "pods", HCCL_LIKE).run(faults, timeout)
    return outcome, out


def _weights(out: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    path = out / "checkpoints" / f"step-{STEPS:09d}" / "weights.ckpt"
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


@dataclass
class Straight:
    weights: dict[str, np.ndarray]
    graphs: Path  # its compile cache in object storage: the faulted runs start from it, as a resubmitted job would


@pytest.fixture(scope="module")
def straight(sample: str, tmp_path_factory: pytest.TempPathFactory) -> Straight:
    """The uninterrupted run (the same for every controller: 2 ranks, the same recipe)."""
    tmp = tmp_path_factory.mktemp("straight")
    outcome, out = _run("job", sample, tmp, [])
    assert outcome.result == SUCCEEDED, outcome.report()
    assert (out / "compile-cache").is_dir(), "the run kept its compiled graphs beside its checkpoints"
    return Straight(_weights(out), out / "compile-cache")


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def _prompt(outcome: Outcome, pods: int = 1) -> None:
    """After the fault, the first `pods` pods to end (the broken cluster's) ended within PROMPT seconds: nobody
    waited on a MindSpore timeout."""
    fault = outcome.fault_times[0]
    first_round = [e for e in outcome.events if e.seconds >= fault][:pods]
    assert len(first_round) == pods and all(e.seconds - fault < PROMPT for e in first_round), outcome.report()


# Two faults per run, the second in the restarted job: rank 0's log (its pod: position 0 for the Indexed Job, the
# Volcano Job and the JobSet, 1 for the AscendJob, whose Scheduler pod is 0) says when.
SAVED = "checkpoint step 2 saved"
SAVED_AGAIN = "checkpoint step 4 saved"


def test_indexed_job_replaces_each_failed_index_and_the_gang_reforms(
    sample: str, straight: Straight, tmp_path: Path
) -> None:
    """SIGKILL of rank 0: its pod fails (and stops the MindSpore scheduler it hosts) and the Job controller replaces
    index 0 alone, whose new scheduler answers at the same address within seconds; rank 1, in a collective that
    waits for rank 0 as long as HCCL would, re-registers there instead of noticing the loss, and ends after
    cluster.step_timeout (convit/train/stall.py), so index 1 is replaced as well (the new scheduler, which counted
    the old rank 1 in, may fail once more) and a new pair forms from the step-2 checkpoint. Then pod 1 is deleted:
    the DisruptionTarget rule ignores it (not counted), index 1 is replaced, rank 0 fails too (counted), and the
    last pair finishes within backoffLimit (2 x (2 pods + 1))."""
    faults = [Fault(0, SAVED, "kill-worker", 0), Fault(0, SAVED_AGAIN, "delete-pod", 1)]
    outcome, out = _run("job", sample, tmp_path, faults, graphs=straight.graphs)
    assert outcome.result == SUCCEEDED, outcome.report()
    assert len(outcome.fault_times) == 2, outcome.report()
    replaced = {e.pod for e in outcome.events if e.decision == RECREATE_POD}
    assert len(replaced) == 2, outcome.report()  # both indexes: the whole gang restarted
    counted = [e for e in outcome.events if e.decision == RECREATE_POD and e.exit_code not in (DISRUPTION, EVICTED)]
    assert 3 <= len(counted) <= 5, outcome.report()  # 2 or 3 per restart, 1 for the deletion (itself not counted)
    # rank 1 ended after cluster.step_timeout, not after its collective's (HCCL-like) timeout
    assert any("for the other ranks (cluster.step_timeout 30s)" in t for t in outcome.logs.values()), outcome.report()
    _prompt(outcome, pods=2)
    assert _same(_weights(out), straight.weights), "the recovered job diverged from the uninterrupted one"


def test_volcano_restarts_the_job_for_each_fault(sample: str, straight: Straight, tmp_path: Path) -> None:
    """SIGKILL of the MindSpore scheduler process (in pod 0): the cluster is lost, a pod fails, Volcano's
    PodFailed -> RestartJob recreates every pod. Then SIGKILL of rank 1: a second RestartJob, within maxRetry
    (backoff_limit + 1)."""
    faults = [Fault(0, SAVED, "kill-scheduler"), Fault(0, SAVED_AGAIN, "kill-worker", 1)]
    outcome, out = _run("volcano", sample, tmp_path, faults, graphs=straight.graphs)
    assert outcome.result == SUCCEEDED, outcome.report()
    assert outcome.decisions().count(RESTART_JOB) == 2, outcome.report()
    _prompt(outcome)
    assert _same(_weights(out), straight.weights)


def test_ascendjob_is_rescheduled_whole_for_each_fault(sample: str, straight: Straight, tmp_path: Path) -> None:
    """SIGKILL of rank 0 (Worker pod 0): without MindCluster's fault-retry-times the AscendJob would fail here;
    with it, the whole job is rescheduled. Then Worker pod 1 is evicted (the kubelet leaves a Failed pod): a second
    rescheduling, within fault-retry-times (backoff_limit)."""
    faults = [Fault(1, SAVED, "kill-worker", 0), Fault(1, SAVED_AGAIN, "evict-pod", 2)]
    outcome, out = _run("ascendjob", sample, tmp_path, faults, graphs=straight.graphs)
    assert outcome.result == SUCCEEDED, outcome.report()
    assert outcome.decisions().count(RESTART_JOB) == 2, outcome.report()
    _prompt(outcome)
    assert _same(_weights(out), straight.weights)


def test_jobset_restarts_the_whole_gang_for_each_dead_rank(sample: str, straight: Straight, tmp_path: Path) -> None:
    """SIGKILL of rank 1: its pod fails the child Job (backoffLimit 0) and the JobSet recreates every pod. Then
    SIGKILL of rank 0: the second of maxRestarts (backoff_limit) restarts."""
    faults = [Fault(0, SAVED, "kill-worker", 1), Fault(0, SAVED_AGAIN, "kill-worker", 0)]
    outcome, out = _run("jobset", sample, tmp_path, faults, graphs=straight.graphs)
    assert outcome.result == SUCCEEDED, outcome.report()
    assert outcome.decisions() == [RESTART_JOB, RESTART_JOB, SUCCEEDED], outcome.report()
    _prompt(outcome)
    assert _same(_weights(out), straight.weights)
