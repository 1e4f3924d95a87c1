"""What every backend's pods share: labels, the training container, volumes and security settings.

Objects are built as plain data (dicts), never by templating strings, so no user value can change a
manifest's structure; charts/convit-train renders the same objects from the same values.
"""

from __future__ import annotations

from typing import Any

from convit import __version__
from convit.cluster import contract
from convit.jobspec import JobSpec
from convit.jobspec.schema import ExtraVolume
from launcher.render import placement

APP = "convit-train"
SHM_MOUNT = "/dev/shm"
DRIVER_PATH = "/usr/local/Ascend/driver"
Obj = dict[str, Any]
METRICS_PORT = {"name": "metrics", "containerPort": contract.METRICS_PORT, "protocol": "TCP"}


def selector_labels(spec: JobSpec) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": spec.name}


def labels(spec: JobSpec, component: str) -> dict[str, str]:
    return {
        **selector_labels(spec),
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": APP,
        "app.kubernetes.io/version": __version__,
        "app.kubernetes.io/managed-by": "convit-launcher",
    }


def metadata(spec: JobSpec, name: str, component: str, extra_labels: dict[str, str] | None = None) -> Obj:
    return {
        "name": name,
        "namespace": spec.cluster.namespace,
        "labels": {**labels(spec, component), **(extra_labels or {})},
    }


def configmap_name(job: str) -> str:
    """The ConfigMap holding job `job`'s file."""
    return f"{job}-job"


def env_value(name: str, value: str | int) -> Obj:
    return {"name": name, "value": str(value)}


def storage_env(spec: JobSpec) -> list[Obj]:
    """S3 settings; the keys only as references to the job's Secret, never as values."""
    env = [env_value("CONVIT_S3_ADDRESSING_STYLE", spec.storage.addressing_style)]
    if spec.storage.endpoint:
        env.append(env_value("AWS_ENDPOINT_URL_S3", spec.storage.endpoint))
    if spec.storage.region:
        env.append(env_value("AWS_REGION", spec.storage.region))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.append({"name": key, "valueFrom": {"secretKeyRef": {"name": spec.storage.secret, "key": key}}})
    return env


def cluster_env(spec: JobSpec, sched_host: str) -> list[Obj]:
    """The MindSpore cluster variables of contract.py for the Indexed and Volcano Jobs (the ascend-operator appends
    its own to AscendJob pods, so those are rendered without them)."""
    c = spec.cluster
    return [
        env_value(contract.ENV_WORLD, c.world_size),
        env_value(contract.ENV_LOCAL, c.npus_per_pod),
        env_value(contract.ENV_SCHED_HOST, sched_host),
        env_value(contract.ENV_SCHED_PORT, c.master_port),
    ]


