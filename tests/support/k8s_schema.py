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


def _pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]
    if obj["kind"] == "AscendJob":
        return [r["template"] for r in spec["replicaSpecs"].values()]
    return [t["template"] for t in spec["tasks"]]


def validate(obj: dict[str, Any]) -> None:
    """Raise if `obj` is not valid for its kind."""
    if obj["apiVersion"] in ("v1", "batch/v1", "rbac.authorization.k8s.io/v1"):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        return
    name = "volcano-job" if obj["apiVersion"].startswith("batch.volcano.sh") else "ascendjob"
    jsonschema.validate(obj, json.loads((SCHEMAS / f"{name}.schema.json").read_text()))
    for template in _pod_templates(obj):
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
        kubernetes_validate.validate(wrapped, K8S_VERSION, strict=True)
