"""Kueue admission for the kinds Kueue integrates (batch/v1 Job, JobSet, TrainJob), as facts and helpers their
modules use.

Facts (kubernetes-sigs/kueue ff69552): a job joins a LocalQueue through the label `kueue.x-k8s.io/queue-name`
(pkg/controller/constants), optionally with `kueue.x-k8s.io/priority-class` (a WorkloadPriorityClass). Kueue's
webhook suspends it on creation and unsuspends it on admission; it re-suspends it on eviction
(pkg/controller/jobframework/reconciler.go), so the job's own `suspend` is Kueue's: a user stops and restarts a
managed job through its Workload's `spec.active` (kueue.x-k8s.io/v1beta1, served by every Kueue release since 0.5;
v1beta2 is newer), which Kueue labels with the job's UID (`kueue.x-k8s.io/job-uid`). The Workload's
conditions say where the job is: QuotaReserved (False: still queued, with the reason), Admitted, Evicted, Finished.
Volcano Jobs and AscendJobs have no Kueue integration upstream: the setting is refused there.
"""

from __future__ import annotations

from convit.jobspec import JobSpec
from launcher.errors import LauncherError
from launcher.workloads.base import (
    SUSPENDED,
    SUSPENDING,
    ClusterApi,
    Obj,
    Resource,
    Unsupported,
    Workload,
    refuse_volcano_placement,
)

QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
WORKLOADS = Resource("kueue.x-k8s.io", "v1beta1", "workloads")
QUEUED = "Queued"  # our phase of a managed job that waits for admission


def labels(spec: JobSpec) -> dict[str, str]:
    c = spec.cluster
    out = {QUEUE_LABEL: c.kueue_queue} if c.kueue_queue else {}
    if c.kueue_priority_class:
        out[PRIORITY_LABEL] = c.kueue_priority_class
    return out


def refuse(spec: JobSpec, backend: str) -> None:
    """For kinds Kueue cannot admit."""
    if spec.cluster.kueue_queue or spec.cluster.kueue_priority_class:
        raise Unsupported(
            f"cluster.kueue_queue cannot be used on the {backend} backend: Kueue has no integration for it "
            "(use the job, jobset or trainjob backend)"
        )
    return None


def check(spec: JobSpec) -> None:
    if spec.cluster.kueue_priority_class and not spec.cluster.kueue_queue:
        raise Unsupported("cluster.kueue_priority_class needs cluster.kueue_queue (the LocalQueue to admit the job)")


def managed(obj: Obj) -> bool:
    return bool(((obj.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL))


def workload_of(api: ClusterApi, obj: Obj) -> Obj | None:
    """The Workload Kueue keeps for this job (None until Kueue created it)."""
    uid = obj["metadata"].get("uid")
    if not uid:
        return None
    items = api.list_objects(WORKLOADS, f"{JOB_UID_LABEL}={uid}")
    return items[0] if items else None


def set_active(api: ClusterApi, obj: Obj, active: bool) -> None:
    name = obj["metadata"]["name"]
    workload = workload_of(api, obj)
    if workload is None:
        raise LauncherError(
            f"job {api.namespace}/{name} is queued in Kueue ({QUEUE_LABEL}) but has no Workload yet; is Kueue "
            "running? try again in a moment"
        )
    api.patch(WORKLOADS, workload["metadata"]["name"], {"spec": {"active": active}})


def admission(workload: Obj | None) -> str:
    """One line: where Kueue has the job."""
    if workload is None:
        return "no Kueue Workload yet"
    spec, status = workload.get("spec") or {}, workload.get("status") or {}
    queue = spec.get("queueName", "?")
    if spec.get("active") is False:
        return f"deactivated in Kueue (LocalQueue {queue}); resume reactivates it"
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    if conditions.get("Finished", {}).get("status") == "True":
        return f"finished in Kueue (LocalQueue {queue})"
    if conditions.get("Admitted", {}).get("status") == "True":
        cluster_queue = (status.get("admission") or {}).get("clusterQueue", "?")
        return f"admitted by Kueue to ClusterQueue {cluster_queue} (LocalQueue {queue})"
    evicted = conditions.get("Evicted", {})
    if evicted.get("status") == "True":
        return f"evicted by Kueue ({evicted.get('reason', '?')}: {evicted.get('message', '')}), queued again"
    pending = conditions.get("QuotaReserved", {})
    why = f" ({pending.get('reason')}: {pending.get('message', '')})" if pending.get("status") == "False" else ""
    return f"queued in Kueue (LocalQueue {queue}){why}"


def phase(own: str, workload: Obj | None) -> str:
    """Our phase of a managed job: a job Kueue holds suspended while its Workload is active is queued, not
    suspended by the user."""
    if own in (SUSPENDED, SUSPENDING) and workload is not None and (workload.get("spec") or {}).get("active", True):
        return QUEUED
    if own in (SUSPENDED, SUSPENDING) and workload is None:
        return QUEUED
    return own


class Admitted(Workload):
    """A kind Kueue can admit, which stops and starts through its own `spec.suspend` (Job, JobSet, TrainJob): under
    Kueue, which owns that field, through the Workload's `spec.active` instead."""

    suspendable = True
    kueue_admits = True

    def check(self, spec: JobSpec) -> None:
        check(spec)
        refuse_volcano_placement(spec, self.backend)

    def suspend(self, api: ClusterApi, obj: Obj) -> None:
        """The controller stops the pods (SIGTERM, then the grace period for rank 0's checkpoint)."""
        self._set_suspended(api, obj, True)

    def resume(self, api: ClusterApi, obj: Obj) -> None:
        """New pods, which resume from the newest checkpoint."""
        self._set_suspended(api, obj, False)

    def _set_suspended(self, api: ClusterApi, obj: Obj, suspended: bool) -> None:
        if managed(obj):
            set_active(api, obj, not suspended)
        else:
            api.patch(self.resource, obj["metadata"]["name"], {"spec": {"suspend": suspended}})
