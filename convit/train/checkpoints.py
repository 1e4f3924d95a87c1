"""Checkpoints in object storage, written so that a crash at any moment never leaves a broken "latest".

Layout below the job's checkpoint URI:
    checkpoints/step-000001234/weights.ckpt   model + optimizer state (MindSpore checkpoint)
    checkpoints/step-000001234/meta.json      step, data position, sha256 and size of weights.ckpt, recipe;
                                              uploaded after weights.ckpt, so its presence means "complete"
    latest.json                               pointer to the newest complete checkpoint, written last
    best.json                                 pointer to the checkpoint with the best validation top-1

Saving writes the file locally (staging dir), then uploads it on a background thread, so training goes on;
at most one upload is in flight. Loading verifies size and sha256 before MindSpore reads the file and falls
back to the previous complete checkpoint when one is corrupt, truncated or does not fit the model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from convit.errors import ConvitError
from convit.storage import Storage, StorageError, open_storage

log = logging.getLogger("convit.checkpoints")

CKPT_DIR = "checkpoints"
WEIGHTS = "weights.ckpt"
META = "meta.json"
LATEST = "latest.json"
BEST = "best.json"
_STEP_DIR = re.compile(r"^checkpoints/(step-\d{9})/meta\.json$")


class CheckpointError(ConvitError):
    """A checkpoint that cannot be used."""


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint's meta.json holds.

    The data position does not depend on the world size: `epoch_samples` samples (all ranks) of `epoch` are
    consumed, by the segments `segments` ([world size, batch per rank, steps], see convit.data.order), which
    say exactly which samples. Checkpoints written before elastic resume have neither (nor `world_size`): their
    `epoch_step` steps are taken to be of the world size that resumes them.
    """

    step: int  # global steps done
    epoch: int  # epoch to continue in
    epoch_step: int  # steps of that epoch already done (every segment)
    sha256: str
    size: int
    model: str
    top1: float | None = None
    saved_at: float = 0.0
    reason: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    world_size: int = 0  # of the run that saved it; 0: not recorded
    batch_size: int = 0  # per rank, of the run that saved it; 0: not recorded
    epoch_samples: int = 0
    segments: list[list[int]] = field(default_factory=list)
    restarts: int = 0  # starts of the job that resumed, up to the one that saved it (the metric convit_restarts)
    classes: list[str] = field(default_factory=list)  # the head's class names, in label order; []: not recorded

    @property
    def name(self) -> str:
        return step_dir(self.step)


