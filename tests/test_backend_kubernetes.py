"""The Kubernetes backend through the official client against a fake API server that replays recorded,
real-server-shaped responses: exact calls and bodies, errors as one line, status, log following, delete."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from convit.jobspec import load_job
from launcher.__main__ import main
from launcher.backends.kubernetes import KubernetesBackend
from launcher.errors import LauncherError
from launcher.render import render_objects
from launcher.workloads import KINDS
from tests.support.fake_apiserver import FakeApiServer, Reply, Request, fixture
from tests.support.k8s_schema import validate

NS = "ml"
BATCH = f"/apis/batch/v1/namespaces/{NS}/jobs"
CORE = f"/api/v1/namespaces/{NS}"
WORKLOAD_PATHS = [
    (backend, f"/apis/{k.resource.group}/{k.resource.version}/namespaces/{NS}/{k.resource.plural}")
    for backend, k in KINDS.items()
]
JOBSET = f"/apis/jobset.x-k8s.io/v1alpha2/namespaces/{NS}/jobsets/convit-tiny"


def _spec(backend: str = "job"):  # type: ignore[no-untyped-def]
    return load_job("convit_tiny", [f"cluster.backend={backend}", f"cluster.namespace={NS}", "cluster.pods=2"])


@pytest.mark.parametrize(("backend", "workload_path"), WORKLOAD_PATHS)
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
    assert pods_query["labelSelector"] == [
        "app.kubernetes.io/instance=convit-tiny,app.kubernetes.io/component in (worker,server)"
    ]


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


def test_pod_index_comes_from_whichever_controller_made_the_pod() -> None:
    from launcher.backends.kubernetes import _pod_index

    def pod(annotations: dict[str, str], labels: dict[str, str]) -> dict:  # type: ignore[type-arg]
        return {"metadata": {"annotations": annotations, "labels": labels}}

    assert _pod_index(pod({"batch.kubernetes.io/job-completion-index": "2"}, {})) == 2  # Indexed Job
    assert _pod_index(pod({"volcano.sh/task-index": "3"}, {})) == 3  # Volcano
    assert _pod_index(pod({}, {"training.kubeflow.org/replica-index": "1"})) == 1  # ascend-operator
    assert _pod_index(pod({}, {})) == -1


# ---- evaluation jobs -------------------------------------------------------------------------------------------
WEIGHTS = "s3://ckpt/convit-tiny/checkpoints/step-000187500"


@pytest.mark.parametrize(("backend", "workload_path"), WORKLOAD_PATHS)
def test_submit_evaluate_creates_the_training_objects_running_convit_evaluate(
    api: FakeApiServer, backend: str, workload_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from convit.cluster import contract
    from launcher.render.objects import pod_templates

    args = ["submit", "convit_tiny", "-n", NS, "--pods", "2", "--backend", backend, "--evaluate", "--weights", WEIGHTS]
    assert main(args) == 0
    assert "submitted evaluation job convit-tiny-eval: convit_tiny, 2 pod(s)" in capsys.readouterr().out
    paths = [f"{CORE}/configmaps"] + ([f"{CORE}/services"] if backend == "job" else []) + [workload_path]
    assert api.calls() == [("POST", p) for p in paths]
    bodies = [r.body for r in api.requests]
    for body in bodies:
        validate(body)
    assert all(b["metadata"]["name"].startswith("convit-tiny-eval") for b in bodies)
    # Everything but the container arguments is the training job's (of the same name): same pods, same contract.
    train = render_objects(
        load_job(
            "convit_tiny",
            [f"cluster.backend={backend}", f"cluster.namespace={NS}", "cluster.pods=2", "name=convit-tiny-eval"],
        )
    )
    templates = pod_templates(bodies[-1])
    assert len(templates) == (2 if backend == "ascendjob" else 1)
    for template in templates:
        (container,) = template["spec"]["containers"]
        assert container["command"] == list(contract.POD_COMMAND)
        out = "s3://checkpoints/convit-tiny/evaluations/convit-tiny-eval"  # beside the checkpoints, by job name
        assert container["args"] == [
            "--module", "convit.evaluate", "--job", contract.JOB_FILE, "--weights", WEIGHTS, "--out", out
        ]  # fmt: skip
    KINDS[backend].set_args(bodies[-1], ["--job", contract.JOB_FILE])
    assert bodies == train


def test_the_pod_entrypoint_selects_the_evaluation_module() -> None:
    from convit.cluster.__main__ import split_module

    assert split_module(["--job", "j"]) == ("convit.train", ["--job", "j"])
    assert split_module(["--module", "convit.evaluate", "--job", "j"]) == ("convit.evaluate", ["--job", "j"])
    assert split_module(["--module=convit.evaluate", "--weights", "w"]) == ("convit.evaluate", ["--weights", "w"])
    from convit.errors import ConvitError

    with pytest.raises(ConvitError, match="expected one of convit.train, convit.evaluate"):
        split_module(["--module", "os"])


def test_supervise_runs_the_given_module_in_every_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    from convit.cluster import supervisor

    started: list[tuple[list[str], str | None]] = []

    class Proc:
        returncode = 0

        def __init__(self, command: list[str], env: dict[str, str]) -> None:
            started.append((command, env.get("MS_ROLE")))

        def poll(self) -> int:
            return 0

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(subprocess, "Popen", Proc)
    env = {"MS_LOCAL_WORKER": "2", "MS_WORKER_NUM": "4", "MS_NODE_RANK": "0"}
    assert supervisor.supervise(["--job", "j", "--weights", "w"], env, module="convit.evaluate") == 0
    assert [role for _c, role in started] == ["MS_SCHED", "MS_WORKER", "MS_WORKER"]
    assert all(c[1:] == ["-m", "convit.evaluate", "--job", "j", "--weights", "w"] for c, _r in started)
    with pytest.raises(Exception, match="a pod runs one of"):
        supervisor.supervise([], env, module="convit.export")


def test_status_of_a_finished_evaluation_shows_its_result(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    api.on("GET", f"{BATCH}/convit-tiny-eval", Reply(200, fixture("job-complete.json")))
    api.on("GET", f"{CORE}/pods", Reply(200, fixture("pods-running.json")))
    api.on("GET", f"{CORE}/pods/convit-tiny-0-abcde/log", Reply(200, fixture("log-eval-pod0.txt")))
    assert main(["status", "convit-tiny-eval", "-n", NS]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "job ml/convit-tiny-eval: Succeeded"
    assert out[-1] == "  result: evaluated 49999 samples: top1 73.116 top5 91.710 loss 1.1902 (1 undecodable skipped)"


def test_evaluate_and_weights_go_together(api: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "convit_tiny", "-n", NS, "--evaluate"]) == 1
    assert (
        capsys.readouterr().err
        == "ERROR: --evaluate needs --weights URI (a MindCV .ckpt, or our checkpoint directory)\n"
    )
    assert main(["submit", "convit_tiny", "-n", NS, "--weights", WEIGHTS]) == 1
    assert capsys.readouterr().err.startswith("ERROR: --weights is for evaluation jobs: add --evaluate")
    assert api.requests == []


# ---- wait ------------------------------------------------------------------------------------------------------
def _job_sequence(api: FakeApiServer, *names: str, then: str) -> None:
    replies = itertools.chain(names, itertools.repeat(then))
    api.on("GET", f"{BATCH}/convit-tiny", lambda r: Reply(200, fixture(next(replies))))
    api.on("GET", f"{CORE}/pods", Reply(200, fixture("pods-running.json")))
    api.on("GET", f"{CORE}/pods/convit-tiny-0-abcde/log", Reply(200, fixture("log-pod0-first.txt")))


@pytest.mark.parametrize(
    ("final", "code", "line"),
    [("job-complete.json", 0, "job convit-tiny succeeded"), ("job-failed.json", 1, "job convit-tiny failed")],
)
def test_wait_blocks_until_the_job_ends_and_exits_with_its_outcome(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str], final: str, code: int, line: str
) -> None:
    _job_sequence(api, "job-running.json", "job-running.json", "job-suspended.json", then=final)
    assert main(["wait", "convit-tiny", "-n", NS, "--interval", "0.05"]) == code
    assert capsys.readouterr().out.splitlines() == [line]
    assert len([r for r in api.requests if r.path == f"{BATCH}/convit-tiny"]) == 4  # a suspended job has not ended


def test_wait_times_out_with_exit_code_124(api: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    _job_sequence(api, then="job-running.json")
    assert main(["wait", "convit-tiny", "-n", NS, "--timeout", "0.3", "--interval", "0.05"]) == 124
    assert capsys.readouterr().out == "job convit-tiny still running after 0.3s: timed out waiting\n"


def test_submit_wait_creates_then_waits(api: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    _job_sequence(api, "job-running.json", then="job-complete.json")
    assert main(["submit", "convit_tiny", "-n", NS, "--pods", "2", "--wait", "--interval", "0.05"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("--pods 2: global batch") and out[1].startswith("submitted job convit-tiny")
    assert out[-1] == "job convit-tiny succeeded" and len(out) == 3
    assert [c for c in api.calls() if c[0] == "POST"][-1] == ("POST", BATCH)


# ---- suspend, resume -------------------------------------------------------------------------------------------
def test_suspend_and_resume_an_indexed_job_patch_spec_suspend(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {"job": "job-running.json"}
    api.on("GET", f"{BATCH}/convit-tiny", lambda r: Reply(200, fixture(state["job"])))
    api.on("GET", f"{CORE}/pods", Reply(200, {"kind": "PodList", "apiVersion": "v1", "items": []}))

    def patch(request: Request) -> Reply:
        state["job"] = "job-suspended.json" if request.body["spec"]["suspend"] else "job-running.json"
        return Reply(200, fixture(state["job"]))

    api.on("PATCH", f"{BATCH}/convit-tiny", patch)
    assert main(["suspend", "convit-tiny", "-n", NS]) == 0
    assert capsys.readouterr().out.startswith("suspending job ml/convit-tiny: its pods get SIGTERM")
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert [r.body for r in patches] == [{"spec": {"suspend": True}}]
    assert patches[0].headers["content-type"] == "application/merge-patch+json"
    assert main(["status", "convit-tiny", "-n", NS]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "job ml/convit-tiny: Suspended"
    assert main(["suspend", "convit-tiny", "-n", NS]) == 0  # idempotent: no second patch
    assert capsys.readouterr().out == "job ml/convit-tiny is already suspended\n"
    assert main(["resume", "convit-tiny", "-n", NS]) == 0
    assert capsys.readouterr().out.startswith("resuming job ml/convit-tiny")
    assert [r.body for r in api.requests if r.method == "PATCH"] == [{"spec": {"suspend": v}} for v in (True, False)]
    assert main(["resume", "convit-tiny", "-n", NS]) == 1
    assert capsys.readouterr().err == "ERROR: job ml/convit-tiny is running, not suspended\n"


def test_suspend_and_resume_a_volcano_job_create_the_commands_vcctl_creates(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    volcano = f"/apis/batch.volcano.sh/v1alpha1/namespaces/{NS}/jobs/convit-tiny"
    commands = f"/apis/bus.volcano.sh/v1alpha1/namespaces/{NS}/commands"
    state = {"job": "volcano-job-running.json"}
    api.on("GET", f"{BATCH}/convit-tiny", Reply(404, fixture("status-404-job.json")))
    api.on("GET", volcano, lambda r: Reply(200, fixture(state["job"])))
    api.on("GET", f"{CORE}/pods", Reply(200, {"kind": "PodList", "apiVersion": "v1", "items": []}))
    assert main(["suspend", "convit-tiny", "-n", NS]) == 0
    job = fixture("volcano-job-running.json")
    owner = {
        "apiVersion": "batch.volcano.sh/v1alpha1",
        "kind": "Job",
        "name": "convit-tiny",
        "uid": job["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    (post,) = [r for r in api.requests if r.method == "POST"]
    assert post.path == commands
    assert post.body == {
        "apiVersion": "bus.volcano.sh/v1alpha1",
        "kind": "Command",
        "metadata": {"generateName": "convit-tiny-abortjob-", "namespace": NS, "ownerReferences": [owner]},
        "target": owner,
        "action": "AbortJob",
    }
    state["job"] = "volcano-job-aborted.json"  # what the controller makes of it
    capsys.readouterr()
    assert main(["status", "convit-tiny", "-n", NS]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "job ml/convit-tiny: Suspended"
    assert main(["resume", "convit-tiny", "-n", NS]) == 0
    posts = [r for r in api.requests if r.method == "POST"]
    assert [(r.path, r.body["action"], r.body["metadata"]["generateName"]) for r in posts[1:]] == [
        (commands, "ResumeJob", "convit-tiny-resumejob-")
    ]


def test_an_ascendjob_cannot_be_suspended(api: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    ascend = render_objects(_spec("ascendjob"))[-1]
    api.on("GET", f"{BATCH}/convit-tiny", Reply(404, fixture("status-404-job.json")))
    api.on(
        "GET",
        f"/apis/batch.volcano.sh/v1alpha1/namespaces/{NS}/jobs/convit-tiny",
        Reply(404, fixture("status-404-resource.json")),
    )
    api.on("GET", f"/apis/mindxdl.gitee.com/v1/namespaces/{NS}/ascendjobs/convit-tiny", Reply(200, ascend))
    for command in ("suspend", "resume"):
        assert main([command, "convit-tiny", "-n", NS]) == 1
        err = capsys.readouterr().err
        assert (
            err.startswith("ERROR: job ml/convit-tiny is an AscendJob, which has no suspend") and err.count("\n") == 1
        )
    assert api.calls("POST") == [] and api.calls("PATCH") == []


def test_volcano_resume_that_would_exhaust_max_retry_and_suspend_while_restarting_are_refused(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Volcano counts a resume as a retry (state/aborted.go) and drops an AbortJob sent while Restarting
    (state/restarting.go): neither command is sent when it could only fail the job or be lost."""
    volcano = f"/apis/batch.volcano.sh/v1alpha1/namespaces/{NS}/jobs/convit-tiny"
    aborted = fixture("volcano-job-aborted.json")
    aborted["spec"]["maxRetry"] = 3
    aborted["status"]["retryCount"] = 2
    restarting = fixture("volcano-job-running.json")
    restarting["status"]["state"]["phase"] = "Restarting"
    state = {"job": aborted}
    api.on("GET", f"{BATCH}/convit-tiny", Reply(404, fixture("status-404-job.json")))
    api.on("GET", volcano, lambda r: Reply(200, state["job"]))
    assert main(["resume", "convit-tiny", "-n", NS]) == 1
    err = capsys.readouterr().err
    assert (
        err.startswith("ERROR: job ml/convit-tiny has used 2 of its 2 restarts (maxRetry 3)") and err.count("\n") == 1
    )
    state["job"] = restarting
    assert main(["suspend", "convit-tiny", "-n", NS]) == 1
    assert "is restarting its pods; Volcano ignores a suspend sent now" in capsys.readouterr().err
    assert api.calls("POST") == []
    aborted["status"]["retryCount"] = 1
    state["job"] = aborted
    assert main(["resume", "convit-tiny", "-n", NS]) == 0  # 1 + 1 < 3: the resumed job keeps a restart
    assert [r.body["action"] for r in api.requests if r.method == "POST"] == ["ResumeJob"]


