"""Per-step learning rate: linear warmup from 0, then cosine decay to min_lr (MindCV's warmup_cosine_decay).

The schedule follows the samples seen, in epochs: step s of a run that never changes shape is at position
s / steps_per_epoch epochs. An epoch resumed at another world size (or batch) continues from the position its
earlier segments reached (the fraction of the epoch they covered, `convit.data.order.EpochPlan.fraction`) and
ends exactly at the epoch's end, so the LR has no jump at either end; from the resume on, the peak is the one of
the new global batch (the linear rule, `TrainSpec.peak_lr`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.jobspec.schema import TrainSpec


@dataclass(frozen=True)
class PartialEpoch:
    """The rest of epoch `epoch` at a new shape: `steps` steps starting at `fraction` of the epoch."""

    epoch: int
    fraction: Fraction
    steps: int


def first_slot(steps_per_epoch: int, partial: PartialEpoch) -> int:
    """The table slot of a partial epoch's first step: its steps take the last slots of the epoch's row."""
    return partial.epoch * steps_per_epoch + steps_per_epoch - partial.steps


def lr_schedule(
    train: TrainSpec, steps_per_epoch: int, peak_lr: float | None = None, partial: PartialEpoch | None = None
) -> NDArray[Any]:
    """One float32 LR per slot: epochs x steps_per_epoch, slot s at position s / steps_per_epoch epochs.

    `peak_lr` defaults to `train.lr`; the trainer passes `train.peak_lr(global_batch)` (the linear rule).
    `partial` (an epoch resumed at another shape, with at most steps_per_epoch steps left) puts its steps in the
    last slots of the epoch's row, `first_slot(...)` on, at positions going evenly from where the epoch was to
    its end. Every other slot is the one of a run that trains at this shape from the start.
    """
    peak = train.lr if peak_lr is None else peak_lr
    min_lr = min(train.min_lr, peak)
    total = train.epochs * steps_per_epoch
    warmup = train.warmup_epochs * steps_per_epoch

    def lr_at(step: int | Fraction) -> float:  # `step` in slots of this shape; a Fraction in a partial epoch
        if step < warmup:
            return peak * float(step) / warmup
        progress = float((step - warmup) / max(1, total - warmup))  # both correctly rounded: int or Fraction
        return min_lr + 0.5 * (peak - min_lr) * (1.0 + math.cos(math.pi * progress))

    lrs = np.empty(total, dtype=np.float32)
    for step in range(total):
        lrs[step] = lr_at(step)
    if partial is not None and partial.steps > 0:
        first, f = first_slot(steps_per_epoch, partial), partial.fraction
        for i in range(partial.steps):
            slot = first + i
            if 0 <= slot < total:
                lrs[slot] = lr_at(steps_per_epoch * (partial.epoch + f + (1 - f) * Fraction(i, partial.steps)))
    return lrs
