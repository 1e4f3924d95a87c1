"""Decode workers: fetch a window of samples (coalesced ranged GETs for shards), decode and transform them.

Runs in separate processes (forkserver), so it imports neither MindSpore nor anything that holds threads.
Each task writes its samples, in order, straight into its slot of a shared-memory ring that the trainer
process reads (no pickling of pixels), marks each sample done or failed and releases the slot's semaphore
once per sample, so the trainer consumes a window while the rest of it is still being decoded.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.shared_memory import SharedMemory
from multiprocessing.synchronize import Semaphore
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from convit.data.decode import UndecodableImage
from convit.data.index import SampleTable
from convit.data.order import WINDOW, epoch_rng
from convit.data.transforms import SIZE, TrainAugment, eval_sample, train_sample
from convit.storage import Storage, StorageError, open_storage

MERGE_GAP = 1 << 20  # read across gaps up to 1 MB rather than issue another request
MAX_RUN = 64 << 20

_state: dict[str, Any] = {}


PENDING, DONE, FAILED = 0, 1, 2
IMAGE_BYTES = SIZE * SIZE * 3


def slot_bytes(capacity: int) -> int:
    """Bytes of one slot holding up to `capacity` samples: images, erasing boxes (int32 x 4), status (uint8)."""
    return capacity * (IMAGE_BYTES + 4 * 4 + 1)


class Slot:
    """numpy views of one slot of the ring: images (capacity, 224, 224, 3) uint8, boxes (capacity, 4) int32 and
    status (capacity,) uint8 (PENDING, DONE or FAILED)."""

    def __init__(self, shm: SharedMemory, index: int, capacity: int = WINDOW) -> None:
        base = index * slot_bytes(capacity)
        self.images: NDArray[Any] = np.ndarray((capacity, SIZE, SIZE, 3), np.uint8, shm.buf, base)
        base += capacity * IMAGE_BYTES
        self.boxes: NDArray[Any] = np.ndarray((capacity, 4), np.int32, shm.buf, base)
        self.status: NDArray[Any] = np.ndarray((capacity,), np.uint8, shm.buf, base + capacity * 16)


def init_worker(
    uri: str, table: SampleTable, env: dict[str, str], shm_name: str, ready: list[Semaphore], capacity: int
) -> None:
    # The forkserver was started with the environment of its first use; storage settings may have changed since.
    os.environ.update(env)
    try:
        _state["storage"] = open_storage(uri)
    except Exception as exc:
        # An initializer that raises makes multiprocessing.Pool respawn the worker forever (and the trainer wait
        # forever): keep the error and raise it from the first task instead.
        _state["init_error"] = exc
        return
    _state["table"] = table
    _state["threads"] = ThreadPoolExecutor(8)
    shm = SharedMemory(shm_name)
    _state["shm"] = shm  # kept open (and referenced) for the life of the worker
    _state["slots"] = [Slot(shm, i, capacity) for i in range(len(ready))]
    _state["ready"] = ready


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


def load_window(task: tuple[str, NDArray[Any], int, int, TrainAugment | None, float, int]) -> list[tuple[int, str]]:
    """task = (kind, sample indices, seed, epoch, train augment or None, eval crop_pct, slot). Fills the slot
    sample by sample; returns the failures as (sample index, reason). A storage error (already retried within
    its budget) is fatal and raised."""
    kind, indices, seed, epoch, aug, crop_pct, index = task
    if "init_error" in _state:
        raise _state["init_error"]
    storage: Storage = _state["storage"]
    table: SampleTable = _state["table"]
    slot: Slot = _state["slots"][index]
    ready: Semaphore = _state["ready"][index]
    blobs = fetch(storage, table, indices, _state["threads"])
    failures: list[tuple[int, str]] = []
    for j, (i, blob) in enumerate(zip(indices, blobs, strict=True)):
        if isinstance(blob, StorageError):
            raise blob
        try:
            if kind == "train":
                assert aug is not None
                slot.images[j], slot.boxes[j] = train_sample(blob, aug, epoch_rng(seed, epoch, int(i)))
            else:
                slot.images[j] = eval_sample(blob, crop_pct)
            slot.status[j] = DONE
        except (UndecodableImage, ValueError, OSError, cv2.error) as exc:  # what decoders raise on bad data
            # Skipped and counted by the loader like any corrupt image, named in its warning (one line).
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            failures.append((int(i), reason))
            slot.status[j] = FAILED
        ready.release()
    return failures
