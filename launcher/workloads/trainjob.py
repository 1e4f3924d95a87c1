"""Kubeflow Trainer v2 TrainJob (`trainer.kubeflow.org/v1alpha1`) on our ClusterTrainingRuntime for MindSpore.

Kubeflow Trainer ships runtimes for torch, deepspeed, jax, mlx and xgboost, none for MindSpore or Ascend
(kubeflow/trainer#1966): `runtime()` is ours, `mindspore-ascend`, installed from the chart
(`--set trainerRuntime.create=true`). Controller facts (kubeflow/trainer 8c0f505):
- The runtime's template is a JobSet spec; the TrainJob's JobSet is named after the TrainJob
  (pkg/runtime/framework/plugins/jobset). The replicated Job labelled `trainer.kubeflow.org/trainjob-ancestor-step:
  trainer` is the trainer; its container must be named `node` (pkg/constants: AncestorTrainer, Node).
- PlainML (plugins/plainml: no torch/mpi/jax policy) sets the trainer's pod count from `trainer.numNodes` (written
  to the child Job's parallelism and completions, jobset.go syncParallelCount) and upserts `trainer.env` into
  container `node`; the JobSet builder (builder.go Trainer) sets its image, command and args; trainingruntime.go
  merges `trainer.resourcesPerNode` into its resources and applies `runtimePatches` as strategic merge patches
  (containers, volumes and env by name, volumeMounts by mountPath), whose template metadata labels and
  annotations propagate to the JobSet.
- The Volcano pod-group policy (plugins/volcano) creates a PodGroup named after the TrainJob with minMember = all
  pods (gang scheduling, which ascend-for-volcano needs to place NPU pods), its queue from the annotation
  `scheduling.volcano.sh/queue-name`; pods carry `scheduling.k8s.io/group-name`. Our runtime schedules with Volcano.
- `spec.suspend` and `spec.activeDeadlineSeconds` exist on the TrainJob.
What the runtime fixes for every job (a TrainJob cannot patch it): the JobSet's failurePolicy, so restarts are
RUNTIME_MAX_RESTARTS; the image pull policy. Other values are refused here with one clear error.
"""

from __future__ import annotations

import copy

from convit.cluster import contract
from convit.jobspec import JobSpec
from launcher.render.common import APP, metadata, pod_template
from launcher.workloads import jobset, kueue
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
    refuse_other_schedulers,
)

RUNTIME_NAME = "mindspore-ascend"
RUNTIME_MAX_RESTARTS = 6  # the runtime's failurePolicy.maxRestarts: cluster.backoff_limit's default
RUNTIME_PULL_POLICY = "IfNotPresent"
TRAINER_RJOB = "node"  # the trainer's replicated Job (the name Trainer's own runtimes use)
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
ANCESTOR_TRAINER = "trainer"
FRAMEWORK_LABEL = "trainer.kubeflow.org/framework"
VOLCANO_QUEUE_ANNOTATION = "scheduling.volcano.sh/queue-name"
RUNTIMES = Resource("trainer.kubeflow.org", "v1alpha1", "clustertrainingruntimes")
# What a TrainJob gives per job, everything else in the pod comes from the runtime (see split_pod).
RUNTIME_VOLUMES = ("dshm", "cache", "tmp", "ascend-driver")  # /dev/shm's size limit is the job's


def full_pod(spec: JobSpec) -> Obj:
    """The trainer pod template this job must get: the same pod every other kind renders, with Trainer's container
    name and Volcano as scheduler. The runtime and the TrainJob are this, split in two (split_pod)."""
    env = jobset.pod_env(spec, TRAINER_RJOB)
    return pod_template(spec, env, "worker", scheduler_name="volcano", container_name=contract.TRAINER_CONTAINER_NAME)


