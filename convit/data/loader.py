"""Train and validation loaders: the trainer's view of the data pipeline."""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Iterator, Sequence
from multiprocessing.shared_memory import SharedMemory
from multiprocessing.synchronize import Semaphore
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.data.errors import DataError
from convit.data.index import SampleTable, open_split
from convit.data.mixup import mix_batch
from convit.data.order import WINDOW, EpochPlan, Segment, epoch_plan, epoch_rng, val_plan
from convit.data.transforms import SIZE, TrainAugment, normalize, normalize_into
from convit.data.worker import DONE, PENDING, Slot, init_worker, load_window, slot_bytes
from convit.jobspec import JobSpec
from convit.storage import StorageError, open_storage

log = logging.getLogger("convit.data")
SHARD_BLOCK = 32  # consecutive samples of a shard read by one request
Task = tuple[str, NDArray[Any], int, int, TrainAugment | None, float]  # kind, indices, seed, epoch, augment, crop_pct


class _Window:
    """One submitted task: its slot of the shared-memory ring, filled sample by sample by a decode worker."""

    def __init__(self, slot: Slot, ready: Semaphore, index: int, indices: NDArray[Any], result: Any) -> None:
        self.slot, self.ready, self.index, self.indices, self.result = slot, ready, index, indices, result
        self.taken = 0  # semaphore units consumed: samples known to be finished

    def wait(self, j: int) -> int:
        """Block until sample j (samples finish in order) is DONE or FAILED; a worker's error is raised here."""
        while self.taken <= j:
            if self.ready.acquire(timeout=0.5):
                self.taken += 1
            elif self.result.ready():
                self.result.get()  # raises the worker's error; a success has released every sample already
        return int(self.slot.status[j])

    def failures(self) -> list[tuple[int, str]]:
        """Wait for the whole task; its (sample index, reason) failures."""
        failures: list[tuple[int, str]] = self.result.get()
        return failures

    def settle(self) -> None:
        """After the task has ended (successfully or not): take the semaphore units nobody waited for."""
        with contextlib.suppress(Exception):  # already raised to the consumer, or the consumer went away
            self.result.get()
        while self.ready.acquire(block=False):
            self.taken += 1


def _printable(text: str) -> str:
    """A file name or reason as one printable line: control characters, line breaks and undecodable bytes of a
    hostile file name escaped (a warning is one line)."""
    return text if text.isprintable() else text.encode("unicode_escape", "backslashreplace").decode("ascii")


def _shm_free() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class _Workers:
    """A bounded pool of decode processes writing into a ring of shared-memory slots, one per task in flight.

    Tasks are consumed in submission order; a slot is handed to the next task only once the consumer has
    moved past the window in it (and, if the consumer stops early, once the task in it has ended).
    """

    def __init__(self, uri: str, table: SampleTable, workers: int, capacity: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "CONVIT_"))}
        self.depth, self.capacity = 2 * workers, capacity  # slots, samples per slot (the largest task)
        size = self.depth * slot_bytes(capacity)
        free = _shm_free()
        if free is not None and free < size:  # writing past the end of /dev/shm would kill a worker with SIGBUS
            raise DataError(
                f"/dev/shm has {free >> 20} MiB free; {workers} decode workers need {size >> 20} MiB (2 x data.workers "
                "slots of 256 decoded images): enlarge /dev/shm (cluster.shm_size, docker --shm-size) or lower "
                "data.workers"
            )
        self.shm: SharedMemory | None = SharedMemory(create=True, size=size)
        self.slots = [Slot(self.shm, i, capacity) for i in range(self.depth)]
        self.ready = [ctx.Semaphore(0) for _ in range(self.depth)]
        self.inflight: collections.deque[_Window] = collections.deque()
        self.pool: multiprocessing.pool.Pool | None = ctx.Pool(
            workers, init_worker, (uri, table, env, self.shm.name, self.ready, capacity)
        )

    def run(self, tasks: Iterator[Task]) -> Iterator[_Window]:
        """Each task's window, in order, as soon as it is submitted (its samples are waited for one by one)."""
        assert self.pool is not None
        self._settle()  # windows left in flight by a consumer that stopped early
        free = collections.deque(range(self.depth))
        queue = iter(tasks)
        try:
            while True:
                while free:
                    task = next(queue, None)
                    if task is None:
                        break
                    i = free.popleft()
                    self.slots[i].status[: len(task[1])] = PENDING
                    result = self.pool.apply_async(load_window, ((*task, i),))
                    self.inflight.append(_Window(self.slots[i], self.ready[i], i, task[1], result))
                if not self.inflight:
                    return
                window = self.inflight[0]
                yield window
                self.inflight.popleft()
                window.settle()
                free.append(window.index)
        finally:
            self._settle()

    def _settle(self) -> None:
        while self.inflight:
            self.inflight.popleft().settle()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
            self.inflight.clear()
        if self.shm is not None:
            self.slots = []
            self.shm.unlink()
            with contextlib.suppress(BufferError):  # a suspended consumer still holds views: freed with them
                self.shm.close()
            self.shm = None


