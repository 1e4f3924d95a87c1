"""The job's PodMonitor (prometheus-operator, `monitoring.coreos.com/v1`), with `metrics.pod_monitor: true`: the
worker pods' port `metrics`, where rank 0 serves /metrics (only rank 0 has values; the other ranks' endpoints
answer nothing, and prometheus-operator drops targets that refuse the connection as down, not as errors)."""

from __future__ import annotations

from convit.jobspec import JobSpec
from launcher.render.common import Obj, metadata, selector_labels
from launcher.workloads.base import Resource

PODMONITORS = Resource("monitoring.coreos.com", "v1", "podmonitors")


def pod_monitor(spec: JobSpec) -> Obj:
    return {
        "apiVersion": PODMONITORS.api_version,
        "kind": "PodMonitor",
        "metadata": metadata(spec, spec.name, "metrics"),
        "spec": {
            "selector": {"matchLabels": {**selector_labels(spec), "app.kubernetes.io/component": "worker"}},
            "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics"}],
        },
    }
