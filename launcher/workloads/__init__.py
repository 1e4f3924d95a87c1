"""The workload kinds, one module each, and the registry every other part of the launcher iterates over.

Adding a kind: a module here with a `Workload` subclass (rendering, API coordinates, phases, suspend/resume,
refusals), its entry below and in the job spec's `cluster.backend` choices, a chart template, an emulator in
tests/support/controllers.py, and their tests (tests/test_workloads.py checks the registry is complete).
"""

from __future__ import annotations

from launcher.workloads import ascend_job, indexed_job, jobset, trainjob, volcano_job
from launcher.workloads.base import Obj, Resource, Unsupported, Workload

KINDS: dict[str, Workload] = {
    w.backend: w
    for w in (indexed_job.WORKLOAD, volcano_job.WORKLOAD, ascend_job.WORKLOAD, jobset.WORKLOAD, trainjob.WORKLOAD)
}
BACKENDS = tuple(KINDS)

__all__ = ["BACKENDS", "KINDS", "Obj", "Resource", "Unsupported", "Workload", "for_backend", "for_object"]


def for_backend(backend: str) -> Workload:
    try:
        return KINDS[backend]
    except KeyError:
        raise Unsupported(f"cluster.backend {backend!r}: expected one of {', '.join(BACKENDS)}") from None


def for_object(obj: Obj) -> Workload:
    """The kind of a rendered or fetched workload object."""
    for workload in KINDS.values():
        if workload.matches(obj):
            return workload
    raise Unsupported(f"{obj.get('apiVersion')}/{obj.get('kind')} is not a workload kind of ours")
