"""ConViT (d'Ascoli et al., 2021) in MindSpore, with MindCV's parameter names.

Blocks 0..9 use gated positional self-attention (GPSA); the class token joins before block 10, whose two
blocks use plain multi-head self-attention. Variants differ only in width and heads: see the table at the end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype
from numpy.typing import NDArray

from convit.errors import ConvitError
from convit.models.layers import DropPath, Mlp, PatchEmbed, dense, trunc_normal
from convit.models.registry import register_variant

IMAGE_SIZE = 224
PATCH_SIZE = 16


def relative_indices(grid: int) -> NDArray[Any]:
    """(1, N, N, 3) with entry [i, j] = (dx, dy, dx^2 + dy^2) between patches i and j of a grid x grid image."""
    rows, cols = np.divmod(np.arange(grid * grid), grid)
    dx = cols[None, :] - cols[:, None]
    dy = rows[None, :] - rows[:, None]
    table: NDArray[Any] = np.stack([dx, dy, dx * dx + dy * dy], axis=-1)[None].astype(np.float32)
    return table


_matmul_transpose_b = ops.BatchMatMul(transpose_b=True)  # q k^T without materialising k^T


def content_attention(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """softmax(q k^T * scale) over the keys, per head."""
    return ops.softmax(_matmul_transpose_b(q, k) * scale, axis=-1)


def plain_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float) -> Tensor:
    """softmax(q k^T * scale) v per head, on (B, N, C) tensors with the heads side by side in C (the "BSH"
    layout): what Ascend's fused kernel computes, written out with the scores materialised."""
    b, n, c = q.shape
    d = c // heads
    qh = q.reshape(b, n, heads, d).transpose(0, 2, 1, 3)
    kh = k.reshape(b, n, heads, d).transpose(0, 2, 1, 3)
    vh = v.reshape(b, n, heads, d).transpose(0, 2, 1, 3)
    out = ops.matmul(content_attention(qh, kh, scale), vh)
    return out.transpose(0, 2, 1, 3).reshape(b, n, c)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, heads: int, scale: float) -> Tensor:
    """softmax(q k^T * scale) v by Ascend's fused kernel (Atlas A2), which never materialises the N x N scores.

    The kernel takes float16 and bfloat16 only (AMP O2, the recipes' level): a float32 graph (O0) falls back
    to `plain_attention`. Head size must be a multiple of 16: 48 or 64 in every variant."""
    if q.dtype == mstype.float32:
        return plain_attention(q, k, v, heads, scale)
    return ops.flash_attention_score(q, k, v, heads, keep_prob=1.0, scalar_value=scale, input_layout="BSH")


def on_ascend() -> bool:
    import mindspore as ms

    return bool(ms.get_context("device_target") == "Ascend")


