"""Which samples each rank reads, in which order, for every epoch, at any world size.

An epoch is trained in segments: stretches of steps at one shape (world size x batch per rank). A run that is
never resumed elsewhere has one segment per epoch; resuming on another world size (or batch) starts a new one.
The position in an epoch is the list of its segments so far, `[(world, batch, steps), ...]`; it does not
depend on the world size that reads it, and every rank computes the same plan from (seed, epoch, segments,
world size) alone. A segment plans the samples the earlier segments of the epoch did not consume (all of them
for the first segment):
  1. samples are grouped in blocks of consecutive samples (one ranged GET reads a whole block of a shard;
     ImageFolder uses blocks of one), and the blocks are shuffled with a generator seeded by (seed, epoch) (and
     the samples consumed before the segment, for a later segment, whose blocks may be partly consumed);
  2. blocks go round-robin, in that order, to the ranks (for the first segment, where blocks are equal but the
     last, that is "to the rank with the fewest samples so far", so ranks differ by < one block);
  3. every rank keeps exactly steps x batch samples: surplus at the tail of one rank fills a shortfall of
     another, and what is left over (fewer than one global batch) is dropped for this epoch;
  4. each rank shuffles its samples within fixed windows (seeded by (seed, epoch, rank, window), and the
     segment's start for a later segment).
The parts are disjoint and equal, so the ranks see each kept sample exactly once per epoch, and starting at
step k of a segment means skipping the first k x batch samples of the rank's list: a job resumed at any world
size sees exactly the samples it had not seen in that epoch. The first segment's plan is the plan of a run that
never changes shape. Decode workers never influence the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.data.errors import DataError

WINDOW = 256  # samples per local-shuffle window (and per decode task)
_BLOCK_ORDER, _WINDOW_ORDER = 17, 13  # seed tags of a later segment's generators


def epoch_rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *parts]))


@dataclass(frozen=True)
class Segment:
    """`steps` global steps of an epoch trained by `world` ranks with `batch` samples each."""

    world: int
    batch: int
    steps: int

    @property
    def samples(self) -> int:
        return self.world * self.batch * self.steps

    def same_shape(self, world: int, batch: int) -> bool:
        return (self.world, self.batch) == (world, batch)


def merge_segments(segments: Sequence[Segment]) -> tuple[Segment, ...]:
    """Adjacent segments of one shape are one segment (a resume at the same shape continues it); empty ones go."""
    merged: list[Segment] = []
    for seg in segments:
        if seg.steps <= 0:
            continue
        if merged and merged[-1].same_shape(seg.world, seg.batch):
            merged[-1] = Segment(seg.world, seg.batch, merged[-1].steps + seg.steps)
        else:
            merged.append(seg)
    return tuple(merged)


def advance(segments: Sequence[Segment], world: int, batch: int, steps: int = 1) -> tuple[Segment, ...]:
    """The epoch's segments after `steps` more steps at shape (world, batch)."""
    return merge_segments([*segments, Segment(world, batch, steps)])


