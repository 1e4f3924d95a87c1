"""ConViT: every registered variant against the spec, MindCV checkpoints, timm parity, training steps."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from convit.errors import ConvitError
from convit.models import check_input_size, count_params, create_model, list_models, load_weights, relative_indices
from convit.models.layers import ElementwiseTanhGELU
from tests.support.cpu import graph_mode_on_cpu

SPEC_PARAMS = {
    "convit_tiny": 5_710_512,
    "convit_tiny_plus": 9_972_912,
    "convit_small": 27_777_322,
    "convit_small_plus": 48_979_882,
    "convit_base": 86_540_040,
    "convit_base_plus": 153_134_856,
}
SPEC_WIDTH = {
    "convit_tiny": (192, 4),
    "convit_tiny_plus": (256, 4),
    "convit_small": (432, 9),
    "convit_small_plus": (576, 9),
    "convit_base": (768, 16),
    "convit_base_plus": (1024, 16),
}


def spec_keys(dim: int, heads: int) -> dict[str, tuple[int, ...]]:
    """The 194 MindCV checkpoint names and shapes, from the spec's rules."""
    keys: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, dim),
        "pos_embed": (1, 196, dim),
        "patch_embed.proj.weight": (dim, 3, 16, 16),
        "patch_embed.proj.bias": (dim,),
        "norm.gamma": (dim,),
        "norm.beta": (dim,),
        "classifier.weight": (1000, dim),
        "classifier.bias": (1000,),
    }
    for i in range(12):
        b = f"blocks.{i}"
        keys.update(
            {
                f"{b}.norm1.gamma": (dim,),
                f"{b}.norm1.beta": (dim,),
                f"{b}.norm2.gamma": (dim,),
                f"{b}.norm2.beta": (dim,),
                f"{b}.attn.q.weight": (dim, dim),
                f"{b}.attn.k.weight": (dim, dim),
                f"{b}.attn.v.weight": (dim, dim),
                f"{b}.attn.proj.weight": (dim, dim),
                f"{b}.attn.proj.bias": (dim,),
                f"{b}.mlp.fc1.weight": (4 * dim, dim),
                f"{b}.mlp.fc1.bias": (4 * dim,),
                f"{b}.mlp.fc2.weight": (dim, 4 * dim),
                f"{b}.mlp.fc2.bias": (dim,),
            }
        )
        if i < 10:
            keys.update(
                {
                    f"{b}.attn.gating_param": (heads,),
                    f"{b}.attn.pos_proj.weight": (heads, 3),
                    f"{b}.attn.pos_proj.bias": (heads,),
                }
            )
    return keys


@pytest.fixture(scope="module", autouse=True)
def graph_mode() -> None:
    graph_mode_on_cpu()


def _random_input(batch: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)


def test_registry_lists_the_six_variants() -> None:
    assert list_models() == sorted(SPEC_PARAMS)
    with pytest.raises(ConvitError, match="unknown model 'convit_huge'.*convit_tiny"):
        create_model("convit_huge")


@pytest.mark.parametrize("name", sorted(SPEC_PARAMS))
def test_parameter_count_names_and_shapes_match_the_spec(name: str) -> None:
    model = create_model(name)
    assert count_params(model) == SPEC_PARAMS[name]
    shapes = {p.name: tuple(p.shape) for p in model.get_parameters()}
    assert len(shapes) == 194
    assert shapes == spec_keys(*SPEC_WIDTH[name])


def test_relative_indices_examples() -> None:
    rel = relative_indices(14)
    assert rel.shape == (1, 196, 196, 3)
    assert tuple(rel[0, 0, 1]) == (1, 0, 1)
    assert tuple(rel[0, 0, 15]) == (1, 1, 2)
    assert tuple(rel[0, 15, 0]) == (-1, -1, 2)


