"""The registry of workload kinds (launcher/workloads): complete everywhere a kind is named, and each kind refuses
the spec values its controller cannot honour, in the launcher and the chart alike."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
import yaml

from convit.jobspec import load_job
from convit.jobspec.load import JobSpecError
from convit.jobspec.schema import ClusterSpec
from launcher.__main__ import main
from launcher.cli import build_parser
from launcher.render import render_objects
from launcher.workloads import BACKENDS, KINDS, for_backend, for_object
from tests.support.controllers import EMULATORS

CHART_TEMPLATES = Path(__file__).resolve().parents[1] / "charts" / "convit-train" / "templates"


def test_every_kind_is_known_to_the_spec_the_cli_the_chart_and_the_emulators() -> None:
    assert typing.get_args(ClusterSpec.model_fields["backend"].annotation) == BACKENDS
    backend_flag = next(
        a for a in build_parser()._subparsers._group_actions[0].choices["submit"]._actions if a.dest == "backend"
    )  # type: ignore[union-attr]
    assert tuple(backend_flag.choices) == BACKENDS
    charted = {t.read_text().split("\n", 1)[0] for t in CHART_TEMPLATES.glob("*.yaml")}
    for backend in BACKENDS:
        first = f'{{{{- if and (eq .Values.cluster.backend "{backend}") (not .Values.serve.weights) }}}}'
        assert first in charted, f"no chart template for {backend}"
        assert backend in EMULATORS, f"no controller emulator for {backend}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_each_kind_finds_its_own_rendered_objects(backend: str) -> None:
    objects = render_objects(load_job("convit_tiny", [f"cluster.backend={backend}", "cluster.pods=3"]))
    kind = for_object(objects[-1])
    assert kind is for_backend(backend) is KINDS[backend]
    assert kind.pods(objects[-1]) == 3
    assert kind.worker_template(objects[-1]) in kind.pod_templates(objects[-1])
    assert sum(kind.matches(o) for o in objects) == 1  # the workload only, not its ConfigMap or Service


@pytest.mark.parametrize(
    ("backend", "setting", "complaint"),
    [
        ("volcano", "cluster.active_deadline_seconds=3600", "the Volcano Job has no deadline field"),
        ("ascendjob", "cluster.active_deadline_seconds=3600", "never checks runPolicy.activeDeadlineSeconds"),
        ("ascendjob", "cluster.backoff_limit=0", "reads a fault-retry-times / backoffLimit of 0 as unlimited"),
        ("volcano", "cluster.scheduler_name=default-scheduler", "its pods are always placed by volcano"),
        ("ascendjob", "cluster.scheduler_name=default-scheduler", "its pods are always placed by volcano"),
        ("volcano", "cluster.kueue_queue=team-a", "Kueue has no integration for it"),
        ("ascendjob", "cluster.kueue_queue=team-a", "Kueue has no integration for it"),
        ("job", "cluster.kueue_priority_class=high", "kueue_priority_class needs cluster.kueue_queue"),
    ],
)
def test_values_a_controller_cannot_honour_are_refused_by_launcher_and_chart(
    backend: str, setting: str, complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.test_chart import CHART, REPO, helm

    spec = load_job("convit_tiny", [f"cluster.backend={backend}", setting])
    with pytest.raises(JobSpecError, match=complaint):
        render_objects(spec)
    assert main(["render", "convit_tiny", "--backend", backend, "--set", setting]) == 1  # the launcher's user error
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and complaint in err and err.count("\n") == 1
    chart = helm(
        "template", "r", str(CHART), "-f", str(REPO / "jobs" / "convit_tiny.yaml"),
        "--set", f"cluster.backend={backend}", "--set", setting,
    )  # fmt: skip
    assert chart.returncode != 0 and complaint in chart.stderr


def test_the_job_backend_honours_a_deadline() -> None:
    job = render_objects(load_job("convit_tiny", ["cluster.active_deadline_seconds=3600"]))[-1]
    assert job["spec"]["activeDeadlineSeconds"] == 3600


def test_ascendjob_restarts_the_whole_job_stops_survivors_and_has_no_ttl(capsys: pytest.CaptureFixture[str]) -> None:
    job = render_objects(load_job("convit_tiny", ["cluster.backend=ascendjob", "cluster.backoff_limit=3"]))[-1]
    labels = job["metadata"]["labels"]
    assert labels["fault-scheduling"] == "force" and labels["fault-retry-times"] == "3"
    run_policy = job["spec"]["runPolicy"]
    assert run_policy["cleanPodPolicy"] == "Running"
    assert "ttlSecondsAfterFinished" not in run_policy and "backoffLimit" not in run_policy
    assert main(["render", "convit_tiny", "--backend", "ascendjob"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("note: cluster.ttl_seconds_after_finished is not rendered on the ascendjob backend")


def test_scheduler_name_reaches_the_indexed_job_pods_in_launcher_and_chart() -> None:
    """MindCluster's device plugin (-volcanoType=true) gives NPUs only to pods Volcano placed."""
    from tests.test_chart import REPO, helm_objects, normalise

    sets = ["cluster.scheduler_name=volcano"]
    ours = render_objects(load_job("convit_tiny", sets))
    assert ours[-1]["spec"]["template"]["spec"]["schedulerName"] == "volcano"
    assert "schedulerName" not in render_objects(load_job("convit_tiny"))[-1]["spec"]["template"]["spec"]
    theirs = helm_objects(REPO / "jobs" / "convit_tiny.yaml", *sets)
    assert [normalise(o) for o in theirs] == [normalise(o) for o in ours]
    volcano = render_objects(load_job("convit_tiny", ["cluster.backend=volcano", *sets]))[-1]
    assert volcano["spec"]["schedulerName"] == "volcano"