def container(
    spec: JobSpec,
    env: list[Obj],
    npus: bool = True,
    ports: list[Obj] | None = None,
    name: str = contract.CONTAINER_NAME,
) -> Obj:
    """The training container. Without NPUs (the AscendJob's Scheduler pod) it asks for the small scheduler
    resources instead of a whole server."""
    c = spec.cluster
    resources: dict[str, str | int] = {"cpu": c.cpu, "memory": c.memory}
    if npus:
        resources[c.npu_resource] = str(c.npus_per_pod)  # a Quantity: the API client wants a string
    else:
        resources = {"cpu": c.scheduler_cpu, "memory": c.scheduler_memory}
    base_env = [
        # A pod without NPUs is the AscendJob's Scheduler: MindSpore's init() runs the scheduler role over its own
        # TCP backend (mccl) whatever the device (mindspore/communication/management.py), so it needs no NPU, no
        # driver mount and no Ascend device context.
        env_value(contract.ENV_DEVICE, "Ascend" if npus else "CPU"),
        env_value(contract.ENV_OVERFLOW_MODE, contract.OVERFLOW_MODE),  # see contract.py: fixed-loss-scale O2 on A2
        env_value(contract.ENV_TOPO_TIMEOUT, c.cluster_timeout),
        env_value(contract.ENV_CACHE_DIR, contract.CACHE_DIR),
        env_value("HOME", "/tmp"),
        env_value("PYTHONUNBUFFERED", "1"),
    ]
    mounts = [
        {"name": "job", "mountPath": contract.JOB_FILE_DIR, "readOnly": True},
        {"name": "dshm", "mountPath": SHM_MOUNT},
        {"name": "cache", "mountPath": contract.CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if npus:
        mounts.append({"name": "ascend-driver", "mountPath": DRIVER_PATH, "readOnly": True})
    mounts += [{"name": v.name, "mountPath": v.mount_path, "readOnly": v.read_only} for v in c.extra_volumes]
    out: Obj = {
        "name": name,
        "image": c.image,
        "imagePullPolicy": c.image_pull_policy,
        "command": list(contract.POD_COMMAND),
        "args": ["--job", contract.JOB_FILE],
        "env": [*env, *base_env, *storage_env(spec), *(e.model_dump() for e in c.extra_env)],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
    }
    # Rank 0 serves Prometheus metrics from a worker pod (convit/train/metrics.py): every NPU pod names the port.
    all_ports = [*(ports or []), *([METRICS_PORT] if npus else [])]
    if all_ports:
        out["ports"] = all_ports
    # Rank 0 writes its last progress line and result to the termination message (convit/train/termination.py); a
    # container that died before writing one shows the end of its log instead.
    out["terminationMessagePolicy"] = "FallbackToLogsOnError"
    return out


def container_security_context() -> Obj:
    """Every container of ours: no privilege, no capability, a read-only root file system (writable: emptyDirs)."""
    return {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security_context(spec: JobSpec) -> Obj:
    c = spec.cluster
    return {
        "runAsNonRoot": True,
        "runAsUser": c.run_as_user,  # a high UID of no host account (the image's, 10001, by default)
        "runAsGroup": c.device_group,  # device access comes from the NPU devices' group (HwHiAiUser)
        "fsGroup": c.device_group,
        "supplementalGroups": [c.device_group],
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def volumes(spec: JobSpec, npus: bool = True) -> list[Obj]:
    vols: list[Obj] = [
        {"name": "job", "configMap": {"name": configmap_name(spec.name)}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.cluster.shm_size}},
        {"name": "cache", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if npus:
        vols.append({"name": "ascend-driver", "hostPath": {"path": DRIVER_PATH, "type": "Directory"}})
    return vols + [extra_volume(v) for v in spec.cluster.extra_volumes]


def extra_volume(volume: ExtraVolume) -> Obj:
    if volume.pvc:
        return {"name": volume.name, "persistentVolumeClaim": {"claimName": volume.pvc, "readOnly": volume.read_only}}
    if volume.config_map:
        return {"name": volume.name, "configMap": {"name": volume.config_map}}
    if volume.secret:
        return {"name": volume.name, "secret": {"secretName": volume.secret}}
    return {"name": volume.name, "emptyDir": {}}


def pod_spec(
    spec: JobSpec,
    env: list[Obj],
    *,
    npus: bool = True,
    subdomain: str | None = None,
    restart_policy: str | None = "Never",
    ports: list[Obj] | None = None,
    scheduler_name: str = "",
    container_name: str = contract.CONTAINER_NAME,
) -> Obj:
    c = spec.cluster
    pod: Obj = {}
    if restart_policy:  # the ascend-operator overwrites a template's with the replica's (and warns): None there
        pod["restartPolicy"] = restart_policy
    pod |= {
        "terminationGracePeriodSeconds": c.termination_grace_seconds,
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(spec),
        "containers": [container(spec, env, npus, ports, container_name)],
        "volumes": volumes(spec, npus),
    }
    if subdomain:
        pod["subdomain"] = subdomain
    if c.service_account:
        pod["serviceAccountName"] = c.service_account
    if c.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": name} for name in c.image_pull_secrets]
    if scheduler_name:
        pod["schedulerName"] = scheduler_name
    selector = placement.node_selector(spec, npus)  # NPU servers of the chip; a pod without NPUs: only the arch
    if selector:
        pod["nodeSelector"] = selector
    if c.priority_class:
        pod["priorityClassName"] = c.priority_class
    if c.tolerations:
        pod["tolerations"] = [{k: v for k, v in t.model_dump().items() if v != ""} for t in c.tolerations]
    return pod


def pod_template(
    spec: JobSpec,
    env: list[Obj],
    component: str,
    *,
    npus: bool = True,
    subdomain: str | None = None,
    extra_labels: dict[str, str] | None = None,
    restart_policy: str | None = "Never",
    ports: list[Obj] | None = None,
    scheduler_name: str = "",
    container_name: str = contract.CONTAINER_NAME,
) -> Obj:
    meta: Obj = {"labels": {**spec.cluster.pod_labels, **labels(spec, component), **(extra_labels or {})}}
    if spec.cluster.pod_annotations:
        meta["annotations"] = dict(spec.cluster.pod_annotations)
    return {
        "metadata": meta,
        "spec": pod_spec(
            spec,
            env,
            npus=npus,
            subdomain=subdomain,
            restart_policy=restart_policy,
            ports=ports,
            scheduler_name=scheduler_name,
            container_name=container_name,
        ),
    }
