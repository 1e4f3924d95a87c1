"""Gradient accumulation, EMA and clipping end to end: a run killed mid-way resumes bit-exactly (EMA state
included), and a checkpoint of an accumulated run resumes at another shape (elastic) from the right sample.
The training math itself is checked against MindCV's TrainStep in test_mindcv_parity.py."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from tests.support.trainrun import SMALL_RUN, PodRun, free_port, make_sample, pod_env, run_pod


def test_weights_for_inference_are_the_ema_when_the_checkpoint_has_one() -> None:
    from convit.errors import ConvitError
    from convit.inference.weights import LoadedWeights, _average

    raw, averaged = np.zeros(3, np.float32), np.ones(3, np.float32)
    with_ema = LoadedWeights("s3://b/ckpt", {"norm.gamma": raw, "ema.norm.gamma": averaged}, "mindcv", "x", 10)
    assert _average(with_ema, None).params == {"norm.gamma": averaged} and _average(with_ema, None).ema
    assert _average(with_ema, True).params == {"norm.gamma": averaged}
    assert _average(with_ema, False).params == {"norm.gamma": raw} and not _average(with_ema, False).ema
    plain = LoadedWeights("s3://b/ckpt", {"norm.gamma": raw}, "mindcv", "x", 10)
    assert _average(plain, None).params == {"norm.gamma": raw} and not _average(plain, None).ema
    with pytest.raises(ConvitError, match="s3://b/ckpt: the checkpoint holds no EMA weights"):
        _average(plain, True)


def test_the_accumulated_gradient_and_the_ema_stay_float32_under_o2() -> None:
    import mindspore as ms

    from convit.jobspec import load_job
    from convit.models.convit import ConViT
    from convit.train.schedule import lr_schedule
    from convit.train.step import build_optimizer, build_train_step

    ms.set_device("CPU")  # before any kernel runs, as the other in-process MindSpore tests set it
    spec = load_job(
        "convit_tiny",
        ["train.amp_level=O2", "model.num_classes=10", "train.grad_accum_steps=4", "train.ema_decay=0.9999"],
    )
    model = ConViT(embed_dim=64, num_heads=4, num_classes=10, depth=3, local_up_to_layer=2)
    step = build_train_step(model, build_optimizer(model, spec, lr_schedule(spec.train, 10)), spec)
    buffers = {p.name: p.dtype for p in step.grad_sum} | {p.name: p.dtype for p in step.ema_weights}
    assert len(buffers) == len(model.trainable_params()) + len(list(model.get_parameters()))
    assert set(buffers.values()) == {ms.float32}, buffers
    assert all(name.startswith(("grad_sum.", "ema.")) for name in buffers)


def _state(root: str, step: int, scratch: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    from convit.storage import open_storage

    path = scratch / f"state-{step}.ckpt"
    path.write_bytes(open_storage(root).get(f"checkpoints/step-{step:09d}/weights.ckpt"))
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def _validation(log: str) -> str:
    found = re.findall(r"validation epoch \d+ step \d+ top1 \S+ top5 \S+", log)
    assert found, log[-3000:]
    return str(found[-1])


@pytest.mark.slow
def test_accumulation_and_ema_survive_a_kill_bit_exactly_and_resume_elastically(tmp_path: Path) -> None:
    from convit.storage import open_storage

    data = f"file://{tmp_path}/data"
    make_sample(data, classes=4, per_class=12, val_per_class=1)  # 48 training images

    def args(ckpt: str, *extra: str) -> list[str]:
        sets = [
            *SMALL_RUN,
            "train.batch_size=2",
            "train.grad_accum_steps=2",  # 1 rank x 2 x 2: a global batch of 4, 12 optimizer steps per epoch
            "train.ema_decay=0.99",
            "train.clip_grad=1.0",
            "model.drop_path_rate=0.1",
            "data.layout=imagefolder",
            f"data.uri={data}",
            f"checkpoint.uri={ckpt}",
            "checkpoint.interval_steps=2",
            "train.max_steps=7",
            *extra,
        ]
        return ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)]]

    straight, resumed = f"file://{tmp_path}/straight", f"file://{tmp_path}/resumed"
    code, log = run_pod(args(straight), tmp_path, "straight", local=1)
    assert code == 0, log[-4000:]
    assert "global_batch=4 grad_accum_steps=2 ema_decay=0.99 clip_grad=1.0" in log
    assert "steps_per_epoch=12" in log and "step 7/7" in log

    # The same job, SIGKILLed (no chance to save) once its step-2 checkpoint is published, then started again.
    pod = PodRun(args(resumed), pod_env(1, 1, 0, free_port()), tmp_path / "killed.log")
    pod.wait_for("checkpoint step 2 ", timeout=600)
    store = open_storage(resumed)
    deadline = time.monotonic() + 60
    while '"step": 2' not in (store.get("latest.json").decode() if store.exists("latest.json") else ""):
        assert time.monotonic() < deadline, "the step-2 checkpoint was never published"
        time.sleep(0.2)
    pod.kill_group()
    pod.wait(30)
    code, again = run_pod(args(resumed), tmp_path, "resumed", local=1)
    assert code == 0, again[-4000:]
    assert int(again.split("resume=step ")[1].split()[0]) >= 2 and "step 7/7" in again

    a, b = _state(straight, 7, tmp_path), _state(resumed, 7, tmp_path)
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"the resumed run differs from the straight one in {different[:5]}"
    # The state holds the EMA (MindCV's `ema.<name>`) and its counter, not the accumulation buffer (zero here).
    assert "ema.classifier.weight" in a and float(a["ema_updates"]) == 7.0
    assert not [k for k in a if k.startswith("grad_sum.")]
    assert not np.array_equal(a["ema.classifier.weight"], a["classifier.weight"])
    assert _validation(again) == _validation(log)  # validation (on the EMA weights) agrees too

    # Elastic: the accumulated run's step 7 (28 of the epoch's 48 samples) resumed without accumulation, 2 per
    # step: 20 samples of epoch 1 are left, 10 steps; stop after 2 of them.
    code, elastic = run_pod(
        args(resumed, "train.grad_accum_steps=1", "train.max_steps=9"), tmp_path, "elastic", local=1
    )
    assert code == 0, elastic[-4000:]
    assert "resume=step 7 (epoch 1, 28 of 48 samples) from batch 4 to 2 per rank" in elastic
    assert "global_batch=2 ema_decay=0.99" in elastic and "step 9/9" in elastic
    meta = json.loads(store.get("checkpoints/step-000000009/meta.json"))
    assert (meta["epoch"], meta["epoch_samples"], meta["segments"]) == (0, 32, [[1, 4, 7], [1, 2, 2]])