def split_pod(pod: Obj) -> tuple[Obj, Obj]:
    """(the runtime's pod template, the job's part). The runtime keeps what is the same for every job: the command,
    the container's security context, its ports, the cache, tmp, driver and (unsized) /dev/shm volumes and their
    mounts. The job's part is everything else: image, args, env, resources, labels and annotations, the pod
    security context, service account and pull secrets, the job file's, /dev/shm's (sized) and the extra volumes
    and their mounts, node selector, tolerations and grace period."""
    runtime = copy.deepcopy(pod)
    spec = runtime["spec"]
    (ctr,) = spec["containers"]
    metadata = runtime.pop("metadata")
    job: Obj = copy.deepcopy(
        {
            "labels": metadata["labels"],
            "annotations": metadata.get("annotations"),
            "image": ctr.pop("image"),
            "args": ctr.pop("args"),
            "env": ctr.pop("env"),
            "resources": ctr.pop("resources"),
            "mounts": [m for m in ctr["volumeMounts"] if m["name"] not in RUNTIME_VOLUMES],
            "volumes": [v for v in spec["volumes"] if v["name"] not in RUNTIME_VOLUMES or v["name"] == "dshm"],
            "pod": {
                key: spec.pop(key)
                for key in (
                    "terminationGracePeriodSeconds",
                    "securityContext",
                    "serviceAccountName",
                    "imagePullSecrets",
                    "nodeSelector",
                    "tolerations",
                )
                if key in spec
            },
        }
    )
    spec["securityContext"] = copy.deepcopy(
        job["pod"]["securityContext"]
    )  # the default; each TrainJob restates its own
    ctr["imagePullPolicy"] = RUNTIME_PULL_POLICY
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["name"] in RUNTIME_VOLUMES]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] in RUNTIME_VOLUMES]
    for volume in spec["volumes"]:
        if volume["name"] == "dshm":
            volume["emptyDir"].pop("sizeLimit", None)
    return {"spec": spec}, job


def runtime(spec: JobSpec) -> Obj:
    """The ClusterTrainingRuntime `mindspore-ascend`: the same for every job (tests/test_workloads.py checks that
    two different jobs render the same runtime); the chart installs it from any job's values."""
    template, _job = split_pod(full_pod(spec))
    gang = jobset.gang_spec(
        TRAINER_RJOB,
        contract.TRAINER_CONTAINER_NAME,
        RUNTIME_MAX_RESTARTS,
        1,  # numNodes comes from each TrainJob
        template,
        {ANCESTOR_LABEL: ANCESTOR_TRAINER},
    )
    return {
        "apiVersion": RUNTIMES.api_version,
        "kind": "ClusterTrainingRuntime",
        "metadata": {
            "name": RUNTIME_NAME,
            "labels": {
                FRAMEWORK_LABEL: "mindspore",
                "app.kubernetes.io/name": APP,
                "app.kubernetes.io/component": "training-runtime",
                "app.kubernetes.io/part-of": APP,
            },
        },
        "spec": {"mlPolicy": {"numNodes": 1}, "podGroupPolicy": {"volcano": {}}, "template": {"spec": gang}},
    }


