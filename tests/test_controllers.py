"""The rendered workloads as their controllers run them: the pods each controller creates from our manifests, what
it does when a pod ends, and those very pods trained as local processes (tests/support/controllers.py has the
emulators, each naming the upstream files it follows).

What this proves: our pods get the names, addresses and variables the controllers give them, the pod entrypoint
turns exactly those into one MindSpore cluster (AscendJob: a scheduler pod plus workers; Indexed and Volcano Jobs:
the scheduler in pod 0), and each exit code is handled as intended. What only a real cluster proves: scheduling,
DNS, the image, HCCL on NPUs, and the controllers' versions in the field matching the source read here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convit.cluster import contract
from convit.cluster.supervisor import pod_plan
from convit.errors import LOST_PEER_EXIT, STOPPED_EXIT
from convit.jobspec import load_job
from launcher.render import render_objects
from tests.support.controllers import (
    DISRUPTION,
    EVICTED,
    FAIL_JOB,
    NOTHING,
    RECREATE_POD,
    RESTART_JOB,
    SUCCEEDED,
    AscendJobOperator,
    IndexedJob,
    JobSetController,
    TrainerController,
    VolcanoJob,
    emulator,
    network,
    pod_key,
    run_pods,
    wait_all,
)
from tests.support.s3server import free_port
from tests.support.trainrun import SMALL_RUN, make_sample


def _render(backend: str, *sets: str) -> list[dict]:  # type: ignore[type-arg]
    return render_objects(load_job("convit_tiny", [f"cluster.backend={backend}", "name=tiny", *sets]))


# ---- the pods each controller creates ---------------------------------------------------------------------------
def test_indexed_job_pods() -> None:
    objects = _render("job", "cluster.pods=2", "cluster.npus_per_pod=8")
    job = IndexedJob(objects[-1])
    pods = job.pods()
    assert [p.hostname for p in pods] == ["tiny-0", "tiny-1"] and {p.subdomain for p in pods} == {"tiny"}
    assert job.services(objects) == ["tiny-0.tiny", "tiny-1.tiny"]
    env = pods[1].env()
    assert env[contract.INDEXED_INDEX_ENV] == env[contract.ENV_NODE_RANK] == "1"
    assert env[contract.ENV_SCHED_HOST] == "tiny-0.tiny" and env[contract.ENV_SCHED_PORT] == "8118"
    plans = [pod_plan(p.env()) for p in pods]
    assert [(p.scheduler, p.workers) for p in plans if p] == [(True, tuple(range(8))), (False, tuple(range(8, 16)))]


def test_volcano_pods() -> None:
    objects = _render("volcano", "cluster.pods=2", "cluster.npus_per_pod=8")
    job = VolcanoJob(objects[-1])
    pods = job.pods()
    assert [p.name for p in pods] == ["tiny-worker-0", "tiny-worker-1"]
    assert [p.hostname for p in pods] == ["tiny-worker-0", "tiny-worker-1"] and {p.subdomain for p in pods} == {"tiny"}
    assert job.svc_args() == ["--publish-not-ready-addresses"]  # DNS records before Ready: see volcano_job()
    env = pods[1].env(job.config_maps())
    assert env[contract.VOLCANO_INDEX_ENV] == "1" and env["VC_WORKER_HOSTS"] == "tiny-worker-0.tiny,tiny-worker-1.tiny"
    assert env[contract.ENV_SCHED_HOST] in job.services()
    plans = [pod_plan(p.env(job.config_maps())) for p in pods]
    assert [(p.pod, p.scheduler, p.workers[0]) for p in plans if p] == [(0, True, 0), (1, False, 8)]


def test_ascend_operator_pods() -> None:
    objects = _render("ascendjob", "cluster.pods=2", "cluster.npus_per_pod=8", "cluster.master_port=9123")
    op = AscendJobOperator(objects[-1])
    pods = op.pods()
    assert [p.name for p in pods] == ["tiny-scheduler-0", "tiny-worker-0", "tiny-worker-1"]
    assert op.events == [], "the template's restartPolicy would be overwritten with a Warning event"
    envs = [p.env() for p in pods]
    sched, w0, w1 = envs
    assert sched[contract.ENV_ROLE] == contract.ROLE_SCHED and w1[contract.ENV_ROLE] == contract.ROLE_WORKER
    assert {e[contract.ENV_SCHED_PORT] for e in envs} == {"9123"}  # the port we render, not the default 2222
    assert w1[contract.ENV_LOCAL] == "8" and w1[contract.ENV_WORLD] == "16" and w1[contract.ENV_NODE_RANK] == "1"
    assert w0[contract.ENV_SCHED_HOST] == op.SERVICE_IP and sched[contract.ENV_SCHED_HOST] == pods[0].ip
    for pod in pods:  # the operator's variables are the only ones: ours would be duplicates it overrides
        names = [e["name"] for e in pod.container()["env"]]
        assert names.count(contract.ENV_LOCAL) == 1 and names.count(contract.ENV_ROLE) == 1
    assert pod_plan(sched) is None  # the Scheduler pod runs the scheduler itself, nothing else
    plans = [pod_plan(e) for e in (w0, w1)]
    assert [(p.scheduler, p.workers) for p in plans if p] == [(False, tuple(range(8))), (False, tuple(range(8, 16)))]
    assert "huawei.com/Ascend910" not in pods[0].container()["resources"]["limits"]


def test_jobset_pods() -> None:
    objects = _render("jobset", "cluster.pods=2", "cluster.npus_per_pod=8")
    ctl = JobSetController(objects[-1])
    pods = ctl.pods()
    assert [p.hostname for p in pods] == ["tiny-worker-0-0", "tiny-worker-0-1"] and {p.subdomain for p in pods} == {
        "tiny"
    }
    assert ctl.services() == ["tiny-worker-0-0.tiny", "tiny-worker-0-1.tiny"]
    env = pods[1].env()
    assert env[contract.INDEXED_INDEX_ENV] == env[contract.ENV_NODE_RANK] == "1"
    assert env[contract.ENV_SCHED_HOST] == "tiny-worker-0-0.tiny" and env[contract.ENV_SCHED_HOST] in ctl.services()
    plans = [pod_plan(p.env()) for p in pods]
    assert [(p.scheduler, p.workers) for p in plans if p] == [(True, tuple(range(8))), (False, tuple(range(8, 16)))]
    assert pods[0].labels["jobset.sigs.k8s.io/replicatedjob-name"] == contract.JOBSET_REPLICATED_JOB


def test_jobset_restart_decisions() -> None:
    def ctl(limit: int = 1) -> JobSetController:
        return JobSetController(_render("jobset", "cluster.pods=2", f"cluster.backoff_limit={limit}")[-1])

    c = ctl()
    assert c.pod_finished(0, 0) == NOTHING and c.pod_finished(1, 0) == SUCCEEDED
    assert ctl().pod_finished(1, 2) == FAIL_JOB  # PodFailurePolicy -> the bad-job-file rule: FailJobSet
    for code in (1, 137, DISRUPTION, EVICTED):  # backoffLimit 0: the child Job fails, the whole gang restarts
        c = ctl()
        assert [c.pod_finished(1, code), c.pod_finished(0, code)] == [RESTART_JOB, FAIL_JOB]
    assert ctl(0).pod_finished(0, 1) == FAIL_JOB  # maxRestarts 0: no restart
    c = ctl()  # a pod stopped on request (deleted, suspended) is replaced alone and fails nothing; a peer that lost
    assert c.pod_finished(1, STOPPED_EXIT) == RECREATE_POD and c.restarts == 0  # it exits LOST_PEER_EXIT: restart
    assert c.pod_finished(0, LOST_PEER_EXIT) == RESTART_JOB


# ---- what each controller does when a pod ends ------------------------------------------------------------------
def test_indexed_job_restart_decisions() -> None:
    def job() -> IndexedJob:
        return IndexedJob(_render("job", "cluster.pods=2", "cluster.backoff_limit=1")[-1])

    j = job()
    assert j.pod_finished(0, 0) == NOTHING and j.pod_finished(1, 0) == SUCCEEDED
    assert job().pod_finished(0, 2) == FAIL_JOB  # podFailurePolicy FailJob: a bad job file is not retried
    j = job()
    assert j.pod_finished(0, DISRUPTION) == RECREATE_POD and j.failed == 0  # Ignore: not counted
    assert j.pod_finished(1, STOPPED_EXIT) == RECREATE_POD and j.failed == 0  # stopped on request: not counted
    assert j.pod_finished(0, LOST_PEER_EXIT) == RECREATE_POD and j.failed == 1  # its peer: counted
    for code in (1, 137):
        j = job()  # backoffLimit = 1 restart x (2 pods + 1): one whole-job restart is up to 3 failed pods
        assert [j.pod_finished(p, code) for p in (0, 1, 0, 1)] == [RECREATE_POD, RECREATE_POD, RECREATE_POD, FAIL_JOB]


def test_volcano_restart_decisions() -> None:
    def job(limit: int = 1) -> VolcanoJob:
        return VolcanoJob(_render("volcano", "cluster.pods=2", f"cluster.backoff_limit={limit}")[-1])

    j = job()
    assert j.pod_finished("tiny-worker-0", 0) == NOTHING and j.pod_finished("tiny-worker-1", 0) == SUCCEEDED
    assert job().pod_finished("tiny-worker-0", 2) == FAIL_JOB  # exitCode 2 -> TerminateJob comes first
    for code in (1, 137, DISRUPTION):
        j = job()
        assert [j.pod_finished("tiny-worker-1", code), j.pod_finished("tiny-worker-1", code)] == [RESTART_JOB, FAIL_JOB]
    assert job(0).pod_finished("tiny-worker-0", 1) == FAIL_JOB  # backoff_limit 0 means no restart, here too
    webhook = _render("volcano")[-1]
    webhook["spec"]["maxRetry"] = 0
    j = VolcanoJob(webhook)  # what rendering maxRetry 0 would have meant: 3 attempts
    assert [j.pod_finished("tiny-worker-0", 1) for _ in range(3)] == [RESTART_JOB, RESTART_JOB, FAIL_JOB]


def test_ascend_operator_restart_decisions() -> None:
    def op(limit: int = 1) -> AscendJobOperator:
        return AscendJobOperator(_render("ascendjob", "cluster.pods=2", f"cluster.backoff_limit={limit}")[-1])

    o = op()
    outcomes = [o.pod_finished(name, 0) for name in ("tiny-worker-0", "tiny-worker-1", "tiny-scheduler-0")]
    assert outcomes == [NOTHING, NOTHING, SUCCEEDED]
    for code in (1, 2, 137, EVICTED):  # a failed pod: MindCluster reschedules the whole job, fault-retry-times times
        o = op(2)
        assert [o.pod_finished("tiny-worker-1", code) for _ in range(3)] == [RESTART_JOB, RESTART_JOB, FAIL_JOB]
    unlabelled = _render("ascendjob", "cluster.pods=2")[-1]
    del unlabelled["metadata"]["labels"]["fault-retry-times"]
    assert AscendJobOperator(unlabelled).pod_finished("tiny-worker-1", 1) == FAIL_JOB  # what we rendered before
    o = op()  # a deleted pod is re-created alone, within the limit the operator took from fault-retry-times
    assert [o.pod_finished("tiny-worker-0", DISRUPTION), o.pod_finished("tiny-worker-0", DISRUPTION)] == [
        RECREATE_POD,
        FAIL_JOB,
    ]


def test_evictions_per_controller() -> None:
    """The kubelet's eviction: the Indexed Job ignores it (DisruptionTarget), Volcano restarts the job (PodEvicted),
    the AscendJob sees a Failed pod (rescheduling the job, see above)."""
    assert IndexedJob(_render("job", "cluster.pods=2")[-1]).pod_finished(1, EVICTED) == RECREATE_POD
    assert VolcanoJob(_render("volcano", "cluster.pods=2")[-1]).pod_finished("tiny-worker-1", EVICTED) == RESTART_JOB


def test_ascend_operator_skips_the_mindspore_variables_without_npus() -> None:
    objects = _render("ascendjob", "cluster.pods=1")
    worker = objects[-1]["spec"]["replicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    for section in ("requests", "limits"):
        worker["resources"][section].pop("huawei.com/Ascend910")
    pods = AscendJobOperator(objects[-1]).pods()
    assert all(contract.ENV_ROLE not in p.env() for p in pods)


# ---- the pods, trained ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """MindSpore's graph compile cache, shared by the runs below: every case compiles the same two-rank graphs."""
    path = tmp_path_factory.mktemp("ms-cache")
    return {"MS_COMPILER_CACHE_ENABLE": "1", "MS_COMPILER_CACHE_PATH": str(path)}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("sample")
    make_sample(f"file://{root}", 4, 6, 1)
    return f"file://{root}"


