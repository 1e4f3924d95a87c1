"""What a workload kind is: everything the launcher knows about one controller, behind one interface.

A kind renders the job spec into its objects, names its API coordinates, maps its status to our phases, says how
its pods carry their index, suspends and resumes, and refuses the spec fields its controller cannot honour. The
Kubernetes and local backends, the CLI and the tests (chart parity, emulators) iterate over the registry in
launcher/workloads/__init__.py; nothing outside a kind's module branches on the kind.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from convit.cluster import contract
from convit.jobspec import JobSpec
from convit.jobspec.load import JobSpecError

Obj = dict[str, Any]

# Our phases (launcher/backends/base.py JobStatus.phase)
PENDING, RUNNING, SUSPENDING, SUSPENDED, SUCCEEDED, FAILED = (
    "Pending",
    "Running",
    "Suspending",
    "Suspended",
    "Succeeded",
    "Failed",
)


@dataclass(frozen=True)
class Resource:
    """A namespaced API resource: `/apis/<group>/<version>/namespaces/<ns>/<plural>`."""

    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


class ClusterApi(Protocol):
    """What a kind's suspend/resume may do on the cluster (the Kubernetes backend implements it; every error is
    one LauncherError naming namespace and object)."""

    namespace: str

    def create(self, resource: Resource, body: Obj, what: str) -> Obj: ...

    def patch(self, resource: Resource, name: str, body: Obj) -> Obj: ...

    def list_objects(self, resource: Resource, label_selector: str) -> list[Obj]: ...


class Unsupported(JobSpecError):
    """A job spec value this kind's controller cannot honour (exit code 2: retrying cannot help)."""


def refuse_other_schedulers(spec: JobSpec, backend: str, scheduler: str) -> None:
    """For kinds whose controller names the pods' scheduler itself."""
    if spec.cluster.scheduler_name not in ("", scheduler):
        raise Unsupported(
            f"cluster.scheduler_name {spec.cluster.scheduler_name!r} cannot be used on the {backend} backend: its "
            f"pods are always placed by {scheduler}"
        )


def refuse_volcano_placement(spec: JobSpec, backend: str) -> None:
    """For kinds whose pods Volcano's and MindCluster's job-level placement settings cannot reach."""
    c = spec.cluster
    for key, value in (("network_topology_mode", c.network_topology_mode), ("tor_affinity", c.tor_affinity)):
        if value:
            raise Unsupported(
                f"cluster.{key} cannot be used on the {backend} backend: it is a Volcano/MindCluster job setting "
                "(use the volcano or ascendjob backend)"
            )


class Workload(abc.ABC):
    """One workload kind. Instances are stateless; the registry holds one of each."""

    backend: ClassVar[str]  # the `cluster.backend` value
    kind: ClassVar[str]
    resource: ClassVar[Resource]
    summary: ClassVar[str]  # one line for --help and the README's backend table
    # Where the controller writes a pod's index: annotations first, then labels.
    index_annotations: ClassVar[tuple[str, ...]] = ()
    index_labels: ClassVar[tuple[str, ...]] = ()
    suspendable: ClassVar[bool] = False  # True: suspend() and resume() stop and restart the pods, keeping the job
    container: ClassVar[str] = contract.CONTAINER_NAME  # the training container's name in its pods
    kueue_admits: ClassVar[bool] = False  # True: Kueue can admit it (launcher/workloads/kueue.py)

    # ---- rendering ---------------------------------------------------------------------------------------------
    def check(self, spec: JobSpec) -> None:
        """Refuse spec values the controller would ignore or misread: raise Unsupported naming the key."""
        return None

    def notes(self, spec: JobSpec) -> list[str]:
        """What the user should know about how this kind treats the spec (printed by submit and render)."""
        return []

    @abc.abstractmethod
    def objects(self, spec: JobSpec) -> list[Obj]:
        """The kind's objects besides the job file's ConfigMap, in creation order, the workload last."""

    @abc.abstractmethod
    def pod_templates(self, obj: Obj) -> list[Obj]:
        """Every pod template of a rendered workload."""

    def set_args(self, obj: Obj, args: list[str]) -> None:
        """Give every training container these arguments (an evaluation job runs convit.evaluate)."""
        for template in self.pod_templates(obj):
            for item in template["spec"]["containers"]:
                item["args"] = list(args)

    def worker_template(self, obj: Obj) -> Obj:
        """The template of the training pods (local mode runs it once per pod)."""
        return self.pod_templates(obj)[-1]

    def matches(self, obj: Obj) -> bool:
        return obj.get("apiVersion") == self.resource.api_version and obj.get("kind") == self.kind

    # ---- status ------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def phase(self, obj: Obj) -> str:
        """The workload's phase as ours: Pending, Running, Suspending, Suspended, Succeeded or Failed."""

    @abc.abstractmethod
    def pods(self, obj: Obj) -> int:
        """How many training pods the workload runs."""

    def endpoint(self, obj: Obj) -> str | None:
        """Where a server answers (serving kinds); None for training kinds."""
        return None

    def pod_index(self, pod: Obj) -> int | None:
        meta = pod.get("metadata") or {}
        for source, keys in (
            (meta.get("annotations") or {}, self.index_annotations),
            (meta.get("labels") or {}, self.index_labels),
        ):
            for key in keys:
                value = source.get(key)
                if value is not None and str(value).isdigit():
                    return int(value)
        return None

    # ---- suspend, resume ---------------------------------------------------------------------------------------
    def suspend(self, api: ClusterApi, obj: Obj) -> None:
        raise self.no_suspend(api.namespace, obj["metadata"]["name"])

    def resume(self, api: ClusterApi, obj: Obj) -> None:
        raise self.no_suspend(api.namespace, obj["metadata"]["name"])

    def no_suspend(self, namespace: str, name: str) -> Exception:
        from launcher.errors import LauncherError

        return LauncherError(f"job {namespace}/{name} is a {self.kind}, which has no suspend")
