"""Mixup / CutMix on every batch with label smoothing (timm's Mixup, batch mode)."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def smooth_one_hot(labels: NDArray[Any], num_classes: int, smoothing: float) -> NDArray[Any]:
    off = smoothing / num_classes
    out = np.full((len(labels), num_classes), off, dtype=np.float32)
    out[np.arange(len(labels)), labels] = 1.0 - smoothing + off
    return out


def mix_batch(
    images: NDArray[Any],
    labels: NDArray[Any],
    *,
    num_classes: int,
    smoothing: float,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float,
    rng: np.random.Generator,
) -> tuple[NDArray[Any], NDArray[Any]]:
    """Mix each sample with the batch reversed; returns (images, soft targets). Images are mixed in place."""
    targets = smooth_one_hot(labels, num_classes, smoothing)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < switch_prob)
    if not use_cutmix and mixup_alpha <= 0:
        return images, targets
    lam = float(rng.beta(cutmix_alpha, cutmix_alpha) if use_cutmix else rng.beta(mixup_alpha, mixup_alpha))
    if use_cutmix:
        height, width = images.shape[2:]
        cut = np.sqrt(1.0 - lam)
        ch, cw = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(height)), int(rng.integers(width))
        y0, y1 = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
        x0, x1 = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
        images[:, :, y0:y1, x0:x1] = images[::-1, :, y0:y1, x0:x1].copy()  # only the box is copied
        lam = 1.0 - float((y1 - y0) * (x1 - x0)) / (height * width)  # the area actually swapped
    else:
        other = images[::-1] * (1.0 - lam)  # float32 products, as before, without a separate reversed copy
        images *= lam
        images += other
    return images, (lam * targets + (1.0 - lam) * targets[::-1]).astype(np.float32)
