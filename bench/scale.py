"""How the control plane and the data plan grow with the cluster and the data set.

    .venv/bin/python bench/scale.py

- render time and manifest size for 1, 8, 64 and 512 pods, per backend;
- the sample table of a 1,281,167-sample sharded index (generated, no images): build, save, load, and the
  per-rank epoch plan at 8, 64 and 512 ranks (every rank computes its own plan);
- checkpoint size per variant (weights + AdamW moments, float32), from the parameter counts.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

IMAGENET = 1_281_167


def timed(fn, repeat: int = 3) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    from convit.data.index import SampleTable, decode_table, encode_table
    from convit.data.order import rank_plan
    from convit.jobspec import load_job
    from launcher.render import render_objects, render_yaml

    print("render (python -m launcher render), best of 3")
    print(f"{'backend':<10}{'pods':>6}{'ms':>8}{'bytes':>9}")
    for backend in ("job", "volcano", "ascendjob"):
        for pods in (1, 8, 64, 512):
            spec = load_job("convit_small_plus", [f"cluster.backend={backend}", f"cluster.pods={pods}"])
            seconds = timed(lambda spec=spec: render_yaml(render_objects(spec)))
            size = len(render_yaml(render_objects(spec)))
            print(f"{backend:<10}{pods:>6}{seconds * 1e3:>8.1f}{size:>9}")

    print(f"\nsample table of {IMAGENET:,} samples (sharded layout, 32-sample blocks)")
    rng = np.random.default_rng(0)
    lengths = rng.integers(20_000, 200_000, IMAGENET)
    start = time.perf_counter()
    shard_size = 256 << 20
    offsets = np.zeros(IMAGENET, np.int64)
    ends = np.cumsum(lengths)
    shard = (ends // shard_size).astype(np.int32)
    starts_of_shard = np.concatenate([[0], ends[:-1]])
    offsets = starts_of_shard - shard.astype(np.int64) * shard_size
    table = SampleTable(
        classes=[f"n{i:08d}" for i in range(1000)],
        labels=rng.integers(0, 1000, IMAGENET).astype(np.int32),
        keys=[f"train/n{i % 1000:08d}/{i:08d}.JPEG" for i in range(IMAGENET)],
        shard_keys=[f"train-{i:05d}.shard" for i in range(int(shard.max()) + 1)],
        shard=shard,
        offset=offsets,
        length=lengths.astype(np.int64),
    )
    build = time.perf_counter() - start
    start = time.perf_counter()
    blob = encode_table(table)
    save = time.perf_counter() - start
    start = time.perf_counter()
    decode_table(blob)
    load = time.perf_counter() - start
    print(
        f"build {build:.2f}s, save {save:.2f}s, load {load:.2f}s, table {len(blob) / 1e6:.0f} MB, "
        f"{len(table.shard_keys)} shards of 256 MB"
    )
    print(f"{'ranks':>6}{'plan s (one rank)':>20}{'samples/rank':>14}")
    for world in (8, 64, 512):
        batch = 256 if world <= 64 else 128
        seconds = timed(
            lambda world=world, batch=batch: rank_plan(
                IMAGENET, seed=42, epoch=7, rank=world - 1, world=world, batch=batch, block=32
            ),
            repeat=2,
        )
        n = len(rank_plan(IMAGENET, seed=42, epoch=7, rank=0, world=world, batch=batch, block=32))
        print(f"{world:>6}{seconds:>20.3f}{n:>14}")

    print("\ncheckpoint size per variant (weights + AdamW m and v, float32)")
    from convit.models import count_params, create_model, list_models

    counts = {name: count_params(create_model(name)) for name in list_models()}
    for name, params in counts.items():
        print(f"{name:<20}{params * 4 * 3 / 1e6:>8.0f} MB")


if __name__ == "__main__":
    main()
