"""A thin client over a backend: what the CLI (and notebooks) call."""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator

from convit.jobspec import JobSpec
from launcher.backends.base import Backend, JobStatus, JobSummary


class TrainingClient:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def submit(self, spec: JobSpec, *, dry_run: bool = False, evaluate: str | None = None) -> str:
        return self.backend.submit(spec, dry_run=dry_run, evaluate=evaluate)

    def status(self, name: str) -> JobStatus:
        return self.backend.status(name)

    def logs(self, name: str, *, follow: bool = False, rank: int | None = 0) -> Iterator[str]:
        return self.backend.logs(name, follow=follow, rank=rank)

    def list(self) -> builtins.list[JobSummary]:
        return self.backend.list()

    def delete(self, name: str) -> builtins.list[str]:
        return self.backend.delete(name)

    def suspend(self, name: str) -> str:
        return self.backend.suspend(name)

    def resume(self, name: str) -> str:
        return self.backend.resume(name)

    def wait(self, name: str, poll_seconds: float = 5.0, timeout: float | None = None) -> JobStatus:
        """The job's status once it has ended (Succeeded, Failed, Stopped); with `timeout` (seconds), the
        status at that moment if it has not ended by then (a suspended job has not ended)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            status = self.backend.status(name)
            if status.finished:
                return status
            if deadline is not None and time.monotonic() >= deadline:
                return status
            pause = poll_seconds if deadline is None else min(poll_seconds, max(0.0, deadline - time.monotonic()))
            time.sleep(pause)
