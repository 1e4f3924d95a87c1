"""The objects of one job, per backend: ConfigMap (the job file), Service (rank discovery), the workload."""

from __future__ import annotations

import json

from convit.cluster import contract
from convit.jobspec import JobSpec, job_values
from launcher.render.common import (
    Obj,
    cluster_env,
    configmap_name,
    env_value,
    metadata,
    pod_template,
    selector_labels,
)

# The downward-API annotation a pod of an Indexed Job carries its index in.
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def job_json(spec: JobSpec) -> str:
    return json.dumps(job_values(spec), sort_keys=True, separators=(",", ":"))


def configmap(spec: JobSpec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec, configmap_name(spec), "config"),
        "data": {contract.JOB_FILE_NAME: job_json(spec)},
    }


def headless_service(spec: JobSpec) -> Obj:
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


def indexed_job(spec: JobSpec) -> Obj:
    c = spec.cluster
    env = [
        {"name": contract.ENV_NODE_RANK, "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        *cluster_env(spec, f"{spec.name}-0.{spec.name}"),
    ]
    job_spec: Obj = {
        "completionMode": "Indexed",
        "completions": c.pods,
        "parallelism": c.pods,
        "backoffLimit": c.backoff_limit,
        # A replacement pod starts only once the failed one is gone, so two pods never hold one hostname.
        "podReplacementPolicy": "Failed",
        "podFailurePolicy": {
            "rules": [
                # Preemption, eviction and node drains do not count against backoffLimit.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                # Exit code 2 is a usage/config error (a bad job file): retrying cannot help.
                {
                    "action": "FailJob",
                    "onExitCodes": {"containerName": contract.CONTAINER_NAME, "operator": "In", "values": [2]},
                },
            ]
        },
        "template": pod_template(spec, env, "worker", subdomain=spec.name),
    }
    if c.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = c.active_deadline_seconds
    if c.ttl_seconds_after_finished:
        job_spec["ttlSecondsAfterFinished"] = c.ttl_seconds_after_finished
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata(spec, spec.name, "worker"), "spec": job_spec}


def volcano_job(spec: JobSpec) -> Obj:
    """Gang-scheduled: all pods start together or none does. The svc plugin makes the headless Service
    `<name>` and host names `<name>-worker-<i>`; the env plugin gives each pod VC_TASK_INDEX."""
    c = spec.cluster
    job_spec: Obj = {
        "schedulerName": "volcano",
        "minAvailable": c.pods,
        "queue": c.queue,
        "maxRetry": c.backoff_limit,
        "plugins": {"svc": [], "env": []},
        "policies": [
            {"event": "PodEvicted", "action": "RestartJob"},
            {"event": "PodFailed", "action": "RestartJob"},
            {"event": "TaskCompleted", "action": "CompleteJob"},
        ],
        "tasks": [
            {
                "name": "worker",
                "replicas": c.pods,
                "template": pod_template(spec, cluster_env(spec, f"{spec.name}-worker-0.{spec.name}"), "worker"),
            }
        ],
    }
    if c.ttl_seconds_after_finished:
        job_spec["ttlSecondsAfterFinished"] = c.ttl_seconds_after_finished
    return {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "metadata": metadata(spec, spec.name, "worker"),
        "spec": job_spec,
    }


ASCEND_LABELS = {"framework": "mindspore", "ring-controller.atlas": "ascend-910"}


def ascend_job(spec: JobSpec) -> Obj:
    """MindX DL's AscendJob: the ascend-operator adds the scheduler's Service and the MS_* variables."""
    c = spec.cluster
    run_policy: Obj = {
        "backoffLimit": c.backoff_limit,
        "schedulingPolicy": {"minAvailable": c.pods + 1, "queue": c.queue},
    }
    if c.ttl_seconds_after_finished:
        run_policy["ttlSecondsAfterFinished"] = c.ttl_seconds_after_finished
    if c.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = c.active_deadline_seconds
    local = [env_value(contract.ENV_LOCAL, c.npus_per_pod)]  # the operator sets it too; this keeps local runs alike
    return {
        "apiVersion": "mindxdl.gitee.com/v1",
        "kind": "AscendJob",
        "metadata": metadata(spec, spec.name, "worker", ASCEND_LABELS),
        "spec": {
            "schedulerName": "volcano",
            "runPolicy": run_policy,
            "successPolicy": "AllWorkers",
            "replicaSpecs": {
                "Scheduler": {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": pod_template(spec, [], "scheduler", npus=False, extra_labels=ASCEND_LABELS),
                },
                "Worker": {
                    "replicas": c.pods,
                    "restartPolicy": "Never",
                    "template": pod_template(spec, local, "worker", extra_labels=ASCEND_LABELS),
                },
            },
        },
    }


def workload(spec: JobSpec) -> Obj:
    backend = spec.cluster.backend
    if backend == "volcano":
        return volcano_job(spec)
    if backend == "ascendjob":
        return ascend_job(spec)
    return indexed_job(spec)


def render_objects(spec: JobSpec) -> list[Obj]:
    """Everything submit creates, in creation order."""
    objects = [configmap(spec)]
    if spec.cluster.backend == "job":
        objects.append(headless_service(spec))
    objects.append(workload(spec))
    return objects