def step_dir(step: int) -> str:
    return f"step-{step:09d}"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(8 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class CheckpointStore:
    """Rank 0 saves through it; every rank loads through it."""

    def __init__(self, uri: str, staging: Path, keep_last: int = 10, keep_best: bool = True) -> None:
        self.uri = uri
        self.storage: Storage = open_storage(uri)
        self.staging = staging
        self.keep_last = keep_last
        self.keep_best = keep_best
        self._upload: threading.Thread | None = None
        self._upload_error: BaseException | None = None
        self.upload_seconds: list[float] = []
        # Called with each checkpoint once it is complete in object storage, and its upload's seconds (on the
        # upload thread): the metrics' checkpoint age and upload duration (convit/train/metrics.py).
        self.on_published: Callable[[CheckpointMeta, float], None] | None = None

    # ---- saving -------------------------------------------------------------------------------------------
    def save(
        self,
        write: Callable[[Path], None],
        meta: dict[str, Any],
        *,
        background: bool = True,
    ) -> CheckpointMeta:
        """`write(path)` writes weights.ckpt locally; the upload and pointer update follow (in the background)."""
        self.wait()  # one upload at a time, and surface the previous one's failure
        step = int(meta["step"])
        local_dir = self.staging / step_dir(step)
        local_dir.mkdir(parents=True, exist_ok=True)
        weights = local_dir / WEIGHTS
        if weights.exists():
            weights.chmod(0o600)
            weights.unlink()
        write(weights)
        info = CheckpointMeta(sha256=sha256_file(weights), size=weights.stat().st_size, saved_at=time.time(), **meta)
        if background:
            self._upload = threading.Thread(target=self._run_upload, args=(info, local_dir), daemon=True)
            self._upload.start()
        else:
            self._publish(info, local_dir)
        return info

    def _run_upload(self, info: CheckpointMeta, local_dir: Path) -> None:
        # Lower this thread's CPU priority (Linux threads are schedulable entities): training comes first.
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        try:
            self._publish(info, local_dir)
        except BaseException as exc:  # reported by wait() on the training thread
            self._upload_error = exc

    def _publish(self, info: CheckpointMeta, local_dir: Path) -> None:
        started = time.monotonic()
        prefix = f"{CKPT_DIR}/{info.name}"
        self.storage.put_file(f"{prefix}/{WEIGHTS}", local_dir / WEIGHTS)
        self.storage.put(f"{prefix}/{META}", json.dumps(asdict(info), sort_keys=True).encode())
        pointer = json.dumps({"step": info.step, "dir": prefix}).encode()
        self.storage.put(LATEST, pointer)
        if info.top1 is not None and self.keep_best and self._is_best(info):
            self.storage.put(BEST, json.dumps({"step": info.step, "dir": prefix, "top1": info.top1}).encode())
        self.upload_seconds.append(time.monotonic() - started)
        if self.on_published is not None:
            self.on_published(info, self.upload_seconds[-1])
        self._prune()
        shutil.rmtree(local_dir, ignore_errors=True)

    def _is_best(self, info: CheckpointMeta) -> bool:
        try:
            best = json.loads(self.storage.get(BEST))
        except StorageError:
            return True
        return float(best.get("top1", -1.0)) < float(info.top1 or 0.0)

    def _prune(self) -> None:
        steps = self.complete_steps()
        protected: set[int] = set()
        with contextlib.suppress(StorageError, ValueError, KeyError):
            protected.add(int(json.loads(self.storage.get(BEST))["step"]))
        for step in steps[: max(0, len(steps) - self.keep_last)]:
            if step in protected:
                continue
            prefix = f"{CKPT_DIR}/{step_dir(step)}"
            self.storage.delete(f"{prefix}/{META}")  # incomplete first, then gone
            self.storage.delete(f"{prefix}/{WEIGHTS}")

    def wait(self) -> None:
        """Block until the in-flight upload is done; raise if it failed."""
        if self._upload is not None:
            self._upload.join()
            self._upload = None
        if self._upload_error is not None:
            error, self._upload_error = self._upload_error, None
            if isinstance(error, ConvitError):
                raise CheckpointError(f"checkpoint upload failed: {error}") from None
            raise error

    # ---- loading ------------------------------------------------------------------------------------------
    def complete_steps(self) -> list[int]:
        """Steps with a meta.json (uploaded after the weights), ascending."""
        steps = []
        for key in self.storage.list(f"{CKPT_DIR}/"):
            match = _STEP_DIR.match(key)
            if match:
                steps.append(int(match.group(1)[len("step-") :]))
        return sorted(steps)

    def candidates(self) -> list[int]:
        """Complete checkpoints, newest first (the pointer's target included even if listing lags)."""
        steps = set(self.complete_steps())
        try:
            steps.add(int(json.loads(self.storage.get(LATEST))["step"]))
        except StorageError:
            pass
        except (ValueError, KeyError, TypeError):
            log.warning("checkpoints: %s/%s is unreadable; scanning for checkpoints instead", self.uri, LATEST)
        return sorted(steps, reverse=True)

    def fetch(self, step: int) -> tuple[CheckpointMeta, Path]:
        """Download and verify one checkpoint; CheckpointError if it is missing or corrupt."""
        prefix = f"{CKPT_DIR}/{step_dir(step)}"
        try:
            raw = json.loads(self.storage.get(f"{prefix}/{META}"))
            meta = CheckpointMeta(**raw)
        except StorageError as exc:
            raise CheckpointError(str(exc)) from None
        except (ValueError, TypeError) as exc:
            raise CheckpointError(f"{self.uri}/{prefix}/{META} is malformed ({exc})") from None
        local = self.staging / "restore" / step_dir(step) / WEIGHTS
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            local.write_bytes(self.storage.get(f"{prefix}/{WEIGHTS}"))
        except StorageError as exc:
            raise CheckpointError(str(exc)) from None
        size = local.stat().st_size
        if size != meta.size:
            raise CheckpointError(f"{self.uri}/{prefix}/{WEIGHTS} is truncated ({size} of {meta.size} bytes)")
        if sha256_file(local) != meta.sha256:
            raise CheckpointError(f"{self.uri}/{prefix}/{WEIGHTS} is corrupt (sha256 mismatch)")
        return meta, local

    def restore(self, apply: Callable[[CheckpointMeta, Path], None]) -> CheckpointMeta | None:
        """Apply the newest usable checkpoint; None when there is none. Corrupt ones are reported and skipped.

        When checkpoints exist but none is usable, raise rather than start from scratch: a fresh start would
        soon prune those checkpoints, and they may be all that is left of a long run.
        """
        candidates = self.candidates()
        last_error = ""
        for step in candidates:
            try:
                meta, path = self.fetch(step)
                apply(meta, path)
            except ConvitError as exc:
                log.warning("checkpoints: skipping step %d: %s; trying the previous one", step, exc)
                last_error = str(exc)
                continue
            finally:
                shutil.rmtree(self.staging / "restore", ignore_errors=True)
            return meta
        if candidates:
            raise CheckpointError(
                f"{len(candidates)} checkpoint(s) under {self.uri} but none is usable (last: {last_error}); "
                "refusing to start over and overwrite them: fix them or use another checkpoint URI"
            )
        return None
