"""The trainer end to end on the CPU: two ranks of a real MindSpore cluster, data and checkpoints in a
real S3 server process, validation, checkpoints, SIGKILL and exact resume, SIGTERM, a learnable task."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convit.errors import STOPPED_EXIT
from tests.support.s3server import SECRET_KEY
from tests.support.tensorboard import shown, sync_copy
from tests.support.trainrun import (
    REPO,
    SMALL_RUN,
    PodRun,
    free_port,
    make_sample,
    pod_env,
    run_pod,
    seed_compile_cache,
)

pytestmark = pytest.mark.slow


def _weights(uri_root: Path | str, step: int) -> dict[str, np.ndarray]:
    import mindspore as ms

    from convit.storage import open_storage

    data = open_storage(str(uri_root)).get(f"checkpoints/step-{step:09d}/weights.ckpt")
    path = Path(f"/tmp/convit-test-{step}-{abs(hash(str(uri_root)))}.ckpt")
    path.write_bytes(data)
    try:
        return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}
    finally:
        path.unlink()


@pytest.fixture(scope="module")
def s3_sample(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A generated ImageNet-format sample in a bucket of the real S3 server: 4 classes, 12 + 2 images each."""
    import boto3

    from tests.support.s3server import s3_env

    env = s3_env(s3_endpoint)
    client = boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="e2e")
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        make_sample("s3://e2e/sample", classes=4, per_class=12, val_per_class=2)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return {**env, "CONVIT_S3_RETRY_SECONDS": "30"}


def _args(ckpt: str, *extra: str) -> list[str]:
    sets = [
        *SMALL_RUN,
        "data.uri=s3://e2e/sample",
        "data.layout=imagefolder",
        f"checkpoint.uri={ckpt}",
        "model.drop_path_rate=0.1",
        *extra,
    ]
    return ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)]]


def test_two_ranks_train_validate_checkpoint_then_kill_and_resume_exactly(
    s3_sample: dict[str, str], tmp_path: Path
) -> None:
    # 48 images / (2 per micro-batch x 2 accumulated x 2 ranks) = 6 steps per epoch; run 9 steps (into epoch 2),
    # checkpoint every 2. With gradient accumulation, EMA of the weights and clipping on: all three resume exactly.
    straight, resumed = "s3://e2e/ckpt-straight", "s3://e2e/ckpt-resumed"
    common = (
        "train.max_steps=9",
        "checkpoint.interval_steps=2",
        "train.batch_size=2",
        "train.grad_accum_steps=2",
        "train.ema_decay=0.99",
        "train.clip_grad=1.0",
    )

    code, log = run_pod(_args(straight, *common), tmp_path, "straight", extra_env=s3_sample)
    assert code == 0, log[-4000:]
    assert "world_size=2" in log and "global_batch=8 grad_accum_steps=2 ema_decay=0.99 clip_grad=1.0" in log
    assert "step 9/9" in log and "validation epoch 1 step 6" in log and "checkpoint step 9" in log
    assert SECRET_KEY not in log

    # Same job (with the graphs the first compiled, as a resubmitted job finds them), killed with SIGKILL (no chance
    # to save) right after the step-4 checkpoint is published.
    os.environ.update(s3_sample)
    seed_compile_cache(straight, resumed)
    pod = PodRun(_args(resumed, *common), pod_env(1, 2, 0, free_port(), s3_sample), tmp_path / "killed.log")
    pod.wait_for("checkpoint step 4 ", timeout=400)
    from convit.storage import open_storage

    store = open_storage(resumed)
    import time

    deadline = time.monotonic() + 60
    while '"step": 4' not in (store.get("latest.json").decode() if store.exists("latest.json") else ""):
        assert time.monotonic() < deadline, "step-4 checkpoint was never published"
        time.sleep(0.2)
    pod.kill_group()
    pod.wait(30)

    code, log = run_pod(_args(resumed, *common), tmp_path, "resume", extra_env=s3_sample)
    assert code == 0, log[-4000:]
    assert "resume=step " in log and "step 9/9" in log
    resumed_from = int(log.split("resume=step ")[1].split()[0])
    assert resumed_from >= 4

    a, b = _weights(straight, 9), _weights(resumed, 9)
    assert a.keys() == b.keys() and len(a) > 194
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"resumed run differs from the straight run in {different[:5]}"
    # The state holds the EMA (MindCV's `ema.<name>`) and its counter, not the accumulation buffer (zero here).
    assert float(a["ema_updates"]) == 9 - int(a["overflow_steps"])
    assert not np.array_equal(a["ema.classifier.weight"], a["classifier.weight"])
    assert not [k for k in a if k.startswith("grad_sum.")]

    # TensorBoard shows the killed-and-resumed run as the straight one: every step once, the same values.
    curves = {uri: shown(sync_copy(uri, tmp_path / uri.rsplit("-", 1)[1])) for uri in (straight, resumed)}
    assert [step for step, _ in curves[straight]["train/loss"]] == list(range(1, 10))
    for tag in ("train/loss", "train/lr", "val/top1", "val/top5", "train/overflow_steps"):
        assert curves[resumed][tag] == curves[straight][tag], tag
    assert [step for step, _ in curves[straight]["val/top1"]] == [6, 9]


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(s3_sample: dict[str, str], tmp_path: Path) -> None:
    import signal

    ckpt = "s3://e2e/ckpt-sigterm"
    pod = PodRun(_args(ckpt, "train.max_steps=40"), pod_env(1, 2, 0, free_port(), s3_sample), tmp_path / "t.log")
    pod.wait_for("step 3/", timeout=400)
    os.kill(pod.proc.pid, signal.SIGTERM)  # kubelet signals the container's main process: the supervisor
    assert pod.wait(120) == STOPPED_EXIT, pod.text()[-3000:]  # never 0: Kubernetes would count the pod finished
    text = pod.text()
    assert "stopped by signal, checkpoint saved" in text
    os.environ.update(s3_sample)
    from convit.storage import open_storage

    latest = json.loads(open_storage(ckpt).get("latest.json"))
    assert 3 <= latest["step"] < 40


