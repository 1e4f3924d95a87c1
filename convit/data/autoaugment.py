"""MindCV 0.3.0's `autoaug-mstd0.5`: AutoAugment's ImageNet policy (the "original" table, PosterizeOriginal)
with Gaussian magnitude noise, on uint8 RGB numpy images.

Every op maps its magnitude to its parameter as `mindcv/data/auto_augment.py` does and applies it as the
MindSpore 2.10 C++ kernel MindCV calls (those kernels are OpenCV 4.11; the same OpenCV calls here give the same
bytes; `tests/test_mindcv_parity_data.py` checks each op at every magnitude against MindCV itself):

| op           | parameter from magnitude m (0..10)          | applied as (MindSpore kernel)                         |
|--------------|---------------------------------------------|-------------------------------------------------------|
| AutoContrast | none                                        | per-channel min/max stretch, float32 LUT, truncation  |
| Equalize     | none                                        | cv2.equalizeHist per channel                          |
| Invert       | none                                        | 255 - x                                               |
| Rotate       | +-m/10*30 degrees (sign flip p=0.5)         | warpAffine bicubic about ((w-1)/2, (h-1)/2), fill BGR |
| Posterize    | keep max(8 - (int(m/10*4) + 4), 1) bits     | x & mask                                              |
| Solarize     | t = int(m/10*255)                           | x >= t -> 255 - x                                     |
| Color        | f = m/10*1.8 + 0.1                          | f*x + (1-f)*grey                                      |
| Contrast     | f = m/10*1.8 + 0.1                          | (1-f)*round(mean grey) + f*x                          |
| Sharpness    | f = m/10*1.8 + 0.1                          | f*x + (1-f)*smooth(x), border pixels kept             |
| ShearX       | s = +-m/10*0.3 (sign flip p=0.5), *degrees* | affine x' = x + tan(s deg)*(y - cy), bicubic          |

Two MindCV/MindSpore quirks are reproduced on purpose, because they are what the published runs trained with:
MindCV's `posterize` passes `8 - bits_to_keep` as the number of bits to *keep* (so "PosterizeOriginal" at
magnitude 8 keeps 1 bit, not 7), and MindSpore's Rotate hands the fill colour to OpenCV as (b, g, r) on an RGB
image, so rotated-in corners are (104, 116, 124), not the ImageNet mean (124, 116, 104). ShearX's level goes to
MindSpore's RandomAffine, whose shear is in degrees: at most 0.3 degrees, where timm shears by a factor of 0.3.

Randomness: everything comes from the numpy Generator handed in, drawn in MindCV's order (sub-policy, then per
op: probability test unless p = 1, magnitude noise, sign), so a sample's augmentation is a function of its seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

LEVEL_DENOM = 10.0
# MindCV: img_mean = tuple(min(255, round(x)) for x in IMAGENET_DEFAULT_MEAN), the fill of Rotate and ShearX.
FILL = (124, 116, 104)
_INTERPOLATION = cv2.INTER_CUBIC  # the recipes' `interpolation: bicubic`, which MindCV hands to AutoAugment

# (op, probability, magnitude 0..10): MindCV's auto_augment_policy_posterize_original ("autoaug"), with its
# "PosterizeOriginal" spelled "Posterize" here.
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

OP_NAMES = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "Color",
    "Contrast",
    "Sharpness",
    "ShearX",
)
SIGNED = frozenset({"Rotate", "ShearX"})  # the ops whose level MindCV negates with probability 0.5


def op_arg(name: str, magnitude: float, negate: bool = False) -> float:
    """MindCV's LEVEL_TO_ARG for `name` at `magnitude` (already clipped to 0..10); `negate` is its coin flip."""
    level = magnitude / LEVEL_DENOM
    if name == "Rotate":
        value = level * 30.0
    elif name == "ShearX":
        value = level * 0.3
    elif name == "Posterize":  # PosterizeOriginal's bits_to_keep, then MindCV's posterize(): max(8 - it, 1)
        return float(max(8 - (int(level * 4) + 4), 1))
    elif name == "Solarize":
        return float(int(level * 255))
    elif name in ("Color", "Contrast", "Sharpness"):
        return level * 1.8 + 0.1
    else:
        return 0.0
    return -value if negate else value


def _auto_contrast(img: NDArray[Any]) -> NDArray[Any]:
    out = np.empty_like(img)
    ramp = np.arange(256, dtype=np.float32)
    for c in range(img.shape[2]):
        plane = img[..., c]
        lo, hi = int(plane.min()), int(plane.max())
        if hi <= lo:
            out[..., c] = plane
            continue
        scale = np.float32(255.0) / np.float32(hi - lo)
        offset = np.float32(-lo) * scale
        table = np.clip((ramp * scale + offset).astype(np.int32), 0, 255).astype(np.uint8)
        out[..., c] = table[plane]
    return out