@pytest.mark.parametrize("backend", [b for b, k in KINDS.items() if k.kueue_admits])
def test_kueue_queue_labels_the_workload_which_starts_suspended_in_launcher_and_chart(backend: str) -> None:
    from tests.test_chart import REPO, helm_objects, normalise

    sets = [f"cluster.backend={backend}", "cluster.kueue_queue=team-a", "cluster.kueue_priority_class=high"]
    ours = render_objects(load_job("convit_tiny", sets))
    work = ours[-1]
    assert work["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert work["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "high"
    assert work["spec"]["suspend"] is True  # Kueue unsuspends it on admission
    assert all("kueue.x-k8s.io/queue-name" not in o["metadata"]["labels"] for o in ours[:-1])
    theirs = helm_objects(REPO / "jobs" / "convit_tiny.yaml", *sets)
    assert [normalise(o) for o in theirs] == [normalise(o) for o in ours]
    plain = render_objects(load_job("convit_tiny", [f"cluster.backend={backend}"]))[-1]
    assert "suspend" not in plain["spec"] and "kueue.x-k8s.io/queue-name" not in plain["metadata"]["labels"]


def test_the_chart_installs_the_same_trainer_runtime_and_both_validate_against_the_crd() -> None:
    from launcher.workloads.trainjob import runtime
    from tests.support.k8s_schema import validate
    from tests.test_chart import CHART, REPO, helm

    ours = runtime(load_job("convit_tiny", ["cluster.backend=trainjob"]))
    result = helm(
        "template", "r", str(CHART), "-f", str(REPO / "jobs" / "convit_small.yaml"),
        "--set", "trainerRuntime.create=true", "-s", "templates/trainer-runtime.yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    theirs = yaml.safe_load(result.stdout)
    assert theirs == ours
    validate(ours)
    trainjob = render_objects(load_job("convit_tiny", ["cluster.backend=trainjob", "cluster.pods=2"]))[-1]
    validate(trainjob)


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("cluster.backoff_limit=2", "restarts are the runtime's failurePolicy.maxRestarts (6)"),
        ("cluster.image_pull_policy=Always", "the runtime's is IfNotPresent"),
        ("cluster.scheduler_name=default-scheduler", "its pods are always placed by volcano"),
    ],
)
def test_trainjob_refuses_what_a_trainjob_cannot_patch(setting: str, complaint: str) -> None:
    from tests.test_chart import CHART, REPO, helm

    with pytest.raises(JobSpecError, match=re.escape(complaint)):
        render_objects(load_job("convit_tiny", ["cluster.backend=trainjob", setting]))
    chart = helm(
        "template", "r", str(CHART), "-f", str(REPO / "jobs" / "convit_tiny.yaml"),
        "--set", "cluster.backend=trainjob", "--set", setting,
    )  # fmt: skip
    assert chart.returncode != 0 and complaint in chart.stderr


