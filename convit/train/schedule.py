"""Per-step learning rate: linear warmup from 0, then cosine decay to min_lr (MindCV's warmup_cosine_decay)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.jobspec.schema import TrainSpec


def lr_schedule(train: TrainSpec, steps_per_epoch: int, peak_lr: float | None = None) -> NDArray[Any]:
    """One float32 LR per global step of the whole recipe (epochs x steps_per_epoch).

    `peak_lr` defaults to `train.lr`; the trainer passes `train.peak_lr(global_batch)` (the linear rule).
    """
    peak = train.lr if peak_lr is None else peak_lr
    min_lr = min(train.min_lr, peak)
    total = train.epochs * steps_per_epoch
    warmup = train.warmup_epochs * steps_per_epoch
    lrs = np.empty(total, dtype=np.float32)
    for step in range(total):
        if step < warmup:
            lrs[step] = peak * step / warmup
        else:
            progress = (step - warmup) / max(1, total - warmup)
            lrs[step] = min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))
    return lrs
