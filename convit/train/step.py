"""The training step: forward, soft-target cross entropy, loss-scaled backward, gradient all-reduce, AdamW.

AMP O2 (the recipes' level, and the only one used on Ascend) is built the same way on every device, so the CPU
run is a pre-flight check of the Ascend graph: `ms.amp.auto_mixed_precision(model, "O2")` computes in float16
with LayerNorm in float32 (MindCV's O2), the logits are cast to float32 before the loss, and the loss is scaled
by the recipe's fixed loss scale. O0 trains in float32 with the same step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.jobspec.schema import JobSpec

EMA_PREFIX = "ema"  # EMA weights are `ema.<name>`, as MindCV's TrainStep names them (and its loaders read them)
GRAD_SUM_PREFIX = "grad_sum"  # the accumulation buffer: zero at every optimizer step, so never checkpointed


def build_optimizer(model: Any, spec: JobSpec, lrs: NDArray[Any]) -> Any:
    """MindCV's AdamW (bias-corrected, weight decay on every tensor) over a per-step LR table."""
    import mindspore as ms

    from convit.train.adamw import AdamW

    t = spec.train
    return AdamW(
        model.trainable_params(),
        learning_rate=ms.Tensor(lrs),
        beta1=t.beta1,
        beta2=t.beta2,
        eps=t.eps,
        weight_decay=t.weight_decay,
    )


def drop_noise(model: Any, batch: int, rng: np.random.Generator) -> NDArray[Any]:
    """Uniform draws (blocks, 2, batch) deciding stochastic depth for one step (see convit.models.DropPath)."""
    noise: NDArray[Any] = rng.random((len(model.blocks), 2, batch), dtype=np.float32)
    return noise


def build_train_step(model: Any, optimizer: Any, spec: JobSpec) -> Any:
    """A cell `(images, soft_targets, drop_noise, apply) -> (loss, overflow_steps)` training one micro-batch.

    Per micro-batch, as MindCV 0.3.0's `TrainStep` (mindcv/utils/train_step.py): loss-scaled backward, unscale,
    clip the micro-batch's own gradient to `train.clip_grad` (global norm; before the all-reduce, so each rank
    clips its gradient as each NPU of the 8-NPU recipes does), and with `train.grad_accum_steps` k > 1 add
    gradient / k to a float32 buffer. With k = 1, or when `apply` is true (the loop passes it on the k-th
    micro-batch), the gradient (or the buffer) is averaged over the data-parallel ranks, checked for finite values
    and handed to AdamW; then the EMA of the weights moves (`train.ema_decay`). The optimizer, the EMA and the
    step counter advance once per optimizer step: the LR table is indexed by optimizer steps, where MindCV's
    accumulation advances its LR slot on every micro-batch (see docs/fidelity.md).

    `overflow_steps` counts the optimizer steps whose gradients were not finite. Such a step is skipped (the
    weights, AdamW state and EMA stay as they were), where MindCV's fixed-loss-scale step would apply the inf/nan
    update (`drop_overflow_update=False`); see docs/fidelity.md.
    """
    import mindspore as ms
    from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

    from convit.train.step_ops import add_share as _add_share
    from convit.train.step_ops import clear as _clear
    from convit.train.step_ops import ema as _ema

    t = spec.train
    amp = t.amp_level
    backbone = ms.amp.auto_mixed_precision(model, "O2") if amp == "O2" else model
    # The loss scale only matters in float16; in float32 a power of two scales and unscales exactly.
    loss_scale = float(t.loss_scale) if amp == "O2" else 1.0

    class WithLoss(nn.Cell):  # type: ignore[misc]
        def __init__(self, net: Any, loss: Any) -> None:
            super().__init__(auto_prefix=False)  # keep the model's parameter names
            self._backbone = net
            self._loss_fn = loss

        def construct(self, images: Any, targets: Any, noise: Any) -> Any:
            logits = ops.cast(self._backbone(images, noise), ms.float32)  # the loss always runs in float32
            return self._loss_fn(logits, targets)

    class TrainStep(nn.TrainOneStepCell):  # type: ignore[misc]
        """TrainOneStepCell (which sets up the data-parallel gradient mean) with a fixed loss scale, clipping,
        accumulation, a finite-gradient check before the update, and the EMA of the weights."""

        def __init__(self, net: Any, opt: Any, scale: float) -> None:
            super().__init__(net, opt, sens=scale)
            self.hyper_map = ops.HyperMap()
            self.unscale = Tensor(1.0 / scale, ms.float32)
            self.overflow_steps = Parameter(Tensor(0, ms.int32), name="overflow_steps", requires_grad=False)
            self.clip = t.clip_grad > 0
            self.clip_norm = float(t.clip_grad)
            self.accumulate = t.grad_accum_steps > 1
            if self.accumulate:
                # float32 like the weights (under O2 too): the sum of k micro-batch gradients, each divided by k.
                self.grad_sum = self.weights.clone(prefix=GRAD_SUM_PREFIX, init="zeros")
                self.micro_steps = Tensor(float(t.grad_accum_steps), ms.float32)
            self.ema = t.ema_decay > 0
            if self.ema:
                self.model_weights = ParameterTuple(list(model.get_parameters()))
                self.ema_weights = self.model_weights.clone(prefix=EMA_PREFIX, init="same")
                self.ema_updates = Parameter(Tensor(0.0, ms.float32), name="ema_updates", requires_grad=False)
                self.ema_decay = Tensor(t.ema_decay, ms.float32)

        def construct(self, images: Any, targets: Any, noise: Any, apply: Any) -> Any:
            loss = self.network(images, targets, noise)
            sens = ops.fill(loss.dtype, loss.shape, self.sens)
            grads = self.grad(self.network, self.weights)(images, targets, noise, sens)
            grads = self.hyper_map(ops.partial(ops.mul, self.unscale), grads)
            if self.clip:
                grads = ops.clip_by_global_norm(grads, self.clip_norm)
            if self.accumulate:
                loss = ops.depend(loss, self.hyper_map(ops.partial(_add_share, self.micro_steps), self.grad_sum, grads))
                if apply:
                    loss = self.update(loss, self.grad_sum)
                    loss = ops.depend(loss, self.hyper_map(ops.partial(_clear), self.grad_sum))
            else:
                loss = self.update(loss, grads)
            return loss, self.overflow_steps

        def update(self, loss: Any, grads: Any) -> Any:
            grads = self.grad_reducer(grads)  # mean over data-parallel ranks (identity on one rank)
            if ms.amp.all_finite(grads):
                loss = ops.depend(loss, self.optimizer(grads))
                if self.ema:
                    loss = ops.depend(loss, self.ema_update())
            else:
                loss = ops.depend(loss, ops.assign_add(self.overflow_steps, Tensor(1, ms.int32)))
            return loss

        def ema_update(self) -> Any:
            # MindCV's warm-up of the decay: decay x (1 - exp(-updates / 2000)).
            updates = ops.assign_add(self.ema_updates, Tensor(1.0, ms.float32))
            decay = self.ema_decay * (1 - ops.exp(-updates / 2000))
            return self.hyper_map(ops.partial(_ema, decay), self.ema_weights, self.model_weights)

    step = TrainStep(
        WithLoss(backbone, nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction="mean")), optimizer, loss_scale
    )
    step.set_train(True)
    return step


def step_outputs(output: Any) -> tuple[float, int]:
    """(loss, overflowed steps so far) from the step's outputs: the only host sync of a step."""
    loss, overflows = output
    return float(loss.asnumpy()), int(overflows.asnumpy())
