"""Which samples each rank reads, in which order, for every epoch.

Every rank computes the same plan from (seed, epoch, world size) alone:
  1. samples are grouped in blocks of consecutive samples (one ranged GET reads a whole block of a shard;
     ImageFolder uses blocks of one), and the blocks are shuffled with a generator seeded by (seed, epoch);
  2. blocks go, in that order, to the rank with the fewest samples so far, so ranks differ by < one block;
  3. each rank shuffles its samples within fixed windows (seeded by (seed, epoch, rank, window));
  4. every rank keeps exactly steps_per_epoch x batch samples: surplus at the tail of one rank fills a
     shortfall of another, and what is left over (fewer than one global batch) is dropped.
The parts are disjoint and equal, so together the ranks see each kept sample exactly once per epoch, and
starting at step k means skipping the first k x batch samples of the rank's list: a resumed job sees
exactly the samples it had not seen. Decode workers never influence the plan.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

WINDOW = 256  # samples per local-shuffle window (and per decode task)


def epoch_rng(seed: int, *parts: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, *parts]))


def rank_plan(
    num_samples: int, *, seed: int, epoch: int, rank: int, world: int, batch: int, block: int = 1
) -> NDArray[Any]:
    """The sample indices rank `rank` reads in epoch `epoch`: steps_per_epoch x batch of them."""
    need = (num_samples // (batch * world)) * batch
    num_blocks = -(-num_samples // block)
    order = epoch_rng(seed, epoch).permutation(num_blocks)
    # Blocks are equal except the last, so "to the least-loaded rank" is round-robin over the shuffled blocks.
    parts = []
    for r in range(world):
        starts = order[r::world] * block
        idx = (starts[:, None] + np.arange(block)[None, :]).ravel()
        parts.append(idx[idx < num_samples])
    # Level the ranks: tail surplus moves to ranks that are short, in rank order (deterministic).
    surplus = np.concatenate([p[need:] for p in parts]) if parts else np.empty(0, np.int64)
    taken = 0
    for r in range(world):
        short = need - min(len(parts[r]), need)
        parts[r] = np.concatenate([parts[r][:need], surplus[taken : taken + short]])
        taken += short
    mine = parts[rank].astype(np.int64)
    for w, start in enumerate(range(0, len(mine), WINDOW)):
        window = mine[start : start + WINDOW]
        mine[start : start + WINDOW] = window[epoch_rng(seed, epoch, rank, w).permutation(len(window))]
    return mine


def val_plan(num_samples: int, rank: int, world: int) -> NDArray[Any]:
    """Validation: contiguous, disjoint parts that together cover every sample once (no padding)."""
    bounds = np.linspace(0, num_samples, world + 1).astype(np.int64)
    return np.arange(bounds[rank], bounds[rank + 1], dtype=np.int64)
