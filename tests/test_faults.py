"""Faults on the CPU with a real S3 server process: storage outages and request failures while training,
a rank that never joins the cluster, and a rank lost mid-training (in its own pod, or in another)."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from convit.storage import open_storage
from convit.train.checkpoints import CheckpointStore
from tests.support.faultproxy import fault_proxy
from tests.support.trainrun import PodRun, free_port, make_sample, pod_env

pytestmark = pytest.mark.slow

SETS = [
    "train.batch_size=4",
    "train.epochs=3",
    "train.warmup_epochs=1",
    "data.workers=1",
    "data.layout=imagefolder",
    "logging.interval_steps=1",
    "checkpoint.interval_steps=2",
    "model.drop_path_rate=0.0",
    "model.num_classes=4",  # the samples' classes
]


@pytest.fixture(scope="module")
def s3_data(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    import boto3

    from tests.support.s3server import s3_env

    env = s3_env(s3_endpoint)
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).create_bucket(Bucket="faults")
    local = tmp_path_factory.mktemp("faultdata")
    make_sample(f"file://{local}", 4, 8, 1)
    import os

    saved = dict(os.environ)
    os.environ.update(env)
    try:
        src, dst = open_storage(f"file://{local}"), open_storage("s3://faults/data")
        for key in src.list():
            dst.put(key, src.get(key))
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return "s3://faults/data"


def _single(args: list[str], env: dict[str, str], log: Path) -> PodRun:
    single = {**pod_env(1, 1, 0, 0), **env, "MS_LOCAL_WORKER": ""}
    return PodRun(["--job", "convit_tiny", *[a for s in args for a in ("--set", s)]], single, log)


def test_training_rides_out_an_outage_and_failing_requests(s3_data: str, s3: dict[str, str], tmp_path: Path) -> None:
    with fault_proxy(s3["AWS_ENDPOINT_URL_S3"], rate=0.05, seed=7) as (endpoint, proxy):
        env = {**s3, "AWS_ENDPOINT_URL_S3": endpoint, "CONVIT_S3_RETRY_SECONDS": "60"}
        ckpt = "s3://faults/ride-out"
        sets = [*SETS, f"data.uri={s3_data}", f"checkpoint.uri={ckpt}", "train.max_steps=12"]
        run = _single(sets, env, tmp_path / "a.log")
        run.wait_for("step 3/12", timeout=300)
        proxy.outage(8)  # the object store goes away for 8 s mid-epoch
        code = run.wait(600)
        text = run.text()
        assert code == 0, text[-3000:]
        assert "done step 12 (finished)" in text
        assert "retry" in text  # warnings in the log, from the reads and writes that were retried
        assert proxy.injected["outage"] > 0 and proxy.injected["error"] + proxy.injected["reset"] > 0


def test_outage_past_the_budget_fails_clearly_with_the_last_checkpoint_intact(
    s3_data: str, s3: dict[str, str], tmp_path: Path
) -> None:
    with fault_proxy(s3["AWS_ENDPOINT_URL_S3"]) as (endpoint, proxy):
        env = {**s3, "AWS_ENDPOINT_URL_S3": endpoint, "CONVIT_S3_RETRY_SECONDS": "4"}
        ckpt = "s3://faults/past-budget"
        sets = [*SETS, f"data.uri={s3_data}", f"checkpoint.uri={ckpt}", "train.max_steps=40"]
        run = _single(sets, env, tmp_path / "b.log")
        run.wait_for("checkpoint step 2 saved", timeout=300)
        time.sleep(2)  # let the step-2 upload finish
        proxy.outage(3600)
        code = run.wait(300)
        text = run.text()
    assert code == 1, text[-3000:]
    errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 1 and "still failing after" in errors[0] and "Traceback" not in text
    latest = json.loads(open_storage(ckpt).get("latest.json"))
    assert latest["step"] >= 2
    meta, path = CheckpointStore(ckpt, tmp_path / "stage").fetch(latest["step"])  # verified size and sha256
    assert meta.step == latest["step"] and path.stat().st_size == meta.size


def test_a_rank_that_never_joins_fails_the_job_with_its_name(s3_data: str, s3: dict[str, str], tmp_path: Path) -> None:
    # Two ranks promised (MS_WORKER_NUM=2), one started: the cluster never forms.
    env = {**pod_env(1, 1, 0, free_port()), **s3, "MS_WORKER_NUM": "2", "MS_TOPO_TIMEOUT": "20"}
    args = ["--job", "convit_tiny", "--set", f"data.uri={s3_data}", "--set", "checkpoint.uri=s3://faults/never"]
    started = time.monotonic()
    run = PodRun(args, env, tmp_path / "c.log")
    code = run.wait(240)
    text = run.text()
    assert code != 0 and time.monotonic() - started < 200
    errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
    assert errors and "did not form" in errors[0] and "rank 1" in errors[0], text[-3000:]


def _worker_pid(supervisor: int, node_id: int) -> int:
    """The pid of the worker with this MindSpore node id among a pod supervisor's children."""
    for proc in Path("/proc").iterdir():
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (proc / "environ").read_bytes().split(b"\0") if ppid == supervisor else []
        except (OSError, ValueError, IndexError):
            continue
        if b"MS_ROLE=MS_WORKER" in env and f"MS_NODE_ID={node_id}".encode() in env:
            return int(proc.name)
    raise AssertionError(f"no worker with node id {node_id} under pid {supervisor}")