def test_placement_on_ascend_clusters_in_launcher_and_chart(tmp_path: Path) -> None:
    """cluster.chip sets MindCluster's ring-controller.atlas label and the accelerator-type node selector; the
    AscendJob's Scheduler pod keeps only the architecture selector; priority class, tor-affinity and Volcano's
    network topology reach the objects that carry them, in the launcher and the chart alike."""
    from tests.support.k8s_schema import validate
    from tests.test_chart import REPO, helm_objects, normalise

    cases = {
        "ascendjob": ["cluster.chip=910a", "cluster.tor_affinity=large-model-schema", "cluster.priority_class=train"],
        "volcano": ["cluster.network_topology_mode=hard", "cluster.network_topology_tier=2"],
        "job": ["cluster.priority_class=train"],
    }
    job_file = tmp_path / "arm.yaml"  # a job file whose servers are arm64 (Atlas 800 are)
    values = yaml.safe_load((REPO / "jobs" / "convit_tiny.yaml").read_text())
    values["cluster"]["node_selector"] = {"kubernetes.io/arch": "arm64"}
    job_file.write_text(yaml.safe_dump(values))
    for backend, sets in cases.items():
        all_sets = [f"cluster.backend={backend}", *sets]
        ours = render_objects(load_job(str(job_file), all_sets))
        assert [normalise(o) for o in helm_objects(job_file, *all_sets)] == [normalise(o) for o in ours]
        for obj in ours:
            validate(obj)
    ascend = render_objects(load_job(str(job_file), ["cluster.backend=ascendjob", *cases["ascendjob"]]))[-1]
    labels = ascend["metadata"]["labels"]
    assert labels["ring-controller.atlas"] == "ascend-910" and labels["tor-affinity"] == "large-model-schema"
    sched, worker = (r["template"]["spec"] for r in ascend["spec"]["replicaSpecs"].values())
    assert worker["nodeSelector"] == {"accelerator-type": "module", "kubernetes.io/arch": "arm64"}
    assert sched["nodeSelector"] == {"kubernetes.io/arch": "arm64"}  # no NPU, but the image's architecture
    assert worker["priorityClassName"] == sched["priorityClassName"] == "train"
    a2 = render_objects(load_job("convit_tiny", ["cluster.backend=ascendjob"]))[-1]
    assert a2["metadata"]["labels"]["ring-controller.atlas"] == "ascend-910b"  # the default chip: A2
    volcano = render_objects(load_job("convit_tiny", ["cluster.backend=volcano", *cases["volcano"]]))[-1]
    assert volcano["spec"]["networkTopology"] == {"mode": "hard", "highestTierAllowed": 2}


@pytest.mark.parametrize(
    ("backend", "setting"),
    [
        ("job", "cluster.tor_affinity=normal-schema"),
        ("jobset", "cluster.network_topology_mode=soft"),
        ("ascendjob", "cluster.network_topology_mode=soft"),
        ("trainjob", "cluster.priority_class=train"),
    ],
)
def test_placement_a_kind_cannot_express_is_refused(backend: str, setting: str) -> None:
    from tests.test_chart import CHART, REPO, helm

    with pytest.raises(JobSpecError, match="cannot be"):
        render_objects(load_job("convit_tiny", [f"cluster.backend={backend}", setting]))
    chart = helm("template", "r", str(CHART), "-f", str(REPO / "jobs" / "convit_tiny.yaml"),
                 "--set", f"cluster.backend={backend}", "--set", setting)  # fmt: skip
    assert chart.returncode != 0 and "cannot be" in chart.stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_pod_monitor_in_launcher_and_chart(backend: str) -> None:
    from tests.support.k8s_schema import validate
    from tests.test_chart import REPO, helm_objects, normalise

    sets = [f"cluster.backend={backend}", "metrics.pod_monitor=true"]
    ours = render_objects(load_job("convit_tiny", sets))
    assert [o["kind"] for o in ours][:2] == ["ConfigMap", "PodMonitor"]
    theirs = helm_objects(REPO / "jobs" / "convit_tiny.yaml", *sets)

    def by_kind(objects: list) -> list:  # type: ignore[type-arg]  # helm puts kinds it does not know last
        return sorted((normalise(o) for o in objects), key=lambda o: (o["kind"], o["metadata"]["name"]))

    assert by_kind(theirs) == by_kind(ours)
    validate(ours[1])


