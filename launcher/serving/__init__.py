"""Serving a trained model on the cluster: the server pod (pod.py) and one module per kind that runs it (a
Deployment with its Service, or a KServe InferenceService), registered as the training kinds are
(launcher/workloads), so status, logs and delete find them the same way."""

from __future__ import annotations

from launcher.serving import deployment, kserve
from launcher.workloads.base import Workload

SERVING_KINDS: dict[str, Workload] = {w.backend: w for w in (deployment.WORKLOAD, kserve.WORKLOAD)}
SERVING_BACKENDS = tuple(SERVING_KINDS)
