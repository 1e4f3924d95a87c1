"""Dynamic batching: the rows of concurrent requests gathered into one runtime call.

One worker task takes the queued rows (up to `max_batch`) and runs them in a single runtime thread, while the
event loop keeps accepting and decoding. It waits for more rows (at most `max_wait` seconds after the first)
only while another request is on its way, i.e. has been accepted but not yet submitted its rows (it is still
reading its body or decoding): a lone client is never held back, and under load the batches fill up.
A request larger than `max_batch` rows is cut into several items; items are never split across batches.

Up to `workers` batches run at once, each in a runtime thread of its own (the CPU's single-threaded onnxruntime
lanes, convit/serve/runtime.py); a batch that runs alone (nothing else running, queued or on its way: a lone client)
goes to `run_alone`, which may use every core.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

Run = Callable[[NDArray[np.float32]], NDArray[np.float32]]


@dataclass
class _Item:
    request: int
    rows: NDArray[np.float32]
    future: asyncio.Future[NDArray[np.float32]]


@dataclass
class Ticket:
    """A request on its way to the batcher (see `Batcher.expect`)."""

    request: int
    submitted: bool = False


@dataclass
class Batcher:
    run: Run
    max_batch: int = 16
    max_wait: float = 0.005
    on_batch: Callable[[int], None] = lambda size: None
    workers: int = 1
    run_alone: Run | None = None
    _pending: deque[_Item] = field(default_factory=deque)
    _running: set[asyncio.Task[None]] = field(default_factory=set)
    _expecting: int = 0
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _wake: asyncio.Event | None = None
    _task: asyncio.Task[None] | None = None
    _closing: bool = False
    _executor: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="convit-runtime")
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="convit-batcher")

    async def stop(self) -> None:
        """Run what is queued, then end the worker."""
        self._closing = True
        self._poke()
        if self._task is not None:
            await self._task
        if self._running:
            await asyncio.gather(*self._running)
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    @contextlib.contextmanager
    def expect(self) -> Iterator[Ticket]:
        """Announce a request that will submit rows soon: the worker may wait for it (up to max_wait)."""
        ticket = Ticket(next(self._ids))
        self._expecting += 1
        try:
            yield ticket
        finally:
            if not ticket.submitted:
                self._expecting -= 1
                self._poke()

    async def submit(self, rows: NDArray[np.float32], ticket: Ticket | None = None) -> NDArray[np.float32]:
        """Logits of `rows` (N, ...), computed in batches shared with other requests."""
        if self._task is None or self._closing:
            raise RuntimeError("the batcher is not running")
        if ticket is None:
            ticket = Ticket(next(self._ids))
        elif not ticket.submitted:
            self._expecting -= 1
        ticket.submitted = True
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(rows), self.max_batch):
            future: asyncio.Future[NDArray[np.float32]] = loop.create_future()
            self._pending.append(_Item(ticket.request, rows[start : start + self.max_batch], future))
            futures.append(future)
        self._poke()
        parts = await asyncio.gather(*futures)
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _ready(self) -> bool:
        """True when the next batch should go now."""
        rows = sum(len(item.rows) for item in self._pending)
        return rows >= self.max_batch or self._expecting <= 0 or self._closing

    async def _loop(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending or len(self._running) >= self.workers:
                if self._closing and not self._pending:
                    return
                self._wake.clear()
                await self._wake.wait()
            deadline = loop.time() + self.max_wait
            while not self._ready():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), remaining)
            batch = [self._pending.popleft()]
            size = len(batch[0].rows)
            while self._pending and size + len(self._pending[0].rows) <= self.max_batch:
                item = self._pending.popleft()
                batch.append(item)
                size += len(item.rows)
            alone = not self._running and not self._pending and self._expecting <= 0
            task = loop.create_task(self._run(batch, size, alone))
            self._running.add(task)
            task.add_done_callback(self._ran)

    def _ran(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._poke()  # a runtime thread is free

    async def _run(self, batch: list[_Item], size: int, alone: bool) -> None:
        inputs = batch[0].rows if len(batch) == 1 else np.concatenate([item.rows for item in batch])
        run = self.run_alone if alone and self.run_alone is not None else self.run
        try:
            logits = await asyncio.get_running_loop().run_in_executor(self._executor, run, inputs)
            self.on_batch(size)
        except Exception as exc:  # the runtime failed: every request of the batch gets the error
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        start = 0
        for item in batch:
            n = len(item.rows)
            if not item.future.done():  # a cancelled request (client gone) is skipped
                item.future.set_result(logits[start : start + n])
            start += n
