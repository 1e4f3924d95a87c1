"""`python -m convit.predict --weights URI [--model NAME] IMAGE_OR_URI... [--top K] [--json]`.

The top-K classes of each image (local path, file:// or s3://) with their names (the checkpoint's recorded class
names, the folders of the data it was trained on; ImageNet-1k's for a MindCV 1000-class .ckpt), probabilities
and logits, after MindCV's eval preprocessing at the variant's crop_pct. `--json` prints one list of
{"image": ..., "top": [{"index": i, "name": ..., "prob": p, "logit": l}, ...]}. A file that is missing or not
a decodable image is reported on stderr by name (`ERROR: <image>: <reason>`) and skipped; the exit code is 1
when any image failed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.errors import ConvitError, cli_boundary
from convit.inference.weights import add_ema_flag
from convit.jobspec.schema import CROP_PCT_MIN

MAX_BATCH = 16


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m convit.predict", description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_URI", help="JPEG/PNG files: paths, file:// or s3://")
    parser.add_argument("--weights", required=True, help="MindCV .ckpt, or our checkpoint directory / its latest")
    add_ema_flag(parser)
    parser.add_argument("--model", help="variant the weights must be (default: recognised from the checkpoint)")
    parser.add_argument("--top", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument(
        "--crop-pct", type=float, help=f"eval crop fraction in [{CROP_PCT_MIN}, 1] (default: the variant's recipe)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list instead of text")
    parser.add_argument("--device", choices=["CPU", "Ascend"], help="default: $CONVIT_DEVICE or CPU")
    return parser.parse_args(argv)


def logits_of(model: Any, inputs: NDArray[Any], batch: int = MAX_BATCH) -> NDArray[Any]:
    """(N, classes) float32 logits, in fixed-size batches (the last one zero-padded) so the graph compiles once."""
    import mindspore as ms

    size = min(batch, len(inputs))
    out = []
    for start in range(0, len(inputs), size):
        chunk = inputs[start : start + size]
        n = len(chunk)
        if n < size:
            chunk = np.concatenate([chunk, np.zeros((size - n, *chunk.shape[1:]), chunk.dtype)])
        out.append(model(ms.Tensor(chunk)).asnumpy()[:n])
    logits: NDArray[Any] = np.concatenate(out).astype(np.float32)
    return logits


def top_k(logits: NDArray[Any], names: list[str], k: int) -> list[dict[str, Any]]:
    """The k best classes of one logit row: index, name, softmax probability, logit."""
    wide = logits.astype(np.float64)
    probs = np.exp(wide - wide.max())
    probs /= probs.sum()
    order = np.argsort(-wide, kind="stable")[: min(k, len(wide))]
    return [{"index": int(i), "name": names[int(i)], "prob": float(probs[i]), "logit": float(logits[i])} for i in order]


def _one_line(text: str) -> str:
    """`text` with control characters and line breaks escaped."""
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


def _text(results: list[dict[str, Any]]) -> str:
    lines = []
    for result in results:
        lines.append(result["image"])
        for rank, item in enumerate(result["top"], 1):
            name = _one_line(item["name"])  # a folder name with a line break stays on its line
            lines.append(f"  {rank}. {item['prob'] * 100:6.2f} %  logit {item['logit']:8.4f}  [{item['index']}] {name}")
    return "\n".join(lines)


def predict(args: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str]]:
    """(results for the images that decoded, one error message per image that did not)."""
    from convit.inference.images import BadImage, crop_pct_of, preprocess, read_bytes
    from convit.inference.runtime import init_inference
    from convit.inference.weights import build_model, read_weights

    if args.top <= 0:
        raise ConvitError("--top must be positive")
    if args.crop_pct is not None and not CROP_PCT_MIN <= args.crop_pct <= 1.0:  # NaN fails too
        raise ConvitError(f"--crop-pct must be in [{CROP_PCT_MIN}, 1]")
    weights = read_weights(args.weights, ema=args.ema)
    init_inference(args.device)
    model = build_model(weights, args.model)
    crop_pct = args.crop_pct or crop_pct_of(weights.model)
    names = weights.names  # the checkpoint's recorded class names (its data's folders), ImageNet's for MindCV's
    # One batch of decoded images in memory at a time, whatever the number of images; every batch is padded to
    # the same size, so the graph compiles once.
    batch = min(MAX_BATCH, len(args.images))
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    good: list[str] = []
    inputs: list[NDArray[Any]] = []

    def flush() -> None:
        if inputs:
            stacked = np.stack(inputs)
            if len(stacked) < batch:  # the last, short batch: padded here so that its shape is the others'
                stacked = np.concatenate([stacked, np.zeros((batch - len(stacked), *stacked.shape[1:]), stacked.dtype)])
            logits = logits_of(model, stacked, batch)[: len(inputs)]
            results.extend(
                {"image": image, "top": top_k(row, names, args.top)} for image, row in zip(good, logits, strict=True)
            )
            good.clear()
            inputs.clear()

    for image in args.images:
        try:
            inputs.append(preprocess(read_bytes(image), crop_pct, image))
            good.append(image)
        except BadImage as exc:
            errors.append(str(exc))
        if len(inputs) == batch:
            flush()
    flush()
    return results, errors


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return cli_boundary(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    results, errors = predict(args)
    for message in errors:  # one line each, also for a file name holding line breaks or control characters
        print(f"ERROR: {_one_line(message)}", file=sys.stderr, flush=True)
    if results or args.json:
        print(json.dumps(results, indent=1) if args.json else _text(results), flush=True)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