@pytest.mark.parametrize("name", ["convit_tiny", "convit_small", "convit_base"])
def test_locality_and_other_initialisation(name: str) -> None:
    model = create_model(name, drop_path_rate=0.1)
    dim, heads = SPEC_WIDTH[name]
    params = {p.name: p.asnumpy() for p in model.get_parameters()}
    k = int(heads**0.5)
    c = (k - 1) / 2
    for i in range(10):
        assert np.array_equal(params[f"blocks.{i}.attn.v.weight"], np.eye(dim, dtype=np.float32))
        assert np.array_equal(params[f"blocks.{i}.attn.gating_param"], np.ones(heads, np.float32))
        pos = params[f"blocks.{i}.attn.pos_proj.weight"]
        for h1 in range(k):
            for h2 in range(k):
                assert tuple(pos[h1 + k * h2]) == (2 * (h2 - c), 2 * (h1 - c), -1)
    assert not np.array_equal(params["blocks.10.attn.v.weight"], np.eye(dim, dtype=np.float32))
    fc1 = params["blocks.3.mlp.fc1.weight"]
    assert abs(fc1.std() - 0.02) < 0.002 and np.abs(fc1).max() <= 2.0  # normal std 0.02 truncated at +-2, as timm
    assert not params["blocks.3.mlp.fc1.bias"].any()
    assert np.array_equal(params["norm.gamma"], np.ones(dim, np.float32)) and not params["norm.beta"].any()
    rates = [getattr(b.drop_path, "keep", 1.0) for b in model.blocks]
    assert rates[0] == 1.0 and abs((1 - rates[-1]) - 0.1) < 1e-9  # drop path rises linearly to 0.1


@pytest.mark.parametrize("name", ["convit_tiny", "convit_small"])
def test_mindcv_checkpoint_loads_with_every_key_matched_and_same_logits(name: str, tmp_path: Path) -> None:
    import mindspore as ms
    from mindcv.models import create_model as mindcv_create

    reference = mindcv_create(name)
    path = tmp_path / f"{name}.ckpt"
    # A MindCV training checkpoint: weights plus optimizer state, which loading must ignore.
    params = list(reference.get_parameters())
    extra = [{"name": f"adam_m.{p.name}", "data": ms.Tensor(np.zeros(p.shape, np.float32))} for p in params[:3]]
    extra.append({"name": "global_step", "data": ms.Tensor(np.array([10], np.int32))})
    ms.save_checkpoint([{"name": p.name, "data": p} for p in params] + extra, str(path))
    ours = create_model(name)
    loaded = ms.load_checkpoint(str(path))
    own = {p.name for p in ours.get_parameters()}
    weights = {k for k in loaded if not k.startswith(("adam_", "global_step"))}
    assert weights == own  # every key matched, none left over
    load_weights(ours, loaded, strict=True)
    reference.set_train(False)
    ours.set_train(False)
    x = ms.Tensor(_random_input())
    np.testing.assert_allclose(ours(x).asnumpy(), reference(x).asnumpy(), atol=1e-5, rtol=1e-5)


def test_load_weights_names_what_does_not_fit() -> None:
    ours = create_model("convit_tiny")
    params = {p.name: p.asnumpy() for p in ours.get_parameters()}
    params.pop("blocks.0.attn.q.weight")
    params["classifier.weight"] = np.zeros((10, 192), np.float32)
    params["extra.thing"] = np.zeros(3, np.float32)
    with pytest.raises(ConvitError) as info:
        load_weights(ours, params)
    message = str(info.value)
    assert "missing blocks.0.attn.q.weight" in message and "unexpected extra.thing" in message
    assert "classifier.weight (10, 192) != (1000, 192)" in message


@pytest.mark.slow
@pytest.mark.parametrize("name", ["convit_tiny", "convit_small", "convit_base"])
def test_logits_match_timm_in_float32(name: str) -> None:
    import mindspore as ms
    import timm
    import torch

    from tests.support.timm_convert import to_timm_state

    torch.set_num_threads(2)
    ours = create_model(name, layer_norm_eps=1e-6, exact_gelu=True)
    ours.set_train(False)
    reference = timm.create_model(name, pretrained=False).eval()
    state = to_timm_state({p.name: p.asnumpy() for p in ours.get_parameters()})
    missing, unexpected = reference.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    x = _random_input(2, seed=1)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    got = ours(ms.Tensor(x)).asnumpy()
    assert np.abs(got - expected).max() < 1e-4


