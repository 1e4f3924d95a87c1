"""MindX DL AscendJob (`mindxdl.gitee.com/v1`), run by MindCluster's ascend-operator with Volcano and
ascend-for-volcano.

Controller facts (Ascend/mind-cluster 22bb3d9, component/ascend-operator, which pins kubeflow/common v0.4.3):
- The operator adds the scheduler's Service and appends the MS_* variables (MS_ROLE, MS_SCHED_HOST, MS_SCHED_PORT,
  MS_LOCAL_WORKER, MS_WORKER_NUM, MS_NODE_RANK) to every pod (env.go setMindSporeEnv), so the templates carry none
  of them; MS_SCHED_PORT is the Scheduler container's port named `ascendjob-port` (defaults.go). A pod-template
  restartPolicy is overwritten with the replica's, with a Warning event (pod.go), so there is none.
- With restartPolicy Never a Failed pod fails the job at once (job.go checkSpecStatus/reconcileWithFailed); a
  deleted pod is recreated alone with the same MS_NODE_RANK (pod.go 123-155), into a MindSpore cluster that cannot
  take it back. The restart an AscendJob really gets is MindCluster's whole-job rescheduling, driven by labels on
  the job (docs/en/scheduling/api/volcano.md, Table 1): `fault-scheduling` for hardware faults and
  `fault-retry-times` for failures of the training code (unconditional retry, unconditaional_retry.go; it needs
  gang scheduling, which schedulingPolicy.minAvailable gives). ascendjob_controller.go setFaultRetryTimesToBackoff
  Limits takes the operator's re-creation limit from `fault-retry-times` when runPolicy.backoffLimit is unset, so
  backoff_limit is rendered once, as that label. A limit of 0 reads as unlimited there.
- cleanPodPolicy defaults to None (pkg/api/v1/defaults.go 104-108): after a failure the surviving pods would keep
  their NPUs until MindSpore times out; we render Running.
- With ttlSecondsAfterFinished set and the limit exceeded by pod deletions, handleFinishedJob calls CleanupJob
  before writing the Failed condition, and kubeflow/common's CleanupJob errors while CompletionTime is nil
  (job.go 322-332): the job never reaches an end state. So no TTL is rendered here.
- The operator's ReconcileJobs never checks runPolicy.activeDeadlineSeconds: refused.
"""

from __future__ import annotations

from convit.cluster import contract
from convit.jobspec import JobSpec
from launcher.errors import LauncherError
from launcher.render import placement
from launcher.render.common import metadata, pod_template
from launcher.workloads import kueue
from launcher.workloads.base import (
    FAILED,
    PENDING,
    RUNNING,
    SUCCEEDED,
    Obj,
    Resource,
    Unsupported,
    Workload,
    refuse_other_schedulers,
)

# MindCluster's labels (docs/en/scheduling/api/volcano.md, Table 1)
FAULT_SCHEDULING_LABEL = "fault-scheduling"
FAULT_SCHEDULING = "force"  # reschedule the whole job at once on a hardware fault
FAULT_RETRY_TIMES_LABEL = "fault-retry-times"
CLEAN_POD_POLICY = "Running"  # stop the survivors of a failed job (the default None leaves them holding NPUs)


def pod_labels(spec: JobSpec) -> dict[str, str]:
    """The labels the operator and ascend-for-volcano read on every pod: the framework and the chip."""
    return {contract.ASCEND_FRAMEWORK_LABEL: "mindspore", **placement.ring_label(spec)}


def job_labels(spec: JobSpec) -> dict[str, str]:
    """The AscendJob's own labels: the framework, the chip, and MindCluster's rescheduling and placement settings."""
    return {
        **pod_labels(spec),
        FAULT_SCHEDULING_LABEL: FAULT_SCHEDULING,
        FAULT_RETRY_TIMES_LABEL: str(spec.cluster.backoff_limit),
        **placement.tor_affinity_label(spec),
    }


