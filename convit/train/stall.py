"""A step that waits for its peers longer than `cluster.step_timeout` ends the process as a lost peer.

A survivor's collective waits for a lost rank as long as the transport lets it: HCCL_EXEC_TIMEOUT on Ascend (1836 s
by default), MS_CPU_COMM_OP_TIMEOUT on the CPU. MindSpore's own notice (a worker that loses its scheduler is
SIGTERMed, convit/train/stop.py) does not come when a new scheduler answers at the same address, as when the Indexed
Job replaces the scheduler's pod alone within seconds: the survivor then waits in a cluster that will never complete
its step (measured on the CPU: the old rank blocked while the new pod 0 waited for it, until the job failed). So the
training loop arms this watch from the moment a step has its batch until every rank has finished the step (the
per-step AllReduce of the stop decision), and a thread ends the process when that takes longer than the limit.
The first step of a start compiles its graphs and is not watched; neither are data waits, validation and checkpoints.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class StallWatch:
    def __init__(self, limit: float, on_stall: Callable[[float], None], poll: float = 1.0) -> None:
        self.limit = limit
        self.on_stall = on_stall  # called from the watch thread with the seconds waited; expected not to return
        self.poll = poll
        self._since: float | None = None
        self._thread: threading.Thread | None = None

    def arm(self) -> None:
        self._since = time.monotonic()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name="convit-stall-watch", daemon=True)
            self._thread.start()

    def disarm(self) -> None:
        self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(self.poll)
            since = self._since
            if since is not None and time.monotonic() - since > self.limit:
                self.on_stall(time.monotonic() - since)
                return
