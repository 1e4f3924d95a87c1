"""`python -m convit.evaluate --job RECIPE --weights URI [--data URI] [--set KEY=VALUE ...] [--out DIR] [--json]`.

Top-1, top-5 and cross-entropy loss of a checkpoint over the whole validation split of the job's data set
(ImageFolder or shards, s3:// or file://), with MindCV's eval preprocessing. Data-parallel like training:
under a MindSpore cluster (MS_ROLE=MS_WORKER, MS_WORKER_NUM=N) each rank reads a disjoint part of the split
and the counts are summed, so every sample is counted once; rank 0 prints

    evaluated <samples> samples: top1 <x> top5 <y> loss <z>
    worst classes: <name> <top1> % (<samples>), ...        (up to 5, lowest top-1 first)

(`--json`: one JSON object instead, with every class's top-1 and sample count). The class names are the data's
(folder names, or data.class_map's lines; ImageNet wnids become readable names), and must be the ones a checkpoint
of ours recorded. `--out DIR` (a path, file:// or s3://) receives per_class.csv (index, class, samples, correct,
top1), confusion_matrix.csv (rows: true class, columns: top-1 prediction), confusion_matrix.png (its heat map,
row-normalised) and result.json (the JSON result). The weights (a MindCV .ckpt or one of our checkpoints) must fit the
recipe's variant and class count exactly; anything else is one `ERROR:` line and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from convit.cluster import contract
from convit.errors import ConvitError, cli_boundary
from convit.inference.weights import add_ema_flag

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
    worst: list[dict[str, Any]] = field(default_factory=list)  # the lowest per-class top-1 (convit.inference.per_class)
    per_class: list[dict[str, Any]] = field(default_factory=list)  # index, class, samples, correct, top1 per class
    out: str = ""  # where --out wrote the per-class files

    def line(self) -> str:
        skipped = f" ({self.skipped} undecodable skipped)" if self.skipped else ""
        return (
            f"evaluated {self.samples} samples: top1 {self.top1:.3f} top5 {self.top5:.3f} loss {self.loss:.4f}{skipped}"
        )

    def lines(self) -> list[str]:
        """The result line, then the worst classes' line (when there are several classes)."""
        from convit.inference.per_class import worst_line

        return [self.line(), worst_line(self.worst)] if len(self.per_class) > 1 and self.worst else [self.line()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m convit.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--job",
        default=os.environ.get("CONVIT_JOB_FILE", contract.JOB_FILE),
        help="recipe name from jobs/ or a job file (YAML or JSON): model, data set, eval crop_pct",
    )
    parser.add_argument("--weights", required=True, help="MindCV .ckpt, or our checkpoint directory / its latest")
    add_ema_flag(parser)
    parser.add_argument("--data", help="override data.uri (the data set root holding train/ and val/, or shards)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a job value"
    )
    parser.add_argument("--batch-size", type=int, help="images per rank and step (default: train.batch_size)")
    parser.add_argument(
        "--out", metavar="DIR", help="write per_class.csv, confusion_matrix.csv/.png, result.json there (path or URI)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the result line")
    parser.add_argument("--device", choices=["CPU", "Ascend"], help="default: $CONVIT_DEVICE or CPU")
    return parser.parse_args(argv)


def evaluate_split(
    model: Any, loader: Any, batch_size: int, reduce: Any, confusion: Any = None
) -> tuple[float, float, float, int]:
    """(top1 %, top5 %, mean cross-entropy, samples) over every rank's part of the split.

    Like convit.train.evaluate (whose padding and all-reduce it follows), plus the loss; the last short batch
    is zero-padded so the compiled graph keeps one input shape, and the padding is cut off the logits.
    `confusion` (an int64 classes x classes array), when given, receives every rank's (true, top-1) counts.
    """
    import mindspore as ms

    from convit.inference.per_class import add_batch

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
        if confusion is not None:
            add_batch(confusion, labels, top[:, 0])
        correct5 += float((top == labels[:, None]).any(axis=1).sum())
        peak = logits.max(axis=1)
        log_z = peak + np.log(np.exp(logits - peak[:, None]).sum(axis=1))
        loss += float((log_z - logits[np.arange(n), labels]).sum())
        count += n
    correct1, correct5, loss, count = reduce([correct1, correct5, loss, count])
    if confusion is not None:  # float32 sums: exact up to 2**24 samples per cell
        confusion[...] = np.rint(np.asarray(reduce(confusion.ravel().tolist()))).reshape(confusion.shape)
    if count == 0:
        return 0.0, 0.0, float("nan"), 0
    return 100.0 * correct1 / count, 100.0 * correct5 / count, loss / count, round(count)


