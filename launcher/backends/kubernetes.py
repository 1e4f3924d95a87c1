"""The Kubernetes backend: the official client, the objects of launcher/render, errors as one line each."""

from __future__ import annotations

import builtins
import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from convit.cluster import contract
from convit.jobspec import JobSpec
from launcher.backends.base import Backend, JobStatus, JobSummary, PodStatus
from launcher.errors import LauncherError
from launcher.progress import latest_progress, latest_result
from launcher.render import render_objects
from launcher.render.common import APP

T = TypeVar("T")
CONTAINER = contract.CONTAINER_NAME
# (group, version, plural) of the custom workloads
VOLCANO = ("batch.volcano.sh", "v1alpha1", "jobs")
ASCEND = ("mindxdl.gitee.com", "v1", "ascendjobs")
# Volcano's job commands (what `vcctl job suspend/resume` create): volcano-sh/volcano pkg/cli/util/util.go
# CreateJobCommand, called by pkg/cli/job/suspend.go (AbortJob) and resume.go (ResumeJob).
VOLCANO_COMMANDS = ("bus.volcano.sh", "v1alpha1", "commands")
MERGE_PATCH = "application/merge-patch+json"
# Where each controller writes a pod's index (contract.py): Indexed Job and Volcano in an annotation, the
# ascend-operator (kubeflow common labels) in a label.
INDEX_ANNOTATIONS = (contract.INDEXED_INDEX_ANNOTATION, contract.VOLCANO_INDEX_ANNOTATION)
INDEX_LABELS = (contract.INDEXED_INDEX_ANNOTATION, *contract.ASCEND_REPLICA_INDEX_LABELS)


