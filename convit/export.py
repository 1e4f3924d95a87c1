"""`python -m convit.export --weights URI --model NAME --format onnx|mindir --output PATH_OR_URI [--batch N]`.

Writes the model for serving plus a sidecar JSON (`<output>.json`, e.g. convit_tiny.onnx.json: model,
input name and shape, mean/std, crop_pct and resize rule, class count and names, sha256 of the model file),
so a server needs nothing else. Without --batch the batch dimension is dynamic in both formats:
  - MindIR (MindSpore / MindSpore Lite): exported with a `None` batch dimension, which MindSpore 2.10 supports;
  - ONNX: MindSpore 2.10 exports ONNX only at a fixed shape, so the model is traced at two batch sizes and its
    batch-dependent shape constants are generalised (convit/inference/onnx_batch.py).
With --batch N the input shape is fixed at N. Files are written locally, then put in place atomically (a
temporary file renamed on file://, a single PUT on s3://): the model first, the sidecar last, so a sidecar
means a complete export.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from convit.errors import ConvitError, cli_boundary
from convit.inference.weights import add_ema_flag
from convit.jobspec.schema import CROP_PCT_MIN

SUFFIX = {"onnx": ".onnx", "mindir": ".mindir"}
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
MAX_BATCH = 4096  # a fixed --batch is traced with a zero input of that many images (4096 x 602 KB = 2.5 GB)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m convit.export", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="MindCV .ckpt, or our checkpoint directory / its latest")
    add_ema_flag(parser)
    parser.add_argument("--model", help="variant the weights must be (default: recognised from the checkpoint)")
    parser.add_argument("--format", required=True, choices=sorted(SUFFIX), help="onnx or mindir (MindSpore Lite)")
    parser.add_argument("--output", required=True, help="model file: path, file:// or s3:// (suffix added if absent)")
    parser.add_argument("--batch", type=int, help="fixed batch size (default: dynamic batch)")
    parser.add_argument("--crop-pct", type=float, help="eval crop fraction recorded in the sidecar (default: recipe)")
    return parser.parse_args(argv)


def _trace_input(batch: int) -> Any:
    import mindspore as ms

    return ms.Tensor(np.zeros((batch, 3, 224, 224), np.float32))


def export_onnx(model: Any, out: Path, batch: int | None, work: Path) -> None:
    import mindspore.onnx

    from convit.inference.onnx_batch import TRACE_BATCHES, make_batch_dynamic

    try:
        import onnx  # noqa: F401  (MindSpore's exporter and the dynamic-batch rewrite need it)
    except ImportError:
        raise ConvitError("ONNX export needs the onnx package: pip install 'onnx>=1.16,<2'") from None

    names = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if batch is not None:
        mindspore.onnx.export(model, _trace_input(batch), file_name=str(out.with_suffix("")), **names)
        return
    traced = []
    for b in TRACE_BATCHES:
        mindspore.onnx.export(model, _trace_input(b), file_name=str(work / f"trace-{b}"), **names)
        traced.append(work / f"trace-{b}.onnx")
    make_batch_dynamic(traced[0], traced[1], out)


def export_mindir(model: Any, out: Path, batch: int | None) -> None:
    import mindspore as ms

    example = _trace_input(batch) if batch is not None else ms.Tensor(shape=[None, 3, 224, 224], dtype=ms.float32)
    ms.export(model, example, file_name=str(out.with_suffix("")), file_format="MINDIR")


def sidecar(
    *,
    model: str,
    fmt: str,
    file_name: str,
    batch: int | None,
    crop_pct: float,
    num_classes: int,
    weights: Any,
    path: Path,
) -> dict[str, Any]:
    from convit.inference.images import INPUT_SIZE, mean_std
    from convit.train.checkpoints import sha256_file

    mean, std = mean_std()

    return {
        "model": model,
        "format": fmt,
        "file": file_name,
        "sha256": sha256_file(path),
        "bytes": path.stat().st_size,
        "input": {
            "name": INPUT_NAME,
            "shape": [batch, 3, INPUT_SIZE, INPUT_SIZE],  # null: dynamic batch
            "dtype": "float32",
            "layout": "NCHW, RGB",
        },
        "output": {"name": OUTPUT_NAME, "shape": [batch, num_classes], "meaning": "logits (softmax for probabilities)"},
        "dynamic_batch": batch is None,
        "mean": list(mean),
        "std": list(std),
        "normalize": "(pixel / 255 - mean) / std, per RGB channel",
        "crop_pct": crop_pct,
        "resize": (
            f"shorter side to floor({INPUT_SIZE} / crop_pct) = {int(INPUT_SIZE // crop_pct)} (bicubic), "
            f"then centre crop {INPUT_SIZE}x{INPUT_SIZE}"
        ),
        "interpolation": "bicubic",
        "num_classes": num_classes,
        "class_names": weights.names,  # the checkpoint's own names (its data's folders), or ImageNet's
        "weights": weights.uri,
        "weights_source": weights.described,
    }


def export(args: argparse.Namespace) -> tuple[str, str]:
    """(model URI, sidecar URI) after writing both."""
    from convit.inference.images import crop_pct_of
    from convit.inference.runtime import init_inference
    from convit.inference.weights import build_model, normalize_uri, read_weights, split_uri

    if args.batch is not None and not 0 < args.batch <= MAX_BATCH:
        raise ConvitError(f"--batch must be positive and at most {MAX_BATCH}")
    if args.crop_pct is not None and not CROP_PCT_MIN <= args.crop_pct <= 1.0:  # NaN fails too
        raise ConvitError(f"--crop-pct must be in [{CROP_PCT_MIN}, 1]")
    target = normalize_uri(args.output)
    suffix = SUFFIX[args.format]
    if not target.endswith(suffix):
        target += suffix
    storage, key = split_uri(target)
    side_key = key + ".json"
    weights = read_weights(args.weights, ema=args.ema)
    init_inference(None)
    # The GeLU op itself, not its elementwise CPU form: serving runtimes (MindSpore Lite, onnxruntime) have their own.
    model = build_model(weights, args.model, gelu_form="kernel")
    work = Path(tempfile.mkdtemp(prefix="convit-export-"))
    try:
        local = work / f"model{suffix}"
        if args.format == "onnx":
            export_onnx(model, local, args.batch, work)
        else:
            export_mindir(model, local, args.batch)
        if not local.is_file():
            raise ConvitError(f"MindSpore wrote no {args.format} file")
        meta = sidecar(
            model=weights.model,
            fmt=args.format,
            file_name=key.rsplit("/", 1)[-1],
            batch=args.batch,
            crop_pct=args.crop_pct or crop_pct_of(weights.model),
            num_classes=weights.num_classes,
            weights=weights,
            path=local,
        )
        try:
            storage.put_file(key, local)
            storage.put(side_key, (json.dumps(meta, indent=1) + "\n").encode())
        except OSError as exc:  # --output in a place no file can be written (/dev/full/x, a read-only folder)
            raise ConvitError(f"{target}: cannot write ({exc.strerror or type(exc).__name__})") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = target.rsplit("/", 1)[0]
    return target, f"{base}/{side_key.rsplit('/', 1)[-1]}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return cli_boundary(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    model_uri, side_uri = export(args)
    batch = "dynamic batch" if args.batch is None else f"batch {args.batch}"
    print(f"exported {args.format} ({batch}) to {model_uri}; sidecar {side_uri}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
