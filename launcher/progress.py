"""Reading the trainer's progress lines back (convit/train/progress.py writes them)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

_TEXT = re.compile(
    r"^epoch (\d+)/(\d+) step (\d+)/(\d+) loss (\S+) lr (\S+) img/s (\S+) s/step (\S+) eta (\S+)(?: overflows (\d+))?$"
)


_VALIDATION = re.compile(r"^validation epoch \d+ step (\d+) top1 (\S+) top5 (\S+) samples \d+")


def _event(line: str) -> dict[str, object] | None:
    line = line.strip()
    if line.startswith("{"):
        try:
            event = json.loads(line)
        except ValueError:
            return None
        return event if isinstance(event, dict) else None
    if match := _TEXT.match(line):
        return {"event": "progress", "step": int(match[3]), "loss": float(match[5]), "lr": float(match[6])}
    if match := _VALIDATION.match(line):
        return {"event": "validation", "step": int(match[1]), "top1": float(match[2]), "top5": float(match[3])}
    return None


def is_progress(line: str) -> bool:
    event = _event(line)
    return event is not None and event.get("event") == "progress"


def summarize(line: str) -> str:
    """'step 1200/187500 loss 5.1234 eta 11h55m' from a text or JSON progress line."""
    line = line.strip()
    match = _TEXT.match(line)
    if match:
        return f"epoch {match[1]}/{match[2]} step {match[3]}/{match[4]} loss {match[5]} eta {match[9]}"
    event = json.loads(line)
    from convit.train.progress import format_duration

    return (
        f"epoch {event['epoch']}/{event['epochs']} step {event['step']}/{event['steps']} "
        f"loss {event['loss']:.4f} eta {format_duration(event['eta_s'])}"
    )


@dataclass
class Curves:
    """Loss and LR per logged step, top-1/top-5 per validation, each step once, in step order."""

    steps: list[int] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    val_steps: list[int] = field(default_factory=list)
    top1: list[float] = field(default_factory=list)
    top5: list[float] = field(default_factory=list)


def curves(lines: Iterable[str]) -> Curves:
    """The curves in a trainer's log (text or JSON lines). A restarted trainer repeats the steps after its
    checkpoint: the later line of a step wins, as TensorBoard's purge does for the event files."""
    train: dict[int, tuple[float, float]] = {}
    val: dict[int, tuple[float, float]] = {}
    last = 0
    for line in lines:
        event = _event(line)
        if event is None:
            continue
        step = int(str(event.get("step", 0)))
        if event.get("event") == "progress":
            if step <= last:  # a restart: forget what it repeats
                train = {s: v for s, v in train.items() if s < step}
                val = {s: v for s, v in val.items() if s < step}
            train[step], last = (float(str(event["loss"])), float(str(event["lr"]))), step
        elif event.get("event") == "validation":
            val[step] = (float(str(event["top1"])), float(str(event["top5"])))
    out = Curves()
    for step in sorted(train):
        out.steps.append(step)
        out.loss.append(train[step][0])
        out.lr.append(train[step][1])
    for step in sorted(val):
        out.val_steps.append(step)
        out.top1.append(val[step][0])
        out.top5.append(val[step][1])
    return out


_RESULT = re.compile(r"^evaluated \d+ samples: top1 \S+ top5 \S+ loss \S+")


def latest_result(lines: list[str]) -> str | None:
    """The last `evaluated N samples: top1 x top5 y loss z` line of `python -m convit.evaluate`, if any."""
    for line in reversed(lines):
        if _RESULT.match(line.strip()):
            return line.strip()
    return None


def latest_progress(lines: list[str]) -> str | None:
    for line in reversed(lines):
        if is_progress(line):
            return summarize(line)
    return None
