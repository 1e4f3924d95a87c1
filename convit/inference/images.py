"""Images in, model input out: MindCV's eval preprocessing (the training pipeline's own eval transform).

Resize the shorter side to floor(224 / crop_pct) (bicubic), centre-crop 224, normalise with the ImageNet
mean/std, channels first: `convit.data.transforms.eval_sample` + `normalize`, exactly what validation uses.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.errors import ConvitError

INPUT_SIZE = 224
# Larger files are refused before they are read (a 50 MP image, the decoder's limit, is under 150 MB as a PNG);
# `/dev/zero` or a FIFO given as an image is refused too, instead of reading forever.
MAX_IMAGE_BYTES = 256 << 20


def _per_unit(values: NDArray[Any]) -> tuple[float, ...]:
    return tuple(round(float(v) / 255.0, 6) for v in values)


def mean_std() -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The pipeline's normalisation (convit.data.transforms), per unit of pixel value, for export sidecars."""
    from convit.data.transforms import MEAN, STD

    return _per_unit(MEAN), _per_unit(STD)


class BadImage(ConvitError):
    """An input that is missing or not a decodable image."""


def crop_pct_of(model: str) -> float:
    """The variant's eval crop_pct: its recipe's `eval.crop_pct` (jobs/<model>.yaml), the one place it is stated."""
    from convit.jobspec import load_job
    from convit.jobspec.schema import MODEL_NAMES

    if model not in MODEL_NAMES:
        raise ConvitError(f"unknown model {model!r}; known: {', '.join(MODEL_NAMES)}")
    return float(load_job(model).eval.crop_pct)


def read_bytes(source: str) -> bytes:
    """The bytes of a local path, file:// or s3:// object; BadImage when it cannot be read."""
    from convit.inference.weights import normalize_uri, split_uri

    try:
        uri = normalize_uri(source)
    except (ConvitError, ValueError, OSError) as exc:  # ValueError: a NUL byte in the path
        raise BadImage(f"{source!r}: {exc}") from None
    limit = f"larger than the {MAX_IMAGE_BYTES >> 20} MiB image limit"
    if uri.startswith("file://"):
        path = Path(uri[len("file://") :])
        try:
            if not stat.S_ISREG(path.stat().st_mode):
                raise BadImage(f"{source}: not a regular file")
            with path.open("rb") as handle:
                data = handle.read(MAX_IMAGE_BYTES + 1)
        except FileNotFoundError:
            raise BadImage(f"{source}: no such file") from None
        except OSError as exc:
            raise BadImage(f"{source}: {exc.strerror or type(exc).__name__}") from None
        if len(data) > MAX_IMAGE_BYTES:
            raise BadImage(f"{source}: {limit}")
        return data
    try:
        storage, key = split_uri(uri)
        size = storage.size(key)
        if size is not None and size > MAX_IMAGE_BYTES:
            raise BadImage(f"{source}: {limit}")
        data = storage.get(key)
    except ConvitError as exc:  # StorageError, or a URI that names no object
        message = str(exc)
        raise BadImage(message if message.startswith((source, uri)) else f"{source}: {message}") from None
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImage(f"{source}: {limit}")
    return data


def preprocess(data: bytes, crop_pct: float, name: str = "image") -> NDArray[Any]:
    """float32 (3, 224, 224) for one encoded image; BadImage when it does not decode or is beyond the bounds of
    convit.data.transforms.check_image_shape (pixels, aspect ratio, size after the eval resize)."""
    import cv2

    from convit.data.decode import UndecodableImage
    from convit.data.transforms import eval_sample, normalize

    try:
        pixels = eval_sample(data, crop_pct)
    except UndecodableImage as exc:
        raise BadImage(f"{name}: {exc}") from None
    except (ValueError, cv2.error) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise BadImage(f"{name}: corrupt image data ({first})") from None
    out: NDArray[Any] = normalize(pixels[None])[0]
    return np.ascontiguousarray(out, dtype=np.float32)
