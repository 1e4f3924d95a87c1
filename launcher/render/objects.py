"""The objects of one job, per backend: ConfigMap (the job file), Service (rank discovery), the workload."""

from __future__ import annotations

import json

from convit.cluster import contract
from convit.jobspec import JobSpec, job_values
from launcher.render.common import (
    Obj,
    cluster_env,
    configmap_name,
    metadata,
    pod_template,
    selector_labels,
)

# The downward-API annotation a pod of an Indexed Job carries its index in.
COMPLETION_INDEX = contract.INDEXED_INDEX_FIELD


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
        # The Job controller counts failed pods, not restarts of the job: when one rank fails, the others lose
        # their peers and their pods fail too, so one whole-job restart can cost up to `pods` failed pods.
        "backoffLimit": c.backoff_limit * c.pods,
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
    `<name>` and host names `<name>-worker-<i>`; the env plugin gives each pod VC_TASK_INDEX.

    maxRetry: Volcano fails the job once its RestartJob count reaches maxRetry (state/restarting.go), so
    backoff_limit restarts need maxRetry backoff_limit + 1; this also keeps it above 0, which the mutating webhook
    would turn into 3 (mutate_job.go). Policies match in order (applyPolicies): exit code 2 (a bad job file) ends
    the job before PodFailed could restart it, as the Indexed Job's podFailurePolicy does. svc plugin arguments:
    without --publish-not-ready-addresses its headless Service lists a pod only once it is Ready; ours have no
    readiness probe and turn Ready when the container starts, but the workers resolve pod 0's name (and the
    scheduler its own) at that very moment, so we publish every pod's record as soon as it has an IP, like the
    Indexed Job's Service (publishNotReadyAddresses). The plugin's NetworkPolicy (ingress only from the job's own
    pods) is kept: nothing outside the job connects to its pods."""
    c = spec.cluster
    task = contract.VOLCANO_TASK
    sched_host = f"{contract.volcano_pod_name(spec.name, task, 0)}.{spec.name}"
    job_spec: Obj = {
        "schedulerName": "volcano",
        "minAvailable": c.pods,
        "queue": c.queue,
        "maxRetry": c.backoff_limit + 1,
        "plugins": {"svc": list(contract.VOLCANO_SVC_ARGS), "env": []},
        "policies": [
            {"exitCode": 2, "action": "TerminateJob"},
            {"event": "PodEvicted", "action": "RestartJob"},
            {"event": "PodFailed", "action": "RestartJob"},
            {"event": "TaskCompleted", "action": "CompleteJob"},
        ],
        "tasks": [
            {
                "name": task,
                "replicas": c.pods,
                "template": pod_template(spec, cluster_env(spec, sched_host), "worker"),
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
    """MindX DL's AscendJob: the ascend-operator adds the scheduler's Service and appends the MS_* variables
    (MS_ROLE, MS_SCHED_HOST, MS_SCHED_PORT, MS_LOCAL_WORKER, MS_WORKER_NUM, MS_NODE_RANK) to every pod, so the
    templates carry none of them; MS_SCHED_PORT is the Scheduler container's port named `ascendjob-port`, which we
    set to cluster.master_port. Pod-template restartPolicy is left out: the operator overwrites it with the
    replica's and records a Warning event. The Scheduler pod needs no NPU: small requests, no NPU node selector.
    With restartPolicy Never a failed pod fails the job; runPolicy.backoffLimit bounds the pods the operator
    re-creates after deletion (eviction, MindCluster's fault rescheduling)."""
    c = spec.cluster
    run_policy: Obj = {
        "backoffLimit": c.backoff_limit,
        "schedulingPolicy": {"minAvailable": c.pods + 1, "queue": c.queue},
    }
    if c.ttl_seconds_after_finished:
        run_policy["ttlSecondsAfterFinished"] = c.ttl_seconds_after_finished
    if c.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = c.active_deadline_seconds
    port = [{"name": contract.ASCEND_PORT_NAME, "containerPort": c.master_port, "protocol": "TCP"}]
    return {
        "apiVersion": "mindxdl.gitee.com/v1",
        "kind": "AscendJob",
        "metadata": metadata(spec, spec.name, "worker", ASCEND_LABELS),
        "spec": {
            "schedulerName": "volcano",
            "runPolicy": run_policy,
            "successPolicy": "AllWorkers",
            "replicaSpecs": {
                contract.ASCEND_SCHEDULER: {
                    "replicas": 1,
                    "restartPolicy": "Never",
                    "template": pod_template(
                        spec,
                        [],
                        "scheduler",
                        npus=False,
                        extra_labels=ASCEND_LABELS,
                        restart_policy=None,
                        ports=port,
                    ),
                },
                contract.ASCEND_WORKER: {
                    "replicas": c.pods,
                    "restartPolicy": "Never",
                    "template": pod_template(spec, [], "worker", extra_labels=ASCEND_LABELS, restart_policy=None),
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


# The pod entrypoint's module selector (convit/cluster/__main__.py): evaluation pods run convit.evaluate.
EVALUATE_MODULE = "convit.evaluate"


def evaluation_args(weights: str) -> list[str]:
    """The container arguments of an evaluation job: `python -m convit.cluster` then these."""
    return ["--module", EVALUATE_MODULE, "--job", contract.JOB_FILE, "--weights", weights]


def pod_templates(obj: Obj) -> list[Obj]:
    """Every pod template of a rendered workload, whatever the backend."""
    spec = obj["spec"]
    if obj["kind"] == "AscendJob":
        return [replica["template"] for replica in spec["replicaSpecs"].values()]
    if obj["apiVersion"].startswith("batch.volcano.sh"):
        return [task["template"] for task in spec["tasks"]]
    return [spec["template"]]


def render_objects(spec: JobSpec, *, evaluate: str | None = None) -> list[Obj]:
    """Everything submit creates, in creation order. With `evaluate` (a weights URI), the same objects run
    `python -m convit.evaluate --weights <URI>` on the job's validation split instead of training (the job
    name is the caller's: `launcher submit --evaluate` names it `<name>-eval`)."""
    objects = [configmap(spec)]
    if spec.cluster.backend == "job":
        objects.append(headless_service(spec))
    objects.append(workload(spec))
    if evaluate is not None:
        for template in pod_templates(objects[-1]):
            for item in template["spec"]["containers"]:
                item["args"] = evaluation_args(evaluate)
    return objects
