"""Kubernetes Indexed Job (`batch/v1` Job, completionMode Indexed) with a headless Service for rank discovery.

Controller facts (kubernetes/kubernetes pkg/controller/job: indexed_job_utils.go, job_controller.go,
pod_failure_policy.go; Kubernetes 1.29+ for podReplacementPolicy): pod i carries its index in the annotation and
label `batch.kubernetes.io/job-completion-index` and, with a `subdomain`, gets the hostname `<job>-<i>`; a failed pod
is replaced alone (same index) while the others keep running; podFailurePolicy rules apply in order, then
`backoffLimit` counts failed pods; `spec.suspend` deletes the active pods and keeps the job.
"""

from __future__ import annotations

from convit.cluster import contract
from convit.errors import STOPPED_EXIT
from convit.jobspec import JobSpec
from launcher.render.common import cluster_env, metadata, pod_template, selector_labels
from launcher.workloads import kueue
from launcher.workloads.base import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    SUSPENDED,
    SUSPENDING,
    Obj,
    Resource,
)

# The downward-API path of the annotation a pod of an Indexed Job carries its index in.
COMPLETION_INDEX = contract.INDEXED_INDEX_FIELD
# Exit code 2 is a usage/config error (a bad job file, convit.errors.UsageError): retrying cannot help.
NEVER_RETRY_EXIT_CODES = [2]


def stopped_rule(container: str) -> Obj:
    """A pod stopped on request (deleted, or its job suspended: SIGTERM, a checkpoint, STOPPED_EXIT) is not a failure:
    it is replaced without counting against backoffLimit. Its peers, which were not signalled, exit LOST_PEER_EXIT
    and are counted, as for any lost rank."""
    return {
        "action": "Ignore",
        "onExitCodes": {"containerName": container, "operator": "In", "values": [STOPPED_EXIT]},
    }


class IndexedJob(kueue.Admitted):
    backend = "job"
    kind = "Job"
    resource = Resource("batch", "v1", "jobs")
    summary = "Kubernetes Indexed Job + headless Service (any cluster; the pod with the failed index is replaced)"
    index_annotations = (contract.INDEXED_INDEX_ANNOTATION,)
    index_labels = (contract.INDEXED_INDEX_ANNOTATION,)

    def objects(self, spec: JobSpec) -> list[Obj]:
        return [self.headless_service(spec), self.job(spec)]

    def headless_service(self, spec: JobSpec) -> Obj:
        """Pod i of the Indexed Job is `<name>-<i>.<name>`: pod 0's name is the scheduler address."""
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(spec, spec.name, "rendezvous"),
            "spec": {
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": selector_labels(spec),
                "ports": [{"name": "scheduler", "port": spec.cluster.master_port, "protocol": "TCP"}],
            },
        }

    def job(self, spec: JobSpec) -> Obj:
        c = spec.cluster
        sched_host = f"{contract.indexed_pod_hostname(spec.name, 0)}.{spec.name}"
        env = [
            {"name": contract.ENV_NODE_RANK, "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
            *cluster_env(spec, sched_host),
        ]
        job_spec: Obj = {
            **({"suspend": True} if c.kueue_queue else {}),  # created suspended: Kueue starts it on admission
            "completionMode": "Indexed",
            "completions": c.pods,
            "parallelism": c.pods,
            # The Job controller counts failed pods, not restarts of the job: when one rank fails, the others lose
            # their peers and their pods fail too, so one whole-job restart can cost `pods` failed pods, and one
            # more when pod 0 was replaced first: a survivor re-registers with its new MindSpore scheduler before
            # it ends, and that scheduler fails once over it (measured: tests/test_recovery.py).
            "backoffLimit": c.backoff_limit * (c.pods + 1),
            # A replacement pod starts only once the failed one is gone, so two pods never hold one hostname.
            "podReplacementPolicy": "Failed",
            "podFailurePolicy": {
                "rules": [
                    # Preemption, eviction and node drains do not count against backoffLimit.
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                    stopped_rule(contract.CONTAINER_NAME),
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": contract.CONTAINER_NAME,
                            "operator": "In",
                            "values": list(NEVER_RETRY_EXIT_CODES),
                        },
                    },
                ]
            },
            "template": pod_template(spec, env, "worker", subdomain=spec.name, scheduler_name=c.scheduler_name),
        }
        if c.active_deadline_seconds:
            job_spec["activeDeadlineSeconds"] = c.active_deadline_seconds
        if c.ttl_seconds_after_finished:
            job_spec["ttlSecondsAfterFinished"] = c.ttl_seconds_after_finished
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": metadata(spec, spec.name, "worker", kueue.labels(spec)),
            "spec": job_spec,
        }

    def pod_templates(self, obj: Obj) -> list[Obj]:
        return [obj["spec"]["template"]]

    def phase(self, obj: Obj) -> str:
        status = obj.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
                return SUCCEEDED
            if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
                return FAILED
        if (obj.get("spec") or {}).get("suspend"):  # pods are stopping (and checkpointing) until none is active
            return SUSPENDING if status.get("active") or status.get("terminating") else SUSPENDED
        return RUNNING if status.get("active") else PENDING

    def pods(self, obj: Obj) -> int:
        return int((obj.get("spec") or {}).get("completions") or 1)


WORKLOAD = IndexedJob()
