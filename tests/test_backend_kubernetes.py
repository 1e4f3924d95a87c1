"""The Kubernetes backend through the official client against a fake API server that replays recorded,
real-server-shaped responses: exact calls and bodies, errors as one line, status, log following, delete."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from convit.jobspec import load_job
from launcher.__main__ import main
from launcher.backends.kubernetes import KubernetesBackend
from launcher.errors import LauncherError
from launcher.render import render_objects
from tests.support.fake_apiserver import FakeApiServer, Reply, fake_apiserver, fixture
from tests.support.k8s_schema import validate

NS = "ml"
BATCH = f"/apis/batch/v1/namespaces/{NS}/jobs"
CORE = f"/api/v1/namespaces/{NS}"


@pytest.fixture()
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    with fake_apiserver() as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield server


def _spec(backend: str = "job"):  # type: ignore[no-untyped-def]
    return load_job("convit_tiny", [f"cluster.backend={backend}", f"cluster.namespace={NS}", "cluster.pods=2"])


@pytest.mark.parametrize(
    ("backend", "workload_path"),
    [
        ("job", BATCH),
        ("volcano", f"/apis/batch.volcano.sh/v1alpha1/namespaces/{NS}/jobs"),
        ("ascendjob", f"/apis/mindxdl.gitee.com/v1/namespaces/{NS}/ascendjobs"),
    ],
)
def test_submit_creates_exactly_the_rendered_objects(api: FakeApiServer, backend: str, workload_path: str) -> None:
    spec = _spec(backend)
    assert KubernetesBackend(NS).submit(spec) == "convit-tiny"
    expected = render_objects(spec)
    paths = [f"{CORE}/configmaps"] + ([f"{CORE}/services"] if backend == "job" else []) + [workload_path]
    assert api.calls() == [("POST", p) for p in paths]
    bodies = [r.body for r in api.requests]
    assert bodies == expected
    for body in bodies:
        validate(body)


def test_dry_run_asks_the_server_to_validate_only(api: FakeApiServer) -> None:
    KubernetesBackend(NS).submit(_spec(), dry_run=True)
    assert all(r.query.get("dryRun") == ["All"] for r in api.requests) and len(api.requests) == 3


def test_existing_job_is_one_clear_error_and_nothing_is_left_half_created(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("POST", BATCH, Reply(409, fixture("status-409-job.json")))
    api.on("DELETE", f"{CORE}/(configmaps|services)/.*", Reply(200, {"kind": "Status", "status": "Success"}))
    code = main(["submit", "convit_tiny", "-n", NS, "--pods", "2"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert err.startswith(f"ERROR: job {NS}/convit-tiny already exists") and "python -m launcher delete" in err
    assert api.calls("DELETE") == [
        ("DELETE", f"{CORE}/services/convit-tiny"),
        ("DELETE", f"{CORE}/configmaps/convit-tiny-job"),
    ]


def test_forbidden_namespace_is_one_clear_error(api: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("POST", f"{CORE}/configmaps", Reply(403, fixture("status-403.json")))
    assert main(["submit", "convit_tiny", "-n", NS]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: forbidden: cannot create ConfigMap 'convit-tiny-job' in namespace 'ml'")
    assert "Traceback" not in err and err.count("\n") == 1


def test_unreachable_api_server_and_missing_kubeconfig(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.s3server import free_port

    dead = FakeApiServer(url=f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("KUBECONFIG", str(dead.kubeconfig(tmp_path / "dead")))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["status", "convit-tiny", "-n", NS]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: cannot reach the Kubernetes API server at http://127.0.0.1:") and err.count("\n") == 1
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "nothing-here"))
    assert main(["list"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: no usable kubeconfig") and err.count("\n") == 1


def test_status_shows_phase_pods_restarts_and_latest_progress(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", f"{BATCH}/convit-tiny", Reply(200, fixture("job-running.json")))
    api.on("GET", f"{CORE}/pods", Reply(200, fixture("pods-running.json")))
    api.on("GET", f"{CORE}/pods/convit-tiny-0-abcde/log", Reply(200, fixture("log-pod0-first.txt")))
    assert main(["status", "convit-tiny", "-n", NS]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "job ml/convit-tiny: Running"
    assert "  pod 1 convit-tiny-1-fghij: Running, restarts 2, node ascend-node-1" in out
    assert out[-1] == "  progress: epoch 1/300 step 40/187500 loss 6.8810 eta 11h54m"
    pods_query = next(r for r in api.requests if r.path == f"{CORE}/pods").query
    assert pods_query["labelSelector"] == ["app.kubernetes.io/instance=convit-tiny,app.kubernetes.io/component=worker"]


def test_unknown_job_is_a_clear_error(api: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("GET", f"{BATCH}/ghost", Reply(404, fixture("status-404-job.json")))
    assert main(["status", "ghost", "-n", NS]) == 1
    assert capsys.readouterr().err == f"ERROR: job {NS}/ghost not found\n"


def test_logs_follow_across_a_pod_restart_until_the_job_completes(api: FakeApiServer) -> None:
    phases = itertools.chain(["running"] * 4, itertools.repeat("complete"))
    pod_lists = itertools.chain(["pods-running.json"] * 2, itertools.repeat("pods-after-restart.json"))
    api.on("GET", f"{BATCH}/convit-tiny", lambda r: Reply(200, fixture(f"job-{next(phases)}.json")))
    api.on("GET", f"{CORE}/pods", lambda r: Reply(200, fixture(next(pod_lists))))
    first, second = fixture("log-pod0-first.txt").encode(), fixture("log-pod0-second.txt").encode()
    api.on("GET", f"{CORE}/pods/convit-tiny-0-abcde/log", Reply(200, chunks=[first[:50], first[50:]]))
    api.on("GET", f"{CORE}/pods/convit-tiny-0-klmno/log", Reply(200, chunks=[second]))
    lines = list(KubernetesBackend(NS).logs("convit-tiny", follow=True, rank=0))
    assert lines[1].startswith("epoch 1/300 step 20/187500") and "resume=step 40" in lines[3]
    assert lines[-1] == "done step 60 (finished)" and len(lines) == 6
    follows = [r.query.get("follow") for r in api.requests if r.path.endswith("/log")]
    assert follows == [["true"], ["true"]]


def test_logs_all_prefixes_each_pod(api: FakeApiServer) -> None:
    api.on("GET", f"{BATCH}/convit-tiny", Reply(200, fixture("job-complete.json")))
    api.on("GET", f"{CORE}/pods", Reply(200, fixture("pods-running.json")))
    api.on("GET", f"{CORE}/pods/convit-tiny-0-abcde/log", Reply(200, chunks=[fixture("log-pod0-first.txt").encode()]))
    api.on("GET", f"{CORE}/pods/convit-tiny-1-fghij/log", Reply(200, chunks=[fixture("log-pod1.txt").encode()]))
    lines = list(KubernetesBackend(NS).logs("convit-tiny", follow=False, rank=None))
    assert sorted(line.split(" ", 1)[0] for line in lines) == ["[pod-0]"] * 3 + ["[pod-1]"]
    assert "[pod-1] WARNING convit.data: skipped undecodable image" in lines[-1] or any(
        line.startswith("[pod-1] WARNING") for line in lines
    )


def test_list_and_delete_touch_only_the_jobs_objects(api: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    api.on("GET", BATCH, Reply(200, fixture("joblist.json")))
    api.on(
        "GET", f"/apis/batch.volcano.sh/v1alpha1/namespaces/{NS}/jobs", Reply(404, fixture("status-404-resource.json"))
    )
    api.on(
        "GET",
        f"/apis/mindxdl.gitee.com/v1/namespaces/{NS}/ascendjobs",
        Reply(200, {"apiVersion": "mindxdl.gitee.com/v1", "kind": "AscendJobList", "items": []}),
    )
    assert main(["list", "-n", NS]) == 0
    assert capsys.readouterr().out.split() == ["convit-tiny", "Running", "Job"]

    api.on("GET", f"{BATCH}/convit-tiny", Reply(200, fixture("job-running.json")))
    service = render_objects(_spec())[1]
    foreign_cm = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "convit-tiny-job", "labels": {"team": "x"}},
    }
    api.on("GET", f"{CORE}/services/convit-tiny", Reply(200, service))
    api.on("GET", f"{CORE}/configmaps/convit-tiny-job", Reply(200, foreign_cm))
    api.on("DELETE", ".*", Reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}))
    assert main(["delete", "convit-tiny", "-n", NS]) == 0
    assert api.calls("DELETE") == [("DELETE", f"{BATCH}/convit-tiny"), ("DELETE", f"{CORE}/services/convit-tiny")]
    delete_job = next(r for r in api.requests if r.method == "DELETE")
    assert (
        delete_job.query.get("propagationPolicy") == ["Background"]
        or (delete_job.body or {}).get("propagationPolicy") == "Background"
    )
    assert "deleted Job/convit-tiny" in capsys.readouterr().out


def test_backend_errors_are_launcher_errors(api: FakeApiServer) -> None:
    with pytest.raises(LauncherError, match="not found"):
        KubernetesBackend(NS).delete("ghost")
