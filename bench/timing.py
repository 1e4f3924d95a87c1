"""Timing shared by the benchmarks."""

from __future__ import annotations

import time
from collections.abc import Callable


def round_robin(fns: dict[str, Callable[[], object]], steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of each call of each function, timed round-robin (one call of each per round, after `warmup` calls
    each), so that drift in the machine's speed, or load from other processes, falls on every implementation alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {label: [] for label in fns}
    for _ in range(steps):
        for label, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return times
