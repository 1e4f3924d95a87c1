"""Images in, model input out: MindCV's eval preprocessing (the training pipeline's own eval transform).

Resize the shorter side to floor(224 / crop_pct) (bicubic), centre-crop 224, normalise with the ImageNet
mean/std, channels first: `convit.data.transforms.eval_sample` + `normalize`, exactly what validation uses.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.errors import ConvitError

INPUT_SIZE = 224


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
    from convit.storage import StorageError

    uri = normalize_uri(source)
    if uri.startswith("file://"):
        path = Path(uri[len("file://") :])
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise BadImage(f"{source}: no such file") from None
        except OSError as exc:
            raise BadImage(f"{source}: {exc.strerror}") from None
    try:
        storage, key = split_uri(uri)
        return storage.get(key)
    except StorageError as exc:
        raise BadImage(str(exc)) from None


def preprocess(data: bytes, crop_pct: float, name: str = "image") -> NDArray[Any]:
    """float32 (3, 224, 224) for one encoded image; BadImage when it does not decode."""
    import cv2

    from convit.data.decode import UndecodableImage
    from convit.data.transforms import eval_sample, normalize

    try:
        pixels = eval_sample(data, crop_pct)
    except UndecodableImage as exc:
        raise BadImage(f"{name}: {exc}") from None
    except (ValueError, cv2.error) as exc:
        raise BadImage(f"{name}: corrupt image data ({str(exc).splitlines()[0][:120]})") from None
    out: NDArray[Any] = normalize(pixels[None])[0]
    return np.ascontiguousarray(out, dtype=np.float32)
