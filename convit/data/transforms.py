"""The recipes' image transforms. Every random choice comes from the generator handed in, which the loader
seeds from (seed, epoch, sample index): the same sample gets the same augmentation in a resumed run and
whatever the number of decode workers.

Per sample (in decode workers, uint8): RandomResizedCrop 224 (bicubic), horizontal flip, colour jitter or
AutoAugment, and the random-erasing box. Per batch (in the loader, float32): normalisation, erasing to 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from convit.data.autoaugment import auto_augment
from convit.data.decode import decode, image_size

SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
INV_STD = (1.0 / STD).astype(np.float32)
NO_BOX = (0, 0, 0, 0)


@dataclass(frozen=True)
class TrainAugment:
    scale_min: float = 0.08
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str = ""
    re_prob: float = 0.25


def random_resized_crop_box(
    height: int, width: int, scale_min: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of torchvision's RandomResizedCrop, ratio 3/4..4/3."""
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * rng.uniform(scale_min, 1.0)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    ratio = width / height  # fallback: centre crop at the nearest allowed ratio
    if ratio < 3 / 4:
        w, h = width, round(width / (3 / 4))
    elif ratio > 4 / 3:
        h, w = height, round(height * (4 / 3))
    else:
        w, h = width, height
    h, w = min(h, height), min(w, width)
    return (height - h) // 2, (width - w) // 2, h, w


def _color_jitter(image: NDArray[Any], strength: float, rng: np.random.Generator) -> NDArray[Any]:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s], applied in random order.

    uint8 OpenCV arithmetic saturates like the clip of a float implementation, at a fraction of its cost.
    """
    factors = rng.uniform(max(0.0, 1 - strength), 1 + strength, size=3)
    img = image
    for op in rng.permutation(3):
        f = float(factors[op])
        if op == 0:  # brightness
            img = cv2.addWeighted(img, f, img, 0.0, 0.0)
        elif op == 1:  # contrast around the mean grey level
            mean = float(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).mean())
            img = cv2.addWeighted(img, f, img, 0.0, (1.0 - f) * mean)
        else:  # saturation: blend with the greyscale image
            grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            img = cv2.addWeighted(img, f, grey, 1.0 - f, 0.0)
    return img


def erasing_box(rng: np.random.Generator, prob: float) -> tuple[int, int, int, int]:
    """timm's RandomErasing box (area 2%-1/3, aspect 0.3-3.3), or NO_BOX."""
    if prob <= 0 or rng.random() >= prob:
        return NO_BOX
    for _ in range(10):
        target = SIZE * SIZE * rng.uniform(0.02, 1 / 3)
        aspect = math.exp(rng.uniform(math.log(0.3), math.log(1 / 0.3)))
        h = round(math.sqrt(target * aspect))
        w = round(math.sqrt(target / aspect))
        if w < SIZE and h < SIZE:
            return int(rng.integers(0, SIZE - h + 1)), int(rng.integers(0, SIZE - w + 1)), h, w
    return NO_BOX


def train_sample(
    data: bytes, aug: TrainAugment, rng: np.random.Generator
) -> tuple[NDArray[Any], tuple[int, int, int, int]]:
    """(uint8 224x224x3 image, erasing box) for one training image."""
    height, width = image_size(data)
    top, left, h, w = random_resized_crop_box(height, width, aug.scale_min, rng)
    # Decode at the smallest DCT scale that keeps the crop at least 224 pixels on each side.
    image = decode(data, (math.ceil(height * SIZE / h), math.ceil(width * SIZE / w)))
    sy, sx = image.shape[0] / height, image.shape[1] / width
    y0, x0 = int(top * sy), int(left * sx)
    y1, x1 = max(y0 + 1, round((top + h) * sy)), max(x0 + 1, round((left + w) * sx))
    out = cv2.resize(image[y0:y1, x0:x1], (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    if rng.random() < aug.hflip:
        out = out[:, ::-1]
    if aug.auto_augment:
        out = auto_augment(np.ascontiguousarray(out), rng, magnitude_std=0.5)
    elif aug.color_jitter > 0:
        out = _color_jitter(out, aug.color_jitter, rng)
    return np.ascontiguousarray(out), erasing_box(rng, aug.re_prob)


def eval_sample(data: bytes, crop_pct: float) -> NDArray[Any]:
    """Resize the shorter side to floor(224 / crop_pct) (bicubic), then centre-crop 224."""
    height, width = image_size(data)
    short = math.floor(SIZE / crop_pct)
    if height <= width:
        new_h, new_w = short, max(short, round(width * short / height))
    else:
        new_w, new_h = short, max(short, round(height * short / width))
    image = decode(data, (new_h, new_w))
    image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_CUBIC)
    top, left = (new_h - SIZE) // 2, (new_w - SIZE) // 2
    return np.ascontiguousarray(image[top : top + SIZE, left : left + SIZE])


def normalize(batch: NDArray[Any], boxes: NDArray[Any] | None = None) -> NDArray[Any]:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) with ImageNet mean/std; erasing boxes set to 0.

    OpenCV's blobFromImages does the mean subtraction and the NHWC -> NCHW copy in one C++ pass (about 3x
    faster than numpy here); the per-channel 1/std follows in place.
    """
    out: NDArray[Any] = cv2.dnn.blobFromImages(list(batch), 1.0, (SIZE, SIZE), MEAN.tolist(), swapRB=False, crop=False)
    out *= INV_STD[None, :, None, None]
    if boxes is not None:
        for i, (top, left, h, w) in enumerate(boxes):
            if h and w:
                out[i, :, top : top + h, left : left + w] = 0.0
    return out
