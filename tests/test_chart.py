"""The Helm chart renders the same objects as `python -m launcher render`, with a real helm binary."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from convit.cluster import contract
from convit.jobspec import MODEL_NAMES, job_values, load_job
from convit.jobspec.__main__ import chart_readme, values_schema, values_yaml
from convit.jobspec.load import JobSpecError, validate_job
from launcher.render import render_objects
from launcher.workloads import BACKENDS
from tests.support.k8s_schema import validate

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "convit-train"
HELM = REPO / ".tools" / "helm"


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    assert HELM.exists(), "helm is installed by ./dev setup"
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=60)


def helm_objects(job_file: Path, *sets: str) -> list[dict[str, Any]]:
    """`helm template` of the job, as the release that matches the launcher's job: the chart names the job after the
    release and places it in the release's namespace, so `name=`/`cluster.namespace=` become those."""
    given = dict(item.split("=", 1) for item in sets)
    release = given.pop("name", None) or yaml.safe_load(job_file.read_text())["name"]
    namespace = given.pop("cluster.namespace", "default")
    sets = tuple(f"{k}={v}" for k, v in given.items())
    args = ["template", release, str(CHART), "-f", str(job_file), "-n", namespace]
    for item in sets:
        args += ["--set", item]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def normalise(obj: dict[str, Any]) -> dict[str, Any]:
    """Only what necessarily differs: helm's own labels, and the job file's spelling (JSON floats, defaults the
    chart leaves to the trainer's loader)."""
    obj = json.loads(json.dumps(obj))

    def strip(meta: dict[str, Any]) -> None:
        labels = meta.get("labels", {})
        labels.pop("helm.sh/chart", None)
        labels.pop("app.kubernetes.io/managed-by", None)

    strip(obj["metadata"])
    for template in _templates(obj):
        strip(template["metadata"])
    if obj["kind"] == "ConfigMap":  # the job file as the trainer reads it (defaults of list items filled in)
        obj["data"] = {k: job_values(validate_job(json.loads(v), k)) for k, v in obj["data"].items()}
    return obj


