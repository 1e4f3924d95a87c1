"""A KServe InferenceService with our server as a custom predictor (`serve.backend: kserve`, `serving.kserve.io/
v1beta1`).

Facts (kserve/kserve aaac4e2, config/crd/full/serving.kserve.io_inferenceservices.yaml and pkg/constants): a custom
predictor is a pod spec inlined in `spec.predictor` with its container named `kserve-container`, listening on 8080
(the port KServe routes to); `minReplicas`/`maxReplicas` bound its replicas; the predictor's `labels` and
`annotations` go on its pods; the InferenceService reports the condition Ready. Our server speaks KServe's Open
Inference Protocol v2 itself (convit/serve).
"""

from __future__ import annotations

from convit.jobspec import JobSpec
from launcher.render.common import metadata
from launcher.serving.pod import COMPONENT, server_labels, server_pod_spec
from launcher.workloads.base import FAILED, PENDING, RUNNING, Obj, Resource, Workload

PREDICTOR_CONTAINER = "kserve-container"
REPLICA_FIELDS = ("minReplicas", "maxReplicas", "labels", "annotations")


class InferenceService(Workload):
    backend = "kserve"
    kind = "InferenceService"
    resource = Resource("serving.kserve.io", "v1beta1", "inferenceservices")
    summary = "a KServe InferenceService with our server as its custom predictor (KServe installed)"
    container = PREDICTOR_CONTAINER

    def objects(self, spec: JobSpec) -> list[Obj]:
        s = spec.serve
        predictor: Obj = {
            "minReplicas": s.replicas,
            "maxReplicas": s.replicas,
            "labels": server_labels(spec),
            **server_pod_spec(spec, PREDICTOR_CONTAINER),
        }
        if spec.cluster.pod_annotations:
            predictor["annotations"] = dict(spec.cluster.pod_annotations)
        return [
            {
                "apiVersion": self.resource.api_version,
                "kind": self.kind,
                "metadata": metadata(spec, spec.name, COMPONENT),
                "spec": {"predictor": predictor},
            }
        ]

    def pod_templates(self, obj: Obj) -> list[Obj]:
        """The predictor as a pod template (the same dict: changes reach the object)."""
        predictor = obj["spec"]["predictor"]
        return [{"metadata": {"labels": predictor.get("labels", {})}, "spec": predictor}]

    def phase(self, obj: Obj) -> str:
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                if cond.get("status") == "True":
                    return RUNNING
                if cond.get("reason") in ("InternalError", "InvalidSpec"):
                    return FAILED
        return PENDING

    def endpoint(self, obj: Obj) -> str | None:
        return (obj.get("status") or {}).get("url") or None

    def pods(self, obj: Obj) -> int:
        return int(((obj.get("spec") or {}).get("predictor") or {}).get("minReplicas", 1))


WORKLOAD = InferenceService()
