"""A small generated ImageNet-format data set (real JPEGs) that a tiny ConViT can learn: each class has its
own colour and stripe orientation, under per-image noise, jitter and scale changes."""

from __future__ import annotations

import numpy as np
import simplejpeg

from convit.storage import Storage


def wnid(index: int) -> str:
    return f"n{index:08d}"


def make_image(cls: int, classes: int, rng: np.random.Generator) -> bytes:
    height, width = int(rng.integers(240, 320)), int(rng.integers(260, 360))
    hue = 2 * np.pi * cls / classes
    colour = 127 + 100 * np.array([np.cos(hue), np.cos(hue + 2.1), np.cos(hue + 4.2)])
    angle = np.pi * cls / classes
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    stripes = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) / (6 + 2 * (cls % 3)) + rng.uniform(0, 6.28))
    image = colour[None, None, :] * (0.75 + 0.25 * stripes[..., None])
    image += rng.normal(0, 18, size=image.shape)
    return bytes(simplejpeg.encode_jpeg(np.clip(image, 0, 255).astype(np.uint8), quality=90, colorspace="RGB"))


def make_sample(storage: Storage, classes: int, per_class: int, val_per_class: int, seed: int = 0) -> int:
    """Write train/<wnid>/*.JPEG and val/<wnid>/*.JPEG; returns the number of images written."""
    rng = np.random.default_rng(seed)
    written = 0
    for split, count in (("train", per_class), ("val", val_per_class)):
        for cls in range(classes):
            for i in range(count):
                storage.put(f"{split}/{wnid(cls)}/{wnid(cls)}_{split}_{i:05d}.JPEG", make_image(cls, classes, rng))
                written += 1
    return written
