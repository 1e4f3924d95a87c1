"""Reading the trainer's progress lines back (convit/train/progress.py writes them)."""

from __future__ import annotations

import json
import re

_TEXT = re.compile(
    r"^epoch (\d+)/(\d+) step (\d+)/(\d+) loss (\S+) lr (\S+) img/s (\S+) s/step (\S+) eta (\S+)(?: overflows (\d+))?$"
)


def is_progress(line: str) -> bool:
    line = line.strip()
    if _TEXT.match(line):
        return True
    if line.startswith("{"):
        try:
            return bool(json.loads(line).get("event") == "progress")
        except ValueError:
            return False
    return False


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
