"""The backend interface: the Kubernetes and the local backend have identical signatures."""

from __future__ import annotations

import abc
import builtins
from collections.abc import Iterator
from dataclasses import dataclass, field

from convit.jobspec import JobSpec


@dataclass(frozen=True)
class PodStatus:
    index: int
    name: str
    phase: str
    restarts: int = 0
    node: str = ""
    message: str = ""  # the last line of its termination message: the final result, or the last progress


@dataclass(frozen=True)
class JobStatus:
    name: str
    namespace: str
    phase: str  # Pending | Queued (Kueue) | Running | Suspending | Suspended | Succeeded | Failed | Stopped (local)
    pods: list[PodStatus] = field(default_factory=list)
    latest_progress: str | None = None
    result: str | None = None  # an evaluation's `evaluated N samples: top1 ...` line, once rank 0 printed it
    admission: str | None = None  # under Kueue: queued (and why), admitted, evicted or deactivated
    metrics: str | None = None  # where rank 0's Prometheus /metrics is served (local mode: a URL on this machine)
    endpoint: str | None = None  # a server's base URL (local mode: on this machine; a cluster: its Service's)

    @property
    def finished(self) -> bool:
        """Ended for good (a suspended job is not: it can be resumed)."""
        return self.phase in ("Succeeded", "Failed", "Stopped")


@dataclass(frozen=True)
class JobSummary:
    name: str
    namespace: str
    phase: str
    kind: str
    model: str = ""


class Backend(abc.ABC):
    namespace: str

    @abc.abstractmethod
    def submit(self, spec: JobSpec, *, dry_run: bool = False, evaluate: str | None = None) -> str:
        """Create the job's objects; returns the job name. With `evaluate` (a weights URI) the pods evaluate
        those weights (`python -m convit.evaluate`) instead of training."""

    @abc.abstractmethod
    def status(self, name: str) -> JobStatus: ...

    @abc.abstractmethod
    def logs(self, name: str, *, follow: bool = False, rank: int | None = 0) -> Iterator[str]:
        """Lines of pod `rank` (None: every pod, each line prefixed with `[pod-i]`)."""

    @abc.abstractmethod
    def list(self) -> builtins.list[JobSummary]: ...

    @abc.abstractmethod
    def delete(self, name: str) -> builtins.list[str]:
        """Delete the job and what it created; returns what was deleted, as `Kind/name`."""

    @abc.abstractmethod
    def suspend(self, name: str) -> str:
        """Stop the job's pods gracefully (rank 0 saves a checkpoint on SIGTERM), keeping the job; returns a line
        saying what was done."""

    @abc.abstractmethod
    def resume(self, name: str) -> str:
        """Start a suspended job's pods again (they resume from the newest checkpoint); returns a line."""
