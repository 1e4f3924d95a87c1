"""Validation of rendered objects: official Kubernetes schemas for built-in kinds (kubernetes-validate,
strict), the project's CRD schemas for Volcano Job and AscendJob, and their pod templates as v1 PodTemplates."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

K8S_VERSION = "1.32.0"
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"


def _pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:  # Volcano Job, AscendJob
    spec = obj["spec"]
    if obj["kind"] == "AscendJob":
        return [r["template"] for r in spec["replicaSpecs"].values()]
    return [t["template"] for t in spec["tasks"]]


def pruned(obj: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The fields of `obj` an API server would silently drop under this structural CRD schema (no
    additionalProperties, no x-kubernetes-preserve-unknown-fields): a rendered field there is a typo or a field the
    installed version does not have."""
    out: list[str] = []
    if isinstance(obj, dict) and schema.get("type") == "object":
        if schema.get("x-kubernetes-preserve-unknown-fields") or "additionalProperties" in schema:
            return out
        properties = schema.get("properties", {})
        for key, value in obj.items():
            if key not in properties:
                out.append(f"{path}.{key}")
            else:
                out += pruned(value, properties[key], f"{path}.{key}")
    elif isinstance(obj, list) and "items" in schema:
        for i, item in enumerate(obj):
            out += pruned(item, schema["items"], f"{path}[{i}]")
    return out


def validate(obj: dict[str, Any]) -> None:
    """Raise if `obj` is not valid for its kind."""
    if obj["apiVersion"] in ("v1", "apps/v1", "batch/v1", "rbac.authorization.k8s.io/v1"):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    crd = {
        "JobSet": "jobset",
        "TrainJob": "trainjob",
        "ClusterTrainingRuntime": "clustertrainingruntime",
        "PodMonitor": "podmonitor",
        "InferenceService": "inferenceservice",
    }
    if obj["kind"] in crd:  # the upstream CRD's schema; each child Job against the official Job schema
        schema = json.loads((SCHEMAS / f"{crd[obj['kind']]}.schema.json").read_text())
        jsonschema.validate(obj, schema)
        dropped = pruned({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}, schema)
        if dropped:
            raise jsonschema.ValidationError(f"fields the API server would prune: {dropped}")
        jobset = (
            obj if obj["kind"] == "JobSet" else obj["spec"].get("template", {}) if obj["kind"] != "TrainJob" else {}
        )
        for rjob in jobset.get("spec", {}).get("replicatedJobs", []):
            child = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "t"}, **rjob["template"]}
            kubernetes_validate.validate(child, K8S_VERSION, strict=True)
        return
    name = "volcano-job" if obj["apiVersion"].startswith("batch.volcano.sh") else "ascendjob"
    jsonschema.validate(obj, json.loads((SCHEMAS / f"{name}.schema.json").read_text()))
    for template in _pod_templates(obj):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