class _SegmentParts:
    """Every rank's samples for one segment, before the window shuffle (which only reorders within windows)."""

    def __init__(
        self, pool: NDArray[Any] | None, num_samples: int, *, seed: int, epoch: int, offset: int, world: int,
        batch: int, block: int,
    ) -> None:  # fmt: skip
        self.seed, self.epoch, self.offset, self.batch = seed, epoch, offset, batch
        if pool is None:  # the first segment: every sample, in the blocks of a run that never changes shape
            num_blocks = -(-num_samples // block)
            order = epoch_rng(seed, epoch).permutation(num_blocks)
            # Blocks are equal except the last, so "to the least-loaded rank" is round-robin over the shuffled blocks.
            parts = []
            for r in range(world):
                starts = order[r::world] * block
                idx = (starts[:, None] + np.arange(block)[None, :]).ravel()
                parts.append(idx[idx < num_samples])
            available = num_samples
        else:  # a later segment: the samples not consumed yet, grouped by block (blocks may be partly consumed)
            blocks, group = np.unique(pool // block, return_inverse=True)
            position = np.empty(len(blocks), np.int64)
            position[epoch_rng(seed, epoch, offset, _BLOCK_ORDER).permutation(len(blocks))] = np.arange(len(blocks))
            rank_of = position[group] % world
            by_block = np.lexsort((pool, position[group]))  # blocks in shuffled order, samples ascending in each
            parts = [pool[by_block][rank_of[by_block] == r] for r in range(world)]
            available = len(pool)
        self.steps = available // (batch * world)
        need = self.steps * batch
        # Level the ranks: tail surplus moves to ranks that are short, in rank order (deterministic).
        surplus = np.concatenate([p[need:] for p in parts]) if parts else np.empty(0, np.int64)
        taken = 0
        for r in range(world):
            short = need - min(len(parts[r]), need)
            parts[r] = np.concatenate([parts[r][:need], surplus[taken : taken + short]]).astype(np.int64)
            taken += short
        self.parts = parts

    def _window_rng(self, rank: int, window: int) -> np.random.Generator:
        if self.offset == 0:
            return epoch_rng(self.seed, self.epoch, rank, window)
        return epoch_rng(self.seed, self.epoch, rank, window, self.offset, _WINDOW_ORDER)

    def rank(self, rank: int) -> NDArray[Any]:
        """Rank `rank`'s samples in the order it reads them."""
        mine = self.parts[rank].copy()
        for w, start in enumerate(range(0, len(mine), WINDOW)):
            window = mine[start : start + WINDOW]
            mine[start : start + WINDOW] = window[self._window_rng(rank, w).permutation(len(window))]
        return mine

    def consumed(self, steps: int) -> NDArray[Any]:
        """The samples every rank read in the segment's first `steps` steps (only a partly read window is shuffled)."""
        count = steps * self.batch
        whole = count // WINDOW * WINDOW
        out = []
        for r, part in enumerate(self.parts):
            out.append(part[:whole])
            if count > whole:
                window = part[whole : whole + WINDOW]
                shuffled = window[self._window_rng(r, whole // WINDOW).permutation(len(window))]
                out.append(shuffled[: count - whole])
        return np.concatenate(out) if out else np.empty(0, np.int64)


@dataclass(frozen=True)
class EpochPlan:
    """One rank's plan for the rest of an epoch: the current segment, and where in it (and in the epoch) it is."""

    epoch: int
    world: int
    batch: int
    indices: NDArray[Any]  # the rank's samples for the whole current segment: steps x batch
    start: int  # steps of the current segment already done
    steps: int  # steps of the current segment
    before: tuple[Segment, ...]  # the epoch's earlier segments (other shapes)
    fraction: Fraction  # of the epoch's schedule behind at the segment's start: 0 for an epoch's first segment

    @property
    def done_steps(self) -> int:
        """Steps of the epoch done (every segment): the epoch step of the next batch."""
        return sum(s.steps for s in self.before) + self.start

    @property
    def epoch_steps(self) -> int:
        """Steps of the epoch when it ends."""
        return sum(s.steps for s in self.before) + self.steps

    @property
    def done_samples(self) -> int:
        """Samples of the epoch consumed (all ranks, every segment)."""
        return sum(s.samples for s in self.before) + self.start * self.world * self.batch

    @property
    def kept_samples(self) -> int:
        """Samples the epoch trains when it ends; the rest (less than one global batch) is dropped."""
        return sum(s.samples for s in self.before) + self.steps * self.world * self.batch

    @property
    def elastic(self) -> bool:
        """True when earlier segments of this epoch ran at another shape."""
        return bool(self.before)

    def segments(self, steps_done: int = 0) -> tuple[Segment, ...]:
        """The epoch's position after `steps_done` more steps of this plan."""
        return advance(self.before, self.world, self.batch, self.start + steps_done)


def epoch_plan(
    num_samples: int,
    *,
    seed: int,
    epoch: int,
    rank: int,
    world: int,
    batch: int,
    block: int = 1,
    done: Sequence[Segment] = (),
) -> EpochPlan:
    """Rank `rank`'s plan for the rest of `epoch`, after the epoch's segments `done`, at shape (world, batch)."""
    history = merge_segments(done)
    start = 0
    if history and history[-1].same_shape(world, batch):  # the same shape continues its segment
        start, history = history[-1].steps, history[:-1]
    pool: NDArray[Any] | None = None
    offset, fraction = 0, Fraction(0)
    for seg in history:
        parts = _SegmentParts(
            pool, num_samples, seed=seed, epoch=epoch, offset=offset, world=seg.world, batch=seg.batch, block=block
        )
        if seg.steps > parts.steps:
            raise DataError(
                f"epoch {epoch}: {seg.steps} steps of {seg.world} x {seg.batch} recorded, but only {parts.steps} "
                f"fit the {num_samples} samples: the data set changed since the checkpoint"
            )
        used = np.zeros(num_samples, bool)
        used[parts.consumed(seg.steps)] = True
        pool = np.flatnonzero(~used) if pool is None else pool[~used[pool]]
        offset += seg.samples
        # The schedule follows the epoch's samples: each segment covers its share of what was left.
        fraction += (1 - fraction) * Fraction(seg.steps, parts.steps)
    current = _SegmentParts(
        pool, num_samples, seed=seed, epoch=epoch, offset=offset, world=world, batch=batch, block=block
    )
    if start > current.steps:
        raise DataError(
            f"epoch {epoch}: {start} steps of {world} x {batch} recorded, but only {current.steps} fit the "
            f"{num_samples} samples: the data set changed since the checkpoint"
        )
    return EpochPlan(
        epoch=epoch,
        world=world,
        batch=batch,
        indices=current.rank(rank),
        start=start,
        steps=current.steps,
        before=history,
        fraction=fraction,
    )


def rank_plan(
    num_samples: int, *, seed: int, epoch: int, rank: int, world: int, batch: int, block: int = 1
) -> NDArray[Any]:
    """The sample indices rank `rank` reads in epoch `epoch` started at this shape: steps_per_epoch x batch."""
    return epoch_plan(num_samples, seed=seed, epoch=epoch, rank=rank, world=world, batch=batch, block=block).indices


def val_plan(num_samples: int, rank: int, world: int) -> NDArray[Any]:
    """Validation: contiguous, disjoint parts that together cover every sample once (no padding)."""
    bounds = np.linspace(0, num_samples, world + 1).astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)
