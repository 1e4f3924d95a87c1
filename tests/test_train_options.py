"""Gradient accumulation, EMA and clipping: what the inference commands read and what the step keeps in float32.

The training math is checked against MindCV's TrainStep in test_mindcv_parity.py; a 2-rank run with all three on is
killed and resumes bit-exactly in test_train_e2e.py, and an accumulated run resumes at another world size in
test_elastic_resume.py."""

from __future__ import annotations

import numpy as np
import pytest


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
    from tests.support.cpu import graph_mode_on_cpu

    graph_mode_on_cpu()  # before any kernel runs, as the other in-process MindSpore tests
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
