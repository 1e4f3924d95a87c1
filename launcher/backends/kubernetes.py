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
from launcher.render.common import APP, configmap_name
from launcher.render.monitoring import PODMONITORS
from launcher.serving import SERVING_KINDS
from launcher.workloads import KINDS, Resource, Workload, kueue

T = TypeVar("T")
# Every kind a job name can be: the training kinds (launcher/workloads) and the servers (launcher/serving).
ALL_KINDS = (*KINDS.values(), *SERVING_KINDS.values())


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
        except Exception as exc:  # a malformed kubeconfig raises anything (YAMLError, TypeError, binascii.Error, ...)
            first = (str(exc).strip().splitlines() or [""])[0][:200]
            reason = first if isinstance(exc, config.ConfigException) else f"{type(exc).__name__}: {first}"
            raise LauncherError(f"no usable kubeconfig ({reason}): set KUBECONFIG or run inside a cluster") from None
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
        else:
            r = _resource(obj)
            self._call(
                "create",
                what,
                lambda: self.custom.create_namespaced_custom_object(r.group, r.version, ns, r.plural, obj, **opts),
            )

    # ---- what a workload kind may do on the cluster (launcher.workloads.base.ClusterApi) ------------------------
    def create(self, resource: Resource, body: dict[str, Any], what: str) -> dict[str, Any]:
        r = resource
        return dict(
            self._call(
                "create",
                what,
                lambda: self.custom.create_namespaced_custom_object(
                    r.group, r.version, self.namespace, r.plural, body, _request_timeout=self.timeout
                ),
            )
        )

    def patch(self, resource: Resource, name: str, body: dict[str, Any]) -> dict[str, Any]:
        r = resource
        # The custom-objects client sends a merge patch for a dict body (what `kubectl patch --type merge` does).
        return dict(
            self._call(
                "patch",
                f"{r.plural} {name!r}",
                lambda: self.custom.patch_namespaced_custom_object(
                    r.group, r.version, self.namespace, r.plural, name, body, _request_timeout=self.timeout
                ),
            )
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
                        self._delete_object(done)
                raise LauncherError(
                    f"job {self.namespace}/{spec.name} already exists ({obj['kind']} {obj['metadata']['name']}); "
                    f"delete it first: python -m launcher delete {spec.name} -n {self.namespace}"
                ) from None
            created.append(obj)
        return spec.name

    # ---- finding a job -------------------------------------------------------------------------------------
    def list_objects(self, resource: Resource, label_selector: str) -> builtins.list[dict[str, Any]]:
        """Objects of `resource` in the namespace with these labels."""
        r = resource
        found = self._call(
            "list",
            r.plural,
            lambda: self.custom.list_namespaced_custom_object(
                r.group,
                r.version,
                self.namespace,
                r.plural,
                label_selector=label_selector,
                _request_timeout=self.timeout,
            ),
        )
        return builtins.list(found.get("items", []))

    def _get(self, kind: Workload, name: str) -> dict[str, Any]:
        r = kind.resource
        return dict(
            self._call(
                "get",
                f"{r.plural} {name!r}",
                functools.partial(
                    self.custom.get_namespaced_custom_object,
                    r.group,
                    r.version,
                    self.namespace,
                    r.plural,
                    name,
                    _request_timeout=self.timeout,
                ),
            )
        )

    def _workload(self, name: str) -> tuple[Workload, dict[str, Any]]:
        """(kind, object) of job `name`: the first kind that has an object of that name."""
        for kind in ALL_KINDS:
            try:
                return kind, self._get(kind, name)
            except _NotFound:
                continue
        raise LauncherError(f"job {self.namespace}/{name} not found")

    def _pods(self, name: str) -> list[dict[str, Any]]:
        selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component in (worker,server)"
        pods = self._call(
            "list",
            f"pods of job {name!r}",
            lambda: self.core.list_namespaced_pod(
                self.namespace, label_selector=selector, _request_timeout=self.timeout
            ),
        )
        items: list[dict[str, Any]] = self.core.api_client.sanitize_for_serialization(pods).get("items", [])
        return items

    # ---- status, logs ---------------------------------------------------------------------------------------
    def status(self, name: str) -> JobStatus:
        kind, obj = self._workload(name)
        raw = self._pods(name)
        containers = {p["metadata"]["name"]: _container(p) for p in raw}
        pods = [_pod_status(p, i) for i, p in _indexed(raw)]
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
                        container=containers[rank0[-1].name],
                        tail_lines=200,
                        _request_timeout=self.timeout,
                    ),
                )
                lines = str(text).splitlines()
                progress, result = latest_progress(lines), latest_result(lines)
            except LauncherError:
                pass
        phase, admission = self._phase(kind, obj)
        return JobStatus(name, self.namespace, phase, pods, progress, result, admission, endpoint=kind.endpoint(obj))

    def _phase(self, kind: Workload, obj: dict[str, Any]) -> tuple[str, str | None]:
        """The job's phase, and for a job Kueue manages, where Kueue has it (from its Workload)."""
        phase = kind.phase(obj)
        if not (kind.kueue_admits and kueue.managed(obj)):
            return phase, None
        workload = kueue.workload_of(self, obj)
        return kueue.phase(phase, workload), kueue.admission(workload)

    def _finished(self, name: str) -> bool:
        kind, obj = self._workload(name)
        return kind.phase(obj) in ("Succeeded", "Failed")

    def _current_pod(self, name: str, index: int) -> dict[str, Any] | None:
        mine = [p for i, p in _indexed(self._pods(name)) if i == index]
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
                lines = self._stream(pod["metadata"]["name"], _container(pod), follow)
                yield from (prefix + line for line in lines)
                if not follow:
                    return
            elif not follow:
                if pod is None:
                    raise LauncherError(f"job {self.namespace}/{name} has no pod {index} (yet)")
                return
            if self._finished(name) and (pod is None or seen == key):
                return
            time.sleep(2)

    def _stream(self, pod: str, container: str, follow: bool) -> Iterator[str]:
        response = self._call(
            "read logs of",
            f"pod {pod!r}",
            lambda: self.core.read_namespaced_pod_log(
                pod, self.namespace, container=container, follow=follow, _preload_content=False
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
        pods = kind.pods(obj)
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
    def _suspendable(self, name: str, action: str) -> tuple[Workload, dict[str, Any], str]:
        kind, obj = self._workload(name)
        if not kind.suspendable:
            raise kind.no_suspend(self.namespace, name)
        phase, _admission = self._phase(kind, obj)
        if phase in ("Succeeded", "Failed"):
            raise LauncherError(f"job {self.namespace}/{name} has {phase.lower()}: nothing to {action}")
        return kind, obj, phase

    def suspend(self, name: str) -> str:
        """The kind's suspension (Indexed Job: spec.suspend; Volcano: an AbortJob Command): the controller stops
        the pods with SIGTERM and rank 0 saves a checkpoint in the grace period."""
        kind, obj, phase = self._suspendable(name, "suspend")
        if phase in ("Suspending", "Suspended"):
            return f"job {self.namespace}/{name} is already {phase.lower()}"
        kind.suspend(self, obj)  # under Kueue: its Workload deactivated (Queued jobs too: they leave the queue)
        return (
            f"suspending job {self.namespace}/{name}: its pods get SIGTERM and rank 0 saves a checkpoint; "
            f"resume with: python -m launcher resume {name} -n {self.namespace}"
        )

    def resume(self, name: str) -> str:
        kind, obj, phase = self._suspendable(name, "resume")
        if phase not in ("Suspending", "Suspended"):
            raise LauncherError(f"job {self.namespace}/{name} is {phase.lower()}, not suspended")
        kind.resume(self, obj)
        return f"resuming job {self.namespace}/{name}: its pods start again from the newest checkpoint"

    # ---- list, delete ---------------------------------------------------------------------------------------
    def list(self) -> builtins.list[JobSummary]:
        selector = f"app.kubernetes.io/name={APP}"
        out: list[JobSummary] = []
        for kind in ALL_KINDS:
            r = kind.resource
            try:
                items = self._call(
                    "list",
                    r.plural,
                    functools.partial(
                        self.custom.list_namespaced_custom_object,
                        r.group,
                        r.version,
                        self.namespace,
                        r.plural,
                        label_selector=selector,
                        _request_timeout=self.timeout,
                    ),
                )
            except _NotFound:  # the CRD is not installed
                continue
            for obj in items.get("items", []):
                obj.setdefault("apiVersion", r.api_version)  # list items carry no apiVersion/kind
                obj.setdefault("kind", kind.kind)
                if kind.matches(obj):
                    out.append(JobSummary(obj["metadata"]["name"], self.namespace, kind.phase(obj), kind.kind))
        return sorted(out, key=lambda j: j.name)

    def _delete_object(self, obj: dict[str, Any]) -> None:
        # The response (the deleted object or a Status, depending on kind and server) is not needed.
        ns, kind, name = self.namespace, obj["kind"], obj["metadata"]["name"]
        opts = {"propagation_policy": "Background", "_request_timeout": self.timeout, "_preload_content": False}
        what = f"{kind} {name!r}"
        if kind == "ConfigMap":
            self._call("delete", what, lambda: self.core.delete_namespaced_config_map(name, ns, **opts))
        elif kind == "Service":
            self._call("delete", what, lambda: self.core.delete_namespaced_service(name, ns, **opts))
        else:
            r = _resource(obj)
            self._call(
                "delete",
                what,
                lambda: self.custom.delete_namespaced_custom_object(r.group, r.version, ns, r.plural, name, **opts),
            )

    def delete(self, name: str) -> builtins.list[str]:
        kind, obj = self._workload(name)
        obj.setdefault("apiVersion", kind.resource.api_version)
        obj.setdefault("kind", kind.kind)
        deleted = []
        self._delete_object(obj)
        deleted.append(f"{obj['kind']}/{name}")
        # The Service, ConfigMap and PodMonitor this job created: only if they carry the job's instance label (the
        # PodMonitor's CRD may not be installed at all: a 404 either way).
        r = PODMONITORS
        read_monitor = functools.partial(self.custom.get_namespaced_custom_object, r.group, r.version, plural=r.plural)
        for other_kind, other_name, read in (
            ("Service", name, self.core.read_namespaced_service),
            ("ConfigMap", configmap_name(name), self.core.read_namespaced_config_map),
            ("PodMonitor", name, lambda n, ns, **kw: read_monitor(namespace=ns, name=n, **kw)),
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
                self._delete_object({"kind": other_kind, "apiVersion": "", "metadata": {"name": other_name}})
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
    """The pod's index, from wherever the controller that made it writes it (each kind knows its own)."""
    for kind in ALL_KINDS:
        index = kind.pod_index(pod)
        if index is not None:
            return index
    return -1


def _resource(obj: dict[str, Any]) -> Resource:
    """The API resource of a custom object we create: a workload kind's, or the PodMonitor's."""
    if obj.get("kind") == "PodMonitor":
        return PODMONITORS
    return next(k for k in ALL_KINDS if k.matches(obj)).resource


def _termination_message(pod: dict[str, Any]) -> str:
    """The last line of the training container's termination message (its current or last termination)."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") not in contract.CONTAINER_NAMES:
            continue
        for state in (status.get("state") or {}, status.get("lastState") or {}):
            message = str((state.get("terminated") or {}).get("message") or "").strip()
            if message:
                return message.splitlines()[-1]
    return ""


def _container(pod: dict[str, Any]) -> str:
    """Our container in a pod: `ascend`, `node` in a Kubeflow Trainer pod, `server` or `kserve-container`."""
    ours = {kind.container for kind in ALL_KINDS}
    names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    return next((n for n in names if n in ours), contract.CONTAINER_NAME)


def _indexed(pods: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(index, pod): the controller's index, or for pods without one (a Deployment's) their place by name."""
    if pods and all(_pod_index(p) < 0 for p in pods):
        return list(enumerate(sorted(pods, key=lambda p: str(p["metadata"]["name"]))))
    return [(_pod_index(p), p) for p in pods]


def _pod_status(pod: dict[str, Any], index: int) -> PodStatus:
    return PodStatus(
        index=index,
        name=pod["metadata"]["name"],
        phase=(pod.get("status") or {}).get("phase", "Unknown"),
        restarts=_restarts(pod),
        node=(pod.get("spec") or {}).get("nodeName", "") or "",
        message=_termination_message(pod),
    )
