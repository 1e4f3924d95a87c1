"""Emulators of the three controllers our manifests rely on, written from their source and documentation.

Each turns a rendered workload (launcher.render) into the pods the controller would create (names, hostnames,
subdomains, labels/annotations and the environment it injects) and answers, for a pod that ends with an exit code
or is disrupted, what the controller does next. `run_pods` then starts those pods as local processes the way the
kubelet would run their container (command, args and environment resolved from the pod spec), with every pod and
Service address of the emulated cluster mapped to 127.0.0.1 and the NPU device replaced by the CPU.

Controller facts shared with the renderer (env names, port names, pod names, defaults) come from
convit/cluster/contract.py. What the emulators do not model: scheduling (gang or otherwise), resource requests,
node selectors, DNS propagation delays, image contents, and the kubelet's own container restarts (all our pods
have restartPolicy Never).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convit.cluster import contract

REPO = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]
LOCAL_IP = "127.0.0.1"

# Outcomes of a pod that ends (or is disrupted), as the controller acts on them.
NOTHING = "nothing"  # wait for the other pods
SUCCEEDED = "job-succeeded"
RECREATE_POD = "recreate-pod"  # this pod only
RESTART_JOB = "restart-job"  # every pod killed and created again
FAIL_JOB = "job-failed"
DISRUPTION = -1  # in place of an exit code: the pod was preempted or deleted (DisruptionTarget, deletion)
EVICTED = -2  # in place of an exit code: the kubelet evicted the pod (node pressure): a Failed pod


@dataclass
class Pod:
    """A pod as its controller creates it."""

    name: str
    spec: Obj
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    ip: str = LOCAL_IP

    @property
    def hostname(self) -> str:
        return str(self.spec.get("hostname", ""))

    @property
    def subdomain(self) -> str:
        return str(self.spec.get("subdomain", ""))

    def container(self) -> Obj:
        return next(c for c in self.spec["containers"] if c["name"] in contract.CONTAINER_NAMES)

    def env(self, config_maps: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
        """The container's environment as the kubelet resolves it (kubelet_pods.go makeEnvironmentVariables):
        in order, a later entry of the same name replacing an earlier one; Secrets come from this process's
        environment (the stand-in for the Secret), missing ones are left out."""
        out: dict[str, str] = {}
        for item in self.container().get("env", []):
            name = item["name"]
            if "value" in item:
                out[name] = str(item["value"])
                continue
            source = item.get("valueFrom", {})
            if "fieldRef" in source:
                out[name] = self._field(source["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in source:
                if item["name"] in os.environ:
                    out[name] = os.environ[item["name"]]
            elif "configMapKeyRef" in source:
                ref = source["configMapKeyRef"]
                out[name] = (config_maps or {})[ref["name"]][ref["key"]]
            else:
                raise AssertionError(f"unsupported env source {source}")
        return out

    def _field(self, path: str) -> str:
        if path == "status.podIP":
            return self.ip
        if path == "metadata.name":
            return self.name
        for prefix, values in (("metadata.annotations", self.annotations), ("metadata.labels", self.labels)):
            if path.startswith(prefix + "['"):
                return values[path[len(prefix) + 2 : -2]]
        raise AssertionError(f"unsupported fieldRef {path}")


def _template(template: Obj) -> tuple[Obj, dict[str, str]]:
    copy = json.loads(json.dumps(template))
    return copy["spec"], dict(copy.get("metadata", {}).get("labels", {}))


class IndexedJob:
    """Kubernetes Job controller, completionMode Indexed (kubernetes/kubernetes pkg/controller/job/
    indexed_job_utils.go: the completion-index annotation and label, JOB_COMPLETION_INDEX from the annotation,
    hostname `<job>-<index>`; job_controller.go and pod_failure_policy.go: podFailurePolicy rules in order, then
    backoffLimit over failed pods; podReplacementPolicy Failed: RECREATE_POD replaces that index alone, once the
    old pod is terminal, while the other pods keep running; nothing restarts the gang; the kubelet marks an evicted
    pod DisruptionTarget). Kubernetes 1.29+ (podReplacementPolicy)."""

    def __init__(self, job: Obj) -> None:
        assert job["apiVersion"] == "batch/v1" and job["spec"]["completionMode"] == "Indexed"
        self.job = job
        self.name = job["metadata"]["name"]
        self.failed = 0
        self.succeeded: set[int] = set()

    def pods(self) -> list[Pod]:
        out = []
        for index in range(self.job["spec"]["completions"]):
            spec, labels = _template(self.job["spec"]["template"])
            annotations = {contract.INDEXED_INDEX_ANNOTATION: str(index)}
            labels[contract.INDEXED_INDEX_ANNOTATION] = str(index)
            spec.setdefault("hostname", contract.indexed_pod_hostname(self.name, index))
            for c in spec["containers"]:
                env = c.setdefault("env", [])
                if not any(e["name"] == contract.INDEXED_INDEX_ENV for e in env):
                    env.append(
                        {
                            "name": contract.INDEXED_INDEX_ENV,
                            "valueFrom": {"fieldRef": {"fieldPath": contract.INDEXED_INDEX_FIELD}},
                        }
                    )
            out.append(Pod(f"{self.name}-{index}-x7k2p", spec, labels, annotations))
        return out

    def services(self, objects: list[Obj]) -> list[str]:
        """Addresses of the job's pods through its headless Service (`<hostname>.<subdomain>`)."""
        headless = {
            o["metadata"]["name"] for o in objects if o["kind"] == "Service" and o["spec"]["clusterIP"] == "None"
        }
        return [f"{p.hostname}.{p.subdomain}" for p in self.pods() if p.subdomain in headless]

    def pod_finished(self, index: int, exit_code: int) -> str:
        if exit_code == 0:
            self.succeeded.add(index)
            return SUCCEEDED if len(self.succeeded) == self.job["spec"]["completions"] else NOTHING
        for rule in self.job["spec"].get("podFailurePolicy", {}).get("rules", []):
            if exit_code in (DISRUPTION, EVICTED) and any(
                c["type"] == "DisruptionTarget" and c["status"] == "True" for c in rule.get("onPodConditions", [])
            ):
                return self._act(rule["action"])
            codes = rule.get("onExitCodes")
            if codes and exit_code not in (DISRUPTION, EVICTED) and codes["containerName"] in contract.CONTAINER_NAMES:
                hit = exit_code in codes["values"]
                if hit == (codes["operator"] == "In"):
                    return self._act(rule["action"])
        return self._act("Count")

    def _act(self, action: str) -> str:
        if action == "FailJob":
            return FAIL_JOB
        if action == "Ignore":
            return RECREATE_POD
        self.failed += 1  # Count (also what no matching rule means)
        return FAIL_JOB if self.failed > self.job["spec"]["backoffLimit"] else RECREATE_POD


