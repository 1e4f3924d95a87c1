"""The pod supervisor's wait loop with real child processes: every process polled each tick, one line naming the lost
rank, the others stopped (SIGTERM, then SIGKILL after the grace), a retriable exit code; and the texts MindSpore 2.10
raises when a peer is lost (measured on the CPU), as the trainer and the scheduler read them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from convit.cluster.supervisor import watch
from convit.errors import LOST_PEER_EXIT, STOPPED_EXIT
from convit.train.progress import PodState, lost_report, recorded_step
from convit.train.runtime import lost_ranks, peer_failure, short_reason
from tests.support.trainrun import REPO

# Waits for SIGTERM and writes down that it got it (the survivor of a pod that lost a rank).
SURVIVOR = """
import signal, sys, time
def on_term(*_):
    open(sys.argv[1], "w").write("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
open(sys.argv[1] + ".ready", "w").close()
time.sleep(60)
"""
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
DIES = "import os, signal, time; time.sleep({delay}); os.kill(os.getpid(), signal.SIGKILL)"


def _py(code: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, env=env)


def _ready(path: Path) -> None:
    deadline = time.monotonic() + 30
    while not Path(f"{path}.ready").exists():
        assert time.monotonic() < deadline, "the survivor never started"
        time.sleep(0.05)


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ERROR:")]


def test_a_rank_other_than_the_first_dies_and_the_pod_ends_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    note = tmp_path / "survivor"
    first = _py(SURVIVOR, str(note))
    _ready(note)
    PodState("1", str(tmp_path)).step(4)  # what rank 1 recorded before it died
    second = _py(DIES.format(delay=0.5))
    started = time.monotonic()
    code = watch(0, {0: first, 1: second}, None, tmp_path, grace=10)
    elapsed = time.monotonic() - started
    errors = _errors(capsys.readouterr().err)
    assert errors == ["ERROR: pod 0 lost rank 1 (killed by SIGKILL) after step 4; stopping the pod's other workers"]
    assert code == LOST_PEER_EXIT and code != 2
    assert elapsed < 5, elapsed
    assert note.read_text() == "SIGTERM" and first.returncode == 0


def test_a_worker_deaf_to_sigterm_is_killed_after_the_grace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stubborn, scheduler = _py(STUBBORN), _py(STUBBORN)
    time.sleep(0.5)  # both ignore SIGTERM by now
    dead = _py("import sys; sys.exit(3)")
    started = time.monotonic()
    code = watch(1, {2: stubborn, 3: dead}, scheduler, tmp_path, grace=1)
    assert time.monotonic() - started < 5
    assert code == 3  # the worker's own code
    assert stubborn.returncode == -9 and scheduler.returncode == -9
    assert _errors(capsys.readouterr().err) == [
        "ERROR: pod 1 lost rank 3 (exit code 3) before its first step; stopping the pod's other workers"
    ]


def test_the_scheduler_dying_while_workers_run_is_a_lost_cluster(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = [tmp_path / "w0", tmp_path / "w1"]
    workers = {i: _py(SURVIVOR, str(note)) for i, note in enumerate(notes)}
    for note in notes:
        _ready(note)
    PodState("0", str(tmp_path)).step(3)
    PodState("1", str(tmp_path)).step(2)
    scheduler = _py("import sys, time; time.sleep(0.3); sys.exit(5)")
    code = watch(0, workers, scheduler, tmp_path, grace=10)
    assert code == 5
    assert _errors(capsys.readouterr().err) == [
        "ERROR: pod 0 lost the MindSpore scheduler (exit code 5) after step 3; stopping the pod's workers"
    ]
    assert [note.read_text() for note in notes] == ["SIGTERM", "SIGTERM"]


def test_a_lost_peer_reported_by_a_worker_is_the_pods_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every process of a pod notices a lost peer elsewhere: the first report is printed, once, by the supervisor."""
    env = {**os.environ, "CONVIT_POD_STATE": str(tmp_path), "MS_ROLE": "MS_WORKER"}
    report = (
        "from convit.train.runtime import exit_lost_peer; import time; time.sleep({delay}); "
        "exit_lost_peer('lost a peer rank after step 7 (MindSpore: Launch kernel failed: Default/AllReduce-op0); "
        "exiting so the controller restarts the job')"
    )
    workers = {
        2: _py(report.format(delay=0), env={**env, "MS_NODE_ID": "2"}),
        3: _py(report.format(delay=0.3), env={**env, "MS_NODE_ID": "3"}),
    }
    code = watch(1, workers, None, tmp_path, grace=10)
    assert code == LOST_PEER_EXIT
    err = capsys.readouterr().err
    assert _errors(err) == [
        "ERROR: pod 1: lost a peer rank after step 7 (MindSpore: Launch kernel failed: Default/AllReduce-op0); "
        "exiting so the controller restarts the job; stopping the pod's other workers"
    ], err


def test_a_pod_whose_workers_all_finish_succeeds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    workers = {0: _py("import time; time.sleep(0.3)"), 1: _py("pass")}
    assert watch(0, workers, _py("pass"), tmp_path) == 0
    assert capsys.readouterr().err == ""


def test_workers_stopped_on_a_signal_end_the_pod_with_the_stopped_code_never_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ranks stop together after a signal (each exits STOPPED_EXIT, one a moment after the other): that is not a
    lost rank, and the pod's code is not 0, which Kubernetes would count as a finished pod."""
    stopped = f"import sys, time; time.sleep({{}}); sys.exit({STOPPED_EXIT})"
    workers = {0: _py(stopped.format(0.5)), 1: _py(stopped.format(0))}
    # The stopped cluster's scheduler ends with it, at once: left running it would take in a replacement's worker.
    scheduler = _py("import time; time.sleep(120)")
    start = time.monotonic()
    assert watch(0, workers, scheduler, tmp_path, grace=2.0) == STOPPED_EXIT
    assert scheduler.poll() is not None and time.monotonic() - start < 20
    assert capsys.readouterr().err == ""


def test_pod_state_records_steps_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = PodState("5", str(tmp_path))
    assert recorded_step(tmp_path, "5") is None
    for step in (9, 10, 123):
        state.step(step)
    assert recorded_step(tmp_path, "5") == 123
    state.lost("lost a peer rank after step 123 (MindSpore: x)")
    assert lost_report(tmp_path, "5") == "lost a peer rank after step 123 (MindSpore: x)"
    assert capsys.readouterr().err == ""
    PodState("5", "").lost("lost a peer rank before the first step (MindSpore: x)")  # no supervisor: stderr
    assert capsys.readouterr().err == "ERROR: lost a peer rank before the first step (MindSpore: x)\n"


# What MindSpore 2.10 raised in the measurements (CPU, a scheduler and 2 workers, one of them SIGKILLed).
SCHEDULER_LOST = (
    "The total number of timed out node is 1. Timed out node list is: [const vector]{1}, worker 1 is the first one "
    "timed out, please check its log.\n\n----------------------------------------------------\n- C++ Call Stack: (For "
    "framework developers)\n----------------------------------------------------\n"
    "mindspore/ccsrc/cluster/topology/meta_server_node.cc:554 UpdateTopoState\n"
)
NEVER_FORMED = (
    "Failed to initialize distributed job cluster because some processes in the cluster are not successfully spawned. "
    "You can run command: 'grep -rn -E 'ERROR|CRITICAL' -C 10' in your log directory to filter out error info."
)
COLLECTIVE_TIMEOUT = (
    "\n----------------------------------------------------\n- Kernel error:\n"
    "----------------------------------------------------\nLaunch kernel failed: Default/AllReduce-op0\n\n"
    "----------------------------------------------------\n- The Function Call Stack: (For framework developers)\n"
)
SCHEDULER_GONE = (
    "It is possible that an exception has occurred in the TCP connection between the scheduler and the worker. "
    "Please check the scheduler process status via scheduler's log and verify that the host network is functioning "
    "properly.\n\n----"
)


def test_mindspore_errors_about_lost_peers_are_told_apart() -> None:
    assert lost_ranks(SCHEDULER_LOST) == [1]
    assert lost_ranks(SCHEDULER_LOST.replace("{1}", "{1, 3}")) == [1, 3]
    assert lost_ranks(NEVER_FORMED) == []
    assert peer_failure(COLLECTIVE_TIMEOUT) == "Launch kernel failed: Default/AllReduce-op0"
    assert peer_failure(SCHEDULER_GONE) == (
        "It is possible that an exception has occurred in the TCP connection between the scheduler and the worker"
    )
    assert peer_failure("For 'MatMul', the input shapes do not match") is None
    assert peer_failure("For 'BroadcastTo', the shape of 'x' [3] cannot be broadcast to [4]") is None
    assert short_reason(SCHEDULER_LOST).startswith("The total number of timed out node is 1")


# Refused by the previous cluster (STALE_CLUSTER_EXIT) until a counter file says the old cluster has ended.
REFUSED_TWICE = """
import pathlib, sys
tries = pathlib.Path(sys.argv[1])
n = int(tries.read_text()) + 1 if tries.exists() else 1
tries.write_text(str(n))
sys.exit(76 if n <= 2 else 0)
"""


def test_a_worker_refused_by_the_previous_cluster_joins_again_without_failing_the_pod(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An Indexed Job replaces a failed pod at once, while the old pods still run: the new worker's rank is still
    held by the old scheduler ('Repeated registration'). The pod waits for the old cluster to end instead of
    failing and spending the job's restart budget; past the bound it fails with the retriable code."""
    from convit.errors import STALE_CLUSTER_EXIT

    tries = tmp_path / "tries"

    def start(_rank: int) -> subprocess.Popen[bytes]:
        return _py(REFUSED_TWICE, str(tries))

    code = watch(1, {1: start(1)}, None, tmp_path, respawn=start, rejoin_seconds=30, rejoin_delay=0.1)
    assert code == 0 and tries.read_text() == "3"
    err = capsys.readouterr().err
    assert err.count("the previous MindSpore cluster still holds rank 1") == 1 and "ERROR" not in err
    tries.unlink()
    code = watch(1, {1: start(1)}, None, tmp_path, respawn=start, rejoin_seconds=0, rejoin_delay=0.1)
    assert code == STALE_CLUSTER_EXIT != 2  # out of time: the pod fails, and the controller retries it
