"""The container's termination message: a run's last lines, where `kubectl get pod` and `launcher status` see them.

Kubernetes copies the file at the container's `terminationMessagePath` (default `/dev/termination-log`, mounted
into the container by the kubelet) into the pod's status when the container ends, and keeps at most 4096 bytes of
it. Rank 0 of the trainer writes there, rewriting the whole file each time: after each checkpoint (so a killed pod
still shows recent progress) and at exit, and the evaluation writes its result line. The message is text lines,
oldest first, the very lines of the log (text form):

    epoch 1/3 step 5/5 loss 2.3012 lr 1.00e-04 img/s 10.1 s/step 0.400 eta 0m00s overflows 0
    validation epoch 1 step 5 top1 25.00 top5 100.00 samples 8 (1.2s)
    checkpoint step 5 saved to s3://ckpt/run/checkpoints/step-000000005 (final, 0.3s)
    trained 5 steps (finished): loss 2.3012 top1 25.00 top5 100.00 checkpoint s3://ckpt/run/checkpoints/step-000000005

The last line is the result: `trained N steps (REASON): ...`, an evaluation's `evaluated N samples: top1 ...`, or
the run's `ERROR: ...` line; after a checkpoint, before the end, there is no result line yet. When the lines do not
fit in 4096 bytes the last ones that fit are kept.

`CONVIT_TERMINATION_LOG` names another file ("" turns the message off). The default path is written only when it
exists (the kubelet creates it in a pod): outside a pod, even as root, nothing appears in /dev. Writing never fails
a run: a read-only or missing file is skipped silently.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from convit.cluster import contract

ENV_TERMINATION_LOG = "CONVIT_TERMINATION_LOG"
LIMIT = 4096  # bytes Kubernetes keeps of a termination message (pkg/kubelet/kuberuntime maxMsgSize)


def fit(lines: Iterable[str], limit: int = LIMIT) -> bytes:
    """The last of `lines` that fit in `limit` bytes (UTF-8, newline-terminated); a last line longer than the
    limit on its own keeps its end (cut at a character boundary)."""
    kept: list[bytes] = []
    size = 0
    for line in reversed([line.rstrip("\n") for line in lines]):
        data = line.replace("\n", " ").encode() + b"\n"
        if size + len(data) > limit:
            if not kept:  # one line longer than the message: its end, whole characters only
                tail = data[len(data) - limit :]
                kept.append(tail.decode(errors="ignore").encode())
            break
        kept.append(data)
        size += len(data)
    return b"".join(reversed(kept))


def message_path() -> tuple[str, bool]:
    """(path, create): the configured file, and whether it may be created (only when named explicitly)."""
    configured = os.environ.get(ENV_TERMINATION_LOG)
    if configured is None:
        return contract.TERMINATION_LOG, False
    return configured, True


def write_message(lines: Iterable[str], path: str | None = None, *, create: bool | None = None) -> bool:
    """Replace the termination message with `lines` (see `fit`); False when it could not be written. Silent."""
    where, may_create = message_path() if path is None else (path, True)
    if create is not None:
        may_create = create
    if not where:
        return False
    flags = os.O_WRONLY | os.O_TRUNC | (os.O_CREAT if may_create else 0)
    data = fit(lines)
    try:
        fd = os.open(where, flags, 0o644)
        try:
            view = memoryview(data)
            while view:  # one write for a message this small; the loop only for a short write
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # read-only root filesystem, no such directory, /dev outside a pod: no message, no noise
        return False
    return True


class TerminationMessage:
    """The message of one process: written only when `enabled` (rank 0: the other ranks share its container)."""

    def __init__(self, enabled: bool, path: str | None = None) -> None:
        self.enabled = enabled
        self.path = path

    def write(self, lines: Iterable[str]) -> None:
        if self.enabled:
            write_message(lines, self.path)
