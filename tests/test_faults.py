"""Faults on the CPU with a real S3 server process: storage outages and request failures while training,
and a rank that never joins the cluster."""

from __future__ import annotations

import json
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
