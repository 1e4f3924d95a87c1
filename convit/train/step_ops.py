"""Per-parameter graph functions of the training step (convit.train.step), mapped over the weights."""

from __future__ import annotations

from typing import Any

from mindspore import ops

add_share = ops.MultitypeFuncGraph("add_share")
clear = ops.MultitypeFuncGraph("clear")
ema = ops.MultitypeFuncGraph("ema")


@add_share.register("Tensor", "Tensor", "Tensor")  # type: ignore[untyped-decorator]
def _add_share(k: Any, total: Any, grad: Any) -> Any:
    """total += grad / k: one micro-batch's share of the step's gradient (MindSpore's gradient_accumulation_op)."""
    return ops.assign_add(total, grad / k)


@clear.register("Tensor")  # type: ignore[untyped-decorator]
def _clear(total: Any) -> Any:
    return ops.assign(total, ops.zeros_like(total))


@ema.register("Tensor", "Tensor", "Tensor")  # type: ignore[untyped-decorator]
def _ema(decay: Any, average: Any, weight: Any) -> Any:
    """MindCV's ema_op, term for term: average x decay + weight x (1 - decay)."""
    return ops.assign(average, average * decay + weight * (1 - decay))
