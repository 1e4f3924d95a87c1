"""AdamW as MindCV 0.3.0 trains ConViT with it (`mindcv.optim.adamw.AdamW` via `create_optimizer('adamw')`).

Per parameter p with gradient g at step t (1-based), all in float32:

    m = beta1 m + (1 - beta1) g            v = beta2 v + (1 - beta2) g^2
    update = (m / (1 - beta1^t)) / (eps + sqrt(v / (1 - beta2^t))) + weight_decay p
    p = p - lr_t update

Two things set it apart from MindSpore's `nn.AdamWeightDecay`, and both change training: the bias correction
(without it the first updates are several times smaller) and weight decay on every tensor, LayerNorm gamma/beta
and biases included (MindCV's `weight_decay_filter="disable"`, the recipes' setting; MindSpore's default filter
skips gamma/beta). tests/test_mindcv_parity.py checks it step for step against MindCV's optimizer.
"""

from __future__ import annotations

from typing import Any

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import initializer

_update = ops.MultitypeFuncGraph("adamw_update")


@_update.register(  # type: ignore[untyped-decorator]
    "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor"
)
def _update_one(
    beta1: Tensor,
    beta2: Tensor,
    eps: Tensor,
    correction1: Tensor,
    correction2: Tensor,
    lr: Tensor,
    weight_decay: Tensor,
    param: Tensor,
    m: Tensor,
    v: Tensor,
    grad: Tensor,
) -> Tensor:
    param32 = ops.cast(param, ms.float32)
    grad32 = ops.cast(grad, ms.float32)
    next_m = beta1 * m + (1.0 - beta1) * grad32
    next_v = beta2 * v + (1.0 - beta2) * ops.square(grad32)
    update = (next_m / correction1) / (eps + ops.sqrt(next_v / correction2)) + weight_decay * param32
    next_param = param32 - ops.reshape(lr * update, param32.shape)
    next_param = ops.depend(next_param, ops.assign(m, next_m))
    next_param = ops.depend(next_param, ops.assign(v, next_v))
    return ops.depend(next_param, ops.assign(param, ops.cast(next_param, param.dtype)))


class AdamW(nn.Optimizer):  # type: ignore[misc]
    """Bias-corrected AdamW with decoupled weight decay on every parameter and a per-step LR table.

    State (checkpointed for exact resume): `adam_m.<name>`, `adam_v.<name>`, `beta1_power`, `beta2_power`,
    `global_step`; the names MindCV's training checkpoints use.
    """

    def __init__(
        self,
        params: list[Parameter],
        learning_rate: Any,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(learning_rate, params)  # weight decay is applied below, to every tensor
        self.beta1 = Tensor(np.array([beta1], np.float32))
        self.beta2 = Tensor(np.array([beta2], np.float32))
        self.eps = Tensor(np.array([eps], np.float32))
        self.decay = Tensor(np.array([weight_decay], np.float32))
        self.moments1 = self.parameters.clone(prefix="adam_m", init="zeros")
        self.moments2 = self.parameters.clone(prefix="adam_v", init="zeros")
        self.beta1_power = Parameter(initializer(1, [1], ms.float32), name="beta1_power")
        self.beta2_power = Parameter(initializer(1, [1], ms.float32), name="beta2_power")

    def construct(self, gradients: tuple[Tensor, ...]) -> Any:
        lr = self.get_lr()
        # MindSpore 2.10's Optimizer.get_lr only reads the step: the step counter is advanced here.
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        beta1_power = self.beta1_power * self.beta1
        self.beta1_power = beta1_power
        beta2_power = self.beta2_power * self.beta2
        self.beta2_power = beta2_power
        return self.hyper_map(
            ops.partial(
                _update, self.beta1, self.beta2, self.eps, 1.0 - beta1_power, 1.0 - beta2_power, lr, self.decay
            ),
            self.parameters,
            self.moments1,
            self.moments2,
            gradients,
        )