def _open(spec: JobSpec, split: str, limit: int) -> SampleTable:
    storage = open_storage(spec.data.uri)
    try:
        storage.check_root()
    except StorageError as exc:
        raise DataError(f"dataset {spec.data.uri}: {exc}") from None
    return open_split(storage, spec.data.layout, split, spec.data.class_map).head(limit)


class _Loader:
    """What both loaders share: one split's table, a lazily started worker pool, skip reporting."""

    split = ""

    def __init__(self, spec: JobSpec, limit: int) -> None:
        self.spec = spec
        self._workers: _Workers | None = None
        self.skipped = 0
        self.table = _open(spec, self.split, limit)

    def _pool(self, capacity: int = WINDOW) -> _Workers:
        """The decode workers, with shared-memory slots for tasks of up to `capacity` samples."""
        if self._workers is not None and self._workers.capacity < capacity:
            self.close()
        if self._workers is None:
            self._workers = _Workers(self.spec.data.uri, self.table, self.spec.data.workers, capacity)
        return self._workers

    def _report(self, failures: list[tuple[int, str]]) -> None:
        for index, reason in failures:
            self.skipped += 1
            log.warning(
                "data: skipped undecodable %s image %s/%s (%s); %d skipped so far",
                self.split, self.spec.data.uri, _printable(self.table.keys[index]), _printable(reason), self.skipped,
            )  # fmt: skip

    def close(self) -> None:
        workers = getattr(self, "_workers", None)  # None too when __init__ failed before creating it
        if workers is not None:
            workers.close()
            self._workers = None

    def __del__(self) -> None:
        self.close()