def test_default_norm_and_gelu_are_mindcvs_not_timms() -> None:
    model = create_model("convit_tiny")
    assert model.norm.epsilon == 1e-7 and model.blocks[0].norm1.epsilon == 1e-7
    assert isinstance(model.blocks[0].mlp.act, ElementwiseTanhGELU)  # on the CPU: MindCV's tanh GELU, elementwise
    assert create_model("convit_tiny", gelu_form="kernel").blocks[0].mlp.act.approximate == "tanh"
    timm_like = create_model("convit_tiny", layer_norm_eps=1e-6, exact_gelu=True)
    assert timm_like.norm.epsilon == 1e-6 and timm_like.blocks[0].mlp.act.approximate == "none"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_elementwise_tanh_gelu_is_mindspores_gelu_kernel(dtype: type) -> None:
    import mindspore as ms
    from mindspore import nn, ops

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(4096) * 3, [-300.0, -60.0, -8.0, 0.0, 8.0, 60.0, 300.0]]).astype(dtype)
    kernel, ours = nn.GELU(approximate=True), ElementwiseTanhGELU()
    values = [f(ms.Tensor(x)).asnumpy() for f in (kernel, ours)]

    class Summed(nn.Cell):  # type: ignore[misc]
        def __init__(self, act: nn.Cell) -> None:
            super().__init__()
            self.act = act

        def construct(self, t: ms.Tensor) -> ms.Tensor:
            return self.act(t).sum()

    grads = [ops.GradOperation()(Summed(f))(ms.Tensor(x)).asnumpy() for f in (kernel, ours)]
    assert values[1].dtype == dtype and np.isfinite(values[1]).all() and np.isfinite(grads[1]).all()
    tol = 1e-6 if dtype == np.float32 else 1e-3  # float16: the kernel rounds in float16, ours in float32
    scale = np.maximum(1.0, np.abs(x.astype(np.float64)))
    assert (np.abs(values[1] - values[0]) / scale).max() < tol
    assert np.abs(grads[1] - grads[0]).max() < 3 * tol


def _train_steps(mode: int, steps: int) -> list[float]:
    import mindspore as ms
    from mindspore import nn

    ms.set_context(mode=mode)
    ms.set_seed(0)
    model = create_model("convit_tiny", num_classes=4, drop_path_rate=0.0)
    opt = nn.AdamWeightDecay(model.trainable_params(), learning_rate=5e-4, weight_decay=0.05)
    step = nn.TrainOneStepCell(
        nn.WithLossCell(model, nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction="mean")), opt
    )
    step.set_train(True)
    x = ms.Tensor(_random_input(4, seed=2))
    y = ms.Tensor(np.eye(4, dtype=np.float32))
    before = model.classifier.weight.asnumpy().copy()
    losses = [float(step(x, y).asnumpy()) for _ in range(steps)]
    assert not np.array_equal(before, model.classifier.weight.asnumpy())
    ms.set_context(mode=ms.GRAPH_MODE)
    return losses


@pytest.mark.slow
def test_training_step_runs_in_graph_mode_and_learns() -> None:
    import mindspore as ms

    losses = _train_steps(ms.GRAPH_MODE, 6)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


@pytest.mark.slow
def test_training_step_runs_in_pynative_mode() -> None:
    import mindspore as ms

    losses = _train_steps(ms.PYNATIVE_MODE, 2)
    assert all(np.isfinite(losses))


@pytest.mark.parametrize("shape", [(2, 3, 256, 256), (2, 3, 112, 112), (3, 224, 224), (2, 1, 224, 224)])
def test_other_input_sizes_are_a_clear_error(shape: tuple[int, ...]) -> None:
    import mindspore as ms

    with pytest.raises(ConvitError, match=re.escape("only 224x224 input is supported")):
        check_input_size(shape)
    model = create_model("convit_tiny")
    with pytest.raises(ConvitError, match="224x224"):
        model(ms.Tensor(np.zeros(shape, np.float32)))