POD_VALUES = """
cluster:
  pod_labels: {team: vision, cost-center: "42"}
  pod_annotations: {example.com/owner: "ml-platform", sidecar.istio.io/inject: "false"}
  image_pull_secrets: [registry-creds]
  service_account: convit-trainer
  extra_env: [{name: TZ, value: UTC}, {name: HTTPS_PROXY, value: "http://proxy:3128"}]
  extra_volumes:
    - {name: datasets, mount_path: /datasets, pvc: imagenet-pvc}
    - {name: certs, mount_path: /etc/ssl/custom, secret: corp-ca}
    - {name: scratch, mount_path: /scratch, empty_dir: true, read_only: false}
  run_as_user: 20001
  device_group: 1001
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_pod_values_people_look_for_in_launcher_and_chart(backend: str, tmp_path: Path) -> None:
    """Pod labels and annotations, pull secrets, a service account, extra env and volumes, and the security-context
    override reach every training pod, the same from the launcher and the chart, and validate."""
    from launcher.workloads.trainjob import full_pod
    from tests.support.controllers import emulator
    from tests.support.k8s_schema import validate
    from tests.test_chart import REPO, helm_objects, normalise

    values = yaml.safe_load((REPO / "jobs" / "convit_tiny.yaml").read_text())
    values["cluster"].update(yaml.safe_load(POD_VALUES)["cluster"])
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(values))
    spec = load_job(str(job_file), [f"cluster.backend={backend}"])
    ours = render_objects(spec)
    theirs = helm_objects(job_file, f"cluster.backend={backend}")
    assert [normalise(o) for o in theirs] == [normalise(o) for o in ours]
    for obj in ours:
        validate(obj)
    templates = [full_pod(spec)] if backend == "trainjob" else [for_object(ours[-1]).worker_template(ours[-1])]
    if backend == "trainjob":  # what Trainer builds from runtime + TrainJob has them too
        (rjob,) = emulator(ours[-1]).jobset["spec"]["replicatedJobs"]  # type: ignore[union-attr]
        templates.append(rjob["template"]["spec"]["template"])
    for pod in templates:
        assert pod["metadata"]["labels"]["team"] == "vision"
        assert pod["metadata"]["annotations"]["sidecar.istio.io/inject"] == "false"
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry-creds"}]
        assert pod["spec"]["serviceAccountName"] == "convit-trainer"
        assert pod["spec"]["securityContext"]["runAsUser"] == 20001
        assert pod["spec"]["securityContext"]["fsGroup"] == 1001
        ctr = pod["spec"]["containers"][0]
        assert {"name": "TZ", "value": "UTC"} in ctr["env"]
        assert {"name": "datasets", "mountPath": "/datasets", "readOnly": True} in ctr["volumeMounts"]
        claims = [v for v in pod["spec"]["volumes"] if v["name"] == "datasets"]
        assert claims == [
            {"name": "datasets", "persistentVolumeClaim": {"claimName": "imagenet-pvc", "readOnly": True}}
        ]


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("cluster.extra_env=[{name: MS_WORKER_NUM, value: '1'}]", "set by the job itself"),
        ("cluster.extra_env=[{name: AWS_SECRET_ACCESS_KEY, value: x}]", "set by the job itself"),
        ("cluster.pod_labels={app.kubernetes.io/instance: other}", "a label of the job itself"),
        ("cluster.extra_volumes=[{name: x, mount_path: /etc/convit, empty_dir: true}]", "overlaps a mount"),
        ("cluster.extra_volumes=[{name: x, mount_path: /data}]", "exactly one of"),
        ("cluster.extra_volumes=[{name: cache, mount_path: /data, empty_dir: true}]", "a volume of the job itself"),
        ("cluster.run_as_user=0", "run_as_user"),
    ],
)
def test_pod_values_cannot_replace_what_the_job_needs(setting: str, complaint: str) -> None:
    with pytest.raises(JobSpecError, match=re.escape(complaint)):
        load_job("convit_tiny", [setting])


@pytest.mark.parametrize("serving", ["deployment", "kserve"])
@pytest.mark.parametrize("npus", [0, 1])
def test_the_server_in_launcher_and_chart(serving: str, npus: int) -> None:
    """serve.weights turns the job into its server: a Deployment and Service, or a KServe InferenceService, with the
    training pods' security settings and the S3 Secret reference; the same from the chart; valid."""
    from launcher.serving import SERVING_KINDS
    from tests.support.k8s_schema import validate
    from tests.test_chart import REPO, helm_objects, normalise

    sets = ["serve.weights=s3://ckpt/convit-tiny/checkpoints/step-000000100", f"serve.backend={serving}",
            f"serve.npus={npus}", "serve.replicas=2"]  # fmt: skip
    ours = render_objects(load_job("convit_tiny", sets))
    kinds = [o["kind"] for o in ours]
    assert kinds == (["Service", "Deployment"] if serving == "deployment" else ["InferenceService"])
    theirs = helm_objects(REPO / "jobs" / "convit_tiny.yaml", *sets)
    assert [normalise(o) for o in theirs] == [normalise(o) for o in ours]
    for obj in ours:
        validate(obj)
    kind = SERVING_KINDS[serving]
    (pod,) = kind.pod_templates(ours[-1])
    ctr = pod["spec"]["containers"][0]
    assert ctr["name"] == kind.container and ctr["command"] == ["python", "-m", "convit.serve"]
    assert ctr["args"][:2] == ["--weights", "s3://ckpt/convit-tiny/checkpoints/step-000000100"]
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert ctr["securityContext"]["readOnlyRootFilesystem"] and pod["spec"]["securityContext"]["runAsNonRoot"]
    assert {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "convit-s3",
            "key": "AWS_SECRET_ACCESS_KEY"}}} in ctr["env"]  # fmt: skip
    assert ("huawei.com/Ascend910" in ctr["resources"]["limits"]) == bool(npus)
    assert ("nodeSelector" in pod["spec"]) == bool(npus)
