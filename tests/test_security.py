"""checkov on every backend's rendered objects (pod templates of custom kinds checked as Pods) and on the
Dockerfile; skips only those listed, with reasons, in .checkov.yaml and docs/security.md."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from convit.jobspec import load_job
from launcher.render import render_objects
from launcher.workloads import BACKENDS

REPO = Path(__file__).resolve().parents[1]
CHECKOV = REPO / ".tools" / "checkov" / "bin" / "checkov"


def checkov(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHECKOV.exists(), "checkov is installed by ./dev setup"
    command = [str(CHECKOV), "--config-file", str(REPO / ".checkov.yaml"), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def as_pods(obj: dict[str, Any], templates: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Pod templates of a custom workload kind, as Pods (checkov does not look inside custom kinds)."""
    from launcher.render.objects import pod_templates

    templates = pod_templates(obj) if templates is None else templates
    return [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"{obj['metadata']['name']}-{i}",
         "namespace": obj["metadata"]["namespace"], **t["metadata"]}, "spec": t["spec"]}
        for i, t in enumerate(templates)
    ]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_checkov_passes_on_rendered_manifests(backend: str, tmp_path: Path) -> None:
    spec = load_job("convit_small_plus", [f"cluster.backend={backend}"])
    objects = render_objects(spec)
    checked = []
    for obj in objects:
        checked.extend([obj] if obj["apiVersion"] in ("v1", "batch/v1") else as_pods(obj))
    if backend == "trainjob":  # the TrainJob states half the pod; the whole one is what runs
        from launcher.workloads.trainjob import full_pod

        checked[-1:] = as_pods({"metadata": objects[-1]["metadata"], "spec": {}}, [full_pod(spec)])
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(checked))
    result = checkov("-d", str(tmp_path), "--framework", "kubernetes")
    assert result.returncode == 0, result.stdout[-4000:]
    passed = re.search(r"Passed checks: (\d+), Failed checks: (\d+)", result.stdout)
    assert passed and int(passed.group(1)) >= 20 and passed.group(2) == "0", result.stdout[-2000:]


def test_checkov_passes_on_the_dockerfile() -> None:
    result = checkov("-f", str(REPO / "Dockerfile"), "--framework", "dockerfile")
    assert result.returncode == 0, result.stdout[-3000:]


def test_every_skipped_check_has_a_written_reason() -> None:
    skipped = yaml.safe_load((REPO / ".checkov.yaml").read_text())["skip-check"]
    reasons = (REPO / "docs" / "security.md").read_text()
    for check in skipped:
        assert f"| {check} " in reasons, f"{check} is skipped without a reason in docs/security.md"


def test_checkov_would_catch_a_privileged_pod(tmp_path: Path) -> None:
    job = render_objects(load_job("convit_tiny"))[-1]
    job["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(job))
    result = checkov("-d", str(tmp_path), "--framework", "kubernetes")
    assert result.returncode != 0 and "CKV_K8S_16" in result.stdout


@pytest.mark.parametrize("serving", ["deployment", "kserve"])
def test_checkov_passes_on_the_server(serving: str, tmp_path: Path) -> None:
    """The server pods (launcher serve) get the training pods' security settings: checkov finds nothing either."""
    from launcher.serving import SERVING_KINDS

    weights = "s3://ckpt/convit-small-plus/checkpoints/step-000187500"
    objects = render_objects(load_job("convit_small_plus", [f"serve.weights={weights}", f"serve.backend={serving}"]))
    kind = SERVING_KINDS[serving]
    checked = [o if o["apiVersion"] in ("v1", "apps/v1") else None for o in objects]
    checked = [o for o in checked if o is not None] + (
        [] if serving == "deployment" else as_pods(objects[-1], kind.pod_templates(objects[-1]))
    )
    (tmp_path / "manifests.yaml").write_text(yaml.safe_dump_all(checked))
    result = checkov("-d", str(tmp_path), "--framework", "kubernetes")
    assert result.returncode == 0, result.stdout[-4000:]
    passed = re.search(r"Passed checks: (\d+), Failed checks: (\d+)", result.stdout)
    assert passed and int(passed.group(1)) >= 20 and passed.group(2) == "0", result.stdout[-2000:]
