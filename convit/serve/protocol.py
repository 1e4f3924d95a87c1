"""KServe's Open Inference Protocol v2 (REST): the infer request checked field by field, and the answers.

https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/ - JSON only (the binary tensor
extension is refused), one input `image` FP32 [N, 3, 224, 224] NCHW, one output `logits` FP32 [N, classes].
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

INPUT_NAME = "image"
OUTPUT_NAME = "logits"
INPUT_SIZE = 224


class ApiError(Exception):
    """A request the server refuses: HTTP status and one message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError:
        raise ApiError(400, "malformed JSON: the body is not UTF-8") from None
    except RecursionError:
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: {str(exc)[:160]}") from None


def parse_infer(body: bytes, max_rows: int) -> tuple[NDArray[np.float32], dict[str, Any]]:
    """(input tensor, {"id": ...} to echo) of an infer request; ApiError(400) naming the first problem."""
    request = parse_json(body)
    if not isinstance(request, dict):
        raise ApiError(400, "the infer request must be a JSON object with an 'inputs' list")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise ApiError(400, f"'inputs' must be a list of exactly one tensor object (the model's input {INPUT_NAME!r})")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise ApiError(400, f"unknown input {tensor.get('name')!r}: the model's input is {INPUT_NAME!r}")
    if tensor.get("datatype") != "FP32":
        raise ApiError(400, f"datatype {tensor.get('datatype')!r}: the input {INPUT_NAME!r} is FP32")
    shape = tensor.get("shape")
    expected = f"[N, 3, {INPUT_SIZE}, {INPUT_SIZE}] with 1 <= N <= {max_rows}"
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
        or shape[1:] != [3, INPUT_SIZE, INPUT_SIZE]
        or not 1 <= shape[0] <= max_rows
    ):
        raise ApiError(400, f"shape {json.dumps(shape)[:80]}: the input is NCHW {expected}")
    data = tensor.get("data")
    if not isinstance(data, list):
        raise ApiError(400, "'data' must be a list of numbers (flat, or nested as the shape)")
    try:
        raw = np.asarray(data)
    except (ValueError, TypeError):  # ragged nesting
        raise ApiError(400, "'data' is ragged: nested lists must all have the same length") from None
    if raw.dtype.kind not in "iuf":
        raise ApiError(400, "'data' must hold numbers only (FP32)")
    needed = math.prod(shape)
    if raw.size != needed or (raw.ndim != 1 and list(raw.shape) != shape):
        raise ApiError(400, f"'data' has {raw.size} values in shape {list(raw.shape)}; shape {shape} needs {needed}")
    with np.errstate(over="ignore"):
        array = raw.astype(np.float32).reshape(shape)
    if not np.isfinite(array).all():
        raise ApiError(400, "'data' holds values beyond FP32's range")
    outputs = request.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise ApiError(400, "'outputs' must be a list of objects")
        for out in outputs:
            if out.get("name") != OUTPUT_NAME:
                raise ApiError(400, f"unknown output {out.get('name')!r}: the model's output is {OUTPUT_NAME!r}")
    echo = {"id": request["id"]} if isinstance(request.get("id"), str) else {}
    return np.ascontiguousarray(array), echo


def infer_response(model: str, logits: NDArray[np.float32], echo: dict[str, Any]) -> dict[str, Any]:
    return {
        "model_name": model,
        **echo,
        "outputs": [
            {
                "name": OUTPUT_NAME,
                "datatype": "FP32",
                "shape": list(logits.shape),
                "data": logits.astype(np.float32).ravel().tolist(),
            }
        ],
    }


def model_metadata(model: str, variant: str, num_classes: int, platform: str) -> dict[str, Any]:
    return {
        "name": model,
        "versions": ["1"],
        "platform": platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, 3, INPUT_SIZE, INPUT_SIZE]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, num_classes]}],
        "parameters": {"variant": variant, "layout": "NCHW, RGB, ImageNet mean/std normalised"},
    }