class TrainLoader(_Loader):
    split = "train"

    def __init__(self, spec: JobSpec, rank: int, world_size: int) -> None:
        super().__init__(spec, spec.data.limit_train)
        self.rank, self.world = rank, world_size
        self.num_samples = len(self.table)
        # A step is an optimizer step: grad_accum_steps micro-batches of batch_size. The epoch's plan (and the
        # position in it) counts steps of `batch` samples per rank; the batches it yields are the micro-batches.
        self.micro = spec.train.batch_size
        self.accum = spec.train.grad_accum_steps
        self.batch = spec.train.step_batch
        self.steps_per_epoch = self.num_samples // (self.batch * world_size)
        if self.steps_per_epoch == 0:
            accumulated = f" x {self.accum} accumulated" if self.accum > 1 else ""
            raise DataError(
                f"{spec.data.uri}: {self.num_samples} training images cannot fill one global batch of "
                f"{self.micro}{accumulated} x {world_size} ranks"
            )
        a = spec.augment
        self.augment = TrainAugment(a.scale_min, a.hflip, a.color_jitter, a.auto_augment, a.re_prob)

    def plan(self, epoch: int, done: Sequence[Segment] = ()) -> EpochPlan:
        """This rank's plan for the rest of `epoch` after the epoch's segments `done` (at any world size)."""
        return epoch_plan(
            self.num_samples,
            seed=self.spec.train.seed,
            epoch=epoch,
            rank=self.rank,
            world=self.world,
            batch=self.batch,
            block=SHARD_BLOCK if self.table.sharded else 1,
            done=done,
        )

    def epoch(
        self, epoch: int, start_step: int = 0, *, plan: EpochPlan | None = None
    ) -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
        """The rest of `epoch`'s micro-batches: (float32 N,3,224,224 images, soft targets), grad_accum_steps of them
        per step.

        Either from step `start_step` of an epoch trained at this shape throughout, or the rest of `plan`
        (`self.plan(epoch, segments)`, for a position recorded at any world size)."""
        if plan is None:
            plan = self.plan(epoch, [Segment(self.world, self.batch, start_step)])
        elif plan.epoch != epoch:
            raise ValueError(f"a plan of epoch {plan.epoch} for epoch {epoch}")
        seed, batch, indices = self.spec.train.seed, self.micro, plan.indices
        start = plan.start * self.batch
        bounds = [start, *range((start // WINDOW + 1) * WINDOW, len(indices), WINDOW), len(indices)]
        tasks = (
            ("train", indices[a:b], seed, epoch, self.augment, 0.0) for a, b in itertools.pairwise(bounds) if b > a
        )
        labels = self.table.labels
        # Micro-batches are numbered by their position in the epoch (every segment), which seeds mixup/cutmix.
        images, targets, filled, step = self._new_batch(), np.empty(batch, np.int32), 0, plan.done_steps * self.accum
        for window in self._pool().run(tasks):
            n, j, slot = len(window.indices), 0, window.slot
            sources: Any = range(n)  # slot j of the window takes sample sources[j]
            while j < n:
                if sources is not None and window.wait(j) != DONE:  # a failure: settle the whole window first
                    self._report(window.failures())
                    good = np.flatnonzero(slot.status[:n] == DONE)
                    if len(good) == 0:
                        raise DataError(f"{self.spec.data.uri}: every image of a window of {n} failed to decode")
                    # the slot reuses the next decodable sample of the same window
                    sources = None
                    replace = good[np.searchsorted(good, np.arange(n)) % len(good)]
                src = j if sources is not None else int(replace[j])
                normalize_into(images[filled], slot.images[src], slot.boxes[src])
                targets[filled] = labels[window.indices[src]]
                filled, j = filled + 1, j + 1
                if filled == batch:
                    yield self._finish(images, targets, epoch, step)
                    images, targets, filled, step = self._new_batch(), np.empty(batch, np.int32), 0, step + 1
            if sources is not None:
                self._report(window.failures())

    def _new_batch(self) -> NDArray[Any]:
        return np.empty((self.micro, 3, SIZE, SIZE), np.float32)

    def _finish(
        self, images: NDArray[Any], labels: NDArray[Any], epoch: int, step: int
    ) -> tuple[NDArray[Any], NDArray[Any]]:
        a, t = self.spec.augment, self.spec.train
        rng = epoch_rng(t.seed, epoch, self.rank, step, 7)
        return mix_batch(
            images,
            labels,
            num_classes=self.spec.model.num_classes,
            smoothing=t.label_smoothing,
            mixup_alpha=a.mixup,
            cutmix_alpha=a.cutmix,
            switch_prob=a.mixup_switch_prob,
            rng=rng,
        )


class ValLoader(_Loader):
    split = "val"

    def __init__(self, spec: JobSpec, rank: int, world_size: int) -> None:
        super().__init__(spec, spec.data.limit_val)
        self.plan = val_plan(len(self.table), rank, world_size)
        self.num_samples = len(self.plan)

    def batches(self, batch_size: int) -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
        crop = self.spec.eval.crop_pct
        tasks = (("val", self.plan[a : a + batch_size], 0, 0, None, crop) for a in range(0, len(self.plan), batch_size))
        for window in self._pool(batch_size).run(tasks):
            self._report(window.failures())
            n = len(window.indices)
            ok = np.flatnonzero(window.slot.status[:n] == DONE)
            if len(ok):
                yield normalize(window.slot.images[ok]), self.table.labels[window.indices[ok]].astype(np.int32)


def build_train_loader(spec: JobSpec, rank: int, world_size: int) -> TrainLoader:
    return TrainLoader(spec, rank, world_size)


def build_val_loader(spec: JobSpec, rank: int, world_size: int) -> ValLoader:
    return ValLoader(spec, rank, world_size)
