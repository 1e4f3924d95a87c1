"""JobSet (`jobset.x-k8s.io/v1alpha2`): one replicated Job of `pods` Indexed pods, restarted as a whole gang.

Controller facts (kubernetes-sigs/jobset 08dfbdf): the child Job is `<jobset>-<replicatedjob>-<i>`
(pkg/util/placement GenJobName) and, with network.enableDNSHostnames (the webhook's default), its pods get the
hostnames `<child job>-<pod index>` under a headless Service named after the JobSet (jobset_controller.go
constructJob, createHeadlessSvcIfNecessary). A failed child Job is matched against failurePolicy.rules in order
(failure_policy.go); with no matching rule the JobSet restarts: every child Job is deleted and created again
(status.restarts + 1, counted against maxRestarts; ReachedMaxRestarts fails the JobSet). Our child Job has
backoffLimit 0, so any failed pod fails it and restarts the gang, and its podFailurePolicy fails it with the reason
PodFailurePolicy on exit code 2 (a bad job file), which the rule `bad-job-file` turns into FailJobSet.
restartStrategy BlockingRecreate: the new pods are created only once every old pod is gone, so no new rank ever
meets the old cluster. spec.suspend suspends the child Jobs (their pods get SIGTERM). The JobSet has no deadline of
its own (a child Job's activeDeadlineSeconds would restart with every recreation): refused.
"""

from __future__ import annotations

from convit.cluster import contract
from convit.jobspec import JobSpec
from launcher.render.common import cluster_env, metadata, pod_template
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
    Unsupported,
)
from launcher.workloads.indexed_job import COMPLETION_INDEX, NEVER_RETRY_EXIT_CODES, stopped_rule

BAD_JOB_FILE_RULE = "bad-job-file"
POD_FAILURE_POLICY_REASON = "PodFailurePolicy"  # the child Job's failure reason when a FailJob rule matched
POD_NAME_MAX = 63  # pod names are DNS-1035 labels; the webhook checks the longest one with a 5-character suffix


def pod_env(spec: JobSpec, rjob: str) -> list[Obj]:
    """The MindSpore cluster variables of a JobSet's pods: the rank from the child Job's completion index, the
    scheduler at pod 0's hostname under the JobSet's Service (a TrainJob's JobSet is named after the TrainJob)."""
    sched_host = f"{contract.jobset_pod_hostname(spec.name, rjob, 0, 0)}.{spec.name}"
    return [
        {"name": contract.ENV_NODE_RANK, "valueFrom": {"fieldRef": {"fieldPath": COMPLETION_INDEX}}},
        *cluster_env(spec, sched_host),
    ]


def gang_spec(rjob: str, container: str, max_restarts: int, pods: int, template: Obj, labels: dict[str, str]) -> Obj:
    """A JobSet spec that runs `pods` Indexed pods of `template` as one gang: one failed pod restarts all of them,
    exit code 2 of `container` fails the JobSet at once. Shared with Kubeflow Trainer's runtime (trainjob.py)."""
    child: Obj = {
        "completionMode": "Indexed",
        "completions": pods,
        "parallelism": pods,
        "backoffLimit": 0,  # one failed pod fails the child Job, and the JobSet restarts every pod
        "podFailurePolicy": {
            "rules": [
                stopped_rule(container),
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": container,
                        "operator": "In",
                        "values": list(NEVER_RETRY_EXIT_CODES),
                    },
                },
            ]
        },
        "template": template,
    }
    return {
        "network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
        "failurePolicy": {
            "maxRestarts": max_restarts,
            "restartStrategy": "BlockingRecreate",
            "rules": [
                {"name": BAD_JOB_FILE_RULE, "action": "FailJobSet", "onJobFailureReasons": [POD_FAILURE_POLICY_REASON]}
            ],
        },
        "successPolicy": {"operator": "All", "targetReplicatedJobs": [rjob]},
        "replicatedJobs": [{"name": rjob, "replicas": 1, "template": {"metadata": {"labels": labels}, "spec": child}}],
    }


class JobSetWorkload(kueue.Admitted):
    backend = "jobset"
    kind = "JobSet"
    resource = Resource("jobset.x-k8s.io", "v1alpha2", "jobsets")
    summary = "JobSet (JobSet controller 0.8+; every pod recreated together on a failure)"
    index_annotations = (contract.INDEXED_INDEX_ANNOTATION,)
    index_labels = (contract.INDEXED_INDEX_ANNOTATION,)

    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        c = spec.cluster
        if c.active_deadline_seconds:
            raise Unsupported(
                "cluster.active_deadline_seconds cannot be honoured on the jobset backend: a JobSet has no deadline "
                "and a child Job's would start again with every restart; use the job backend, or set it to 0"
            )
        self.check_pod_names(spec, contract.JOBSET_REPLICATED_JOB)

    def check_pod_names(self, spec: JobSpec, rjob: str) -> None:
        """The webhook refuses a JobSet whose longest pod name (with its 5-character suffix) is not a DNS label."""
        longest = contract.jobset_pod_hostname(spec.name, rjob, 0, spec.cluster.pods - 1) + "-abcde"
        if len(longest) > POD_NAME_MAX:
            raise Unsupported(
                f"job name {spec.name!r} is too long for {spec.cluster.pods} pods on the {self.backend} backend: "
                f"the pod name {longest!r} would exceed {POD_NAME_MAX} characters"
            )

    def objects(self, spec: JobSpec) -> list[Obj]:
        c = spec.cluster
        rjob = contract.JOBSET_REPLICATED_JOB
        template = pod_template(spec, pod_env(spec, rjob), "worker", scheduler_name=c.scheduler_name)
        labels = metadata(spec, spec.name, "worker")["labels"]
        jobset_spec: Obj = {
            **({"suspend": True} if c.kueue_queue else {}),  # created suspended: Kueue starts it on admission
            **gang_spec(rjob, contract.CONTAINER_NAME, c.backoff_limit, c.pods, template, labels),
        }
        if c.ttl_seconds_after_finished:
            jobset_spec["ttlSecondsAfterFinished"] = c.ttl_seconds_after_finished
        return [
            {
                "apiVersion": self.resource.api_version,
                "kind": self.kind,
                "metadata": metadata(spec, spec.name, "worker", kueue.labels(spec)),
                "spec": jobset_spec,
            }
        ]

    def pod_templates(self, obj: Obj) -> list[Obj]:
        return [rjob["template"]["spec"]["template"] for rjob in obj["spec"]["replicatedJobs"]]

    def phase(self, obj: Obj) -> str:
        status = obj.get("status") or {}
        true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Completed" in true:
            return SUCCEEDED
        if "Failed" in true:
            return FAILED
        active = sum(int(r.get("active") or 0) for r in status.get("replicatedJobsStatus") or [])
        if (obj.get("spec") or {}).get("suspend"):
            return SUSPENDED if "Suspended" in true and not active else SUSPENDING
        return RUNNING if active else PENDING

    def pods(self, obj: Obj) -> int:
        rjobs = (obj.get("spec") or {}).get("replicatedJobs") or []
        return int(sum(int(r.get("replicas", 1)) * int(r["template"]["spec"].get("completions") or 1) for r in rjobs))


WORKLOAD = JobSetWorkload()
