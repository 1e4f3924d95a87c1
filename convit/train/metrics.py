"""Prometheus metrics of a training run: rank 0 serves `/metrics` on CONVIT_METRICS_PORT (default 9100, 0: off).

The values are the ones the progress lines print (convit/train/progress.py hands each line's numbers to
`TrainMetrics`), so a scrape and the log never disagree; the checkpoint metrics come from the checkpoint store's
upload hook (convit/train/checkpoints.py). The registry is this object's own, not prometheus_client's global one.

    convit_step                          global steps done (the last progress line's `step`)
    convit_total_steps                   steps this run trains to
    convit_epoch                         epoch in progress, from 1 (the progress line's `epoch`)
    convit_images_per_second             training throughput, all ranks (`img/s`)
    convit_step_seconds                  seconds per step over the last logging interval (`s/step`)
    convit_loss                          training loss at the last progress line
    convit_learning_rate                 learning rate at the last progress line
    convit_eta_seconds                   estimated seconds to the last step (`eta`)
    convit_overflowed_steps              steps skipped so far for non-finite gradients (`overflows`)
    convit_data_wait_seconds_total       seconds this process's training loop waited for its next batch
    convit_top1_percent, _top5_percent   the last validation's accuracy
    convit_checkpoint_step               step of the newest complete checkpoint (uploaded, or resumed from)
    convit_checkpoint_age_seconds        seconds since that checkpoint was complete (computed at each scrape)
    convit_checkpoint_upload_seconds     how long the last checkpoint upload took
    convit_restarts                      starts of this job that resumed from a checkpoint, this one included

A port already in use is one warning line; training goes on without metrics.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

from convit.cluster import contract

log = logging.getLogger("convit.train")


def metrics_port() -> int:
    """The port from CONVIT_METRICS_PORT (default contract.METRICS_PORT); 0 when turned off or unusable."""
    raw = os.environ.get(contract.ENV_METRICS_PORT, "").strip()
    if not raw:
        return contract.METRICS_PORT
    try:
        port = int(raw)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        log.warning("metrics: %s=%r is not a port; no /metrics", contract.ENV_METRICS_PORT, raw)
        return 0
    return port


class TrainMetrics:
    """The gauges and counters of one training process; `serve()` exposes them (rank 0 only)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry()
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"convit_{name}", doc, registry=r)

        self.step = gauge("step", "Global training steps done, as in the last progress line.")
        self.total_steps = gauge("total_steps", "Global steps this run trains to.")
        self.epoch = gauge("epoch", "Epoch in progress, counted from 1, as in the last progress line.")
        self.images_per_second = gauge("images_per_second", "Training images per second over all ranks.")
        self.step_seconds = gauge("step_seconds", "Seconds per training step over the last logging interval.")
        self.loss = gauge("loss", "Training loss at the last progress line.")
        self.learning_rate = gauge("learning_rate", "Learning rate at the last progress line.")
        self.eta_seconds = gauge("eta_seconds", "Estimated seconds until the last training step.")
        self.overflowed_steps = gauge(
            "overflowed_steps", "Steps skipped so far because their loss-scaled gradients were not finite."
        )
        self.data_wait = Counter(
            "convit_data_wait_seconds",
            "Seconds the training loop of this process waited for its next batch of data.",
            registry=r,
        )
        self.top1 = gauge("top1_percent", "Top-1 accuracy of the last validation, in percent.")
        self.top5 = gauge("top5_percent", "Top-5 accuracy of the last validation, in percent.")
        self.checkpoint_step = gauge("checkpoint_step", "Step of the newest complete checkpoint.")
        self.checkpoint_age = gauge(
            "checkpoint_age_seconds", "Seconds since the newest checkpoint was complete (uploaded); NaN before one."
        )
        self.checkpoint_upload = gauge(
            "checkpoint_upload_seconds", "Duration of the last completed checkpoint upload, in seconds."
        )
        self.restarts = gauge("restarts", "Starts of this job that resumed from a checkpoint (this one included).")
        for unknown in (self.top1, self.top5, self.checkpoint_step, self.checkpoint_upload):
            unknown.set(math.nan)
        self._lock = threading.Lock()
        self._checkpoint_done: float | None = None  # wall-clock time the newest checkpoint was complete
        self.checkpoint_age.set_function(self._age)
        self._server: Any = None

    # ---- serving --------------------------------------------------------------------------------------------
    def serve(self, port: int) -> bool:
        """Serve /metrics on 0.0.0.0:`port` from a daemon thread; False (one warning) when that fails."""
        if port <= 0:
            return False
        from prometheus_client import start_http_server

        try:
            self._server, _thread = start_http_server(port, addr="0.0.0.0", registry=self.registry)
        except OSError as exc:
            log.warning("metrics: cannot serve /metrics on port %d (%s); training goes on without metrics", port, exc)
            return False
        return True

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # ---- updates --------------------------------------------------------------------------------------------
    def progress(
        self,
        *,
        epoch: int,
        step: int,
        steps: int,
        loss: float,
        lr: float,
        images_per_s: float,
        step_time: float,
        eta_s: float,
        overflows: int,
        data_wait_s: float | None = None,
    ) -> None:
        """One progress line's values (Progress.step)."""
        self.epoch.set(epoch)
        self.step.set(step)
        self.total_steps.set(steps)
        self.loss.set(loss)
        self.learning_rate.set(lr)
        self.images_per_second.set(images_per_s)
        self.step_seconds.set(step_time)
        self.eta_seconds.set(eta_s)
        self.overflowed_steps.set(overflows)
        if data_wait_s:
            self.data_wait.inc(data_wait_s)

    def validation(self, *, top1: float, top5: float) -> None:
        self.top1.set(top1)
        self.top5.set(top5)

    def resumed(self, *, restarts: int, step: int | None = None, saved_at: float | None = None) -> None:
        """This start's resume: the count of resumed starts, and the checkpoint it resumed from (if any)."""
        self.restarts.set(restarts)
        if step is not None:
            self.checkpoint_step.set(step)
            with self._lock:
                self._checkpoint_done = saved_at or None

    def checkpoint_uploaded(self, *, step: int, seconds: float) -> None:
        """Called by the checkpoint store when a checkpoint is complete in object storage (any thread)."""
        self.checkpoint_step.set(step)
        self.checkpoint_upload.set(seconds)
        with self._lock:
            self._checkpoint_done = time.time()

    def _age(self) -> float:
        with self._lock:
            done = self._checkpoint_done
        return math.nan if done is None else max(0.0, time.time() - done)
