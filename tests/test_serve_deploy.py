"""Deploying a server: `python -m launcher serve` renders the server of trained weights (a Deployment and Service or
a KServe InferenceService, tests/test_workloads.py checks them against the chart and the schemas), creates it through
the Kubernetes API, and on this machine runs it as a local process that status, logs and delete handle like a job."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.__main__ import main
from tests.support import serve_client as http
from tests.support.fake_apiserver import FakeApiServer, Reply, fixture
from tests.support.inference import reference_case

NS = "ml"


@pytest.fixture()
def local_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("CONVIT_LOCAL_HOME", str(tmp_path / "jobs"))
    yield tmp_path / "jobs"
    main(["delete", "srv", "--local"])  # a failed test leaves no server behind


@pytest.mark.slow
def test_serve_locally_answers_like_the_model_then_stops(local_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = reference_case()  # a MindCV-format convit_tiny checkpoint of 4 classes, and JPEGs
    weights = f"file://{ref['ckpt']}"
    assert main(["serve", "convit_tiny", "--weights", weights, "--local", "--name", "srv"]) == 0
    assert capsys.readouterr().out.startswith(f"serving {weights} as srv: convit_tiny, 1 replica(s) on the CPU")
    deadline = time.monotonic() + 300
    while True:
        assert main(["status", "srv", "--local"]) == 0
        out = capsys.readouterr().out
        if out.startswith("job local/srv: Running"):
            break
        assert "Failed" not in out and time.monotonic() < deadline, out
        time.sleep(1)
    match = re.search(r"endpoint: http://127\.0\.0\.1:(\d+)", out)
    assert match, out
    port = int(match.group(1))
    assert http.request(port, "GET", "/v2/models/convit_tiny").status == 200
    answer = http.classify_one(port, ref["images"][0])
    assert answer.status == 200, answer
    assert main(["logs", "srv", "--local"]) == 0
    assert "POST /v1/classify" in capsys.readouterr().out  # the server's access log, as `logs` shows a job's
    assert main(["delete", "srv", "--local"]) == 0
    assert not (local_home / "srv").exists()
    with pytest.raises(OSError):
        http.request(port, "GET", "/v2/health/live", timeout=2)


@pytest.mark.parametrize(
    ("backend", "paths"),
    [
        ("deployment", [f"/api/v1/namespaces/{NS}/services", f"/apis/apps/v1/namespaces/{NS}/deployments"]),
        ("kserve", [f"/apis/serving.kserve.io/v1beta1/namespaces/{NS}/inferenceservices"]),
    ],
)
def test_serve_on_the_cluster_creates_the_rendered_server_and_status_finds_it(
    api: FakeApiServer, backend: str, paths: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    weights = "s3://ckpt/convit-tiny/checkpoints/step-000187500"
    args = ["serve", "convit_tiny", "--weights", weights, "-n", NS, "--backend", backend, "--replicas", "3"]
    assert main(args) == 0
    assert [p for _m, p in api.calls("POST")] == paths
    workload = api.requests[-1].body
    assert workload["metadata"]["name"] == "convit-tiny-serve"
    assert main([*args, "--render"]) == 0
    assert "kind: " + workload["kind"] in capsys.readouterr().out
    ready = dict(workload, status={"availableReplicas": 3, "url": "http://convit-tiny-serve.ml.example.com",
                                   "conditions": [{"type": "Ready", "status": "True"}]})  # fmt: skip
    api.on("GET", f"{paths[-1]}/convit-tiny-serve", Reply(200, ready))
    api.on("GET", f"/apis/batch/v1/namespaces/{NS}/jobs/convit-tiny-serve", Reply(404, fixture("status-404-job.json")))
    api.on("GET", f"/api/v1/namespaces/{NS}/pods", Reply(200, {"kind": "PodList", "apiVersion": "v1", "items": []}))
    capsys.readouterr()
    assert main(["status", "convit-tiny-serve", "-n", NS]) == 0
    out = capsys.readouterr().out
    assert out.startswith("job ml/convit-tiny-serve: Running") and "endpoint: http://convit-tiny-serve." in out
