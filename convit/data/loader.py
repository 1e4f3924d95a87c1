"""Train and validation loaders: the trainer's view of the data pipeline."""

from __future__ import annotations

import collections
import itertools
import logging
import multiprocessing
import multiprocessing.pool
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from numpy.typing import NDArray

from convit.data.errors import DataError
from convit.data.index import SampleTable, open_split
from convit.data.mixup import mix_batch
from convit.data.order import WINDOW, epoch_rng, rank_plan, val_plan
from convit.data.transforms import TrainAugment, normalize
from convit.data.worker import WindowResult, init_worker, load_window
from convit.jobspec import JobSpec
from convit.storage import StorageError, open_storage

log = logging.getLogger("convit.data")
SHARD_BLOCK = 32  # consecutive samples of a shard read by one request


class _Workers:
    """A bounded pool of decode processes; results come back in submission order."""

    def __init__(self, uri: str, table: SampleTable, workers: int) -> None:
        ctx = multiprocessing.get_context("forkserver")
        env = {k: v for k, v in os.environ.items() if k.startswith(("AWS_", "CONVIT_"))}
        self.pool: multiprocessing.pool.Pool | None = ctx.Pool(workers, init_worker, (uri, table, env))
        self.depth = 2 * workers

    def map(self, tasks: Iterator[Any]) -> Iterator[WindowResult]:
        assert self.pool is not None
        pending: collections.deque[Any] = collections.deque()
        for task in tasks:
            pending.append(self.pool.apply_async(load_window, (task,)))
            if len(pending) >= self.depth:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None


def _open(spec: JobSpec, split: str, limit: int) -> SampleTable:
    storage = open_storage(spec.data.uri)
    try:
        storage.check_root()
    except StorageError as exc:
        raise DataError(f"dataset {spec.data.uri}: {exc}") from None
    return open_split(storage, spec.data.layout, split).head(limit)


class _Loader:
    """What both loaders share: one split's table, a lazily started worker pool, skip reporting."""

    split = ""

    def __init__(self, spec: JobSpec, limit: int) -> None:
        self.spec = spec
        self._workers: _Workers | None = None
        self.skipped = 0
        self.table = _open(spec, self.split, limit)

    def _pool(self) -> _Workers:
        if self._workers is None:
            self._workers = _Workers(self.spec.data.uri, self.table, self.spec.data.workers)
        return self._workers

    def _report(self, result: WindowResult) -> None:
        for index, reason in result.failures:
            self.skipped += 1
            log.warning(
                "data: skipped undecodable %s image %s/%s (%s); %d skipped so far",
                self.split, self.spec.data.uri, self.table.keys[index], reason, self.skipped,
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
        self.batch = spec.train.batch_size
        self.steps_per_epoch = self.num_samples // (self.batch * world_size)
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{spec.data.uri}: {self.num_samples} training images cannot fill one global batch of "
                f"{self.batch} x {world_size} ranks"
            )
        a = spec.augment
        self.augment = TrainAugment(a.scale_min, a.hflip, a.color_jitter, a.auto_augment, a.re_prob)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[tuple[NDArray[Any], NDArray[Any]]]:
        """Batches `start_step`..steps_per_epoch-1 of `epoch`: (float32 N,3,224,224 images, soft targets)."""
        seed, batch = self.spec.train.seed, self.batch
        block = SHARD_BLOCK if self.table.sharded else 1
        plan = rank_plan(
            self.num_samples, seed=seed, epoch=epoch, rank=self.rank, world=self.world, batch=batch, block=block
        )
        start = start_step * batch
        bounds = [start, *range((start // WINDOW + 1) * WINDOW, len(plan), WINDOW), len(plan)]
        tasks = (("train", plan[a:b], seed, epoch, self.augment, 0.0) for a, b in itertools.pairwise(bounds) if b > a)
        pending: collections.deque[WindowResult] = collections.deque()
        offset = have = 0  # samples of pending[0] already used; samples pending in all
        step = start_step
        for result in self._pool().map(tasks):
            self._report(result)
            if len(result.labels) == 0:
                raise DataError(
                    f"{self.spec.data.uri}: every image of a window of {len(result.failures)} failed to decode"
                )
            pending.append(result)
            have += len(result.labels)
            while have >= batch:
                parts: list[tuple[WindowResult, slice]] = []
                need = batch
                while need:  # slices of the pending windows, without re-copying what stays behind
                    head = pending[0]
                    take = min(need, len(head.labels) - offset)
                    parts.append((head, slice(offset, offset + take)))
                    offset, need = offset + take, need - take
                    if offset == len(head.labels):
                        pending.popleft()
                        offset = 0
                have -= batch
                img = np.concatenate([r.images[s] for r, s in parts])
                box = np.concatenate([r.boxes[s] for r, s in parts])
                lab = np.concatenate([r.labels[s] for r, s in parts])
                yield self._finish(img, box, lab, epoch, step)
                step += 1

    def _finish(
        self, img: NDArray[Any], box: NDArray[Any], lab: NDArray[Any], epoch: int, step: int
    ) -> tuple[NDArray[Any], NDArray[Any]]:
        a, t = self.spec.augment, self.spec.train
        x = normalize(img, box)
        rng = epoch_rng(t.seed, epoch, self.rank, step, 7)
        return mix_batch(
            x,
            lab,
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
        for result in self._pool().map(tasks):
            self._report(result)
            if len(result.labels):
                yield normalize(result.images), result.labels


def build_train_loader(spec: JobSpec, rank: int, world_size: int) -> TrainLoader:
    return TrainLoader(spec, rank, world_size)


def build_val_loader(spec: JobSpec, rank: int, world_size: int) -> ValLoader:
    return ValLoader(spec, rank, world_size)