def run(args: argparse.Namespace, spec: Any, runtime: Any) -> EvalResult:
    from convit.data import build_val_loader
    from convit.data.index import checked_class_names
    from convit.inference.per_class import per_class, worst
    from convit.inference.weights import build_model, read_weights
    from convit.train.runtime import AllReduceSum

    started = time.monotonic()
    weights = read_weights(args.weights, ema=args.ema)
    model = build_model(weights, spec.model.name, spec.model.num_classes)
    batch = args.batch_size or spec.train.batch_size
    if batch <= 0:
        raise ConvitError("--batch-size must be positive")
    if batch > MAX_BATCH:
        raise ConvitError(f"--batch-size {batch}: at most {MAX_BATCH} (train.batch_size's bound)")
    reduce = AllReduceSum(runtime)
    loader = build_val_loader(spec, runtime.rank, runtime.world_size)
    try:
        names = checked_class_names(loader.table, weights.num_classes, spec.data.uri)
        if weights.classes and weights.classes != names:  # the same count, other classes or another order
            raise ConvitError(
                f"{weights.uri} was trained on the classes {_few(weights.classes)} but {spec.data.uri} has "
                f"{_few(names)}: its labels would mean other classes"
            )
        confusion = np.zeros((len(names), len(names)), np.int64)
        top1, top5, loss, samples = evaluate_split(model, loader, batch, reduce, confusion)
        skipped = round(reduce([float(loader.skipped)])[0])
    finally:
        loader.close()
    rows = per_class(confusion, names)
    if samples == 0:
        raise ConvitError(f"{spec.data.uri}: no validation image could be decoded")
    result = EvalResult(
        model=spec.model.name,
        weights=weights.uri,
        source=weights.described,
        samples=samples,
        skipped=skipped,
        top1=top1,
        top5=top5,
        loss=loss,
        world_size=runtime.world_size,
        seconds=round(time.monotonic() - started, 3),
        worst=worst(rows),
        per_class=rows,
        out=_out_uri(args.out) if args.out else "",
    )
    if runtime.is_main and result.out:
        write_outputs(result, confusion, names)
    return result


def _few(names: list[str]) -> str:
    return "[" + ", ".join(names[:4]) + (", ...]" if len(names) > 4 else "]")


def _out_uri(out: str) -> str:
    from convit.inference.weights import normalize_uri

    return normalize_uri(out)


def write_outputs(result: EvalResult, confusion: Any, names: list[str]) -> None:
    """per_class.csv, confusion_matrix.csv, confusion_matrix.png and result.json under `result.out`."""
    from convit.inference import per_class as pc
    from convit.storage import StorageError, open_storage

    title = f"{result.model}, {result.samples} samples: top-1 {result.top1:.2f} %"
    files = {
        pc.PER_CLASS_CSV: pc.per_class_csv(result.per_class),
        pc.CONFUSION_CSV: pc.confusion_csv(confusion, names),
        pc.CONFUSION_PNG: pc.confusion_png(confusion, names, title),
        pc.RESULT_JSON: (json.dumps(asdict(result), sort_keys=True, indent=1) + "\n").encode(),
    }
    try:
        storage = open_storage(result.out)
        for key, data in files.items():
            storage.put(key, data)
    except (StorageError, OSError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ConvitError(f"--out {result.out}: cannot write there ({reason})") from None


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
    if args.out:
        _out_uri(args.out)  # an unsupported URI is refused before any work
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
        print(json.dumps(asdict(result), sort_keys=True) if args.json else "\n".join(result.lines()), flush=True)
        if result.out and not args.json:
            print(f"per-class accuracy and confusion matrix written to {result.out}/", flush=True)
    termination.write([result.line()])  # the line launcher status and wait show
    return 0


if __name__ == "__main__":
    sys.exit(main())