def _after_first_step(cache: Path, node_id: int, runs: list[PodRun], timeout: float = 400) -> None:
    """Wait until the worker recorded its first finished step for its pod supervisor (PodState)."""
    deadline = time.monotonic() + timeout
    while not list(cache.glob(f"pod-state-*/step-{node_id}")):
        for run in runs:
            assert run.proc.poll() is None, run.text()[-3000:]
        assert time.monotonic() < deadline, runs[0].text()[-3000:]
        time.sleep(0.2)


def _lost_peer_args(tmp_path: Path) -> list[str]:
    data = f"file://{tmp_path}/data"
    make_sample(data, 4, 8, 1)
    sets = [*SETS, f"data.uri={data}", f"checkpoint.uri=file://{tmp_path}/ckpt", "train.epochs=20"]
    return ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)]]


def test_a_killed_rank_ends_its_pod_at_once_with_one_line(tmp_path: Path) -> None:
    """Rank 1 of a 2-worker pod (not the first worker) is SIGKILLed after a step: the pod ends within seconds with a
    retriable code and one line naming rank 1, instead of waiting for MindSpore's timeouts and a traceback."""
    from convit.errors import LOST_PEER_EXIT

    cache = tmp_path / "cache"
    env = pod_env(1, 2, 0, free_port(), {"CONVIT_CACHE_DIR": str(cache)})
    run = PodRun(_lost_peer_args(tmp_path), env, tmp_path / "pod.log")
    try:
        _after_first_step(cache, 1, [run])
        os.kill(_worker_pid(run.proc.pid, 1), signal.SIGKILL)
        killed = time.monotonic()
        code = run.wait(120)
        took = time.monotonic() - killed
    finally:
        if run.proc.poll() is None:
            run.kill_group()
    text = run.text()
    errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
    print(f"the pod ended {took:.1f}s after the kill with exit code {code}: {errors}")
    assert code == LOST_PEER_EXIT and took < 30, (code, took, text[-3000:])
    assert len(errors) == 1 and errors[0].startswith("ERROR: pod 0 lost rank 1 (killed by SIGKILL) after step "), text
    assert "Traceback" not in text


