"""Stopping on a signal: between steps when Python can, at once when MindSpore holds the main thread in a collective.

SIGTERM/SIGINT set a flag the training loop reads between steps, so a step is never cut in half and rank 0 saves a
checkpoint before the process exits. But Python runs a signal handler only when the main thread returns to the
interpreter, and a collective waiting for a peer that is gone does not return for a long time: on Ascend an HCCL
collective waits HCCL_EXEC_TIMEOUT (1836 s by default), on the CPU MS_CPU_COMM_OP_TIMEOUT. MindSpore notices the
loss first: a worker that lost its scheduler (because the scheduler's pod ended, which it does when a rank stops
sending heartbeats, convit/train/runtime.py) SIGTERMs itself about 20 s later (measured with 2.10 on the CPU; the
main thread was then blocked in an AllReduce whose peer had been SIGKILLed, and a Python thread kept running: the
collective releases the GIL).

So a watcher thread learns of every signal at once, through the wakeup fd Python's C-level handler writes to; when
the Python handler has not run `grace` seconds later, the main thread is stuck in the framework, and the process ends
as a lost peer (exit_lost_peer, LOST_PEER_EXIT) instead of waiting for the collective's own timeout. A stop the pod
asked for (its supervisor forwarding the kubelet's SIGTERM, which marks it first: PodState.request_stop) is left to
the pod's grace period: the main thread may be compiling a graph, and the checkpoint it saves after is worth the wait.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

STUCK_GRACE_S = 15.0  # longer than any step (compilation aside), far shorter than a collective's timeout


class StopRequest:
    """Set by SIGTERM/SIGINT; the loop checks it between steps, so a step is never cut in half."""

    def __init__(self, grace: float = STUCK_GRACE_S) -> None:
        self.signal: int | None = None
        self.grace = grace
        self._handled_at = float("-inf")  # when the Python handler last ran (time.monotonic)

    def install(self, on_stuck: Callable[[int], None] | None = None) -> None:
        """Handle SIGTERM/SIGINT; with `on_stuck`, call it (from a watcher thread) with the signal number when a
        signal's Python handler has not run within `grace` seconds (see the module docstring)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)
        if on_stuck is None:
            return
        read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        threading.Thread(target=self._watch, args=(read_end, on_stuck), name="convit-stop-watch", daemon=True).start()

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signal = signum
        self._handled_at = time.monotonic()

    def _watch(self, fd: int, on_stuck: Callable[[int], None]) -> None:
        while True:
            data = os.read(fd, 64)  # one byte per signal, written by Python's C-level handler at once
            if not data:
                return
            caught = [s for s in data if s in (signal.SIGTERM, signal.SIGINT)]
            if not caught:
                continue
            # The handler of this signal may already have run (it and this thread race for the GIL, within a switch
            # interval of each other); one that ran more than a second before this read was for an earlier signal.
            since = time.monotonic() - 1.0
            deadline = since + 1.0 + self.grace
            while self._handled_at < since and time.monotonic() < deadline:
                time.sleep(0.25)
            if self._handled_at < since:
                on_stuck(caught[-1])