def _templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """Every object's metadata that carries helm's labels below the top: pod templates, JobSet Job templates."""
    from launcher.serving import SERVING_KINDS
    from launcher.workloads import KINDS

    kind = next((k for k in (*KINDS.values(), *SERVING_KINDS.values()) if k.matches(obj)), None)
    if kind is None:
        return []
    if obj["kind"] == "TrainJob":  # the pod labels it patches into the runtime's template
        patch = obj["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
        return [patch["template"]["spec"]["template"]]
    out = kind.pod_templates(obj)
    if obj["kind"] == "JobSet":
        out += [r["template"] for r in obj["spec"]["replicatedJobs"]]
    return out


@pytest.mark.parametrize("recipe", MODEL_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_chart_renders_the_same_objects_as_the_launcher(recipe: str, backend: str) -> None:
    job_file = REPO / "jobs" / f"{recipe}.yaml"
    ours = [normalise(o) for o in render_objects(load_job(str(job_file), [f"cluster.backend={backend}"]))]
    theirs = [normalise(o) for o in helm_objects(job_file, f"cluster.backend={backend}")]
    assert [(o["kind"], o["metadata"]["name"]) for o in theirs] == [(o["kind"], o["metadata"]["name"]) for o in ours]
    for mine, chart in zip(ours, theirs, strict=True):
        assert chart == mine, f"{mine['kind']} differs"
    for obj in helm_objects(job_file, f"cluster.backend={backend}"):
        validate(obj)


def test_overrides_reach_both_renderers_alike(tmp_path: Path) -> None:
    sets = [
        "cluster.pods=3",
        "cluster.backoff_limit=2",
        "cluster.master_port=9000",
        "cluster.active_deadline_seconds=3600",
        "storage.endpoint=https://s3.example.com",
        "storage.region=eu-west-1",
        "name=custom-run",
        "cluster.namespace=ml-team",
    ]
    job_file = REPO / "jobs" / "convit_base.yaml"
    ours = [normalise(o) for o in render_objects(load_job(str(job_file), sets))]
    theirs = [normalise(o) for o in helm_objects(job_file, *sets)]
    assert theirs == ours
    job = theirs[-1]
    assert job["spec"]["activeDeadlineSeconds"] == 3600 and job["metadata"]["namespace"] == "ml-team"


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_release_names_the_job_and_its_namespace_holds_it(backend: str) -> None:
    """helm install myrun -n ml: job `myrun` in `ml`, whatever the job file's `name` and `cluster.namespace` say;
    equal to `launcher render --name myrun -n ml`; a second release of the same file shares no object name."""
    job_file = REPO / "jobs" / "convit_tiny.yaml"
    charted = {}
    for release in ("myrun", "other-run"):
        args = ["template", release, str(CHART), "-f", str(job_file), "-n", "ml", "--set", f"cluster.backend={backend}"]
        result = helm(*args, "--set", "cluster.namespace=elsewhere", "--set", "name=ignored")
        assert result.returncode == 0, result.stderr
        charted[release] = [d for d in yaml.safe_load_all(result.stdout) if d]
        for obj in charted[release]:
            assert obj["metadata"]["namespace"] == "ml"
            assert release in obj["metadata"]["name"] and "ignored" not in json.dumps(obj)
        spec = load_job(str(job_file), [f"cluster.backend={backend}", "name=" + release, "cluster.namespace=ml"])
        ours = [normalise(o) for o in render_objects(spec)]
        assert [normalise(o) for o in charted[release]] == ours
    names = [{o["metadata"]["name"] for o in objs} for objs in charted.values()]
    assert not names[0] & names[1]
    override = helm("template", "myrun", str(CHART), "-f", str(job_file), "--set", "fullnameOverride=fixed-name")
    assert {d["metadata"]["name"] for d in yaml.safe_load_all(override.stdout) if d} >= {"fixed-name"}
    bad = helm("template", "Bad_Name", str(CHART), "-f", str(job_file))
    assert bad.returncode != 0


def test_helm_lint_strict_passes() -> None:
    for recipe in ("convit_tiny", "convit_base_plus"):
        result = helm("lint", "--strict", str(CHART), "-f", str(REPO / "jobs" / f"{recipe}.yaml"))
        assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("override", "complaint"),
    [
        ("cluster.pods=-1", "pods"),
        ("cluster.bogus=1", "bogus"),
        ("fullnameOverride=Not_A_DNS_Name", "fullnameOverride"),
        ("fullnameOverride=1st-run", "fullnameOverride"),
        ("cluster.scheduler_cpu=lots", "scheduler_cpu"),
        ("model.name=convit_huge", "model"),
        ("cluster.backend=kubeflow", "backend"),
    ],
)
def test_values_schema_rejects_bad_values(override: str, complaint: str) -> None:
    result = helm("template", "release", str(CHART), "-f", str(REPO / "jobs" / "convit_tiny.yaml"), "--set", override)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_chart_refuses_what_a_controller_would_misread() -> None:
    result = helm(
        "template",
        "release",
        str(CHART),
        "-f",
        str(REPO / "jobs" / "convit_tiny.yaml"),
        "--set",
        "cluster.backend=ascendjob",
        "--set",
        "cluster.backoff_limit=0",
    )
    assert result.returncode != 0 and "backoff_limit 0 cannot be expressed on the ascendjob backend" in result.stderr


def test_chart_requires_a_job_file() -> None:
    result = helm("template", "release", str(CHART))
    assert result.returncode != 0 and "missing property 'name'" in result.stderr


def test_generated_chart_files_are_up_to_date() -> None:
    assert json.loads((CHART / "values.schema.json").read_text()) == values_schema(), (
        "run: python -m convit.jobspec write"
    )
    assert (CHART / "values.yaml").read_text() == values_yaml(), "run: python -m convit.jobspec write"
    assert (CHART / "README.md").read_text() == chart_readme(), "run: python -m convit.jobspec write"


def test_rbac_is_minimal_and_valid() -> None:
    objects = helm_objects(REPO / "jobs" / "convit_tiny.yaml", "rbac.create=true")
    role = next(o for o in objects if o["kind"] == "Role")
    for obj in objects:
        validate(obj)
    verbs = {verb for rule in role["rules"] for verb in rule["verbs"]}
    assert verbs <= {"create", "get", "list", "watch", "delete", "patch"}
    patchable = {
        (g, r)
        for rule in role["rules"]
        if "patch" in rule["verbs"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert patchable == {  # suspend/resume: spec.suspend, or under Kueue the Workload's spec.active
        ("batch", "jobs"),
        ("jobset.x-k8s.io", "jobsets"),
        ("trainer.kubeflow.org", "trainjobs"),
        ("kueue.x-k8s.io", "workloads"),
    }
    from launcher.workloads import KINDS

    for kind in KINDS.values():  # every workload kind the launcher can submit, and nothing more
        rule = next(
            r for r in role["rules"] if kind.resource.group in r["apiGroups"] and kind.resource.plural in r["resources"]
        )
        assert {"create", "get", "list", "watch", "delete"} <= set(rule["verbs"]), kind.kind
    assert not any("*" in rule["resources"] or "*" in rule["verbs"] for rule in role["rules"])
    assert {"resources": ["pods/log"], "verbs": ["get"], "apiGroups": [""]} in role["rules"]
    assert "secrets" not in {r for rule in role["rules"] for r in rule["resources"]}


def test_configmap_job_file_is_what_the_trainer_reads(tmp_path: Path) -> None:
    cm = helm_objects(REPO / "jobs" / "convit_small.yaml")[0]
    path = tmp_path / contract.JOB_FILE_NAME
    path.write_text(cm["data"][contract.JOB_FILE_NAME])
    assert load_job(str(path)) == load_job("convit_small")


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"train": {"min_lr": 0.1}}, "min_lr (0.1) must not exceed lr"),
        ({"train": {"warmup_epochs": 400}}, "warmup_epochs (400) must be below epochs (300)"),
        ({"cluster": {"tolerations": [{"key": "npu", "value": "x"}]}}, "operator Exists takes no value"),
        ({"cluster": {"extra_volumes": [{"name": "x", "mount_path": "/x"}]}}, "needs exactly one of"),
        ({"storage": {"endpoint": "http://key:secret@s3.example.com"}}, "storage/endpoint"),
        ({"storage": {"region": "us east"}}, "storage/region"),
    ],
)
def test_the_chart_refuses_what_the_launcher_refuses(values: dict[str, Any], complaint: str, tmp_path: Path) -> None:
    """One validation, two faces: rules relating two values (templates/validate.yaml) and the patterns
    (values.schema.json, generated from the same validators) refuse what convit/jobspec refuses."""
    job = yaml.safe_load((REPO / "jobs" / "convit_tiny.yaml").read_text())
    for section, items in values.items():
        job[section] = {**job.get(section, {}), **items}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    with pytest.raises(JobSpecError):  # the launcher's loader refuses the same file
        load_job(str(path))
    result = helm("template", "r", str(CHART), "-f", str(path))
    assert result.returncode != 0 and complaint in result.stderr, result.stderr
