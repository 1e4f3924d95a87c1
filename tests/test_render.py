"""Rendered manifests: valid against the real schemas, the Ascend shape right, secrets only by reference,
and no user value able to change a manifest's structure."""

from __future__ import annotations

import json

import pytest
import yaml

from convit.cluster import contract
from convit.jobspec import MODEL_NAMES, JobSpecError, load_job
from launcher.render import render_objects, render_yaml
from launcher.render.objects import pod_templates
from launcher.workloads import BACKENDS, KINDS
from launcher.workloads.trainjob import full_pod
from tests.support.k8s_schema import validate


def _pods(objects: list[dict]) -> list[dict]:  # type: ignore[type-arg]
    return [t["spec"] for t in pod_templates(objects[-1])]


@pytest.mark.parametrize("recipe", MODEL_NAMES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_object_validates_against_its_schema(recipe: str, backend: str) -> None:
    objects = render_objects(load_job(recipe, [f"cluster.backend={backend}"]))
    for obj in objects:
        validate(obj)
    assert next(o["kind"] for o in objects) == "ConfigMap"


def test_schema_validation_can_fail() -> None:
    objects = render_objects(load_job("convit_tiny"))
    broken = json.loads(json.dumps(objects[-1]))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = 7
    with pytest.raises(Exception, match="imagePullPolicy|7"):
        validate(broken)
    volcano = render_objects(load_job("convit_tiny", ["cluster.backend=volcano"]))[-1]
    volcano["spec"]["policies"][0]["action"] = "Explode"
    with pytest.raises(Exception, match="Explode"):
        validate(volcano)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ascend_pod_shape(backend: str) -> None:
    spec = load_job("convit_small_plus", [f"cluster.backend={backend}", "cluster.pods=4"])
    objects = render_objects(spec)
    pods = _pods(objects) if backend != "trainjob" else [full_pod(spec)["spec"]]  # the runtime holds half of it
    workers = [p for p in pods if any("huawei.com/Ascend910" in c["resources"]["limits"] for c in p["containers"])]
    assert len(workers) == 1
    pod = workers[0]
    container = pod["containers"][0]
    assert container["name"] == KINDS[backend].container
    assert container["resources"]["requests"]["huawei.com/Ascend910"] == "8"
    assert container["resources"]["limits"]["huawei.com/Ascend910"] == "8"
    assert container["command"] == list(contract.POD_COMMAND)
    assert container["args"] == ["--job", contract.JOB_FILE]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/dev/shm", "/usr/local/Ascend/driver", contract.JOB_FILE_DIR} <= mounts
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e for e in container["env"]}
    assert env[contract.ENV_DEVICE]["value"] == "Ascend"
    assert env[contract.ENV_OVERFLOW_MODE]["value"] == "INFNAN_MODE"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "convit-s3", "key": key}
    if backend != "ascendjob":
        assert env[contract.ENV_WORLD]["value"] == "32"
        assert env[contract.ENV_LOCAL]["value"] == "8"
        assert env[contract.ENV_SCHED_PORT]["value"] == "8118"
        assert pod["restartPolicy"] == "Never"
    else:  # the ascend-operator appends every MS_* variable and overwrites restartPolicy: render neither
        assert not [
            name
            for name in env
            if name.startswith("MS_") and name != contract.ENV_OVERFLOW_MODE and name != contract.ENV_TOPO_TIMEOUT
        ]
        assert "restartPolicy" not in pod


def test_indexed_job_rank_and_rendezvous() -> None:
    objects = render_objects(load_job("convit_tiny", ["cluster.pods=3", "name=tiny-run"]))
    service, job = objects[1], objects[2]
    assert service["spec"]["clusterIP"] == "None" and service["metadata"]["name"] == "tiny-run"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == 3
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "tiny-run"
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env[contract.ENV_SCHED_HOST]["value"] == "tiny-run-0.tiny-run"
    assert "job-completion-index" in env[contract.ENV_NODE_RANK]["valueFrom"]["fieldRef"]["fieldPath"]
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()


def test_job_file_in_configmap_round_trips() -> None:
    spec = load_job("convit_base", ["train.lr=3e-4"])
    data = json.loads(render_objects(spec)[0]["data"][contract.JOB_FILE_NAME])
    assert data["train"]["lr"] == 3e-4
    from convit.jobspec import validate_job

    assert validate_job(data, "configmap") == spec


def test_no_secret_value_in_any_manifest(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-secret-value-91c2"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIACANARY")
    for backend in BACKENDS:
        text = render_yaml(render_objects(load_job("convit_tiny", [f"cluster.backend={backend}"])))
        assert canary not in text and "AKIACANARY" not in text


HOSTILE_ACCEPTED = [
    "data.uri=s3://bucket/x\"y'{{.Release.Name}}$(id);`x`|---",
    "checkpoint.uri=file:///tmp/a:b/{{ .Values }}/#c",
    "model.pretrained=s3://bucket/p/%0A--- kind: Secret",
]


@pytest.mark.parametrize("override", HOSTILE_ACCEPTED)
def test_hostile_values_render_as_literal_strings(override: str) -> None:
    key, value = override.split("=", 1)
    if " " in value:  # spaces are not allowed in URIs: rejected instead
        with pytest.raises(JobSpecError):
            load_job("convit_tiny", [override])
        return
    spec = load_job("convit_tiny", [override])
    objects = render_objects(spec)
    again = list(yaml.safe_load_all(render_yaml(objects)))
    assert again == objects  # YAML round trip: same structure, value intact
    data = json.loads(objects[0]["data"][contract.JOB_FILE_NAME])
    section, field = key.split(".")
    assert data[section][field] == value


