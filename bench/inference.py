"""Inference throughput on the CPU, side by side in one run: our ConViT (MindSpore graph mode), MindCV's, timm's
(PyTorch eager) and onnxruntime on the model exported by `python -m convit.export` (dynamic batch), plus the
exported MindIR in MindSpore's GraphCell.

    .venv/bin/python bench/inference.py [--model convit_tiny] [--batches 1 16] [--steps 7] [--warmup 2]

Images per second = batch / median seconds per forward pass over --steps calls after --warmup calls
(compilation, allocation); the implementations take turns call by call, so that a busy machine slows all
of them alike. Every implementation gets the same weights (ours, copied into MindCV's and timm's models) and
the same random input; the logits are checked to agree. Prints a Markdown table for docs/benchmarks.md.
torch and onnxruntime use as many threads as there are cores, like MindSpore's CPU kernels.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import round_robin


def interleaved(fns: dict[str, Callable[[], object]], steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function, timed round-robin (bench.timing.round_robin)."""
    times = round_robin(fns, steps, warmup)
    return {label: statistics.median(values) for label, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="convit_tiny")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import mindspore as ms
    import onnxruntime as ort
    import timm
    import torch
    from mindcv.models import create_model as mindcv_create
    from mindspore import nn

    from convit.export import main as export_main
    from convit.models import create_model
    from tests.support.timm_convert import to_timm_state

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    ours = create_model(args.model, drop_path_rate=0.0)
    ours.set_train(False)
    params = {p.name: p.asnumpy() for p in ours.get_parameters()}
    mindcv = mindcv_create(args.model)
    ms.load_param_into_net(mindcv, {k: ms.Parameter(ms.Tensor(v), name=k) for k, v in params.items()}, strict_load=True)
    mindcv.set_train(False)
    # timm's defaults differ from MindCV's (LayerNorm eps 1e-6, exact GELU): the same weights, timm's own model.
    timm_model = timm.create_model(args.model, pretrained=False)
    timm_model.load_state_dict(to_timm_state(params), strict=True)
    timm_model.eval()

    work = Path(tempfile.mkdtemp(prefix="convit-bench-"))
    ckpt = work / "weights.ckpt"
    ms.save_checkpoint(ours, str(ckpt))
    for fmt in ("onnx", "mindir"):
        code = export_main(["--weights", str(ckpt), "--format", fmt, "--output", str(work / f"model.{fmt}")])
        assert code == 0, f"export to {fmt} failed"
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(work / "model.onnx"), options, providers=["CPUExecutionProvider"])
    graph_cell = nn.GraphCell(ms.load(str(work / "model.mindir")))
    shutil.rmtree(work, ignore_errors=True)

    def runners(x: np.ndarray) -> dict[str, Callable[[], Any]]:
        xm, xt = ms.Tensor(x), torch.from_numpy(x)

        def timm_forward() -> Any:
            with torch.no_grad():
                return timm_model(xt).numpy()

        return {
            "ours (MindSpore 2.10, graph)": lambda: ours(xm).asnumpy(),
            "MindCV 0.3.0 (MindSpore, graph)": lambda: mindcv(xm).asnumpy(),
            f"timm {timm.__version__} (PyTorch {torch.__version__.split('+')[0]}, eager)": timm_forward,
            f"onnxruntime {ort.__version__} (exported ONNX)": lambda: session.run(None, {"image": x})[0],
            "MindIR export (MindSpore GraphCell)": lambda: graph_cell(xm).asnumpy(),
        }

    rates: dict[str, dict[int, float]] = {}
    for batch in args.batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 224, 224)).astype(np.float32)
        fns = runners(x)
        reference = None
        for label, fn in fns.items():
            logits = np.asarray(fn())
            if reference is None:
                reference = logits
            tolerance = 5e-2 if label.startswith("timm") else 1e-4  # timm: other eps and GELU by design
            gap = float(np.abs(logits - reference).max())
            assert gap < tolerance, f"{label} disagrees with ours by {gap}"
        for label, seconds in interleaved(fns, args.steps, args.warmup).items():
            rates.setdefault(label, {})[batch] = batch / seconds

    ours_label = next(iter(rates))
    print(f"{args.model}, CPU ({threads} cores), images/s (median of {args.steps} after {args.warmup} warm-up calls)")
    head = " | ".join(f"batch {b}" for b in args.batches)
    ratio = " | ".join(f"x/ours at {b}" for b in args.batches)
    print(f"| implementation | {head} | {ratio} |")
    print("|---" * (1 + 2 * len(args.batches)) + "|")
    for label, by_batch in rates.items():
        cells = " | ".join(f"{by_batch[b]:.1f}" for b in args.batches)
        ratios = " | ".join(f"{by_batch[b] / rates[ours_label][b]:.2f}" for b in args.batches)
        print(f"| {label} | {cells} | {ratios} |")


if __name__ == "__main__":
    main()
