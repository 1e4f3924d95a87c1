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
    """A cell `(images, soft_targets, drop_noise) -> (loss, overflow_steps)` that updates the weights.

    `overflow_steps` counts the steps whose gradients were not finite. Such a step is skipped (the weights and
    AdamW state stay as they were), where MindCV's fixed-loss-scale step would apply the inf/nan update
    (`drop_overflow_update=False`); see docs/fidelity.md.
    """
    import mindspore as ms
    from mindspore import Parameter, Tensor, nn, ops

    amp = spec.train.amp_level
    backbone = ms.amp.auto_mixed_precision(model, "O2") if amp == "O2" else model
    # The loss scale only matters in float16; in float32 a power of two scales and unscales exactly.
    loss_scale = float(spec.train.loss_scale) if amp == "O2" else 1.0

    class WithLoss(nn.Cell):  # type: ignore[misc]
        def __init__(self, net: Any, loss: Any) -> None:
            super().__init__(auto_prefix=False)  # keep the model's parameter names
            self._backbone = net
            self._loss_fn = loss

        def construct(self, images: Any, targets: Any, noise: Any) -> Any:
            logits = ops.cast(self._backbone(images, noise), ms.float32)  # the loss always runs in float32
            return self._loss_fn(logits, targets)

    class LossScaledStep(nn.TrainOneStepCell):  # type: ignore[misc]
        """TrainOneStepCell (which sets up the data-parallel gradient mean) with a fixed loss scale and a
        finite-gradient check before the update."""

        def __init__(self, net: Any, opt: Any, scale: float) -> None:
            super().__init__(net, opt, sens=scale)
            self.hyper_map = ops.HyperMap()
            self.unscale = Tensor(1.0 / scale, ms.float32)
            self.overflow_steps = Parameter(Tensor(0, ms.int32), name="overflow_steps", requires_grad=False)

        def construct(self, images: Any, targets: Any, noise: Any) -> Any:
            loss = self.network(images, targets, noise)
            sens = ops.fill(loss.dtype, loss.shape, self.sens)
            grads = self.grad(self.network, self.weights)(images, targets, noise, sens)
            grads = self.grad_reducer(grads)  # mean over data-parallel ranks (identity on one rank)
            grads = self.hyper_map(ops.partial(ops.mul, self.unscale), grads)
            if ms.amp.all_finite(grads):
                loss = ops.depend(loss, self.optimizer(grads))
            else:
                loss = ops.depend(loss, ops.assign_add(self.overflow_steps, Tensor(1, ms.int32)))
            return loss, self.overflow_steps

    step = LossScaledStep(
        WithLoss(backbone, nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction="mean")), optimizer, loss_scale
    )
    step.set_train(True)
    return step


def step_outputs(output: Any) -> tuple[float, int]:
    """(loss, overflowed steps so far) from the step's outputs: the only host sync of a step."""
    loss, overflows = output
    return float(loss.asnumpy()), int(overflows.asnumpy())
