"""Convert an ImageFolder tree into large shard objects plus an index, resumably.

Samples are written in one seeded shuffled order, so consecutive samples of a shard (read together by one
ranged GET) mix classes. Each finished shard is recorded in `_prepare/<shard>.json` with its size and
sha256; a rerun after an interruption verifies and skips those, and the index is written last, so a
reader never sees a half-built data set.
"""

from __future__ import annotations

import hashlib
import json
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from convit.data.errors import DataError
from convit.data.index import SampleTable, list_imagefolder, write_shard_index
from convit.storage import Storage, StorageError

MAX_SHARD_BYTES = 4 << 30  # a shard is assembled in memory and written with a single PUT (S3's limit: 5 GB)


def parse_size(text: str) -> int:
    units = {"KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "B": 1}
    upper = text.strip().upper()
    number, factor = upper, 1
    for unit, size in units.items():
        if upper.endswith(unit):
            number, factor = upper[: -len(unit)], size
            break
    try:
        value = int(float(number) * factor)
    except (ValueError, OverflowError):  # also nan and inf
        raise DataError(f"--shard-size {text!r}: expected a size like 256MB") from None
    if value < 1 << 16:
        raise DataError(f"--shard-size {text!r}: shards must be at least 64KB")
    if value > MAX_SHARD_BYTES:
        raise DataError(
            f"--shard-size {text!r}: shards must be at most 4GB (each is built in memory and written with one PUT)"
        )
    return value


def _progress(done: int, total: int, label: str) -> None:
    width = 30
    filled = int(width * done / max(1, total))
    sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def prepare(src: Storage, dst: Storage, shard_size: int, seed: int = 0, quiet: bool = False) -> dict[str, int]:
    train = list_imagefolder(src, "train")
    splits = {"train": train}
    try:
        splits["val"] = list_imagefolder(src, "val", train.classes)
    except DataError as exc:
        if "no images under" not in str(exc):
            raise
    tables: dict[str, SampleTable] = {}
    counts: dict[str, int] = {}
    with ThreadPoolExecutor(16) as threads:
        for split, table in splits.items():
            order = np.random.default_rng(seed).permutation(len(table))
            keys = table.keys
            sizes = list(threads.map(lambda i, keys=keys: src.size(keys[int(i)]) or 0, order))
            # Cut the shuffled order into shards of about shard_size bytes.
            groups: list[list[int]] = [[]]
            filled = 0
            for i, size in zip(order, sizes, strict=True):
                if groups[-1] and filled + size > shard_size:
                    groups.append([])
                    filled = 0
                groups[-1].append(int(i))
                filled += size
            shard_keys = [f"{split}-{n:05d}.shard" for n in range(len(groups))]
            n = len(table)
            shard = np.zeros(n, np.int32)
            offset = np.zeros(n, np.int64)
            length = np.zeros(n, np.int64)
            positions: list[int] = []
            for g, group in enumerate(groups):
                if not quiet:
                    _progress(g, len(groups), f"{split} shards")
                blobs = list(threads.map(lambda i, keys=keys: src.get(keys[i]), group))
                at = 0
                for slot, blob in enumerate(blobs):
                    pos = len(positions) + slot
                    shard[pos], offset[pos], length[pos] = g, at, len(blob)
                    at += len(blob)
                payload = b"".join(blobs)
                digest = hashlib.sha256(payload).hexdigest()
                marker = f"_prepare/{shard_keys[g]}.json"
                if not _already_written(dst, shard_keys[g], marker, len(payload), digest):
                    dst.put(shard_keys[g], payload)
                    dst.put(marker, json.dumps({"size": len(payload), "sha256": digest}).encode())
                positions.extend(group)
            if not quiet:
                _progress(len(groups), len(groups), f"{split} shards")
            idx = np.asarray(positions, dtype=np.int64)
            tables[split] = SampleTable(
                classes=train.classes,
                labels=table.labels[idx],
                keys=[table.keys[i] for i in idx],
                shard_keys=shard_keys,
                shard=shard,
                offset=offset,
                length=length,
            )
            counts[split] = n
    write_shard_index(dst, train.classes, tables)
    return counts


def _already_written(dst: Storage, key: str, marker: str, size: int, digest: str) -> bool:
    """A shard from an interrupted run counts only if its marker, size and checksum all agree."""
    try:
        done = json.loads(dst.get(marker))
    except (StorageError, ValueError):
        return False
    return bool(done.get("size") == size and done.get("sha256") == digest and dst.size(key) == size)