def test_loss_decreases_on_a_learnable_task(tmp_path: Path) -> None:
    data = f"file://{tmp_path}/data"
    make_sample(data, classes=4, per_class=16, val_per_class=4)
    sets = [
        "train.batch_size=8",
        "train.epochs=6",
        "train.warmup_epochs=1",
        "train.lr=1e-3",
        "train.reference_batch=0",  # the LR as given: the linear rule would scale it by 8 / 2048
        "train.amp_level=O0",  # float32 is twice as fast as O2 on the CPU; O2 training is tested elsewhere
        "train.label_smoothing=0.0",
        "augment.mixup=0.0",
        "augment.cutmix=0.0",
        "augment.re_prob=0.0",
        "augment.color_jitter=0.0",
        "augment.scale_min=0.5",
        "model.drop_path_rate=0.0",
        "model.num_classes=4",
        "data.workers=1",
        "data.layout=imagefolder",
        f"data.uri={data}",
        f"checkpoint.uri=file://{tmp_path}/ckpt",
        "logging.interval_steps=1",
        "logging.format=json",
    ]
    args = ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.run(
        [sys.executable, "-m", "convit.train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
        env={**pod_env(1, 1, 0, 0), "MS_LOCAL_WORKER": ""},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    losses = [e["loss"] for e in events if e["event"] == "progress"]
    assert len(losses) == 48
    first, last = np.mean(losses[:6]), np.mean(losses[-6:])
    assert last < 0.7 * first, f"loss did not fall: first epoch {first:.3f}, last epoch {last:.3f}"
    assert any(e["event"] == "validation" for e in events)


def test_fine_tuning_starts_from_a_mindcv_checkpoint(tmp_path: Path) -> None:
    import mindspore as ms
    from mindcv.models import create_model as mindcv_create

    reference = mindcv_create("convit_tiny")
    ckpt = tmp_path / "mindcv_convit_tiny.ckpt"
    ms.save_checkpoint(reference, str(ckpt))
    data = f"file://{tmp_path}/data"
    make_sample(data, classes=4, per_class=4, val_per_class=1)
    sets = [
        "train.batch_size=4",
        "train.epochs=2",
        "train.warmup_epochs=1",
        "data.workers=1",
        "data.layout=imagefolder",
        f"data.uri={data}",
        f"checkpoint.uri=file://{tmp_path}/ckpt",
        "model.num_classes=4",
        "train.max_steps=1",
        f"model.pretrained=file://{ckpt}",
    ]
    args = ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)]]
    env = {**pod_env(1, 1, 0, 0), "MS_LOCAL_WORKER": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "convit.train", *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "loaded pretrained weights from file://" in proc.stdout and "classifier re-initialised" in proc.stdout
    first = _weights(f"file://{tmp_path}/ckpt", 1)
    # The transplanted block weights moved by one small step at most: they started from MindCV's.
    delta = np.abs(first["blocks.0.attn.v.weight"] - reference.blocks[0].attn.v.weight.asnumpy()).max()
    assert delta < 0.01
