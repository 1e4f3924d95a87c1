"""`python -m convit.evaluate --job RECIPE --weights URI [--data URI] [--set KEY=VALUE ...] [--json]`.

Top-1, top-5 and cross-entropy loss of a checkpoint over the whole validation split of the job's data set
(ImageFolder or shards, s3:// or file://), with MindCV's eval preprocessing. Data-parallel like training:
under a MindSpore cluster (MS_ROLE=MS_WORKER, MS_WORKER_NUM=N) each rank reads a disjoint part of the split
and the counts are summed, so every sample is counted once; rank 0 prints

    evaluated <samples> samples: top1 <x> top5 <y> loss <z>

(`--json`: one JSON object instead). The weights (a MindCV .ckpt or one of our checkpoints) must fit the
recipe's variant and class count exactly; anything else is one `ERROR:` line and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from convit.cluster import contract
from convit.errors import ConvitError, cli_boundary

MAX_BATCH = 4096  # images per rank and step, as train.batch_size (convit/jobspec/schema.py)


@dataclass(frozen=True)
class EvalResult:
    model: str
    weights: str
    source: str
    samples: int
    skipped: int
    top1: float
    top5: float
    loss: float
    world_size: int
    seconds: float

    def line(self) -> str:
        skipped = f" ({self.skipped} undecodable skipped)" if self.skipped else ""
        return (
            f"evaluated {self.samples} samples: top1 {self.top1:.3f} top5 {self.top5:.3f} loss {self.loss:.4f}{skipped}"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m convit.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--job",
        default=os.environ.get("CONVIT_JOB_FILE", contract.JOB_FILE),
        help="recipe name from jobs/ or a job file (YAML or JSON): model, data set, eval crop_pct",
    )
    parser.add_argument("--weights", required=True, help="MindCV .ckpt, or our checkpoint directory / its latest")
    parser.add_argument("--data", help="override data.uri (the data set root holding train/ and val/, or shards)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a job value"
    )
    parser.add_argument("--batch-size", type=int, help="images per rank and step (default: train.batch_size)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the result line")
    parser.add_argument("--device", choices=["CPU", "Ascend"], help="default: $CONVIT_DEVICE or CPU")
    return parser.parse_args(argv)


def evaluate_split(model: Any, loader: Any, batch_size: int, reduce: Any) -> tuple[float, float, float, int]:
    """(top1 %, top5 %, mean cross-entropy, samples) over every rank's part of the split.

    Like convit.train.evaluate (whose padding and all-reduce it follows), plus the loss; the last short batch
    is zero-padded so the compiled graph keeps one input shape, and the padding is cut off the logits.
    """
    import mindspore as ms

    model.set_train(False)
    correct1 = correct5 = loss = count = 0.0
    for images, labels in loader.batches(batch_size):
        n = len(labels)
        if n < batch_size:
            pad = np.zeros((batch_size - n, *images.shape[1:]), dtype=images.dtype)
            images = np.concatenate([images, pad])
        logits = model(ms.Tensor(images)).asnumpy()[:n].astype(np.float64)
        k = min(5, logits.shape[1])
        top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
        correct1 += float((top[:, 0] == labels).sum())
        correct5 += float((top == labels[:, None]).any(axis=1).sum())
        peak = logits.max(axis=1)
        log_z = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        loss += float((log_z - logits[np.arange(n), labels]).sum())
        count += n
    correct1, correct5, loss, count = reduce([correct1, correct5, loss, count])
    if count == 0:
        return 0.0, 0.0, float("nan"), 0
    return 100.0 * correct1 / count, 100.0 * correct5 / count, loss / count, round(count)


def run(args: argparse.Namespace, spec: Any, runtime: Any) -> EvalResult:
    from convit.data import build_val_loader
    from convit.inference.weights import build_model, read_weights
    from convit.train.runtime import AllReduceSum

    started = time.monotonic()
    weights = read_weights(args.weights)
    model = build_model(weights, spec.model.name, spec.model.num_classes)
    batch = args.batch_size or spec.train.batch_size
    if batch <= 0:
        raise ConvitError("--batch-size must be positive")
    if batch > MAX_BATCH:
        raise ConvitError(f"--batch-size {batch}: at most {MAX_BATCH} (train.batch_size's bound)")
    reduce = AllReduceSum(runtime)
    loader = build_val_loader(spec, runtime.rank, runtime.world_size)
    try:
        top1, top5, loss, samples = evaluate_split(model, loader, batch, reduce)
        skipped = round(reduce([float(loader.skipped)])[0])
    finally:
        loader.close()
    if samples == 0:
        raise ConvitError(f"{spec.data.uri}: no validation image could be decoded")
    return EvalResult(
        model=spec.model.name,
        weights=weights.uri,
        source=weights.source,
        samples=samples,
        skipped=skipped,
        top1=top1,
        top5=top5,
        loss=loss,
        world_size=runtime.world_size,
        seconds=round(time.monotonic() - started, 3),
    )


def _pod_supervisor(argv: list[str]) -> int | None:
    """In a pod of a cluster job, start the pod's processes (scheduler, one worker per NPU) running this
    command, as training does; None when this process is itself a worker, the scheduler or a plain run."""
    import inspect

    from convit.cluster import supervisor

    pods: Any = supervisor  # works with the pod_plan/supervises API and with the older role-only rule
    if hasattr(pods, "supervises"):
        if not pods.supervises():
            return None
    elif os.environ.get(contract.ENV_ROLE) is not None or not os.environ.get(contract.ENV_LOCAL):
        return None
    if "module" not in inspect.signature(pods.supervise).parameters:
        raise ConvitError(
            "evaluating in a pod needs convit.cluster.supervisor.supervise(argv, module=...); "
            "start the ranks with MS_ROLE and MS_NODE_ID set instead"
        )
    return int(pods.supervise(argv, module="convit.evaluate"))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return cli_boundary(lambda: _main(args, sys.argv[1:] if argv is None else argv))


def _main(args: argparse.Namespace, argv: list[str]) -> int:
    from convit.jobspec import load_job

    if args.batch_size is not None and not 0 < args.batch_size <= MAX_BATCH:  # before any weights are read
        raise ConvitError(f"--batch-size must be positive and at most {MAX_BATCH}")
    sets = list(args.overrides) + ([f"data.uri={args.data}"] if args.data else [])
    spec = load_job(args.job, sets)
    pod = _pod_supervisor(argv)
    if pod is not None:
        return pod
    from convit.inference.runtime import init_inference

    if os.environ.get(contract.ENV_ROLE) == "MS_SCHED":  # serves the cluster inside init() until workers finish
        init_inference(args.device)
        return 0
    runtime = init_inference(args.device)
    from convit.train.termination import TerminationMessage

    termination = TerminationMessage(enabled=runtime.is_main)  # the container's termination message: the result
    try:
        result = run(args, spec, runtime)
    except ConvitError as exc:
        termination.write([f"ERROR: {exc}"])
        raise
    if runtime.is_main:
        print(json.dumps(asdict(result), sort_keys=True) if args.json else result.line(), flush=True)
    termination.write([result.line()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
