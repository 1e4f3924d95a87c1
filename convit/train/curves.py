"""Training curves as TensorBoard event files: rank 0 writes them locally and uploads them next to the checkpoints.

Layout: `<checkpoint.uri>/tensorboard/events.out.tfevents.<time>.<host>...`, one file per process start, so
`tensorboard --logdir` on a synced copy of that folder shows the whole run. Object storage has no append, so each
upload rewrites this start's file (about 1 MB for 300 ImageNet epochs at the default logging interval); files of
earlier starts are never touched.

A restart repeats the steps after its checkpoint. The resumed start's file begins with TensorBoard's purge marker
(a SessionLog START event at its first step, what TensorFlow's `purge_step` writes): TensorBoard then drops the
earlier files' events from that step on, so every step is shown once, with the values of the run that kept going.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from pathlib import Path

from convit.errors import ConvitError
from convit.storage.base import Storage, open_storage

log = logging.getLogger("convit.train")

FOLDER = "tensorboard"
SYNC_SECONDS = 60.0  # at most one background upload a minute between checkpoints


class TrainingCurves:
    """Scalars for TensorBoard, in TensorBoard's event file format; every method is a no-op when disabled."""

    def __init__(self, uri: str, staging: Path, *, first_step: int, enabled: bool) -> None:
        self.enabled = enabled
        self._upload: threading.Thread | None = None
        self._last_sync = time.monotonic()
        self._warned = False
        if not enabled:
            return
        from tensorboard.compat.proto import event_pb2
        from tensorboard.summary.writer.event_file_writer import EventFileWriter

        self.storage: Storage = open_storage(uri).child(FOLDER)
        self.local = staging / FOLDER
        self.local.mkdir(parents=True, exist_ok=True)
        for stale in self.local.glob("events.out.tfevents.*"):  # an earlier start's file: already uploaded
            stale.unlink()
        # TensorBoard's own writer (PyTorch's SummaryWriter uses it too); its flush() waits for queued events.
        # The suffix keeps two starts within one second on one host (a restarted container) apart.
        self.writer = EventFileWriter(str(self.local), flush_secs=3600, filename_suffix=f".{time.time_ns()}")
        if first_step > 1:  # the purge marker (see the module docstring), as TensorFlow's purge_step writes it
            start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
            self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=first_step, session_log=start))
        self._flushed: dict[Path, int] = {}

    def _scalars(self, step: int, values: dict[str, float]) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2

        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(v)) for tag, v in values.items()]
        )
        self.writer.add_event(event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def train(self, step: int, *, loss: float, lr: float, images_per_s: float, overflows: int) -> None:
        if not self.enabled:
            return
        self._scalars(
            step,
            {"train/loss": loss, "train/lr": lr, "train/images_per_s": images_per_s, "train/overflow_steps": overflows},
        )
        if time.monotonic() - self._last_sync >= SYNC_SECONDS:
            self.sync()

    def validation(self, step: int, *, top1: float, top5: float) -> None:
        if not self.enabled:
            return
        self._scalars(step, {"val/top1": top1, "val/top5": top5})

    def sync(self, *, wait: bool = False) -> None:
        """Flush and upload this start's event file: in the background, or now with `wait` (the job's end)."""
        if not self.enabled:
            return
        self.writer.flush()
        # This writer's own file only: another process's file in the folder is not this run's.
        own = Path(self.writer._file_name)
        self._flushed = {own: own.stat().st_size} if own.exists() else {}
        self._last_sync = time.monotonic()
        busy = self._upload is not None and self._upload.is_alive()
        if wait:
            if busy:
                assert self._upload is not None
                self._upload.join()
            self._run_upload()
            return
        if busy:  # the next sync uploads what this one would have
            return
        self._upload = threading.Thread(target=self._run_upload, daemon=True)
        self._upload.start()

    def close(self) -> None:
        if self.enabled:
            self.sync(wait=True)
            self.writer.close()

    def _run_upload(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # training comes first (see checkpoints._run_upload)
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            for path, size in sorted(self._flushed.items()):
                # What was flushed, whole records only: the writer may be appending to the file meanwhile.
                with open(path, "rb") as f:
                    self.storage.put(path.name, f.read(size))
        except (ConvitError, OSError) as exc:
            # Curves are never worth a training run: the next sync retries; say so once.
            if not self._warned:
                log.warning("training curves not uploaded (%s); retried at the next sync", exc)
                self._warned = True
