"""A Deployment of server pods behind a ClusterIP Service (`serve.backend: deployment`, any cluster).

Controller facts (kubernetes/kubernetes pkg/controller/deployment): a rolling update with maxUnavailable 0 keeps
every ready server serving while new pods warm up (they turn ready only once the model is loaded and warmed);
the Deployment reports Available once availableReplicas reach spec.replicas, and Progressing False with reason
ProgressDeadlineExceeded when a rollout cannot finish.
"""

from __future__ import annotations

from convit.jobspec import JobSpec
from launcher.render.common import metadata, selector_labels
from launcher.serving.pod import COMPONENT, server_labels, server_pod_spec
from launcher.workloads.base import FAILED, PENDING, RUNNING, Obj, Resource, Workload


class ServerDeployment(Workload):
    backend = "deployment"
    kind = "Deployment"
    resource = Resource("apps", "v1", "deployments")
    summary = "a Deployment of server pods and a ClusterIP Service (any cluster)"
    container = "server"

    def objects(self, spec: JobSpec) -> list[Obj]:
        selector = {**selector_labels(spec), "app.kubernetes.io/component": COMPONENT}
        template: Obj = {"metadata": {"labels": server_labels(spec)}, "spec": server_pod_spec(spec, self.container)}
        if spec.cluster.pod_annotations:
            template["metadata"]["annotations"] = dict(spec.cluster.pod_annotations)
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(spec, spec.name, COMPONENT),
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
            },
        }
        deployment = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(spec, spec.name, COMPONENT),
            "spec": {
                "replicas": spec.serve.replicas,
                "selector": {"matchLabels": selector},
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "template": template,
            },
        }
        return [service, deployment]

    def pod_templates(self, obj: Obj) -> list[Obj]:
        return [obj["spec"]["template"]]

    def phase(self, obj: Obj) -> str:
        status = obj.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
                return FAILED
        wanted = int((obj.get("spec") or {}).get("replicas", 1))
        return RUNNING if int(status.get("availableReplicas") or 0) >= wanted > 0 else PENDING

    def endpoint(self, obj: Obj) -> str | None:
        meta = obj["metadata"]
        return f"http://{meta['name']}.{meta.get('namespace', 'default')}.svc (port 80; in the cluster)"

    def pods(self, obj: Obj) -> int:
        return int((obj.get("spec") or {}).get("replicas", 1))


WORKLOAD = ServerDeployment()
