"""Building blocks shared by the ConViT blocks: patch embedding, MLP, stochastic depth, initialisers."""

from __future__ import annotations

import math
from typing import Any

from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import Constant, HeUniform, TruncatedNormal, initializer


def trunc_normal(shape: tuple[int, ...], std: float = 0.02) -> Any:
    return initializer(TruncatedNormal(std), shape, mstype.float32)


def zeros(shape: tuple[int, ...]) -> Any:
    return initializer(Constant(0.0), shape, mstype.float32)


def dense(in_dim: int, out_dim: int, bias: bool = True) -> nn.Dense:
    """Dense with the ConViT init: weights truncated normal (std 0.02), bias 0."""
    return nn.Dense(in_dim, out_dim, weight_init=trunc_normal((out_dim, in_dim)), bias_init="zeros", has_bias=bias)


class _ConvParams(nn.Cell):  # type: ignore[misc]
    """Holds a 16x16 conv's weight and bias under the checkpoint names `proj.weight` and `proj.bias`."""

    def __init__(self, in_chans: int, dim: int, patch: int) -> None:
        super().__init__()
        # ConViT leaves the conv at the framework default: MindSpore Conv2d's HeUniform(sqrt(5)), drawn from
        # MindSpore's seeded RNG so that every rank builds the same weights.
        shape = (dim, in_chans, patch, patch)
        self.weight = Parameter(initializer(HeUniform(math.sqrt(5)), shape, mstype.float32), name="weight")
        self.bias = Parameter(zeros((dim,)), name="bias")


class PatchEmbed(nn.Cell):  # type: ignore[misc]
    """16x16/stride-16 patches as reshape + matmul.

    MindSpore's CPU convolution falls back to a reference kernel that is ~100x slower than the same
    arithmetic as one matmul; the parameters keep the conv's shape (D, 3, 16, 16) and checkpoint names.
    """

    def __init__(self, dim: int, patch: int = 16, in_chans: int = 3, img_size: int = 224) -> None:
        super().__init__()
        self.patch = patch
        self.in_chans = in_chans
        self.grid = img_size // patch
        self.dim = dim
        self.proj = _ConvParams(in_chans, dim, patch)

    def construct(self, x: Tensor) -> Tensor:
        b = x.shape[0]
        g, p, c = self.grid, self.patch, self.in_chans
        x = x.reshape(b, c, g, p, g, p).transpose(0, 2, 4, 1, 3, 5).reshape(b, g * g, c * p * p)
        w = self.proj.weight.reshape(self.dim, c * p * p).astype(x.dtype)  # float16 under AMP O2
        return ops.matmul(x, w.T) + self.proj.bias.astype(x.dtype)


class ElementwiseTanhGELU(nn.Cell):  # type: ignore[misc]
    """The function of MindSpore's tanh-approximate GeLU kernel, as elementwise ops, in float32:
    0.5 x (1 + tanh(z)) = x sigmoid(2z), with z = sqrt(2/pi) (x + 0.044715 x^3).

    On the CPU MindSpore's GeLU kernel and its gradient take 50 and 71 ms on a (16, 197, 768) tensor, these ops 7
    and 15 ms: the kernel was a third of the whole training step (docs/benchmarks.md). Equal to the kernel within
    6e-7 (values) and 2e-6 (gradients). Float32 under AMP O2 too, where x^3 would overflow float16.
    """

    def construct(self, x: Tensor) -> Tensor:
        x32 = x.astype(mstype.float32)
        y = x32 * ops.sigmoid(_TWO_SQRT_2_OVER_PI * (x32 + 0.044715 * x32 * x32 * x32))
        return y.astype(x.dtype)


_TWO_SQRT_2_OVER_PI = 2.0 * math.sqrt(2.0 / math.pi)


class Mlp(nn.Cell):  # type: ignore[misc]
    """fc1, GELU, fc2. `exact_gelu`: the erf GELU (timm's) instead of the tanh one (MindCV's); `elementwise_gelu`:
    the tanh one by ElementwiseTanhGELU instead of MindSpore's GeLU kernel (the kernel is the fast one on Ascend)."""

    def __init__(self, dim: int, hidden: int, exact_gelu: bool, elementwise_gelu: bool = False) -> None:
        super().__init__()
        self.fc1 = dense(dim, hidden)
        self.act = ElementwiseTanhGELU() if elementwise_gelu and not exact_gelu else nn.GELU(approximate=not exact_gelu)
        self.fc2 = dense(hidden, dim)

    def construct(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Cell):  # type: ignore[misc]
    """Stochastic depth per sample.

    `uniform` (N,) in [0, 1) decides which samples keep the branch. The trainer draws it on the host from a
    generator seeded by (seed, epoch, rank, step), so a resumed run drops exactly the branches an uninterrupted
    run would; without it a graph-mode random kernel is used, whose state cannot be checkpointed."""

    def __init__(self, rate: float) -> None:
        super().__init__()
        self.keep = 1.0 - rate

    def construct(self, x: Tensor, uniform: Tensor | None = None) -> Tensor:
        if not self.training or self.keep >= 1.0:
            return x
        if uniform is None:
            uniform = ops.rand((x.shape[0],), dtype=x.dtype)
        mask = ops.floor(self.keep + uniform).reshape(-1, 1, 1).astype(x.dtype)  # float16 under AMP O2
        return x / self.keep * mask
