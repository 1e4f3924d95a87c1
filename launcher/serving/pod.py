"""The server pod: `python -m convit.serve` (convit/serve) with the training pods' security settings, the S3 Secret
reference for its weights, probes on KServe's Open Inference Protocol health endpoints, and NPUs when asked for."""

from __future__ import annotations

from convit.cluster import contract
from convit.jobspec import JobSpec
from launcher.render import placement
from launcher.render.common import (
    DRIVER_PATH,
    Obj,
    container_security_context,
    env_value,
    labels,
    pod_security_context,
    storage_env,
)

PORT = 8080  # convit.serve's default, and the port KServe's custom predictors listen on
SERVE_COMMAND = ("python", "-m", "convit.serve")
COMPONENT = "server"


def server_args(spec: JobSpec) -> list[str]:
    s = spec.serve
    return [
        "--weights", s.weights, "--model", spec.model.name, "--port", str(PORT),
        "--max-batch", str(s.max_batch), "--max-wait-ms", str(s.max_wait_ms),
    ]  # fmt: skip


def server_container(spec: JobSpec, name: str) -> Obj:
    s = spec.serve
    resources: dict[str, str] = {"cpu": s.cpu, "memory": s.memory}
    if s.npus:
        resources[spec.cluster.npu_resource] = str(s.npus)
    mounts: list[Obj] = [{"name": "tmp", "mountPath": "/tmp"}, {"name": "cache", "mountPath": contract.CACHE_DIR}]
    if s.npus:
        mounts.append({"name": "ascend-driver", "mountPath": DRIVER_PATH, "readOnly": True})

    def probe(path: str, period: int) -> Obj:
        return {"httpGet": {"path": path, "port": PORT}, "periodSeconds": period, "failureThreshold": 3}

    return {
        "name": name,
        "image": spec.cluster.image,
        "imagePullPolicy": spec.cluster.image_pull_policy,
        "command": list(SERVE_COMMAND),
        "args": server_args(spec),
        "env": [
            env_value(contract.ENV_DEVICE, "Ascend" if s.npus else "CPU"),
            env_value(contract.ENV_CACHE_DIR, contract.CACHE_DIR),
            env_value("HOME", "/tmp"),
            env_value("PYTHONUNBUFFERED", "1"),
            *storage_env(spec),
            *(e.model_dump() for e in spec.cluster.extra_env),
        ],
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        # ready only once the model is loaded and warmed (convit/serve); loading may take minutes on a cold start
        "startupProbe": {**probe("/v2/health/live", 5), "failureThreshold": 120},
        "readinessProbe": probe("/v2/health/ready", 5),
        "livenessProbe": probe("/v2/health/live", 10),
        "volumeMounts": mounts,
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def server_pod_spec(spec: JobSpec, container_name: str) -> Obj:
    """The pod spec without the container list's kind-specific placement (KServe inlines it in its predictor)."""
    s, c = spec.serve, spec.cluster
    volumes: list[Obj] = [{"name": "tmp", "emptyDir": {}}, {"name": "cache", "emptyDir": {}}]
    if s.npus:
        volumes.append({"name": "ascend-driver", "hostPath": {"path": DRIVER_PATH, "type": "Directory"}})
    pod: Obj = {
        "terminationGracePeriodSeconds": 60,  # the server drains its requests in flight (convit/serve, 30 s)
        "automountServiceAccountToken": False,
        "securityContext": pod_security_context(spec),
        "containers": [server_container(spec, container_name)],
        "volumes": volumes,
    }
    if c.service_account:
        pod["serviceAccountName"] = c.service_account
    if c.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in c.image_pull_secrets]
    if s.npus:
        pod["nodeSelector"] = placement.node_selector(spec, npus=True)
    if c.priority_class:
        pod["priorityClassName"] = c.priority_class
    if c.tolerations:
        pod["tolerations"] = [{k: v for k, v in t.model_dump().items() if v != ""} for t in c.tolerations]
    return pod


def server_labels(spec: JobSpec) -> dict[str, str]:
    return {**spec.cluster.pod_labels, **labels(spec, COMPONENT)}