class VolcanoJob:
    """Volcano Job controller with the svc and env plugins, after the admission webhook (volcano-sh/volcano
    pkg/webhooks/admission/jobs/mutate/mutate_job.go: maxRetry 0 -> 3; pkg/controllers/job/job_controller_util.go:
    createJobPod, applyPolicies (policies in order, events before exit codes within one); plugins/svc/svc.go:
    hostname = pod name, subdomain = job name, headless Service and VC_<TASK>_HOSTS/NUM; plugins/env/env.go:
    VK_TASK_INDEX/VC_TASK_INDEX; state/running.go and state/restarting.go: RestartJob counts a retry, the job fails
    once the count reaches maxRetry). Volcano 1.9 to current."""

    def __init__(self, job: Obj) -> None:
        assert job["apiVersion"] == "batch.volcano.sh/v1alpha1"
        self.job = json.loads(json.dumps(job))
        self.name = job["metadata"]["name"]
        spec = self.job["spec"]
        if not spec.get("maxRetry"):
            spec["maxRetry"] = contract.VOLCANO_WEBHOOK_DEFAULT_MAX_RETRY  # the webhook's default
        self.retries = 0
        self.succeeded: set[str] = set()

    def svc_args(self) -> list[str]:
        return list(self.job["spec"].get("plugins", {}).get("svc") or [])

    def config_maps(self) -> dict[str, dict[str, str]]:
        data: dict[str, str] = {}
        for task in self.job["spec"]["tasks"]:
            hosts = [
                f"{contract.volcano_pod_name(self.name, task['name'], i)}.{self.name}" for i in range(task["replicas"])
            ]
            key = task["name"].replace("-", "_").upper()
            data[f"VC_{key}_HOSTS"] = ",".join(hosts)
            data[f"VC_{key}_NUM"] = str(len(hosts))
        return {f"{self.name}-svc": data}

    def pods(self) -> list[Pod]:
        out = []
        plugins = self.job["spec"].get("plugins", {})
        for task in self.job["spec"]["tasks"]:
            for index in range(task["replicas"]):
                spec, labels = _template(task["template"])
                name = contract.volcano_pod_name(self.name, task["name"], index)
                labels |= {"volcano.sh/job-name": self.name, "volcano.sh/task-spec": task["name"]}
                annotations = {"volcano.sh/task-spec": task["name"], contract.VOLCANO_INDEX_ANNOTATION: str(index)}
                for c in spec["containers"]:
                    env = c.setdefault("env", [])
                    if "svc" in plugins:
                        key = task["name"].replace("-", "_").upper()
                        for var in (f"VC_{key}_HOSTS", f"VC_{key}_NUM"):
                            ref = {"name": f"{self.name}-svc", "key": var}
                            env.append({"name": var, "valueFrom": {"configMapKeyRef": ref}})
                    if "env" in plugins:
                        env.append({"name": contract.VOLCANO_LEGACY_INDEX_ENV, "value": str(index)})
                        env.append({"name": contract.VOLCANO_INDEX_ENV, "value": str(index)})
                if "svc" in plugins:
                    spec.setdefault("hostname", name)
                    spec.setdefault("subdomain", self.name)
                out.append(Pod(name, spec, labels, annotations))
        return out

    def services(self) -> list[str]:
        return [f"{p.hostname}.{p.subdomain}" for p in self.pods() if p.subdomain == self.name]

    def pod_finished(self, pod: str, exit_code: int) -> str:
        total = sum(t["replicas"] for t in self.job["spec"]["tasks"])
        if exit_code == 0:
            self.succeeded.add(pod)
            if len(self.succeeded) < total:
                return NOTHING
            event, code = "TaskCompleted", 0
        else:
            event, code = ("PodEvicted", 0) if exit_code in (DISRUPTION, EVICTED) else ("PodFailed", exit_code)
        action = "SyncJob"
        for policy in self.job["spec"].get("policies", []):
            events = [policy["event"]] if "event" in policy else list(policy.get("events", []))
            if event in events or "*" in events:
                action = policy["action"]
                break
            if policy.get("exitCode") is not None and policy["exitCode"] == code:
                action = policy["action"]
                break
        if action == "RestartJob":
            self.retries += 1
            self.succeeded.clear()
            return FAIL_JOB if self.retries >= self.job["spec"]["maxRetry"] else RESTART_JOB
        if action in ("TerminateJob", "AbortJob"):
            return FAIL_JOB
        if action == "CompleteJob":
            return SUCCEEDED
        return NOTHING