class AscendJob(Workload):
    backend = "ascendjob"
    kind = "AscendJob"
    resource = Resource("mindxdl.gitee.com", "v1", "ascendjobs")
    summary = (
        "MindX DL AscendJob (MindCluster with Volcano: a Scheduler pod, every Worker rescheduled together on a fault)"
    )
    index_labels = contract.ASCEND_REPLICA_INDEX_LABELS

    def check(self, spec: JobSpec) -> None:
        refuse_other_schedulers(spec, self.backend, "volcano")
        kueue.refuse(spec, self.backend)
        if spec.cluster.network_topology_mode:
            raise Unsupported(
                "cluster.network_topology_mode cannot be used on the ascendjob backend: the AscendJob has no "
                "networkTopology (use tor_affinity, or the volcano backend)"
            )
        c = spec.cluster
        if c.backoff_limit == 0:
            raise Unsupported(
                "cluster.backoff_limit 0 cannot be expressed on the ascendjob backend: the ascend-operator reads a "
                "fault-retry-times / backoffLimit of 0 as unlimited; use 1 or more"
            )
        if c.active_deadline_seconds:
            raise Unsupported(
                "cluster.active_deadline_seconds cannot be honoured on the ascendjob backend: the ascend-operator "
                "never checks runPolicy.activeDeadlineSeconds; use the job backend, or set it to 0"
            )

    def notes(self, spec: JobSpec) -> list[str]:
        if spec.cluster.ttl_seconds_after_finished:
            return [
                "cluster.ttl_seconds_after_finished is not rendered on the ascendjob backend (the ascend-operator's "
                "cleanup with a TTL can leave a failed job without an end state); delete finished jobs with "
                "`python -m launcher delete`"
            ]
        return []

    def objects(self, spec: JobSpec) -> list[Obj]:
        """The Scheduler pod needs no NPU: small requests, no NPU node selector."""
        c = spec.cluster
        labels = job_labels(spec)
        run_policy: Obj = {
            "cleanPodPolicy": CLEAN_POD_POLICY,
            "schedulingPolicy": {"minAvailable": c.pods + 1, "queue": c.queue},
        }
        port = [{"name": contract.ASCEND_PORT_NAME, "containerPort": c.master_port, "protocol": "TCP"}]
        return [
            {
                "apiVersion": self.resource.api_version,
                "kind": self.kind,
                "metadata": metadata(spec, spec.name, "worker", labels),
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
                                extra_labels=pod_labels(spec),
                                restart_policy=None,
                                ports=port,
                            ),
                        },
                        contract.ASCEND_WORKER: {
                            "replicas": c.pods,
                            "restartPolicy": "Never",
                            "template": pod_template(
                                spec, [], "worker", extra_labels=pod_labels(spec), restart_policy=None
                            ),
                        },
                    },
                },
            }
        ]

    def pod_templates(self, obj: Obj) -> list[Obj]:
        return [replica["template"] for replica in obj["spec"]["replicaSpecs"].values()]

    def worker_template(self, obj: Obj) -> Obj:
        return dict(obj["spec"]["replicaSpecs"][contract.ASCEND_WORKER]["template"])

    def phase(self, obj: Obj) -> str:
        conditions = (obj.get("status") or {}).get("conditions") or []
        last = conditions[-1].get("type", PENDING) if conditions else PENDING
        return {SUCCEEDED: SUCCEEDED, FAILED: FAILED, RUNNING: RUNNING}.get(last, PENDING)

    def pods(self, obj: Obj) -> int:
        replicas = (obj.get("spec") or {}).get("replicaSpecs") or {}
        return int((replicas.get(contract.ASCEND_WORKER) or {}).get("replicas", 1))

    def no_suspend(self, namespace: str, name: str) -> Exception:
        return LauncherError(
            f"job {namespace}/{name} is an AscendJob, which has no suspend: the ascend-operator cannot stop its pods "
            "and keep the job. Delete it (its pods save a checkpoint on SIGTERM) and submit it again later: it "
            "resumes from that checkpoint"
        )


WORKLOAD = AscendJob()
