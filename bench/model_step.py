"""Side by side on the CPU: graph-mode training step and inference of our convit_tiny, MindCV's and timm's.

    .venv/bin/python bench/model_step.py [--model convit_tiny] [--batch 16] [--steps 5] [--warmup 1] [--amp O0,O2]
    .venv/bin/python bench/model_step.py --interleaved --amp O0 --steps 10   # ours vs MindCV, alternating calls

Median seconds per call over --steps calls after --warmup (compilation) calls. The training step is each
project's real one: ours from convit.train.step (loss-scaled, MindCV's AdamW), MindCV's from its create_trainer
(fixed loss scale 1024), at each AMP level of --amp (O2 is float16 compute: on the CPU a pre-flight of the Ascend
graph, not a speed-up). Inference is a float32 forward pass in eval mode. torch uses as many threads as
MindSpore's CPU kernels (all cores of this machine).
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

from bench.timing import round_robin


def timed(fn: Callable[[], object], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs(batch: int) -> tuple[object, object]:
    import mindspore as ms

    x = ms.Tensor(np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32))
    y = ms.Tensor(np.eye(1000, dtype=np.float32)[np.arange(batch) % 1000])
    return x, y


def infer_case(model: object, batch: int, steps: int, warmup: int) -> float:
    x, _ = _inputs(batch)
    model.set_train(False)  # type: ignore[attr-defined]
    return timed(lambda: model(x).asnumpy(), steps, warmup)  # type: ignore[operator,attr-defined]


def ours_train(name: str, amp: str, batch: int, steps: int, warmup: int) -> float:
    return timed(ours_step(name, amp, batch), steps, warmup)


def ours_step(name: str, amp: str, batch: int) -> Callable[[], object]:
    import mindspore as ms

    from convit.jobspec import load_job
    from convit.models import create_model
    from convit.train.schedule import lr_schedule
    from convit.train.step import build_optimizer, build_train_step, drop_noise

    spec = load_job("convit_small", [f"model.name={name}", f"train.amp_level={amp}"])
    model = create_model(name)
    step = build_train_step(model, build_optimizer(model, spec, lr_schedule(spec.train, 100)), spec)
    x, y = _inputs(batch)
    noise = ms.Tensor(drop_noise(model, batch, np.random.default_rng(0)))
    return lambda: step(x, y, noise, ms.Tensor(True))[0].asnumpy()


def mindcv_train(name: str, amp: str, batch: int, steps: int, warmup: int) -> float:
    return timed(mindcv_step(name, amp, batch), steps, warmup)


def mindcv_step(name: str, amp: str, batch: int) -> Callable[[], object]:
    from mindcv.loss import create_loss
    from mindcv.models import create_model
    from mindcv.optim import create_optimizer
    from mindcv.utils import create_trainer

    model = create_model(name)
    opt = create_optimizer(model, opt="adamw", lr=[1e-3] * 100, weight_decay=0.05, loss_scale=1024.0)
    trainer = create_trainer(
        model,
        create_loss(name="CE", label_smoothing=0.1),
        opt,
        metrics=None,
        amp_level=amp,
        amp_cast_list=None,
        loss_scale_type="fixed",
        loss_scale=1024.0,
        drop_overflow_update=False,
    )
    x, y = _inputs(batch)
    step = trainer._train_network
    return lambda: step(x, y).asnumpy()


def interleaved(name: str, amp: str, batch: int, steps: int, warmup: int) -> None:
    """Our step and MindCV's called alternately (after `warmup` calls each), so drift in the machine's speed lands
    on both: the medians, their ratio and the spread of the per-round ratios."""
    times = round_robin({"ours": ours_step(name, amp, batch), "MindCV": mindcv_step(name, amp, batch)}, steps, warmup)
    ratios = sorted(a / b for a, b in zip(times["ours"], times["MindCV"], strict=True))
    for label, ts in times.items():
        print(f"{label:<8} train {amp} s: median {statistics.median(ts):.3f} (min {min(ts):.3f}, max {max(ts):.3f})")
    median = statistics.median(times["ours"]) / statistics.median(times["MindCV"])
    print(f"ours / MindCV: {median:.2f} (per-round ratios {ratios[0]:.2f} to {ratios[-1]:.2f}, {steps} rounds)")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


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
    parser.add_argument("--amp", default="O0,O2", help="AMP levels of the training step, comma-separated")
    parser.add_argument(
        "--interleaved", action="store_true", help="only our training step and MindCV's, called alternately"
    )
    args = parser.parse_args()

    import mindspore as ms
    from mindcv.models import create_model as mindcv_create

    from convit.models import create_model

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    print(f"{cpu_model()}, {os.cpu_count()} cores, MindSpore {ms.__version__}")
    amps = args.amp.split(",")
    if args.interleaved:
        for amp in amps:
            interleaved(args.model, amp, args.batch, args.steps, args.warmup)
        return
    ours_inf = infer_case(create_model(args.model), args.batch, args.steps, args.warmup)
    results: dict[str, tuple[dict[str, float], float]] = {
        "ours (MindSpore, graph)": (
            {a: ours_train(args.model, a, args.batch, args.steps, args.warmup) for a in amps},
            ours_inf,
        ),
        "MindCV 0.3.0 (MindSpore, graph)": (
            {a: mindcv_train(args.model, a, args.batch, args.steps, args.warmup) for a in amps},
            infer_case(mindcv_create(args.model), args.batch, args.steps, args.warmup),
        ),
    }
    timm_train, timm_infer = timm_case(args.model, args.batch, args.steps, args.warmup)
    results["timm (PyTorch eager, float32)"] = ({"O0": timm_train}, timm_infer)
    ours = results["ours (MindSpore, graph)"]
    print(f"{args.model}, batch {args.batch}, CPU ({os.cpu_count()} cores), median of {args.steps}")
    head = "".join(f"{'train ' + a + ' s':>13}{'ours/x':>8}" for a in amps)
    print(f"{'implementation':<34}{head}{'inference s':>13}{'ours/x':>8}")
    for label, (train, infer) in results.items():
        cells = "".join(
            f"{train[a]:>13.3f}{ours[0][a] / train[a]:>8.2f}" if a in train else f"{'-':>13}{'':>8}" for a in amps
        )
        print(f"{label:<34}{cells}{infer:>13.3f}{ours[1] / infer:>8.2f}")


if __name__ == "__main__":
    main()
