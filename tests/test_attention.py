"""GPSA's two forms: mixed attention maps (CPU) and the decomposed form whose content term is plain attention
(Ascend's fused kernel there, `plain_attention` standing in for it here)."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

from convit.errors import ConvitError
from convit.models import create_model
from convit.models.convit import GPSA, ConViT, flash_attention, plain_attention
from tests.support.cpu import graph_mode_on_cpu


@pytest.fixture(scope="module", autouse=True)
def graph_mode() -> None:
    graph_mode_on_cpu()


def _pair(dim: int, heads: int, seed: int) -> tuple[Any, Any]:
    """A mixed and a decomposed GPSA with the same, deliberately non-trivial weights."""
    import mindspore as ms

    rng = np.random.default_rng(seed)
    mixed = GPSA(dim, heads, 14)
    decomposed = GPSA(dim, heads, 14, content_kernel=plain_attention)
    for p, twin in zip(mixed.get_parameters(), decomposed.get_parameters(), strict=True):
        assert p.name == twin.name
        if p.name.endswith("gating_param"):
            value = rng.uniform(-2.0, 2.0, p.shape)  # gates from 0.12 to 0.88: both terms count
        elif p.name.endswith(("q.weight", "k.weight")):
            value = rng.standard_normal(p.shape) * 0.15  # peaked content attention
        elif p.name.endswith("pos_proj.weight"):
            value = p.asnumpy() + rng.standard_normal(p.shape) * 0.1
        else:
            value = rng.standard_normal(p.shape) * 0.05
        p.set_data(ms.Tensor(value.astype(np.float32)))
        twin.set_data(ms.Tensor(value.astype(np.float32)))
    return mixed, decomposed


@pytest.mark.parametrize(("dim", "heads"), [(192, 4), (432, 9)])
def test_decomposed_gpsa_equals_the_mixed_one_in_float32(dim: int, heads: int) -> None:
    """(1-g) softmax(q k^T s) v + g softmax(pos) v == ((1-g) softmax(q k^T s) + g softmax(pos)) v: outputs
    and every gradient, to 1e-5."""
    import mindspore as ms

    mixed, decomposed = _pair(dim, heads, seed=heads)
    mixed.set_train(True)
    decomposed.set_train(True)  # in eval mode the CPU's decomposed GPSA runs the mixed form
    x = ms.Tensor(np.random.default_rng(1).standard_normal((3, 196, dim)).astype(np.float32))
    dy = ms.Tensor(np.random.default_rng(2).standard_normal((3, 196, dim)).astype(np.float32))

    def run(net: Any) -> tuple[Any, list[Any]]:
        def loss(inp: Any) -> Any:
            return (net(inp) * dy).sum()

        grad = ms.jit(ms.value_and_grad(loss, grad_position=0, weights=net.trainable_params()))
        _, (dx, dw) = grad(x)
        return net(x).asnumpy(), [dx.asnumpy()] + [g.asnumpy() for g in dw]

    out_mixed, grads_mixed = run(mixed)
    out_dec, grads_dec = run(decomposed)
    assert np.abs(out_mixed).max() > 0.1
    np.testing.assert_allclose(out_dec, out_mixed, atol=1e-5, rtol=1e-5)
    names = ["x"] + [p.name for p in mixed.trainable_params()]
    assert len(grads_mixed) == len(names) == len(grads_dec)
    for name, a, b in zip(names, grads_dec, grads_mixed, strict=True):
        if name.endswith("pos_proj.bias"):
            # shifts every key's position score equally, which softmax cancels: its true gradient is 0 and
            # both forms return rounding noise (~1e-6 here)
            assert np.abs(a).max() < 1e-4 and np.abs(b).max() < 1e-4
            continue
        scale = max(1.0, float(np.abs(b).max()))
        assert np.abs(a - b).max() <= 1e-5 * scale, name


def test_plain_attention_is_what_flash_attention_score_computes() -> None:
    """The stand-in's contract is the kernel's (BSH layout, scalar_value, head_num): checked against the formula
    per head in numpy, and the kernel's signature in the installed MindSpore."""
    import mindspore as ms
    from mindspore import ops

    rng = np.random.default_rng(3)
    b, n, heads, d = 2, 196, 4, 48
    q, k, v = (rng.standard_normal((b, n, heads * d)).astype(np.float32) for _ in range(3))
    scale = d**-0.5
    got = ms.jit(plain_attention)(ms.Tensor(q), ms.Tensor(k), ms.Tensor(v), heads, scale).asnumpy()
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        s = q[:, :, sl] @ k[:, :, sl].transpose(0, 2, 1) * scale
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        np.testing.assert_allclose(got[:, :, sl], p @ v[:, :, sl], atol=1e-5, rtol=1e-5)
    params = inspect.signature(ops.flash_attention_score).parameters
    assert list(params)[:4] == ["query", "key", "value", "head_num"]
    assert params["input_layout"].default == "BSH" and params["keep_prob"].default == 1.0
    assert "scalar_value" in params