class AscendJobOperator:
    """MindX DL ascend-operator for a MindSpore AscendJob (Ascend/mind-cluster component/ascend-operator:
    pkg/api/v1/defaults.go setDefaultPort (the `ascendjob-port` port, 2222 unless set) and replica restartPolicy
    Never; pkg/controllers/v1/pod.go createPodSpec (pod `<job>-<type>-<i>`, setRestartPolicy overwrites the
    template's); env.go setMindSporeEnv (appended to container `ascend`); service.go (the `<job>-scheduler-0`
    ClusterIP Service whose `ascendjob-port` becomes MS_SCHED_PORT); job.go checkSpecStatus/reconcileWithFailed
    (a failed pod fails the job unless the unconditional-retry label is set) and ascendjob_controller.go
    onPodDeleteFunc (a deleted pod is re-created alone and raises the job's version, bounded by the job's limit:
    runPolicy.backoffLimit, else the `fault-retry-times` label (setFaultRetryTimesToBackoffLimits); 0 or none is
    unlimited); utils.go 58-77 (a kubelet eviction leaves a Failed pod: a failure, not a deletion); pod.go 772-774
    (no MS_* variables when the Worker requests no NPU); and MindCluster's unconditional retry
    (unconditaional_retry.go with ascend-for-volcano: a failed pod reschedules the whole job while
    `fault-retry-times` allows, counted per restart)). Ascend/mind-cluster 22bb3d9 with kubeflow/common v0.4.3."""

    SERVICE_IP = "10.96.0.17"  # the ClusterIP the emulated cluster gives the scheduler Service

    def __init__(self, job: Obj) -> None:
        assert job["kind"] == "AscendJob"
        assert job["metadata"]["labels"].get(contract.ASCEND_FRAMEWORK_LABEL) == "mindspore"
        self.job = json.loads(json.dumps(job))
        self.name = job["metadata"]["name"]
        replicas = self.job["spec"]["replicaSpecs"]
        assert set(replicas) == {contract.ASCEND_SCHEDULER, contract.ASCEND_WORKER}
        assert replicas[contract.ASCEND_SCHEDULER]["replicas"] == 1
        self.events: list[str] = []
        for spec in replicas.values():  # the defaulter
            spec.setdefault("replicas", 1)
            spec.setdefault("restartPolicy", "Never")
            ascend = next(c for c in spec["template"]["spec"]["containers"] if c["name"] == contract.CONTAINER_NAME)
            if not any(p["name"] == contract.ASCEND_PORT_NAME for p in ascend.get("ports", [])):
                ascend.setdefault("ports", []).append(
                    {"name": contract.ASCEND_PORT_NAME, "containerPort": contract.ASCEND_DEFAULT_PORT}
                )
        self.version = 0
        self.retries = 0
        self.succeeded: set[str] = set()

    def _npus(self, template: Obj) -> int:
        ascend = next(c for c in template["spec"]["containers"] if c["name"] == contract.CONTAINER_NAME)
        for name, value in ascend.get("resources", {}).get("requests", {}).items():
            if "huawei.com/" in name:
                return int(value)
        return 0

    def scheduler_port(self) -> int:
        template = self.job["spec"]["replicaSpecs"][contract.ASCEND_SCHEDULER]["template"]
        ascend = next(c for c in template["spec"]["containers"] if c["name"] == contract.CONTAINER_NAME)
        return int(next(p["containerPort"] for p in ascend["ports"] if p["name"] == contract.ASCEND_PORT_NAME))

    def pods(self) -> list[Pod]:
        replicas = self.job["spec"]["replicaSpecs"]
        worker = replicas[contract.ASCEND_WORKER]
        per_pod = self._npus(worker["template"])  # getNpuReqInfoPerPod: the Worker's request
        world = per_pod * worker["replicas"]
        out = []
        for rtype in (contract.ASCEND_SCHEDULER, contract.ASCEND_WORKER):
            rspec = replicas[rtype]
            for index in range(rspec["replicas"]):
                spec, labels = _template(rspec["template"])
                if spec.get("restartPolicy"):
                    self.events.append("Warning SettedPodTemplateRestartPolicy")
                spec["restartPolicy"] = rspec["restartPolicy"] if rspec["restartPolicy"] != "ExitCode" else "Never"
                labels |= {
                    contract.ASCEND_REPLICA_TYPE_LABEL: rtype.lower(),
                    contract.ASCEND_REPLICA_INDEX_LABELS[0]: str(index),
                }
                ascend = next(c for c in spec["containers"] if c["name"] == contract.CONTAINER_NAME)
                env = ascend.setdefault("env", [])
                if per_pod == 0:  # pod.go 772-774: the MindSpore variables are skipped, not refused
                    out.append(Pod(contract.ascend_pod_name(self.name, rtype, index), spec, labels, {}))
                    continue
                if rtype == contract.ASCEND_SCHEDULER:
                    env.append(
                        {"name": contract.ENV_SCHED_HOST, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
                    )
                else:
                    env.append({"name": contract.ENV_SCHED_HOST, "value": self.SERVICE_IP})
                for name, value in (
                    (contract.ENV_LOCAL, per_pod),
                    (contract.ENV_WORLD, world),
                    (contract.ENV_NODE_RANK, index),
                    (contract.ENV_SCHED_PORT, self.scheduler_port()),
                    (contract.ENV_SERVER_NUM, 0),
                    (
                        contract.ENV_ROLE,
                        contract.ROLE_SCHED if rtype == contract.ASCEND_SCHEDULER else contract.ROLE_WORKER,
                    ),
                    ("NPU_POD", "true" if self._npus(rspec["template"]) else "false"),
                ):
                    env.append({"name": name, "value": str(value)})
                out.append(Pod(contract.ascend_pod_name(self.name, rtype, index), spec, labels, {}))
        return out

    def services(self) -> list[str]:
        return [self.SERVICE_IP, contract.ascend_scheduler_service(self.name)]

    def pod_finished(self, pod: str, exit_code: int) -> str:
        total = sum(r["replicas"] for r in self.job["spec"]["replicaSpecs"].values())
        if exit_code == 0:
            self.succeeded.add(pod)
            return SUCCEEDED if len(self.succeeded) == total else NOTHING
        labels = self.job["metadata"]["labels"]
        retry_times = int(labels.get("fault-retry-times", "0") or 0)
        limit = self.job["spec"].get("runPolicy", {}).get("backoffLimit", retry_times)
        if exit_code == DISRUPTION:  # deleted: the missing pod alone is created again, same MS_NODE_RANK
            self.version += 1
            return FAIL_JOB if limit > 0 and self.version > limit else RECREATE_POD
        rtype = contract.ASCEND_SCHEDULER if "-scheduler-" in pod else contract.ASCEND_WORKER
        policy = self.job["spec"]["replicaSpecs"][rtype]["restartPolicy"]
        if policy == "ExitCode" and exit_code >= 128:  # kubeflow train.IsRetryableExitCode
            return RECREATE_POD
        # A failed (or evicted: Failed) pod: with unconditional retry, MindCluster reschedules the whole job.
        if retry_times > 0:
            self.retries += 1
            self.succeeded.clear()
            return FAIL_JOB if self.retries > retry_times else RESTART_JOB
        return FAIL_JOB


class JobSetController:
    """JobSet controller with its webhook's defaults (kubernetes-sigs/jobset 08dfbdf: pkg/webhooks/jobset_webhook.go
    Default (enableDNSHostnames and publishNotReadyAddresses true, completionMode Indexed); pkg/controllers/
    jobset_controller.go constructJob (child Job `<jobset>-<rjob>-<i>` via placement.GenJobName, pod subdomain = the
    JobSet's name, the jobset.sigs.k8s.io labels) and createHeadlessSvcIfNecessary; failure_policy.go
    executeFailurePolicy (the first rule matching the failed child Job's reason, else RestartJobSet; RestartJobSet
    fails the JobSet once status.restarts reached maxRestarts, else recreates every child Job); the child Jobs are
    the Kubernetes Job controller's (IndexedJob above: podFailurePolicy, backoffLimit; a pod failed by a FailJob rule
    fails its Job with reason PodFailurePolicy, more failed pods than backoffLimit with BackoffLimitExceeded)."""

    def __init__(self, jobset: Obj) -> None:
        assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["kind"] == "JobSet"
        self.jobset = json.loads(json.dumps(jobset))
        self.name = jobset["metadata"]["name"]
        network = self.jobset["spec"].setdefault("network", {})
        network.setdefault("enableDNSHostnames", True)
        network.setdefault("publishNotReadyAddresses", True)
        self.subdomain = network.get("subdomain") or self.name
        self.restarts = 0
        self.failed: dict[str, int] = {}
        self.succeeded: set[int] = set()

    def _rjob(self) -> Obj:
        (rjob,) = self.jobset["spec"]["replicatedJobs"]  # ours has one
        return dict(rjob)

    def pods(self) -> list[Pod]:
        rjob = self._rjob()
        out = []
        for job_index in range(rjob["replicas"]):
            job_name = f"{self.name}-{rjob['name']}-{job_index}"  # placement.GenJobName
            child = {
                "apiVersion": "batch/v1",
                "kind": "Job",
                "metadata": {"name": job_name},
                "spec": {**rjob["template"]["spec"], "completionMode": "Indexed"},
            }
            if self.jobset["spec"]["network"]["enableDNSHostnames"]:
                child["spec"]["template"]["spec"]["subdomain"] = self.subdomain
            for pod in IndexedJob(child).pods():
                pod.labels |= {
                    "jobset.sigs.k8s.io/jobset-name": self.name,
                    "jobset.sigs.k8s.io/replicatedjob-name": rjob["name"],
                    "jobset.sigs.k8s.io/job-index": str(job_index),
                    "jobset.sigs.k8s.io/restart-attempt": str(self.restarts),
                }
                out.append(pod)
        return out

    def services(self) -> list[str]:
        """The pods' addresses through the JobSet's headless Service `<subdomain>`."""
        return [f"{p.hostname}.{p.subdomain}" for p in self.pods() if p.subdomain == self.subdomain]

    def pod_finished(self, index: int, exit_code: int) -> str:
        rjob = self._rjob()
        child = rjob["template"]["spec"]
        if exit_code == 0:
            self.succeeded.add(index)
            return SUCCEEDED if len(self.succeeded) == child["completions"] * rjob["replicas"] else NOTHING
        reason = None
        for rule in child.get("podFailurePolicy", {}).get("rules", []):
            if exit_code in (DISRUPTION, EVICTED):
                if any(c["type"] == "DisruptionTarget" for c in rule.get("onPodConditions", [])):
                    reason = "PodFailurePolicy" if rule["action"] == "FailJob" else "ignored"
                    break
                continue
            codes = rule.get("onExitCodes")
            if codes and (exit_code in codes["values"]) == (codes["operator"] == "In"):
                reason = "PodFailurePolicy" if rule["action"] == "FailJob" else "ignored"
                break
        if reason == "ignored":
            return RECREATE_POD
        if reason is None:  # counted against the child Job's backoffLimit
            self.failed["job"] = self.failed.get("job", 0) + 1
            if self.failed["job"] <= child.get("backoffLimit", 6):
                return RECREATE_POD
            reason = "BackoffLimitExceeded"
        policy = self.jobset["spec"].get("failurePolicy")
        if policy is None:
            return FAIL_JOB  # no failure policy: any failed child Job fails the JobSet
        action = next(
            (r["action"] for r in policy.get("rules", []) if reason in r.get("onJobFailureReasons", [reason])),
            "RestartJobSet",
        )
        if action == "FailJobSet" or self.restarts >= policy.get("maxRestarts", 0):
            return FAIL_JOB
        self.restarts += 1
        self.failed.clear()
        self.succeeded.clear()
        return RESTART_JOB


# The list merge keys of a strategic merge patch for the fields a runtime patch touches (k8s.io/api core/v1 and
# jobset types: patchMergeKey); other lists are replaced.
MERGE_KEYS = {"replicatedJobs": "name", "containers": "name", "volumes": "name", "env": "name",
              "volumeMounts": "mountPath"}  # fmt: skip


def strategic_merge(base: Any, patch: Any, key: str = "") -> Any:
    """apimachinery's strategicpatch.StrategicMergePatch for what our patches hold: maps merged key by key, lists
    with a merge key merged item by item (new items appended), other lists and scalars replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = strategic_merge(base[k], v, k) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        merge_key = MERGE_KEYS[key]
        out_list = list(base)
        for item in patch:
            at = next((i for i, b in enumerate(out_list) if b.get(merge_key) == item.get(merge_key)), None)
            if at is None:
                out_list.append(item)
            else:
                out_list[at] = strategic_merge(out_list[at], item, key)
        return out_list
    return patch


class TrainerController:
    """Kubeflow Trainer v2 with its PlainML, JobSet and Volcano plugins (kubeflow/trainer 8c0f505): builds the JobSet
    of a TrainJob from its ClusterTrainingRuntime as pkg/runtime/core/trainingruntime.go newRuntimeInfo does
    (runtimePatches merged strategically; resourcesPerNode merged into container `node`'s resources),
    plugins/plainml (trainer.numNodes as the trainer's pod count, trainer.env upserted into `node`),
    plugins/jobset builder.go Trainer (image, command, args) and syncParallelCount (parallelism = completions =
    the count), plugins/volcano EnforcePodGroupPolicy (pods annotated scheduling.k8s.io/group-name = the TrainJob);
    the JobSet, named after the TrainJob, then runs under JobSetController."""

    ANCESTOR = ("trainer.kubeflow.org/trainjob-ancestor-step", "trainer")

    def __init__(self, trainjob: Obj, runtime: Obj) -> None:
        assert trainjob["kind"] == "TrainJob" and runtime["kind"] == "ClusterTrainingRuntime"
        ref = trainjob["spec"]["runtimeRef"]
        assert (
            ref["name"] == runtime["metadata"]["name"] and ref.get("kind", "ClusterTrainingRuntime") == runtime["kind"]
        )
        self.jobset = self.build(trainjob, runtime)
        self.inner = JobSetController(self.jobset)

    @classmethod
    def build(cls, trainjob: Obj, runtime: Obj) -> Obj:
        spec = json.loads(json.dumps(runtime["spec"]["template"]["spec"]))
        labels: dict[str, str] = {}
        annotations: dict[str, str] = {}
        for patch in trainjob["spec"].get("runtimePatches", []):
            template = (patch.get("trainingRuntimeSpec") or {}).get("template") or {}
            labels |= (template.get("metadata") or {}).get("labels", {})
            annotations |= (template.get("metadata") or {}).get("annotations", {})
            if "spec" in template:
                spec = strategic_merge(spec, template["spec"])
        trainer = trainjob["spec"].get("trainer") or {}
        for rjob in spec["replicatedJobs"]:
            key, value = cls.ANCESTOR
            if (rjob["template"].get("metadata") or {}).get("labels", {}).get(key) != value:
                continue
            count = trainer.get("numNodes", runtime["spec"].get("mlPolicy", {}).get("numNodes", 1))
            rjob["template"]["spec"]["parallelism"] = rjob["template"]["spec"]["completions"] = count
            pod = rjob["template"]["spec"]["template"]
            if "volcano" in (runtime["spec"].get("podGroupPolicy") or {}):
                pod.setdefault("metadata", {}).setdefault("annotations", {})["scheduling.k8s.io/group-name"] = trainjob[
                    "metadata"
                ]["name"]
            for ctr in pod["spec"]["containers"]:
                if ctr["name"] != contract.TRAINER_CONTAINER_NAME:
                    continue
                for field_name in ("image", "command", "args"):
                    if field_name in trainer:
                        ctr[field_name] = trainer[field_name]
                ctr["env"] = strategic_merge(ctr.get("env", []), trainer.get("env", []), "env")
                if "resourcesPerNode" in trainer:
                    ctr["resources"] = strategic_merge(ctr.get("resources", {}), trainer["resourcesPerNode"])
        if trainjob["spec"].get("suspend"):
            spec["suspend"] = True
        return {
            "apiVersion": "jobset.x-k8s.io/v1alpha2",
            "kind": "JobSet",
            "metadata": {"name": trainjob["metadata"]["name"], "labels": labels, "annotations": annotations},
            "spec": spec,
        }

    def pods(self) -> list[Pod]:
        return self.inner.pods()

    def services(self) -> list[str]:
        return self.inner.services()

    def pod_finished(self, index: int, exit_code: int) -> str:
        return self.inner.pod_finished(index, exit_code)


Emulator = IndexedJob | VolcanoJob | AscendJobOperator | JobSetController | TrainerController
EMULATORS: dict[str, Any] = {
    "job": IndexedJob,
    "volcano": VolcanoJob,
    "ascendjob": AscendJobOperator,
    "jobset": JobSetController,
    "trainjob": TrainerController,
}


def network(ctl: Emulator, objects: list[Obj]) -> tuple[list[str], dict[str, dict[str, str]] | None]:
    """(the addresses of the emulated cluster's pods and Services, the ConfigMaps its plugins inject) for run_pods."""
    if isinstance(ctl, IndexedJob):
        return ctl.services(objects), None
    if isinstance(ctl, VolcanoJob):
        return ctl.services(), ctl.config_maps()
    return ctl.services(), None


def pod_key(ctl: Emulator, index: int, pod: Pod) -> Any:
    """How the controller names a pod in pod_finished: its completion index (Job controller, also under JobSet and
    Trainer), else its name."""
    return index if isinstance(ctl, (IndexedJob, JobSetController, TrainerController)) else pod.name


def emulator(workload: Obj, runtime: Obj | None = None) -> Emulator:
    """The emulator of the controller that runs this workload object (a TrainJob with its runtime: by default ours,
    launcher/workloads/trainjob.py, rendered from the TrainJob's job file)."""
    from launcher.workloads import for_object

    backend = for_object(workload).backend
    if backend == "trainjob":
        return TrainerController(workload, runtime or _our_runtime(workload))
    return EMULATORS[backend](workload)  # type: ignore[no-any-return]


def _our_runtime(trainjob: Obj) -> Obj:
    from convit.jobspec import load_job
    from launcher.workloads.trainjob import runtime

    return runtime(load_job("convit_tiny", [f"name={trainjob['metadata']['name']}"]))


@dataclass
class RunningPod:
    pod: Pod
    proc: subprocess.Popen[bytes]
    log: Path
    root: Path | None = None  # where its emptyDirs live

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def run_pods(
    pods: list[Pod],
    objects: list[Obj],
    addresses: list[str],
    workdir: Path,
    config_maps: dict[str, dict[str, str]] | None = None,
    extra_env: dict[str, str] | None = None,
) -> list[RunningPod]:
    """Start each pod's container as the kubelet would (start_pod), all at once."""
    return [
        start_pod(pod, objects, addresses, workdir / pod.name, workdir / f"{pod.name}.log", config_maps, extra_env)
        for pod in pods
    ]


def start_pod(
    pod: Pod,
    objects: list[Obj],
    addresses: list[str],
    root: Path,
    log: Path,
    config_maps: dict[str, dict[str, str]] | None = None,
    extra_env: dict[str, str] | None = None,
) -> RunningPod:
    """Start a pod's container as the kubelet would: its command and args, its resolved environment, its
    ConfigMap volume as files, its emptyDirs as new directories under `root` (a new pod: a new root). Departures,
    all local: every address of the emulated cluster (`addresses`, pod IPs) is 127.0.0.1; CONVIT_DEVICE is CPU;
    this machine's environment stands in for the image's (PATH, the Python with the package) and for the S3
    Secret; `extra_env` is added last."""
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    mounts: dict[str, Path] = {}
    for volume, mount in _mounts(pod):
        path = root / mount["mountPath"].lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            assert volume["configMap"]["name"] == config["metadata"]["name"]
            for key, text in config["data"].items():
                (path / key).write_text(text)
        mounts[mount["mountPath"]] = path
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "VC_", "VK_", "JOB_COMPLETION"))}
    for name, value in pod.env(config_maps).items():
        env[name] = LOCAL_IP if value in addresses else _remap(value, mounts)
    env[contract.ENV_DEVICE] = "CPU"
    env["GLOG_v"] = "3"
    env[contract.ENV_METRICS_PORT] = "0"  # every emulated pod shares this host's ports: no /metrics here
    env.update(extra_env or {})
    container = pod.container()
    command = [sys.executable if part == "python" else part for part in container["command"]]
    args = [_remap(a, mounts) for a in container.get("args", [])]
    handle = open(log, "ab")
    workdir_in_pod = root / "work"  # the image's WORKDIR: MindSpore writes its rank_*/ dumps there
    workdir_in_pod.mkdir(parents=True, exist_ok=True)
    env["PYTHONPATH"] = str(REPO)  # the image has the package installed; here it is this checkout
    proc = subprocess.Popen(
        [*command, *args],
        env=env,
        cwd=workdir_in_pod,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    handle.close()
    return RunningPod(pod, proc, log, root)


def _mounts(pod: Pod) -> list[tuple[Obj, Obj]]:
    volumes = {v["name"]: v for v in pod.spec.get("volumes", [])}
    out = []
    for mount in pod.container().get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            continue  # the NPU driver: not on this machine
        out.append((volume, mount))
    return out


def _remap(value: str, mounts: dict[str, Path]) -> str:
    for mount_path, local in sorted(mounts.items(), key=lambda item: -len(item[0])):
        if value == mount_path or value.startswith(mount_path + "/"):
            return str(local) + value[len(mount_path) :]
    return value


def wait_all(running: list[RunningPod], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    try:
        while any(r.proc.poll() is None for r in running):
            if time.monotonic() > deadline:
                raise AssertionError("pods did not finish:\n" + "\n".join(r.text()[-2000:] for r in running))
            if any(r.proc.returncode not in (None, 0) for r in running):
                time.sleep(5)  # let the others report, then stop them: the job has failed
                break
            time.sleep(0.5)
    finally:
        for r in running:
            if r.proc.poll() is None:
                os.killpg(r.proc.pid, 9)
                r.proc.wait()
    return [int(r.proc.returncode) for r in running]
