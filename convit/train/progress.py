"""Progress lines for `kubectl logs`: one flushed line per event, as text for people or JSON for machines.

Only rank 0 prints progress; other ranks print warnings and errors only (see `Progress.enabled`).
The text form is parsed back by `launcher status` (launcher/progress.py): keep the two in step.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from convit.train.metrics import TrainMetrics

# Set by the pod supervisor (convit/cluster/supervisor.py) for the processes it starts: a directory of the pod's own.
ENV_POD_STATE = "CONVIT_POD_STATE"
SCHEDULER = "scheduler"  # the scheduler's name there (a worker's is its MindSpore node id)
KEPT = ("progress", "validation", "checkpoint")  # events whose last line the termination message repeats


def format_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours >= 24:
        return f"{hours // 24}d{hours % 24:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


class Progress:
    def __init__(self, fmt: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.fmt = fmt
        self.enabled = enabled
        self.stream = stream or sys.stdout
        # The numbers of each progress and validation line go to these metrics too (one source of truth).
        self.metrics: TrainMetrics | None = None
        # The last text line of each KEPT event, oldest first: what the termination message shows.
        self.recent: dict[str, str] = {}

    def _emit(self, event: str, text: str, fields: dict[str, Any]) -> None:
        if event in KEPT:
            self.recent.pop(event, None)
            self.recent[event] = text
        if not self.enabled:
            return
        if self.fmt == "json":
            line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, sort_keys=False)
        else:
            line = text
        self.stream.write(line + "\n")
        self.stream.flush()

    def info(self, message: str, **fields: Any) -> None:
        self._emit("info", message, {"message": message, **fields})

    def start(self, **facts: Any) -> None:
        text = "start " + " ".join(f"{key}={value}" for key, value in facts.items())
        self._emit("start", text, facts)

    def step(
        self,
        *,
        epoch: int,
        epochs: int,
        step: int,
        steps: int,
        loss: float,
        lr: float,
        images_per_s: float,
        step_time: float,
        eta_s: float,
        overflows: int = 0,
        data_wait_s: float | None = None,
    ) -> None:
        """`overflows`: steps skipped so far because their loss-scaled gradients were not finite. `data_wait_s`:
        seconds of the interval spent waiting for data (JSON lines and metrics only; the text line is unchanged)."""
        text = (
            f"epoch {epoch}/{epochs} step {step}/{steps} loss {loss:.4f} lr {lr:.2e} "
            f"img/s {images_per_s:.1f} s/step {step_time:.3f} eta {format_duration(eta_s)} overflows {overflows}"
        )
        fields = {
            "epoch": epoch,
            "epochs": epochs,
            "step": step,
            "steps": steps,
            "loss": round(loss, 6),
            "lr": lr,
            "images_per_s": round(images_per_s, 2),
            "step_time": round(step_time, 4),
            "eta_s": round(eta_s, 1),
            "overflows": overflows,
        }
        if data_wait_s is not None:
            fields["data_wait_s"] = round(data_wait_s, 4)
        if self.metrics is not None:
            self.metrics.progress(
                epoch=epoch,
                step=step,
                steps=steps,
                loss=loss,
                lr=lr,
                images_per_s=images_per_s,
                step_time=step_time,
                eta_s=eta_s,
                overflows=overflows,
                data_wait_s=data_wait_s,
            )
        self._emit("progress", text, fields)

    def validation(self, *, epoch: int, step: int, top1: float, top5: float, samples: int, seconds: float) -> None:
        text = (
            f"validation epoch {epoch} step {step} top1 {top1:.2f} top5 {top5:.2f} samples {samples} ({seconds:.1f}s)"
        )
        if self.metrics is not None:
            self.metrics.validation(top1=top1, top5=top5)
        self._emit(
            "validation",
            text,
            {"epoch": epoch, "step": step, "top1": top1, "top5": top5, "samples": samples, "seconds": seconds},
        )

    def checkpoint(self, *, step: int, uri: str, seconds: float, reason: str) -> None:
        text = f"checkpoint step {step} saved to {uri} ({reason}, {seconds:.1f}s)"
        self._emit("checkpoint", text, {"step": step, "uri": uri, "seconds": seconds, "reason": reason})

    def done(self, *, step: int, reason: str) -> None:
        self._emit("done", f"done step {step} ({reason})", {"step": step, "reason": reason})


class PodState:
    """What a supervised process leaves for its pod supervisor, in the directory named by CONVIT_POD_STATE.

    `step-<name>`: the process's last finished step, so that the supervisor's line about a rank it lost says how far
    it got (one pwrite of a fixed-width number per step). `lost-<name>`: the one line about a lost peer; every
    process of a pod sees the same loss, and the supervisor prints the first report once for the pod instead of one
    line per process. `stop-requested`: the supervisor's mark that the pod itself was asked to stop (the kubelet's
    SIGTERM, which it forwards): a process that then cannot stop promptly is left to the pod's grace period
    (convit/train/stop.py). Without the variable (a plain run, AscendJob's Scheduler pod) no step is recorded and the
    line goes to stderr."""

    def __init__(self, name: str, directory: str | None = None) -> None:
        where = os.environ.get(ENV_POD_STATE, "") if directory is None else directory
        self.dir = Path(where) if where else None
        self._root = self.dir  # self.dir is dropped when a step cannot be recorded; the supervisor's marks stay
        self.name = name
        self._fd: int | None = None

    def step(self, step: int) -> None:
        if self.dir is None:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self.dir / f"step-{self.name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.pwrite(self._fd, b"%012d\n" % step, 0)  # same width every time: a reader never sees a mix
        except OSError:
            self.dir = None  # the marker is for the supervisor's message; training never fails over it

    def lost(self, message: str) -> None:
        """Report a lost peer: to the supervisor when there is one, else as this process's `ERROR:` line."""
        if self.dir is not None:
            try:
                part = self.dir / f".lost-{self.name}"
                part.write_text(message)
                part.replace(self.dir / f"lost-{self.name}")
                return
            except OSError:
                pass
        print(f"ERROR: {message}", file=sys.stderr, flush=True)

    def stop_was_requested(self) -> bool:
        """The supervisor marked that the pod itself was asked to stop (request_stop)."""
        return self._root is not None and (self._root / STOP_REQUESTED).exists()


STOP_REQUESTED = "stop-requested"


def request_stop(directory: Path) -> None:
    """Mark that the pod was asked to stop (PodState), before its processes get the signal."""
    with contextlib.suppress(OSError):  # without the mark a stuck process ends as a lost peer, before the grace
        (directory / STOP_REQUESTED).touch()


def recorded_step(directory: Path, name: str) -> int | None:
    """The last step a process of the pod recorded (PodState.step), None before its first step."""
    try:
        text = (directory / f"step-{name}").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lost_report(directory: Path, name: str) -> str | None:
    """The line a process of the pod left about a lost peer (PodState.lost), None if it left none."""
    try:
        return (directory / f"lost-{name}").read_text().strip() or None
    except OSError:
        return None