class MHSA(nn.Cell):  # type: ignore[misc]
    """Multi-head self-attention: separate q, k, v projections without bias (MindCV's names), output proj."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.q = dense(dim, dim, bias=False)
        self.k = dense(dim, dim, bias=False)
        self.v = dense(dim, dim, bias=False)
        self.proj = dense(dim, dim)

    def _split(self, x: Tensor, b: int, n: int) -> Tensor:
        return x.reshape(b, n, self.heads, self.head_dim).transpose(0, 2, 1, 3)

    def attention(self, q: Tensor, k: Tensor) -> Tensor:
        return content_attention(q, k, self.scale)

    def construct(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        q = self._split(self.q(x), b, n)
        k = self._split(self.k(x), b, n)
        v = self._split(self.v(x), b, n)
        out = ops.matmul(self.attention(q, k), v).transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.proj(out)


class GPSA(MHSA):
    """Gated positional self-attention: a learned per-head mix of content and position attention.

    out = ((1 - g) softmax(q k^T * scale) + g softmax(pos)) v, g = sigmoid(gating_param) per head. Two ways:

    - mixed (`content_kernel=None`): the two N x N attention maps are mixed, then multiplied by v, as MindCV
      and timm compute it;
    - decomposed (`content_kernel` given): (1 - g) content_kernel(q, k, v) + g softmax(pos) v. The content
      term is then plain attention: Ascend's fused kernel there (`flash_attention`), which never materialises
      the scores; `plain_attention` on the CPU, where it trains faster than the mixed form (fewer passes over
      the (B, heads, N, N) maps: docs/benchmarks.md; in eval mode the CPU uses the mixed form). Equal to the
      mixed form up to float rounding (tests/test_attention.py).
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        grid: int,
        locality_strength: float = 1.0,
        content_kernel: Callable[..., Tensor] | None = None,
    ) -> None:
        super().__init__(dim, heads)
        self.pos_proj = dense(3, heads)
        self.gating_param = Parameter(Tensor(np.ones(heads, np.float32)), name="gating_param")
        self.rel_indices = Tensor(relative_indices(grid))  # constant: the grid is fixed at 14x14
        self.content_kernel: Any = content_kernel  # a function of (q, k, v, heads, scale), or None
        # plain_attention's decomposed form pays off in the backward pass only; in eval mode the mixed form is
        # as fast, and its reshapes keep the batch leading, as the ONNX dynamic-batch export needs.
        self.mixed_in_eval = content_kernel is plain_attention
        self._local_init(locality_strength)

    def _local_init(self, strength: float) -> None:
        """Each head starts attending to one offset around its patch; v starts as the identity."""
        dim = self.v.weight.shape[0]
        self.v.weight.set_data(Tensor(np.eye(dim, dtype=np.float32)))
        k = int(self.heads**0.5)
        centre = (k - 1) / 2
        weight = np.zeros((self.heads, 3), np.float32)
        for h1 in range(k):
            for h2 in range(k):
                weight[h1 + k * h2] = (2 * (h2 - centre), 2 * (h1 - centre), -1)
        self.pos_proj.weight.set_data(Tensor(weight * strength))
        self.pos_proj.bias.set_data(Tensor(np.zeros(self.heads, np.float32)))

    # Under AMP O2 q and k are float16 while the gate's parameter and the constant table stay float32:
    # everything is computed in q's dtype, as MindCV's cell-level casts do.
    def position_attention(self, dtype: Any) -> Tensor:
        """softmax(pos_proj(relative indices)) (1, heads, N, N): the same for every image, computed once per call."""
        return ops.softmax(self.pos_proj(self.rel_indices.astype(dtype)).transpose(0, 3, 1, 2), axis=-1).astype(dtype)

    def gate(self, dtype: Any) -> Tensor:
        return ops.sigmoid(self.gating_param.astype(dtype))

    def attention(self, q: Tensor, k: Tensor) -> Tensor:
        gate = self.gate(q.dtype).reshape(1, -1, 1, 1)
        return (1.0 - gate) * content_attention(q, k, self.scale) + gate * self.position_attention(q.dtype)

    def decomposed(self, x: Tensor) -> Tensor:
        """(1 - g) content_kernel(q, k, v) + g softmax(pos) v, (B, N, C) before the output projection."""
        b, n, c = x.shape
        h, d = self.heads, self.head_dim
        q, k, v = self.q(x), self.k(x), self.v(x)
        content = self.content_kernel(q, k, v, h, self.scale).reshape(b, n, h, d)
        # softmax(pos) v for every image at once: per head one (N, N) x (N, B * d) matmul.
        vh = v.reshape(b, n, h, d).transpose(2, 1, 0, 3).reshape(h, n, b * d)
        pos = self.position_attention(x.dtype).reshape(h, n, n)
        positional = ops.matmul(pos, vh).reshape(h, n, b, d).transpose(2, 1, 0, 3)
        gate = self.gate(x.dtype).reshape(1, 1, h, 1)
        return ((1.0 - gate) * content + gate * positional).reshape(b, n, c)

    def construct(self, x: Tensor) -> Tensor:
        if self.content_kernel is None or (self.mixed_in_eval and not self.training):
            return super().construct(x)
        return self.proj(self.decomposed(x))


_CONTENT_KERNELS: dict[str, Callable[..., Tensor] | None] = {
    "mixed": None,
    "decomposed": plain_attention,
    "fused": flash_attention,
}


