"""The objects of one job: the ConfigMap with the job file, its PodMonitor if asked for, then the objects of its
workload kind (launcher/workloads), which renders the Service and the workload itself, always last."""

from __future__ import annotations

import json

from convit.cluster import contract
from convit.jobspec import JobSpec, job_values
from launcher.render.common import Obj, configmap_name, metadata


def job_json(spec: JobSpec) -> str:
    return json.dumps(job_values(spec), sort_keys=True, separators=(",", ":"))


def configmap(spec: JobSpec) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(spec, configmap_name(spec.name), "config"),
        "data": {contract.JOB_FILE_NAME: job_json(spec)},
    }


# The pod entrypoint's module selector (convit/cluster/__main__.py): evaluation pods run convit.evaluate.
EVALUATE_MODULE = "convit.evaluate"


def evaluation_out(spec: JobSpec) -> str:
    """Where an evaluation job writes its per-class accuracy, confusion matrix (CSV, PNG) and result.json:
    beside the job's checkpoints (checkpoint.uri, `--output`), under the evaluation job's name."""
    return f"{spec.checkpoint.uri}/evaluations/{spec.name}"


def evaluation_args(weights: str, out: str = "") -> list[str]:
    """The container arguments of an evaluation job: `python -m convit.cluster` then these."""
    args = ["--module", EVALUATE_MODULE, "--job", contract.JOB_FILE, "--weights", weights]
    return [*args, "--out", out] if out else args


def pod_templates(obj: Obj) -> list[Obj]:
    """Every pod template of a rendered workload, whatever its kind."""
    from launcher.workloads import for_object

    return for_object(obj).pod_templates(obj)


def workload(spec: JobSpec) -> Obj:
    """The workload object alone (the last of render_objects)."""
    return render_objects(spec)[-1]


def render_objects(spec: JobSpec, *, evaluate: str | None = None) -> list[Obj]:
    """Everything submit creates, in creation order. With `evaluate` (a weights URI), the same objects run
    `python -m convit.evaluate --weights <URI>` on the job's validation split instead of training (the job
    name is the caller's: `launcher submit --evaluate` names it `<name>-eval`). Values the kind cannot honour are
    refused here, on every path (render, submit, local)."""
    from launcher.render.monitoring import pod_monitor
    from launcher.workloads import for_backend

    if spec.serve.weights:  # the server of those weights instead of the training job
        from launcher.serving import SERVING_KINDS

        serving = SERVING_KINDS[spec.serve.backend]
        serving.check(spec)
        return serving.objects(spec)

    kind = for_backend(spec.cluster.backend)
    kind.check(spec)
    objects = [configmap(spec), *([pod_monitor(spec)] if spec.metrics.pod_monitor else []), *kind.objects(spec)]
    if evaluate is not None:
        kind.set_args(objects[-1], evaluation_args(evaluate, evaluation_out(spec)))
    return objects
