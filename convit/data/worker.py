"""Decode workers: fetch a window of samples (coalesced ranged GETs for shards), decode and transform them.

Runs in separate processes (forkserver), so it imports neither MindSpore nor anything that holds threads.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.data.decode import UndecodableImage
from convit.data.index import SampleTable
from convit.data.order import epoch_rng
from convit.data.transforms import SIZE, TrainAugment, eval_sample, train_sample
from convit.storage import Storage, StorageError, open_storage

MERGE_GAP = 1 << 20  # read across gaps up to 1 MB rather than issue another request
MAX_RUN = 64 << 20

_state: dict[str, Any] = {}


@dataclass
class WindowResult:
    images: NDArray[Any]  # uint8 (n, 224, 224, 3)
    boxes: NDArray[Any]  # int32 (n, 4) random-erasing boxes
    labels: NDArray[Any]  # int32 (n,)
    indices: NDArray[Any]  # int64 (n,) sample index actually in each slot
    failures: list[tuple[int, str]] = field(default_factory=list)  # (sample index, reason)


def init_worker(uri: str, table: SampleTable, env: dict[str, str]) -> None:
    # The forkserver was started with the environment of its first use; storage settings may have changed since.
    os.environ.update(env)
    _state["storage"] = open_storage(uri)
    _state["table"] = table
    _state["threads"] = ThreadPoolExecutor(8)


def fetch(
    storage: Storage, table: SampleTable, indices: NDArray[Any], threads: ThreadPoolExecutor
) -> list[bytes | StorageError]:
    """The bytes of each sample, in order; a failed read is returned as its StorageError."""
    if not table.sharded:

        def get(i: int) -> bytes | StorageError:
            try:
                return storage.get(table.keys[i])
            except StorageError as exc:
                return exc

        return list(threads.map(get, [int(i) for i in indices]))
    assert table.shard is not None and table.offset is not None and table.length is not None
    shards, offsets, lengths = table.shard, table.offset, table.length
    out: list[bytes | StorageError] = [b""] * len(indices)
    order = sorted(range(len(indices)), key=lambda j: (shards[indices[j]], offsets[indices[j]]))
    runs: list[tuple[int, int, int, list[int]]] = []  # shard, start, end, slots
    for j in order:
        i = indices[j]
        shard, start, end = int(shards[i]), int(offsets[i]), int(offsets[i] + lengths[i])
        if runs and runs[-1][0] == shard and start - runs[-1][2] <= MERGE_GAP and end - runs[-1][1] <= MAX_RUN:
            s, a, b, slots = runs[-1]
            runs[-1] = (s, a, max(b, end), [*slots, j])
        else:
            runs.append((shard, start, end, [j]))

    def read(run: tuple[int, int, int, list[int]]) -> None:
        shard, start, end, slots = run
        try:
            blob = storage.get_range(table.shard_keys[shard], start, end - start)
        except StorageError as exc:
            for j in slots:
                out[j] = exc
            return
        for j in slots:
            i = indices[j]
            a = int(offsets[i]) - start
            out[j] = blob[a : a + int(lengths[i])]

    list(threads.map(read, runs))
    return out


def load_window(task: tuple[str, NDArray[Any], int, int, TrainAugment | None, float]) -> WindowResult:
    """task = (kind, sample indices, seed, epoch, train augment or None, eval crop_pct)."""
    kind, indices, seed, epoch, aug, crop_pct = task
    storage: Storage = _state["storage"]
    table: SampleTable = _state["table"]
    blobs = fetch(storage, table, indices, _state["threads"])
    n = len(indices)
    images = np.zeros((n, SIZE, SIZE, 3), np.uint8)
    boxes = np.zeros((n, 4), np.int32)
    ok = np.zeros(n, bool)
    failures: list[tuple[int, str]] = []
    for j, (i, blob) in enumerate(zip(indices, blobs, strict=True)):
        if isinstance(blob, StorageError):
            raise blob  # storage already retried within its budget: this is fatal, and said once
        try:
            if kind == "train":
                assert aug is not None
                images[j], boxes[j] = train_sample(blob, aug, epoch_rng(seed, epoch, int(i)))
            else:
                images[j] = eval_sample(blob, crop_pct)
            ok[j] = True
        except (UndecodableImage, ValueError, OSError) as exc:  # Pillow/OpenCV raise these on bad data
            failures.append((int(i), str(exc) or type(exc).__name__))
    labels = table.labels[indices].astype(np.int32)
    slots = np.asarray(indices, dtype=np.int64).copy()
    if failures and kind == "train":
        good = np.flatnonzero(ok)
        if len(good) == 0:
            return WindowResult(images[:0], boxes[:0], labels[:0], slots[:0], failures)
        for j in np.flatnonzero(~ok):  # the slot reuses the next decodable sample of the same window
            src = good[np.searchsorted(good, j) % len(good)]
            images[j], boxes[j], labels[j], slots[j] = images[src], boxes[src], labels[src], slots[src]
        return WindowResult(images, boxes, labels, slots, failures)
    return WindowResult(images[ok], boxes[ok], labels[ok], slots[ok], failures)