class Block(nn.Cell):  # type: ignore[misc]
    def __init__(
        self,
        dim: int,
        heads: int,
        mlp_ratio: float,
        drop_path: float,
        use_gpsa: bool,
        grid: int,
        eps: float,
        exact_gelu: bool,
        locality_strength: float,
        content_kernel: Callable[..., Tensor] | None = None,
        elementwise_gelu: bool = False,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm((dim,), epsilon=eps)
        self.attn = GPSA(dim, heads, grid, locality_strength, content_kernel) if use_gpsa else MHSA(dim, heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm((dim,), epsilon=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), exact_gelu, elementwise_gelu)

    def construct(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """`noise` (2, N): the drop-path draws of the attention and the MLP branch (see DropPath)."""
        if noise is None:
            x = x + self.drop_path(self.attn(self.norm1(x)))
            return x + self.drop_path(self.mlp(self.norm2(x)))
        x = x + self.drop_path(self.attn(self.norm1(x)), noise[0])
        return x + self.drop_path(self.mlp(self.norm2(x)), noise[1])


class ConViT(nn.Cell):  # type: ignore[misc]
    """ConViT for 224x224 images.

    Args:
        embed_dim, num_heads: the variant's width and heads (see the table at the end of this file).
        depth: blocks; the last `depth - local_up_to_layer` use plain attention after the class token joins.
        drop_path_rate: stochastic depth of the last block, rising linearly from 0 over the blocks.
        layer_norm_eps, exact_gelu: 1e-7 and tanh-GELU match MindCV; 1e-6 and exact GELU match timm.
        attention_form: GPSA's form (see GPSA): "mixed" (MindCV's), "decomposed" (content term by
            `plain_attention`) or "fused" (by Ascend's fused kernel); "auto" (the default) is "fused" when the
            device set at construction is Ascend, else "decomposed".
        gelu_form: how the tanh GELU is computed: "kernel" (MindSpore's GeLU kernel) or "elementwise" (the same
            function as elementwise ops, 5x faster than the kernel on the CPU, see layers.ElementwiseTanhGELU);
            "auto" (the default) is "kernel" on Ascend, else "elementwise".
    """

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        num_classes: int = 1000,
        depth: int = 12,
        mlp_ratio: float = 4.0,
        local_up_to_layer: int = 10,
        drop_path_rate: float = 0.1,
        locality_strength: float = 1.0,
        layer_norm_eps: float = 1e-7,
        exact_gelu: bool = False,
        attention_form: str = "auto",
        gelu_form: str = "auto",
    ) -> None:
        super().__init__()
        grid = IMAGE_SIZE // PATCH_SIZE
        if attention_form == "auto":
            attention_form = "fused" if on_ascend() else "decomposed"
        if attention_form not in _CONTENT_KERNELS:
            raise ConvitError(f"attention_form must be one of auto, {', '.join(_CONTENT_KERNELS)}: {attention_form!r}")
        self.attention_form = attention_form
        if gelu_form == "auto":
            gelu_form = "kernel" if on_ascend() else "elementwise"
        if gelu_form not in ("kernel", "elementwise"):
            raise ConvitError(f"gelu_form must be one of auto, kernel, elementwise: {gelu_form!r}")
        self.gelu_form = gelu_form
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.local_up_to_layer = local_up_to_layer
        self.patch_embed = PatchEmbed(embed_dim, PATCH_SIZE, 3, IMAGE_SIZE)
        self.pos_embed = Parameter(trunc_normal((1, grid * grid, embed_dim)), name="pos_embed")
        self.cls_token = Parameter(trunc_normal((1, 1, embed_dim)), name="cls_token")
        rates = np.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.CellList(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio,
                    rates[i],
                    i < local_up_to_layer,
                    grid,
                    layer_norm_eps,
                    exact_gelu,
                    locality_strength,
                    _CONTENT_KERNELS[attention_form],
                    gelu_form == "elementwise",
                )
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm((embed_dim,), epsilon=layer_norm_eps)
        self.classifier = dense(embed_dim, num_classes)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if args and hasattr(args[0], "shape"):
            check_input_size(tuple(args[0].shape))
        return super().__call__(*args, **kwargs)

    def forward_features(self, x: Tensor, drop_noise: Tensor | None = None) -> Tensor:
        """Normalised tokens (B, 197, D), class token first."""
        x = self.patch_embed(x) + self.pos_embed
        for i in range(self.local_up_to_layer):
            x = self.blocks[i](x, None if drop_noise is None else drop_noise[i])
        cls = ops.broadcast_to(self.cls_token, (x.shape[0], -1, -1))
        x = ops.concat((cls, x), axis=1)
        for i in range(self.local_up_to_layer, len(self.blocks)):
            x = self.blocks[i](x, None if drop_noise is None else drop_noise[i])
        return self.norm(x)

    def forward_head(self, x: Tensor) -> Tensor:
        return self.classifier(x[:, 0])

    def construct(self, x: Tensor, drop_noise: Tensor | None = None) -> Tensor:
        """`drop_noise` (depth, 2, N) uniform draws for stochastic depth, from the trainer; None otherwise."""
        return self.forward_head(self.forward_features(x, drop_noise))


def check_input_size(shape: tuple[int, ...]) -> None:
    """The relative-position table is built for a 14x14 grid: only (N, 3, 224, 224) fits."""
    if len(shape) != 4 or tuple(shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
        raise ConvitError(
            f"ConViT takes images of shape (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE}), got {shape}: "
            f"only {IMAGE_SIZE}x{IMAGE_SIZE} input is supported (the relative-position table is fixed)"
        )


def count_params(model: nn.Cell) -> int:
    return int(sum(int(np.prod(p.shape)) for p in model.get_parameters()))


def _build(**hparams: Any) -> ConViT:
    return ConViT(**hparams)


# Variants: depth 12, MLP ratio 4 and 16x16 patches for all; they differ in width and heads only.
_VARIANT_TABLE = {
    "convit_tiny": {"embed_dim": 192, "num_heads": 4},
    "convit_tiny_plus": {"embed_dim": 256, "num_heads": 4},
    "convit_small": {"embed_dim": 432, "num_heads": 9},
    "convit_small_plus": {"embed_dim": 576, "num_heads": 9},
    "convit_base": {"embed_dim": 768, "num_heads": 16},
    "convit_base_plus": {"embed_dim": 1024, "num_heads": 16},
}
for _name, _hparams in _VARIANT_TABLE.items():
    register_variant(_name, _build, **_hparams)