class TrainJobWorkload(kueue.Admitted):
    backend = "trainjob"
    kind = "TrainJob"
    resource = Resource("trainer.kubeflow.org", "v1alpha1", "trainjobs")
    summary = (
        f"Kubeflow Trainer v2 TrainJob on our ClusterTrainingRuntime {RUNTIME_NAME} (Trainer with JobSet and "
        "Volcano; every pod recreated together on a failure)"
    )
    container = contract.TRAINER_CONTAINER_NAME
    index_annotations = (contract.INDEXED_INDEX_ANNOTATION,)
    index_labels = (contract.INDEXED_INDEX_ANNOTATION,)

    def check(self, spec: JobSpec) -> None:
        super().check(spec)
        refuse_other_schedulers(spec, self.backend, "volcano")
        c = spec.cluster
        if c.backoff_limit != RUNTIME_MAX_RESTARTS:
            raise Unsupported(
                f"cluster.backoff_limit {c.backoff_limit} cannot be honoured on the trainjob backend: restarts are "
                f"the runtime's failurePolicy.maxRestarts ({RUNTIME_MAX_RESTARTS}), which a TrainJob cannot patch; "
                "use the jobset backend for another count"
            )
        if c.priority_class:
            raise Unsupported(
                "cluster.priority_class cannot be honoured on the trainjob backend: a TrainJob cannot patch the "
                "pods' priorityClassName (use the jobset backend)"
            )
        if c.image_pull_policy != RUNTIME_PULL_POLICY:
            raise Unsupported(
                f"cluster.image_pull_policy {c.image_pull_policy} cannot be honoured on the trainjob backend: the "
                f"runtime's is {RUNTIME_PULL_POLICY} and a TrainJob cannot patch it"
            )
        jobset.WORKLOAD.check_pod_names(spec, TRAINER_RJOB)

    def notes(self, spec: JobSpec) -> list[str]:
        notes = [
            f"the trainjob backend needs the ClusterTrainingRuntime {RUNTIME_NAME} on the cluster: helm template x "
            "charts/convit-train -f <job file> --set trainerRuntime.create=true -s templates/trainer-runtime.yaml "
            "| kubectl apply -f -"
        ]
        if spec.cluster.ttl_seconds_after_finished:
            notes.append("cluster.ttl_seconds_after_finished is not rendered on the trainjob backend (a TrainJob has "
                         "none); delete finished jobs with `python -m launcher delete`")  # fmt: skip
        return notes

    def objects(self, spec: JobSpec) -> list[Obj]:
        c = spec.cluster
        _template, job = split_pod(full_pod(spec))
        container_patch: Obj = {"name": contract.TRAINER_CONTAINER_NAME, "volumeMounts": job["mounts"]}
        pod_patch: Obj = {"volumes": job["volumes"], "containers": [container_patch], **job["pod"]}
        pod_metadata: Obj = {"labels": job["labels"]}
        if job["annotations"]:
            pod_metadata["annotations"] = job["annotations"]
        trainjob_spec: Obj = {
            **({"suspend": True} if c.kueue_queue else {}),  # created suspended: Kueue starts it on admission
            "runtimeRef": {"name": RUNTIME_NAME, "apiGroup": RUNTIMES.group, "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": job["image"],
                "command": list(contract.POD_COMMAND),
                "args": job["args"],
                "env": job["env"],
                "numNodes": c.pods,
                "resourcesPerNode": job["resources"],
            },
            "runtimePatches": [
                {
                    "manager": "convit-launcher",
                    "trainingRuntimeSpec": {
                        "template": {
                            "metadata": {"annotations": {VOLCANO_QUEUE_ANNOTATION: c.queue}},
                            "spec": {
                                "replicatedJobs": [
                                    {
                                        "name": TRAINER_RJOB,
                                        "template": {
                                            "spec": {"template": {"metadata": pod_metadata, "spec": pod_patch}}
                                        },
                                    }
                                ]
                            },
                        }
                    },
                }
            ],
        }
        if c.active_deadline_seconds:
            trainjob_spec["activeDeadlineSeconds"] = c.active_deadline_seconds
        return [
            {
                "apiVersion": self.resource.api_version,
                "kind": self.kind,
                "metadata": metadata(spec, spec.name, "worker", kueue.labels(spec)),
                "spec": trainjob_spec,
            }
        ]

    def set_args(self, obj: Obj, args: list[str]) -> None:
        obj["spec"]["trainer"]["args"] = list(args)

    def pod_templates(self, obj: Obj) -> list[Obj]:
        """The pod the TrainJob asks for, as far as the TrainJob itself says (a copy; the runtime supplies the
        rest: full_pod is the whole pod)."""
        trainer = obj["spec"]["trainer"]
        patch = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        template = copy.deepcopy(patch["template"]["spec"]["template"])
        ctr = template["spec"]["containers"][0]
        ctr.update({"image": trainer["image"], "command": trainer["command"], "args": trainer["args"]})
        ctr["env"] = trainer["env"]
        ctr["resources"] = trainer["resourcesPerNode"]
        return [template]

    def phase(self, obj: Obj) -> str:
        status = obj.get("status") or {}
        true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
        if "Complete" in true:
            return SUCCEEDED
        if "Failed" in true:
            return FAILED
        active = sum(int(j.get("active") or 0) for j in status.get("jobsStatus") or [])
        if (obj.get("spec") or {}).get("suspend"):
            return SUSPENDED if not active else SUSPENDING
        return RUNNING if active else PENDING

    def pods(self, obj: Obj) -> int:
        return int(((obj.get("spec") or {}).get("trainer") or {}).get("numNodes") or 1)


WORKLOAD = TrainJobWorkload()
