"""Volcano Job (`batch.volcano.sh/v1alpha1`): gang-scheduled, all pods start together or none does.

Controller facts (volcano-sh/volcano ed72c7c; Volcano 1.9 to current): the svc plugin (plugins/svc/svc.go) makes
the headless Service `<job>` and pod hostnames `<job>-<task>-<i>` (jobhelpers.MakePodName); the env plugin
(plugins/env/env.go) gives each pod VC_TASK_INDEX; the webhook (mutate_job.go) turns `maxRetry: 0` into 3.
Policies match in order (job_controller_util.go applyPolicies). RestartJob deletes and recreates every pod and
raises `status.retryCount`; the job fails once retryCount >= maxRetry (state/running.go, restarting.go 31-40).
ResumeJob from Aborted/Aborting raises retryCount too (state/aborted.go 29-38). In Restarting, an AbortJob falls
through to KillJob and is lost (restarting.go 54-63). The Job CRD has no activeDeadlineSeconds.
"""

from __future__ import annotations

from convit.cluster import contract
from convit.jobspec import JobSpec
from launcher.errors import LauncherError
from launcher.render import placement
from launcher.render.common import cluster_env, metadata, pod_template
from launcher.workloads import kueue
from launcher.workloads.base import (
    FAILED,
    SUCCEEDED,
    SUSPENDED,
    SUSPENDING,
    ClusterApi,
    Obj,
    Resource,
    Unsupported,
    Workload,
    refuse_other_schedulers,
)

# Volcano's job commands (what `vcctl job suspend/resume` create): pkg/cli/util/util.go CreateJobCommand, called by
# pkg/cli/job/suspend.go (AbortJob) and resume.go (ResumeJob).
COMMANDS = Resource("bus.volcano.sh", "v1alpha1", "commands")
# Our policies never abort a job, so Aborting/Aborted is a suspension (AbortJob, from `suspend` or vcctl), which
# ResumeJob undoes.
PHASES = {
    "Completed": SUCCEEDED,
    "Terminated": FAILED,
    "Failed": FAILED,
    "Aborting": SUSPENDING,
    "Aborted": SUSPENDED,
}


class VolcanoJob(Workload):
    backend = "volcano"
    kind = "Job"
    resource = Resource("batch.volcano.sh", "v1alpha1", "jobs")
    summary = "Volcano Job (gang-scheduled; every pod is recreated on a failure)"
    suspendable = True
    index_annotations = (contract.VOLCANO_INDEX_ANNOTATION,)

    def check(self, spec: JobSpec) -> None:
        refuse_other_schedulers(spec, self.backend, "volcano")
        kueue.refuse(spec, self.backend)
        if spec.cluster.active_deadline_seconds:
            raise Unsupported(
                "cluster.active_deadline_seconds cannot be honoured on the volcano backend: the Volcano Job has no "
                "deadline field; use the job backend, or set it to 0"
            )

    def objects(self, spec: JobSpec) -> list[Obj]:
        """maxRetry: Volcano fails the job once its RestartJob count reaches maxRetry, so backoff_limit restarts
        need maxRetry backoff_limit + 1; this also keeps it above 0, which the webhook would turn into 3. Exit code 2
        (a bad job file) ends the job before PodFailed could restart it, as the Indexed Job's podFailurePolicy does.
        svc plugin: without --publish-not-ready-addresses its headless Service lists a pod only once it is Ready;
        ours have no readiness probe and turn Ready when the container starts, but the workers resolve pod 0's name
        (and the scheduler its own) at that very moment, so every pod's record is published as soon as it has an
        IP. The plugin's NetworkPolicy (ingress only from the job's own pods) is kept."""
        c = spec.cluster
        task = contract.VOLCANO_TASK
        sched_host = f"{contract.volcano_pod_name(spec.name, task, 0)}.{spec.name}"
        job_spec: Obj = {
            **placement.network_topology(spec),
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
        return [
            {
                "apiVersion": self.resource.api_version,
                "kind": self.kind,
                "metadata": metadata(spec, spec.name, "worker", placement.tor_affinity_label(spec)),
                "spec": job_spec,
            }
        ]

    def pod_templates(self, obj: Obj) -> list[Obj]:
        return [task["template"] for task in obj["spec"]["tasks"]]

    def phase(self, obj: Obj) -> str:
        phase = ((obj.get("status") or {}).get("state") or {}).get("phase", "Pending")
        return str(PHASES.get(phase, phase))

    def pods(self, obj: Obj) -> int:
        return int(sum(t.get("replicas", 0) for t in (obj.get("spec") or {}).get("tasks", [])))

    def command(self, api: ClusterApi, obj: Obj, action: str) -> None:
        """A bus.volcano.sh Command for the job, exactly as vcctl's CreateJobCommand makes it (util.go): the job as
        controller owner and target, generateName `<job>-<action lower-cased>-`."""
        meta = obj["metadata"]
        ref = {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": meta["name"],
            "uid": meta["uid"],
            "controller": True,
            "blockOwnerDeletion": True,
        }
        body = {
            "apiVersion": COMMANDS.api_version,
            "kind": "Command",
            "metadata": {
                "generateName": f"{meta['name']}-{action.lower()}-",
                "namespace": api.namespace,
                "ownerReferences": [ref],
            },
            "target": ref,
            "action": action,
        }
        api.create(COMMANDS, body, f"Volcano Command {action} for job {meta['name']!r}")

    def suspend(self, api: ClusterApi, obj: Obj) -> None:
        """An AbortJob Command: the controller kills the pods (SIGTERM, rank 0 checkpoints) and the job turns
        Aborted. Not while Restarting: the controller would consume the command and ignore it."""
        raw = ((obj.get("status") or {}).get("state") or {}).get("phase", "")
        if raw == "Restarting":
            raise LauncherError(
                f"job {api.namespace}/{obj['metadata']['name']} is restarting its pods; Volcano ignores a suspend "
                "sent now (restarting.go): run suspend again once it is Running"
            )
        self.command(api, obj, "AbortJob")

    def resume(self, api: ClusterApi, obj: Obj) -> None:
        """A ResumeJob Command. Volcano counts each resume as a retry of the job (state/aborted.go): at
        retryCount + 1 >= maxRetry the resumed job would fail at once, so that resume is refused."""
        status = obj.get("status") or {}
        retries = int(status.get("retryCount") or 0)
        limit = int((obj.get("spec") or {}).get("maxRetry") or contract.VOLCANO_WEBHOOK_DEFAULT_MAX_RETRY)
        if retries + 1 >= limit:
            raise LauncherError(
                f"job {api.namespace}/{obj['metadata']['name']} has used {retries} of its {limit - 1} restarts "
                f"(maxRetry {limit}); Volcano counts a resume as one, so it would fail at once. Delete it and "
                "submit it again: it continues from its newest checkpoint"
            )
        self.command(api, obj, "ResumeJob")


WORKLOAD = VolcanoJob()
