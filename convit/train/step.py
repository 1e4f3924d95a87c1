"""The training step: forward, soft-target cross entropy, backward, gradient all-reduce, AdamW."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.jobspec.schema import JobSpec


def build_optimizer(model: Any, spec: JobSpec, lrs: NDArray[Any]) -> Any:
    """AdamW with weight decay on every tensor (the recipe's choice) and a per-step LR table."""
    import mindspore as ms
    from mindspore import nn

    t = spec.train
    return nn.AdamWeightDecay(
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


def build_train_step(model: Any, optimizer: Any, spec: JobSpec, device: str) -> Any:
    """A cell `(images, soft_targets, drop_noise) -> loss` that updates the weights; graph-compiled."""
    import mindspore as ms
    from mindspore import nn

    class WithLoss(nn.Cell):  # type: ignore[misc]
        def __init__(self, backbone: Any, loss: Any) -> None:
            super().__init__(auto_prefix=False)  # keep the model's parameter names
            self._backbone = backbone
            self._loss_fn = loss

        def construct(self, images: Any, targets: Any, noise: Any) -> Any:
            return self._loss_fn(self._backbone(images, noise), targets)

    net = WithLoss(model, nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction="mean"))
    if device == "Ascend" and spec.train.amp_level == "O2":
        # O2: float16 compute with float32 norms and master weights, fixed loss scale (the recipe's 1024).
        ms.amp.auto_mixed_precision(model, "O2")
        scale = nn.FixedLossScaleUpdateCell(loss_scale_value=spec.train.loss_scale)
        step = nn.TrainOneStepWithLossScaleCell(net, optimizer, scale_sense=scale)
    else:  # the CPU trains in float32
        step = nn.TrainOneStepCell(net, optimizer)
    step.set_train(True)
    return step


def loss_of(output: Any) -> float:
    """TrainOneStepWithLossScaleCell returns (loss, overflow, scale); TrainOneStepCell the loss."""
    if isinstance(output, tuple):
        output = output[0]
    return float(output.asnumpy())
