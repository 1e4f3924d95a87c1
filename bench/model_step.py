"""Side by side on the CPU: graph-mode training step and inference of our convit_tiny, MindCV's and timm's.

    .venv/bin/python bench/model_step.py [--model convit_tiny] [--batch 16] [--steps 5] [--warmup 1]

Median seconds per call over --steps calls after --warmup (compilation) calls. The training step is
forward + cross entropy + backward + AdamW; inference is a forward pass in eval mode. torch uses as many
threads as MindSpore's CPU kernels (all cores of this machine).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def timed(fn: Callable[[], object], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mindspore_case(model: object, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    import mindspore as ms
    from mindspore import nn

    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32))
    y = ms.Tensor(np.arange(batch).astype(np.int32) % 1000)
    model.set_train(False)  # type: ignore[attr-defined]
    infer = timed(lambda: model(x).asnumpy(), steps, warmup)  # type: ignore[operator]
    opt = nn.AdamWeightDecay(model.trainable_params(), 1e-3, weight_decay=0.05)  # type: ignore[attr-defined]
    step = nn.TrainOneStepCell(
        nn.WithLossCell(model, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")), opt
    )
    step.set_train(True)
    train = timed(lambda: step(x, y).asnumpy(), steps, warmup)
    return train, infer


def timm_case(name: str, batch: int, steps: int, warmup: int) -> tuple[float, float]:
    import timm
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    model = timm.create_model(name, pretrained=False)
    x = torch.randn(batch, 3, 224, 224)
    y = torch.arange(batch) % 1000
    model.eval()
    with torch.no_grad():
        infer = timed(lambda: model(x), steps, warmup)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    train = timed(step, steps, warmup)
    return train, infer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="convit_tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()

    import mindspore as ms
    from mindcv.models import create_model as mindcv_create

    from convit.models import create_model

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    results = {
        "ours (MindSpore, graph)": mindspore_case(create_model(args.model), args.batch, args.steps, args.warmup),
        "MindCV 0.3.0 (MindSpore, graph)": mindspore_case(
            mindcv_create(args.model), args.batch, args.steps, args.warmup
        ),
        "timm (PyTorch eager)": timm_case(args.model, args.batch, args.steps, args.warmup),
    }
    ours_train, ours_infer = results["ours (MindSpore, graph)"]
    print(f"{args.model}, batch {args.batch}, CPU ({os.cpu_count()} cores), median of {args.steps}")
    print(f"{'implementation':<34}{'train step s':>14}{'inference s':>13}{'train ours/x':>14}{'infer ours/x':>14}")
    for label, (train, infer) in results.items():
        print(f"{label:<34}{train:>14.3f}{infer:>13.3f}{ours_train / train:>14.2f}{ours_infer / infer:>14.2f}")


if __name__ == "__main__":
    main()
