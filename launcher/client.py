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

    def submit(self, spec: JobSpec, *, dry_run: bool = False) -> str:
        return self.backend.submit(spec, dry_run=dry_run)

    def status(self, name: str) -> JobStatus:
        return self.backend.status(name)

    def logs(self, name: str, *, follow: bool = False, rank: int | None = 0) -> Iterator[str]:
        return self.backend.logs(name, follow=follow, rank=rank)

    def list(self) -> builtins.list[JobSummary]:
        return self.backend.list()

    def delete(self, name: str) -> builtins.list[str]:
        return self.backend.delete(name)

    def wait(self, name: str, poll_seconds: float = 5.0) -> JobStatus:
        while True:
            status = self.backend.status(name)
            if status.finished:
                return status
            time.sleep(poll_seconds)