class KubernetesBackend(Backend):
    def __init__(self, namespace: str = "default", context: str | None = None, request_timeout: float = 15) -> None:
        from kubernetes import client, config

        self.namespace = namespace
        self.timeout = request_timeout
        configuration = client.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
                config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            else:
                # The client reads $KUBECONFIG once, at import; read it now so the current value counts.
                path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
                config.load_kube_config(  # type: ignore[no-untyped-call]
                    config_file=path, context=context, client_configuration=configuration
                )
        except (config.ConfigException, OSError) as exc:
            raise LauncherError(
                f"no usable kubeconfig ({str(exc).splitlines()[0]}): set KUBECONFIG or run inside a cluster"
            ) from None
        configuration.retries = 1
        self.host = configuration.host
        api = client.ApiClient(configuration)
        # Bodies are the rendered dicts, which the client sends as they are; its typed models are not used.
        self.core: Any = client.CoreV1Api(api)
        self.batch: Any = client.BatchV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)

    # ---- errors --------------------------------------------------------------------------------------------
    def _call(self, action: str, what: str, fn: Callable[[], T]) -> T:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn()
        except ApiException as exc:
            reason = _api_message(exc)
            where = f"{what} in namespace {self.namespace!r}"
            if exc.status == 403:
                raise LauncherError(f"forbidden: cannot {action} {where}: {reason}") from None
            if exc.status == 404:
                raise _NotFound(f"{where}: not found ({reason})") from None
            if exc.status == 409:
                raise _Conflict(f"{where} already exists") from None
            raise LauncherError(f"cannot {action} {where}: {exc.status} {reason}") from None
        except HTTPError as exc:
            raise LauncherError(
                f"cannot reach the Kubernetes API server at {self.host}: {type(exc).__name__}"
            ) from None

    # ---- submit --------------------------------------------------------------------------------------------
    def _create(self, obj: dict[str, Any], dry_run: bool) -> None:
        kind, ns = obj["kind"], self.namespace
        extra = {"dry_run": "All"} if dry_run else {}
        opts = {"_request_timeout": self.timeout, **extra}
        what = f"{kind} {obj['metadata']['name']!r}"
        if kind == "ConfigMap":
            self._call("create", what, lambda: self.core.create_namespaced_config_map(ns, obj, **opts))
        elif kind == "Service":
            self._call("create", what, lambda: self.core.create_namespaced_service(ns, obj, **opts))
        elif obj["apiVersion"] == "batch/v1":
            self._call("create", what, lambda: self.batch.create_namespaced_job(ns, obj, **opts))
        else:
            group, version, plural = VOLCANO if kind == "Job" else ASCEND
            self._call(
                "create",
                what,
                lambda: self.custom.create_namespaced_custom_object(group, version, ns, plural, obj, **opts),
            )

    def submit(self, spec: JobSpec, *, dry_run: bool = False, evaluate: str | None = None) -> str:
        self.namespace = spec.cluster.namespace
        created: list[dict[str, Any]] = []
        for obj in render_objects(spec, evaluate=evaluate):
            try:
                self._create(obj, dry_run)
            except _Conflict:
                if not dry_run:
                    for done in reversed(created):  # leave nothing half-created behind
                        self._delete_object(done["kind"], done["apiVersion"], done["metadata"]["name"])
                raise LauncherError(
                    f"job {self.namespace}/{spec.name} already exists ({obj['kind']} {obj['metadata']['name']}); "
                    f"delete it first: python -m launcher delete {spec.name} -n {self.namespace}"
                ) from None
            created.append(obj)
        return spec.name

    # ---- finding a job -------------------------------------------------------------------------------------
    def _workload(self, name: str) -> tuple[str, dict[str, Any]]:
        """('job'|'volcano'|'ascendjob', object) of job `name`."""
        try:
            job = self._call(
                "get",
                f"Job {name!r}",
                lambda: self.batch.read_namespaced_job(name, self.namespace, _request_timeout=self.timeout),
            )
            return "job", self.batch.api_client.sanitize_for_serialization(job)
        except _NotFound:
            pass
        for kind, (group, version, plural) in (("volcano", VOLCANO), ("ascendjob", ASCEND)):
            try:
                obj = self._call(
                    "get",
                    f"{plural} {name!r}",
                    functools.partial(
                        self.custom.get_namespaced_custom_object,
                        group,
                        version,
                        self.namespace,
                        plural,
                        name,
                        _request_timeout=self.timeout,
                    ),
                )
                return kind, obj
            except _NotFound:
                continue
        raise LauncherError(f"job {self.namespace}/{name} not found")

    def _pods(self, name: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=worker"
        pods = self._call(
            "list",
            f"pods of job {name!r}",
            lambda: self.core.list_namespaced_pod(
                self.namespace, label_selector=selector, _request_timeout=self.timeout
            ),
        )
        items: list[dict[str, Any]] = self.core.api_client.sanitize_for_serialization(pods).get("items", [])
        return items

    def _phase(self, kind: str, obj: dict[str, Any]) -> str:
        status = obj.get("status") or {}
        if kind == "job":
            for cond in status.get("conditions") or []:
                if cond.get("status") == "True" and cond.get("type") in ("Complete", "SuccessCriteriaMet"):
                    return "Succeeded"
                if cond.get("status") == "True" and cond.get("type") in ("Failed", "FailureTarget"):
                    return "Failed"
            if (obj.get("spec") or {}).get("suspend"):  # pods are stopping (and checkpointing) until none is active
                return "Suspending" if status.get("active") or status.get("terminating") else "Suspended"
            return "Running" if status.get("active") else "Pending"
        if kind == "volcano":
            # Our policies never abort a job (volcano_job in launcher/render/objects.py), so Aborting/Aborted is a
            # suspension (AbortJob, from `suspend` or vcctl job suspend), which ResumeJob undoes.
            phase = (status.get("state") or {}).get("phase", "Pending")
            return str(
                {
                    "Completed": "Succeeded",
                    "Terminated": "Failed",
                    "Failed": "Failed",
                    "Aborting": "Suspending",
                    "Aborted": "Suspended",
                }.get(phase, phase)
            )
        conditions = status.get("conditions") or []
        last = conditions[-1].get("type", "Pending") if conditions else "Pending"
        return {"Succeeded": "Succeeded", "Failed": "Failed", "Running": "Running"}.get(last, "Pending")

    # ---- status, logs ---------------------------------------------------------------------------------------
    def status(self, name: str) -> JobStatus:
        kind, obj = self._workload(name)
        pods = [_pod_status(p) for p in self._pods(name)]
        pods.sort(key=lambda p: (p.index, p.name))
        progress = result = None
        rank0 = [p for p in pods if p.index == 0 and p.phase in ("Running", "Succeeded", "Failed")]
        if rank0:
            try:
                text = self._call(
                    "read logs of",
                    f"pod {rank0[-1].name!r}",
                    lambda: self.core.read_namespaced_pod_log(
                        rank0[-1].name,
                        self.namespace,
                        container=CONTAINER,
                        tail_lines=200,
                        _request_timeout=self.timeout,
                    ),
                )
                lines = str(text).splitlines()
                progress, result = latest_progress(lines), latest_result(lines)
            except LauncherError:
                pass
        return JobStatus(name, self.namespace, self._phase(kind, obj), pods, progress, result)

    def _finished(self, name: str) -> bool:
        return self._phase(*self._workload(name)) in ("Succeeded", "Failed")

    def _current_pod(self, name: str, index: int) -> dict[str, Any] | None:
        mine = [p for p in self._pods(name) if _pod_index(p) == index]
        mine.sort(key=lambda p: p["metadata"].get("creationTimestamp") or "")
        return mine[-1] if mine else None

    def _follow_pod(self, name: str, index: int, follow: bool, prefix: str) -> Iterator[str]:
        """Lines of pod `index`; with follow, across restarts (new pods or containers) until the job ends."""
        seen: tuple[str, int] | None = None
        while True:
            pod = self._current_pod(name, index)
            ready = pod is not None and pod["status"].get("phase") in ("Running", "Succeeded", "Failed")
            key = (pod["metadata"]["name"], _restarts(pod)) if pod is not None else None
            if ready and key != seen:
                assert pod is not None and key is not None
                seen = key
                yield from (prefix + line for line in self._stream(pod["metadata"]["name"], follow))
                if not follow:
                    return
            elif not follow:
                if pod is None:
                    raise LauncherError(f"job {self.namespace}/{name} has no pod {index} (yet)")
                return
            if self._finished(name) and (pod is None or seen == key):
                return
            time.sleep(2)

    def _stream(self, pod: str, follow: bool) -> Iterator[str]:
        response = self._call(
            "read logs of",
            f"pod {pod!r}",
            lambda: self.core.read_namespaced_pod_log(
                pod, self.namespace, container=CONTAINER, follow=follow, _preload_content=False
            ),
        )
        buffer = b""
        try:
            for chunk in response.stream(4096):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
            if buffer:
                yield buffer.decode("utf-8", "replace")
        finally:
            response.release_conn()

    def logs(self, name: str, *, follow: bool = False, rank: int | None = 0) -> Iterator[str]:
        kind, obj = self._workload(name)
        if rank is not None:
            yield from self._follow_pod(name, rank, follow, "")
            return
        pods = _replicas(kind, obj)
        lines: queue.Queue[str | None] = queue.Queue(maxsize=1000)

        def pump(index: int) -> None:
            try:
                for line in self._follow_pod(name, index, follow, f"[pod-{index}] "):
                    lines.put(line)
            except LauncherError as exc:
                lines.put(f"[pod-{index}] ERROR: {exc}")
            finally:
                lines.put(None)

        for index in range(pods):
            threading.Thread(target=pump, args=(index,), daemon=True).start()
        running = pods
        while running:
            item = lines.get()
            if item is None:
                running -= 1
            else:
                yield item

    # ---- suspend, resume ------------------------------------------------------------------------------------
    def _suspendable(self, name: str, action: str) -> tuple[str, dict[str, Any], str]:
        kind, obj = self._workload(name)
        if kind == "ascendjob":
            raise LauncherError(
                f"job {self.namespace}/{name} is an AscendJob, which has no suspend: the ascend-operator cannot stop "
                f"its pods and keep the job. Delete it (its pods save a checkpoint on SIGTERM) and submit it again "
                f"later: it resumes from that checkpoint"
            )
        phase = self._phase(kind, obj)
        if phase in ("Succeeded", "Failed"):
            raise LauncherError(f"job {self.namespace}/{name} has {phase.lower()}: nothing to {action}")
        return kind, obj, phase

    def _set_suspend(self, name: str, suspend: bool) -> None:
        body = {"spec": {"suspend": suspend}}
        self._call(
            "patch",
            f"Job {name!r}",
            lambda: self.batch.patch_namespaced_job(
                name, self.namespace, body, _content_type=MERGE_PATCH, _request_timeout=self.timeout
            ),
        )

    def _volcano_command(self, obj: dict[str, Any], action: str) -> None:
        """A bus.volcano.sh Command for the job, exactly as vcctl's CreateJobCommand makes it (util.go): the job
        as controller owner and target, generateName `<job>-<action lower-cased>-`."""
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
            "apiVersion": f"{VOLCANO_COMMANDS[0]}/{VOLCANO_COMMANDS[1]}",
            "kind": "Command",
            "metadata": {
                "generateName": f"{meta['name']}-{action.lower()}-",
                "namespace": self.namespace,
                "ownerReferences": [ref],
            },
            "target": ref,
            "action": action,
        }
        group, version, plural = VOLCANO_COMMANDS
        self._call(
            "create",
            f"Volcano Command {action} for job {meta['name']!r}",
            lambda: self.custom.create_namespaced_custom_object(
                group, version, self.namespace, plural, body, _request_timeout=self.timeout
            ),
        )

    def suspend(self, name: str) -> str:
        """Indexed Job: spec.suspend=true, and the Job controller deletes the active pods (SIGTERM, then the grace
        period for rank 0's checkpoint). Volcano: an AbortJob Command (the controller kills the pods the same way;
        the job turns Aborted)."""
        kind, obj, phase = self._suspendable(name, "suspend")
        if phase in ("Suspending", "Suspended"):
            return f"job {self.namespace}/{name} is already {phase.lower()}"
        if kind == "job":
            self._set_suspend(name, True)
        else:
            self._volcano_command(obj, "AbortJob")
        return (
            f"suspending job {self.namespace}/{name}: its pods get SIGTERM and rank 0 saves a checkpoint; "
            f"resume with: python -m launcher resume {name} -n {self.namespace}"
        )

    def resume(self, name: str) -> str:
        """Indexed Job: spec.suspend=false (new pods, which resume from the newest checkpoint). Volcano: a ResumeJob
        Command; Volcano counts each resume as a retry of the job (state/aborted.go: RetryCount++), against
        maxRetry."""
        kind, obj, phase = self._suspendable(name, "resume")
        if phase not in ("Suspending", "Suspended"):
            raise LauncherError(f"job {self.namespace}/{name} is {phase.lower()}, not suspended")
        if kind == "job":
            self._set_suspend(name, False)
        else:
            self._volcano_command(obj, "ResumeJob")
        return f"resuming job {self.namespace}/{name}: its pods start again from the newest checkpoint"

    # ---- list, delete ---------------------------------------------------------------------------------------
    def list(self) -> builtins.list[JobSummary]:
        selector = f"app.kubernetes.io/name={APP}"
        out: list[JobSummary] = []
        jobs = self._call(
            "list",
            "jobs",
            lambda: self.batch.list_namespaced_job(
                self.namespace, label_selector=selector, _request_timeout=self.timeout
            ),
        )
        for job in self.batch.api_client.sanitize_for_serialization(jobs).get("items", []):
            out.append(JobSummary(job["metadata"]["name"], self.namespace, self._phase("job", job), "Job"))
        for kind, (group, version, plural) in (("volcano", VOLCANO), ("ascendjob", ASCEND)):
            try:
                items = self._call(
                    "list",
                    plural,
                    functools.partial(
                        self.custom.list_namespaced_custom_object,
                        group,
                        version,
                        self.namespace,
                        plural,
                        label_selector=selector,
                        _request_timeout=self.timeout,
                    ),
                )
            except _NotFound:  # the CRD is not installed
                continue
            for obj in items.get("items", []):
                out.append(JobSummary(obj["metadata"]["name"], self.namespace, self._phase(kind, obj), obj["kind"]))
        return sorted(out, key=lambda j: j.name)

    def _delete_object(self, kind: str, api_version: str, name: str) -> None:
        # The response (the deleted object or a Status, depending on kind and server) is not needed.
        ns = self.namespace
        opts = {"propagation_policy": "Background", "_request_timeout": self.timeout, "_preload_content": False}
        what = f"{kind} {name!r}"
        if kind == "ConfigMap":
            self._call("delete", what, lambda: self.core.delete_namespaced_config_map(name, ns, **opts))
        elif kind == "Service":
            self._call("delete", what, lambda: self.core.delete_namespaced_service(name, ns, **opts))
        elif api_version == "batch/v1":
            self._call("delete", what, lambda: self.batch.delete_namespaced_job(name, ns, **opts))
        else:
            group, version, plural = VOLCANO if kind == "Job" else ASCEND
            self._call(
                "delete",
                what,
                lambda: self.custom.delete_namespaced_custom_object(
                    group,
                    version,
                    ns,
                    plural,
                    name,
                    propagation_policy="Background",
                    _request_timeout=self.timeout,
                    _preload_content=False,
                ),
            )

    def delete(self, name: str) -> builtins.list[str]:
        _kind, obj = self._workload(name)
        deleted = []
        self._delete_object(obj["kind"], obj["apiVersion"], name)
        deleted.append(f"{obj['kind']}/{name}")
        # The Service and ConfigMap this job created: only if they carry the job's instance label.
        for other_kind, other_name, read in (
            ("Service", name, self.core.read_namespaced_service),
            ("ConfigMap", f"{name}-job", self.core.read_namespaced_config_map),
        ):
            try:
                found = self._call(
                    "get",
                    f"{other_kind} {other_name!r}",
                    functools.partial(read, other_name, self.namespace, _request_timeout=self.timeout),
                )
            except _NotFound:
                continue
            labels = (self.core.api_client.sanitize_for_serialization(found).get("metadata") or {}).get("labels") or {}
            if labels.get("app.kubernetes.io/instance") == name and labels.get("app.kubernetes.io/name") == APP:
                self._delete_object(other_kind, "v1", other_name)
                deleted.append(f"{other_kind}/{other_name}")
        return deleted