def test_a_rank_lost_in_another_pod_ends_every_pod_with_one_line(tmp_path: Path) -> None:
    """Two pods of one worker each (pod 0 also runs the scheduler): pod 1's worker is SIGKILLed. Pod 1 ends at once;
    pod 0 learns it from MindSpore's scheduler (no heartbeat for MS_NODE_TIMEOUT, 10 s here) and ends with one line.
    The CPU collectives' own timeout (MS_CPU_COMM_OP_TIMEOUT, default MS_NODE_TIMEOUT) stays long: it must outlast
    the ranks' difference in graph compile time on this shared machine."""
    from convit.errors import LOST_PEER_EXIT

    args = _lost_peer_args(tmp_path)
    port = free_port()
    timeouts = {"MS_NODE_TIMEOUT": "10", "MS_CPU_COMM_OP_TIMEOUT": "120"}
    runs = [
        PodRun(
            args,
            pod_env(2, 1, i, port, {"CONVIT_CACHE_DIR": str(tmp_path / f"cache{i}"), **timeouts}),
            tmp_path / f"pod{i}.log",
        )
        for i in range(2)
    ]
    try:
        _after_first_step(tmp_path / "cache1", 1, runs)
        os.kill(_worker_pid(runs[1].proc.pid, 1), signal.SIGKILL)
        killed = time.monotonic()
        codes = [run.wait(120) for run in runs]
        took = time.monotonic() - killed
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.kill_group()
    texts = [run.text() for run in runs]
    errors = [[line for line in text.splitlines() if line.startswith("ERROR:")] for text in texts]
    print(f"both pods ended {took:.1f}s after the kill with exit codes {codes}: {errors}")
    assert codes == [LOST_PEER_EXIT, LOST_PEER_EXIT] and took < 40, (codes, took, texts[0][-3000:])
    assert len(errors[1]) == 1 and errors[1][0].startswith("ERROR: pod 1 lost rank 1 (killed by SIGKILL) after step ")
    assert len(errors[0]) == 1 and errors[0][0].startswith("ERROR: pod 0: lost "), texts[0][-3000:]
    assert "restarts the job" in errors[0][0]
    assert not any("Traceback" in text for text in texts)


def test_a_survivor_that_loses_its_peers_says_so_in_one_line(tmp_path: Path) -> None:
    """Pod 0 (the scheduler and rank 0) is lost: pod 1's rank waits in its AllReduce until MindSpore's CPU collective
    timeout (20 s here), then the trainer turns the RuntimeError into the pod's one line and a retriable exit."""
    from convit.errors import LOST_PEER_EXIT

    args = _lost_peer_args(tmp_path)
    port = free_port()
    timeouts = {"MS_NODE_TIMEOUT": "20"}  # the CPU collectives' timeout too (MS_CPU_COMM_OP_TIMEOUT unset)
    runs = [
        PodRun(
            args,
            pod_env(2, 1, i, port, {"CONVIT_CACHE_DIR": str(tmp_path / f"cache{i}"), **timeouts}),
            tmp_path / f"pod{i}.log",
        )
        for i in range(2)
    ]
    try:
        _after_first_step(tmp_path / "cache1", 1, runs)
        runs[0].kill_group()  # the whole pod at once: its supervisor, the scheduler and rank 0
        killed = time.monotonic()
        code = runs[1].wait(120)
        took = time.monotonic() - killed
    finally:
        for run in runs:
            if run.proc.poll() is None:
                run.kill_group()
        runs[0].wait(30)
    text = runs[1].text()
    errors = [line for line in text.splitlines() if line.startswith("ERROR:")]
    print(f"pod 1 ended {took:.1f}s after pod 0 was killed, exit code {code}: {errors}")
    assert code == LOST_PEER_EXIT and took < 60, (code, took, text[-3000:])
    assert len(errors) == 1 and errors[0].startswith("ERROR: pod 1: lost a peer rank after step "), text[-3000:]
    assert "(MindSpore: " in errors[0] and "restarts the job" in errors[0]
    assert "Traceback" not in text
