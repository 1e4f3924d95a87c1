"""The training step: forward, soft-target cross entropy, backward, gradient all-reduce, AdamW."""

from __future__ import annotations

from typing import Any

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


def build_train_step(model: Any, optimizer: Any, spec: JobSpec, device: str) -> Any:
    """A cell `(images, soft_targets) -> loss` that updates the weights; graph-compiled in GRAPH_MODE."""
    import mindspore as ms
    from mindspore import nn

    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=False, reduction="mean")
    if device == "Ascend" and spec.train.amp_level == "O2":
        # O2: float16 compute with float32 norms and master weights, fixed loss scale (the recipe's 1024).
        ms.amp.auto_mixed_precision(model, "O2")
        net = nn.WithLossCell(model, loss_fn)
        scale = nn.FixedLossScaleUpdateCell(loss_scale_value=spec.train.loss_scale)
        step = nn.TrainOneStepWithLossScaleCell(net, optimizer, scale_sense=scale)
    else:  # the CPU trains in float32
        step = nn.TrainOneStepCell(nn.WithLossCell(model, loss_fn), optimizer)
    step.set_train(True)
    return step


def loss_of(output: Any) -> float:
    """TrainOneStepWithLossScaleCell returns (loss, overflow, scale); TrainOneStepCell the loss."""
    if isinstance(output, tuple):
        output = output[0]
    return float(output.asnumpy())