@pytest.mark.parametrize(
    "override",
    [
        "name=bad\nname",
        "name=Upper",
        "name=x" * 30,
        "name=1st-run",
        "name=-run",
        "name=run-",
        "cluster.namespace=kube system",
        'cluster.image=img"; rm -rf /',
        'cluster.node_selector={"a": "b\\nc"}',
        "cluster.cpu=64; echo",
        "storage.endpoint=http://user:pw@host",
        "storage.secret=a/b",
        "data.uri=http://example.com/x",
        "data.uri=s3://bucket/../etc",
    ],
)
def test_hostile_values_that_could_change_structure_are_rejected(override: str) -> None:
    with pytest.raises(JobSpecError):
        load_job("convit_tiny", [override])


def test_ascendjob_scheduler_pod_is_small_and_serves_master_port() -> None:
    spec = load_job(
        "convit_base", ["cluster.backend=ascendjob", "cluster.pods=4", "cluster.master_port=9123", "name=b-run"]
    )
    job = render_objects(spec)[-1]
    replicas = job["spec"]["replicaSpecs"]
    assert job["spec"]["runPolicy"]["schedulingPolicy"]["minAvailable"] == 5
    sched = replicas[contract.ASCEND_SCHEDULER]["template"]["spec"]
    assert replicas[contract.ASCEND_SCHEDULER]["replicas"] == 1 and replicas[contract.ASCEND_WORKER]["replicas"] == 4
    container = sched["containers"][0]
    assert container["ports"] == [{"name": contract.ASCEND_PORT_NAME, "containerPort": 9123, "protocol": "TCP"}]
    assert container["resources"]["requests"] == {"cpu": "2", "memory": "4Gi"} == container["resources"]["limits"]
    assert "nodeSelector" not in sched and all(v["name"] != "ascend-driver" for v in sched["volumes"])
    assert {"name": contract.ENV_DEVICE, "value": "CPU"} in container["env"]  # the scheduler needs no device
    worker = replicas[contract.ASCEND_WORKER]["template"]["spec"]
    assert worker["nodeSelector"] == {"accelerator-type": "module-910b-8"}  # the default chip, 910b
    assert worker["containers"][0]["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
    custom = load_job(
        "convit_base", ["cluster.backend=ascendjob", "cluster.scheduler_cpu=500m", "cluster.scheduler_memory=1Gi"]
    )
    res = render_objects(custom)[-1]["spec"]["replicaSpecs"]["Scheduler"]["template"]["spec"]["containers"][0]
    assert res["resources"]["limits"] == {"cpu": "500m", "memory": "1Gi"}


def test_restart_budgets_per_backend() -> None:
    """backoff_limit whole-job restarts, in each controller's own units (see tests/test_controllers.py)."""
    job = render_objects(load_job("convit_tiny", ["cluster.pods=3", "cluster.backoff_limit=2"]))[-1]
    assert job["spec"]["backoffLimit"] == 8  # failed pods: one restart fails all 3, and pod 0's replacement once more
    volcano = render_objects(load_job("convit_tiny", ["cluster.backend=volcano", "cluster.backoff_limit=0"]))[-1]
    assert volcano["spec"]["maxRetry"] == 1  # never 0, which Volcano's webhook would turn into 3
    assert volcano["spec"]["policies"][0] == {"exitCode": 2, "action": "TerminateJob"}
    assert volcano["spec"]["plugins"]["svc"] == ["--publish-not-ready-addresses"]
    ascend = render_objects(load_job("convit_tiny", ["cluster.backend=ascendjob", "cluster.backoff_limit=2"]))[-1]
    assert ascend["metadata"]["labels"]["fault-retry-times"] == "2"  # MindCluster's whole-job rescheduling
    assert "backoffLimit" not in ascend["spec"]["runPolicy"]  # the operator takes its limit from the label
    with pytest.raises(JobSpecError, match="backoff_limit 0 cannot be expressed on the ascendjob backend"):
        render_objects(load_job("convit_tiny", ["cluster.backend=ascendjob", "cluster.backoff_limit=0"]))


def test_job_names_must_start_with_a_letter() -> None:
    with pytest.raises(JobSpecError, match="DNS-1035 label.*starting with a letter"):
        load_job("convit_tiny", ["name=8x8-run"])
    assert load_job("convit_tiny", ["name=r8x8"]).name == "r8x8"


def test_pods_flag_states_the_global_batch_and_lr(capsys: pytest.CaptureFixture[str]) -> None:
    from launcher.__main__ import main

    assert main(["render", "convit_tiny", "--pods", "2"]) == 0
    captured = capsys.readouterr()
    assert list(yaml.safe_load_all(captured.out))[-1]["kind"] == "Job"  # stdout: YAML only
    assert captured.err == (
        "--pods 2: global batch 4096 (recipe 2048), peak LR 1.44e-03 "
        "(recipe 7.20e-04 at 2048; linear rule, train.reference_batch 2048)\n"
    )
    assert main(["render", "convit_tiny"]) == 0
    assert capsys.readouterr().err == ""