# Two pods of one NPU each train under every controller in tests/test_recovery.py (with faults); here the other
# shapes: the AscendJob's Scheduler pod beside one Worker of two NPUs, and Trainer's pods from runtime + TrainJob.
CASES = [
    pytest.param("ascendjob", 1, 2, id="ascendjob-scheduler+1x2"),
    pytest.param("trainjob", 2, 1, id="trainjob-2x1"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "pods", "npus"), CASES)
def test_controller_pods_train_to_the_end(
    backend: str, pods: int, npus: int, sample: str, compile_cache: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "ckpt"
    objects = _render(
        backend,
        f"cluster.pods={pods}",
        f"cluster.npus_per_pod={npus}",
        f"cluster.master_port={free_port()}",
        "cluster.cluster_timeout=120",
        f"data.uri={sample}",
        "data.layout=imagefolder",
        f"checkpoint.uri=file://{out}",
        "train.max_steps=2",
        "train.amp_level=O0",
        "model.drop_path_rate=0.0",
        *SMALL_RUN,
    )
    ctl = emulator(objects[-1])
    created = ctl.pods()
    addresses, maps = network(ctl, objects)
    running = run_pods(created, objects, addresses, tmp_path, maps, compile_cache)
    codes = wait_all(running, timeout=420)
    logs = {r.pod.name: r.text() for r in running}
    assert codes == [0] * len(running), "\n".join(f"--- {n}\n{t[-3000:]}" for n, t in logs.items())
    outcomes = [ctl.pod_finished(pod_key(ctl, i, r.pod), 0) for i, r in enumerate(running)]
    assert outcomes[-1] == SUCCEEDED
    rank0 = logs[created[1 if backend == "ascendjob" else 0].name]
    assert "world_size=2" in rank0 and "step 2/2" in rank0, rank0[-3000:]
    assert json.loads((out / "latest.json").read_text())["step"] == 2
    if backend == "ascendjob":  # the Scheduler pod trained nothing; the Worker pods started no scheduler
        assert "step 1/" not in logs[created[0].name]


def test_trainer_builds_from_our_runtime_and_a_trainjob_exactly_the_pod_every_other_kind_renders() -> None:
    """The TrainJob and the ClusterTrainingRuntime are one pod split in two (launcher/workloads/trainjob.py):
    Trainer's merge of them (runtimePatches, numNodes, trainer image/command/args/env, resourcesPerNode) must give
    back exactly that pod, and the pods a JobSet of Indexed pods gets."""
    from launcher.workloads.trainjob import full_pod

    spec = load_job("convit_tiny", ["cluster.backend=trainjob", "name=tiny", "cluster.pods=2",
                                    "cluster.tolerations=[{key: npu, effect: NoSchedule}]"])  # fmt: skip
    objects = render_objects(spec)
    ctl = emulator(objects[-1])
    assert isinstance(ctl, TrainerController)
    (rjob,) = ctl.jobset["spec"]["replicatedJobs"]
    built = rjob["template"]["spec"]["template"]
    expected = full_pod(spec)

    def canonical(pod: dict) -> dict:  # type: ignore[type-arg]
        pod = json.loads(json.dumps(pod))
        for key in ("volumes",):
            pod["spec"][key] = sorted(pod["spec"][key], key=lambda v: v["name"])
        ctr = pod["spec"]["containers"][0]
        ctr["volumeMounts"] = sorted(ctr["volumeMounts"], key=lambda m: m["mountPath"])
        ctr["env"] = sorted(ctr["env"], key=lambda e: e["name"])
        return {"labels": pod["metadata"]["labels"], "spec": pod["spec"]}

    assert canonical(built) == canonical(expected)
    assert built["metadata"]["annotations"]["scheduling.k8s.io/group-name"] == "tiny"  # Volcano's PodGroup
    assert rjob["template"]["spec"]["completions"] == rjob["template"]["spec"]["parallelism"] == 2
    pods = ctl.pods()
    assert [p.hostname for p in pods] == ["tiny-node-0-0", "tiny-node-0-1"]
    env = pods[1].env()
    assert env[contract.ENV_NODE_RANK] == "1" and env[contract.ENV_SCHED_HOST] == "tiny-node-0-0.tiny"
    assert env[contract.ENV_SCHED_HOST] in ctl.services()
    assert ctl.pod_finished(1, 2) == FAIL_JOB  # exit code 2 of container `node`: the bad-job-file rule
    fresh = emulator(objects[-1])
    assert fresh.pod_finished(1, 137) == RESTART_JOB  # the gang restarts, up to the runtime's maxRestarts


def test_our_runtime_is_the_same_for_every_job() -> None:
    from launcher.workloads.trainjob import runtime

    a = runtime(load_job("convit_tiny", ["cluster.backend=trainjob"]))
    b = runtime(load_job("convit_base_plus", ["cluster.backend=trainjob", "name=other", "cluster.pods=4",
                                              "cluster.shm_size=8Gi", "cluster.image=registry/x:1"]))  # fmt: skip
    assert a == b