class _NotFound(LauncherError):
    pass


class _Conflict(LauncherError):
    pass


def _api_message(exc: Any) -> str:
    import json

    try:
        return str(json.loads(exc.body).get("message", exc.reason))
    except (TypeError, ValueError):
        return str(exc.reason)


def _restarts(pod: dict[str, Any]) -> int:
    return sum(int(c.get("restartCount", 0)) for c in (pod.get("status") or {}).get("containerStatuses") or [])


def _pod_index(pod: dict[str, Any]) -> int:
    annotations = pod["metadata"].get("annotations") or {}
    for key in INDEX_ANNOTATIONS:
        if key in annotations:
            return int(annotations[key])
    labels = pod["metadata"].get("labels") or {}
    for key in INDEX_LABELS:
        if key in labels:
            return int(labels[key])
    return -1


def _pod_status(pod: dict[str, Any]) -> PodStatus:
    return PodStatus(
        index=_pod_index(pod),
        name=pod["metadata"]["name"],
        phase=(pod.get("status") or {}).get("phase", "Unknown"),
        restarts=_restarts(pod),
        node=(pod.get("spec") or {}).get("nodeName", "") or "",
    )


def _replicas(kind: str, obj: dict[str, Any]) -> int:
    spec = obj.get("spec") or {}
    if kind == "job":
        return int(spec.get("completions") or 1)
    if kind == "volcano":
        return int(sum(t.get("replicas", 0) for t in spec.get("tasks", [])))
    return int(((spec.get("replicaSpecs") or {}).get("Worker") or {}).get("replicas", 1))