def test_flash_attention_falls_back_to_plain_attention_in_float32() -> None:
    import mindspore as ms

    rng = np.random.default_rng(4)
    q, k, v = (ms.Tensor(rng.standard_normal((2, 196, 192)).astype(np.float32)) for _ in range(3))
    got = ms.jit(flash_attention)(q, k, v, 4, 48**-0.5).asnumpy()
    want = ms.jit(plain_attention)(q, k, v, 4, 48**-0.5).asnumpy()
    np.testing.assert_array_equal(got, want)


def test_the_fused_form_is_selected_on_ascend_and_the_decomposed_one_elsewhere() -> None:
    def kernels(model: Any) -> list[Any]:
        return [block.attn.content_kernel for block in list(model.blocks)[:10]]  # (slicing renames parameters)

    def shapes(model: Any) -> list[tuple[str, tuple[int, ...]]]:
        return [(p.name, tuple(p.shape)) for p in model.get_parameters()]

    cpu = create_model("convit_tiny")
    assert cpu.attention_form == "decomposed" and kernels(cpu) == [plain_attention] * 10
    ascend = create_model("convit_tiny", attention_form="fused")
    assert kernels(ascend) == [flash_attention] * 10
    assert not any(isinstance(block.attn, GPSA) for block in list(ascend.blocks)[10:])
    mixed = create_model("convit_tiny", attention_form="mixed")
    assert kernels(mixed) == [None] * 10
    # the same parameters in every form (MindCV checkpoints load into all)
    assert shapes(cpu) == shapes(ascend) == shapes(mixed)
    with pytest.raises(ConvitError, match="attention_form must be one of auto, mixed, decomposed, fused"):
        create_model("convit_tiny", attention_form="flash")


def test_decomposed_training_step_compiles_and_runs_under_amp_o2() -> None:
    """The Ascend graph's structure under AMP O2 (float16 q, k, v; float32 gate and table), with the stand-in in
    place of the kernel, which the CPU does not have."""
    import mindspore as ms

    from convit.jobspec import load_job
    from convit.train.schedule import lr_schedule
    from convit.train.step import build_optimizer, build_train_step, drop_noise

    ms.set_seed(0)
    model = ConViT(embed_dim=64, num_heads=4, num_classes=10, depth=3, local_up_to_layer=2)
    assert model.attention_form == "decomposed"  # plain_attention: the fused kernel's stand-in
    spec = load_job("convit_tiny", ["train.amp_level=O2", "model.num_classes=10"])
    step = build_train_step(model, build_optimizer(model, spec, lr_schedule(spec.train, 10)), spec)
    rng = np.random.default_rng(5)
    x = ms.Tensor(rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    y = ms.Tensor(np.eye(10, dtype=np.float32)[[1, 7]])
    noise = ms.Tensor(drop_noise(model, 2, rng))
    before = model.blocks[0].attn.gating_param.asnumpy().copy()
    for _ in range(2):
        loss, overflows = step(x, y, noise, ms.Tensor(True))
    assert np.isfinite(float(loss.asnumpy())) and int(overflows.asnumpy()) == 0
    assert not np.array_equal(before, model.blocks[0].attn.gating_param.asnumpy())


def test_eval_mode_runs_the_mixed_form_on_the_cpu() -> None:
    """Inference and export (eval mode) keep the mixed form: as fast forward, and batch-leading reshapes only,
    which the ONNX dynamic-batch export requires (convit/inference/onnx_batch.py)."""
    import mindspore as ms

    mixed, decomposed = _pair(192, 4, seed=6)
    x = ms.Tensor(np.random.default_rng(7).standard_normal((2, 196, 192)).astype(np.float32))
    np.testing.assert_array_equal(ms.jit(decomposed)(x).asnumpy(), ms.jit(mixed)(x).asnumpy())
