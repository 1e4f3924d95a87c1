"""AutoAugment's ImageNet policy with Gaussian magnitude noise (timm's `autoaug-mstd0.5`), on PIL images."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, ImageEnhance, ImageOps

_MAX = 10.0
_FILL = (128, 128, 128)

# (op, probability, magnitude 0..10) pairs: the 25 sub-policies of the ImageNet policy.
IMAGENET_POLICY: list[tuple[tuple[str, float, int], tuple[str, float, int]]] = [
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
]


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() < 0.5 else value


def _enhance(kind: Callable[[Image.Image], ImageEnhance._Enhance]) -> Callable[..., Image.Image]:
    return lambda img, m, rng: kind(img).enhance(1.0 + _signed(m / _MAX * 0.9, rng))


_OPS: dict[str, Callable[[Image.Image, float, np.random.Generator], Image.Image]] = {
    "AutoContrast": lambda img, m, rng: ImageOps.autocontrast(img),
    "Equalize": lambda img, m, rng: ImageOps.equalize(img),
    "Invert": lambda img, m, rng: ImageOps.invert(img),
    "Rotate": lambda img, m, rng: img.rotate(_signed(m / _MAX * 30.0, rng), fillcolor=_FILL),
    "Posterize": lambda img, m, rng: ImageOps.posterize(img, max(1, int(8 - m / _MAX * 4))),
    "Solarize": lambda img, m, rng: ImageOps.solarize(img, int(256 - m / _MAX * 256)),
    "Color": _enhance(ImageEnhance.Color),
    "Contrast": _enhance(ImageEnhance.Contrast),
    "Sharpness": _enhance(ImageEnhance.Sharpness),
    "ShearX": lambda img, m, rng: img.transform(
        img.size, Image.Transform.AFFINE, (1, _signed(m / _MAX * 0.3, rng), 0, 0, 1, 0), fillcolor=_FILL
    ),
}


def auto_augment(image: NDArray[Any], rng: np.random.Generator, magnitude_std: float = 0.5) -> NDArray[Any]:
    """Apply one randomly chosen sub-policy to an RGB uint8 image."""
    policy = IMAGENET_POLICY[int(rng.integers(len(IMAGENET_POLICY)))]
    pil = Image.fromarray(image)
    for name, prob, magnitude in policy:
        if rng.random() > prob:
            continue
        m = float(np.clip(magnitude + rng.normal(0.0, magnitude_std), 0.0, _MAX))
        pil = _OPS[name](pil, m, rng)
    return np.asarray(pil)