def test_jobset_status_suspend_resume_and_delete(api: FakeApiServer, capsys: pytest.CaptureFixture[str]) -> None:
    """The JobSet through the generic workload path: found after the Job, Volcano and AscendJob lookups miss,
    suspended and resumed by a merge patch of spec.suspend, its phase from its conditions and child Job counts."""
    state = {"jobset": "jobset-running.json"}
    api.on("GET", f"{BATCH}/convit-tiny", Reply(404, fixture("status-404-job.json")))
    api.on("GET", JOBSET, lambda r: Reply(200, fixture(state["jobset"])))
    api.on("GET", f"{CORE}/pods", Reply(200, {"kind": "PodList", "apiVersion": "v1", "items": []}))

    def patch(request: Request) -> Reply:
        state["jobset"] = "jobset-suspended.json" if request.body["spec"]["suspend"] else "jobset-running.json"
        return Reply(200, fixture(state["jobset"]))

    api.on("PATCH", JOBSET, patch)
    assert main(["status", "convit-tiny", "-n", NS]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "job ml/convit-tiny: Running"
    assert main(["suspend", "convit-tiny", "-n", NS]) == 0
    assert main(["status", "convit-tiny", "-n", NS]) == 0
    assert "job ml/convit-tiny: Suspended" in capsys.readouterr().out
    assert main(["resume", "convit-tiny", "-n", NS]) == 0
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert [r.body for r in patches] == [{"spec": {"suspend": v}} for v in (True, False)]
    assert {r.headers["content-type"] for r in patches} == {"application/merge-patch+json"}
    state["jobset"] = "jobset-failed.json"
    capsys.readouterr()
    assert main(["wait", "convit-tiny", "-n", NS, "--timeout", "5"]) == 1
    api.on("DELETE", JOBSET, Reply(200, {"kind": "Status", "status": "Success"}))
    assert main(["delete", "convit-tiny", "-n", NS]) == 0
    assert ("DELETE", JOBSET) in api.calls("DELETE")


def test_a_job_kueue_manages_is_suspended_and_resumed_through_its_workload(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """Kueue owns the job's spec.suspend (it would undo ours): suspend/resume set the Workload's spec.active, and
    status says where Kueue has the job."""
    job = fixture("job-suspended.json")
    job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] = "team-a"
    uid = job["metadata"]["uid"]
    workloads = f"/apis/kueue.x-k8s.io/v1beta1/namespaces/{NS}/workloads"
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {"name": "job-convit-tiny-3b7c1", "namespace": NS, "labels": {"kueue.x-k8s.io/job-uid": uid}},
        "spec": {"active": True, "queueName": "team-a", "podSets": [{"name": "main", "count": 2}]},
        "status": {
            "conditions": [
                {
                    "type": "QuotaReserved",
                    "status": "False",
                    "reason": "Pending",
                    "message": "insufficient quota for huawei.com/Ascend910 in flavor ascend-910b, 16 more needed",
                    "lastTransitionTime": "2026-11-24T01:00:01Z",
                }
            ]
        },
    }
    api.on("GET", f"{BATCH}/convit-tiny", Reply(200, job))
    api.on("GET", f"{CORE}/pods", Reply(200, {"kind": "PodList", "apiVersion": "v1", "items": []}))
    api.on("GET", workloads, lambda r: Reply(200, {"kind": "WorkloadList", "apiVersion": "kueue.x-k8s.io/v1beta1",
                                                   "items": [workload]}))  # fmt: skip

    def patch(request: Request) -> Reply:
        workload["spec"]["active"] = request.body["spec"]["active"]
        return Reply(200, workload)

    api.on("PATCH", f"{workloads}/job-convit-tiny-3b7c1", patch)
    assert main(["status", "convit-tiny", "-n", NS]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "job ml/convit-tiny: Queued"
    assert out[1] == (
        "  kueue: queued in Kueue (LocalQueue team-a) (Pending: insufficient quota for huawei.com/Ascend910 in "
        "flavor ascend-910b, 16 more needed)"
    )
    lookups = [r for r in api.requests if r.path == workloads]
    assert lookups and all(r.query["labelSelector"] == [f"kueue.x-k8s.io/job-uid={uid}"] for r in lookups)
    assert main(["suspend", "convit-tiny", "-n", NS]) == 0  # a queued job leaves the queue
    assert main(["status", "convit-tiny", "-n", NS]) == 0
    assert capsys.readouterr().out.splitlines()[-3:-1] == [
        "job ml/convit-tiny: Suspended",
        "  kueue: deactivated in Kueue (LocalQueue team-a); resume reactivates it",
    ]
    assert main(["resume", "convit-tiny", "-n", NS]) == 0
    patches = [r for r in api.requests if r.method == "PATCH"]
    assert [(r.path, r.body) for r in patches] == [
        (f"{workloads}/job-convit-tiny-3b7c1", {"spec": {"active": v}}) for v in (False, True)
    ]
    assert not any(r.path.startswith(BATCH) for r in patches)  # never the job's own spec.suspend


def test_pod_monitor_is_created_and_deleted_with_the_job_and_status_shows_termination_messages(
    api: FakeApiServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """metrics.pod_monitor: the PodMonitor (prometheus-operator) is created before the workload and deleted with it;
    `status` shows each pod's termination message (the trainer's last line), read from the pod's container status."""
    monitors = f"/apis/monitoring.coreos.com/v1/namespaces/{NS}/podmonitors"
    spec = load_job("convit_tiny", [f"cluster.namespace={NS}", "cluster.pods=2", "metrics.pod_monitor=true"])
    KubernetesBackend(NS).submit(spec)
    assert [p for _m, p in api.calls("POST")] == [f"{CORE}/configmaps", monitors, f"{CORE}/services", BATCH]
    monitor = next(r.body for r in api.requests if r.path == monitors)
    validate(monitor)
    assert monitor["spec"]["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics"}]
    template = render_objects(spec)[-1]["spec"]["template"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
    assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in template["spec"]["containers"][0]["ports"]

    pods = fixture("pods-running.json")
    line = "trained 187500 steps (finished): loss 2.3512 top1 72.61 top5 91.02 checkpoint s3://ckpt/convit-tiny"
    pods["items"][0]["status"]["containerStatuses"][0]["state"] = {
        "terminated": {"exitCode": 0, "reason": "Completed", "message": "epoch 300/300 step 187500/187500\n" + line}
    }
    api.on("GET", f"{BATCH}/convit-tiny", Reply(200, fixture("job-complete.json")))
    api.on("GET", f"{CORE}/pods", Reply(200, pods))
    capsys.readouterr()
    assert main(["status", "convit-tiny", "-n", NS]) == 0
    out = capsys.readouterr().out
    assert f"; said: {line}" in out.splitlines()[1]
    api.on("GET", f"{monitors}/convit-tiny", Reply(200, monitor))
    api.on("DELETE", ".*", Reply(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}))
    assert main(["delete", "convit-tiny", "-n", NS]) == 0
    assert ("DELETE", f"{monitors}/convit-tiny") in api.calls("DELETE")
    assert "PodMonitor/convit-tiny" in capsys.readouterr().out