def _equalize(img: NDArray[Any]) -> NDArray[Any]:
    return cv2.merge([cv2.equalizeHist(np.ascontiguousarray(img[..., c])) for c in range(img.shape[2])])


def _rotate(img: NDArray[Any], degrees: float) -> NDArray[Any]:
    h, w = img.shape[:2]
    centre = (float(np.float32((w - 1) * 0.5)), float(np.float32((h - 1) * 0.5)))
    # MindSpore's RandomRotation takes degrees % 360 (Python), stores float32: -9.3 rotates by float32(350.7).
    matrix = cv2.getRotationMatrix2D(centre, float(np.float32(degrees % 360.0)), 1.0)
    fill = FILL[::-1]  # MindSpore's Rotate passes Scalar(b, g, r) to OpenCV for an RGB image
    return cv2.warpAffine(img, matrix, (w, h), flags=_INTERPOLATION, borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


def _shear_x(img: NDArray[Any], level: float) -> NDArray[Any]:
    # MindCV: RandomAffine(degrees=0, shear=(-level, -level)); MindSpore's GetAffineMatrix in float32, shear in degrees.
    h, w = img.shape[:2]
    shear = np.float32(np.float32(-level) * np.float32(math.pi) / np.float32(180.0))
    m01 = np.float32(-math.tan(float(shear)))
    cy = np.float32((h - 1) / 2.0)
    matrix = np.array([[1.0, m01, -m01 * cy], [0.0, 1.0, 0.0]], np.float32)
    return cv2.warpAffine(img, matrix, (w, h), flags=_INTERPOLATION, borderMode=cv2.BORDER_CONSTANT, borderValue=FILL)


def _posterize(img: NDArray[Any], bits: float) -> NDArray[Any]:
    return img & np.uint8((0xFF << (8 - int(bits))) & 0xFF)


def _solarize(img: NDArray[Any], threshold: float) -> NDArray[Any]:
    return np.where(img >= threshold, 255 - img, img).astype(np.uint8)


def _grey3(img: NDArray[Any]) -> NDArray[Any]:
    return cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def _color(img: NDArray[Any], factor: float) -> NDArray[Any]:
    f = float(np.float32(factor))
    return cv2.addWeighted(img, f, _grey3(img), 1.0 - f, 0.0)


def _contrast(img: NDArray[Any], factor: float) -> NDArray[Any]:
    f = float(np.float32(factor))
    mean = float(cv2.mean(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))[0])
    flat = np.full_like(img, int(np.clip(np.rint(mean), 0, 255)))  # saturate_cast<uchar>: round half to even
    return cv2.addWeighted(flat, 1.0 - f, img, f, 0.0)


_SMOOTH = np.full((3, 3), 1.0 / 13.0, np.float32)
_SMOOTH[1, 1] = 5.0 / 13.0


def _sharpness(img: NDArray[Any], factor: float) -> NDArray[Any]:
    f = float(np.float32(factor))
    smooth = cv2.filter2D(img, -1, _SMOOTH)
    smooth[0], smooth[-1], smooth[:, 0], smooth[:, -1] = img[0], img[-1], img[:, 0], img[:, -1]
    return cv2.addWeighted(img, f, smooth, 1.0 - f, 0.0)


_APPLY: dict[str, Callable[[NDArray[Any], float], NDArray[Any]]] = {
    "AutoContrast": lambda img, _: _auto_contrast(img),
    "Equalize": lambda img, _: _equalize(img),
    "Invert": lambda img, _: 255 - img,
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "Color": _color,
    "Contrast": _contrast,
    "Sharpness": _sharpness,
    "ShearX": _shear_x,
}


def apply_op(name: str, image: NDArray[Any], arg: float) -> NDArray[Any]:
    """Apply op `name` with the parameter `op_arg` gave to an RGB uint8 (H, W, 3) image."""
    return _APPLY[name](np.ascontiguousarray(image), arg)


def auto_augment(image: NDArray[Any], rng: np.random.Generator, magnitude_std: float = 0.5) -> NDArray[Any]:
    """Apply one randomly chosen sub-policy to an RGB uint8 image, drawing as MindCV's AutoAugment does."""
    policy = IMAGENET_POLICY[int(rng.integers(len(IMAGENET_POLICY)))]
    out = image
    for name, prob, magnitude in policy:
        if prob < 1.0 and rng.random() > prob:
            continue
        m = float(rng.normal(magnitude, magnitude_std)) if magnitude_std > 0 else float(magnitude)
        m = max(0.0, min(m, LEVEL_DENOM))
        negate = name in SIGNED and rng.random() > 0.5
        out = apply_op(name, out, op_arg(name, m, negate))
    return np.ascontiguousarray(out)
