"""The local backend: the rendered pods become process groups on this machine, on the CPU.

Each pod runs the container's own command and environment, taken from the rendered workload, with what
Kubernetes would provide filled in locally: the pod index, 127.0.0.1 and a free port as the scheduler
address, the job file, CPU as device, and S3 keys from this environment (never written anywhere).
A detached supervisor (`python -m launcher.backends.local <state dir>`) starts the pods, restarts them all
from their checkpoint when one fails (up to cluster.backoff_limit times, as the Job's restart policy does),
forwards SIGTERM on delete, and records the job's state in `state.json`, so `status`, `logs -f`, `list`,
`wait`, `suspend`, `resume` and `delete` work from any later launcher invocation. `suspend` sends the
supervisor SIGUSR1: it stops the pods with SIGTERM (rank 0 saves a checkpoint), records the job as Suspended
and exits; `resume` starts a new supervisor on the same state directory, whose pods resume from that checkpoint.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convit.cluster import contract
from convit.errors import STOPPED_EXIT
from convit.jobspec import JobSpec
from convit.jobspec.schema import _DNS1035_LABEL as DNS1035_LABEL
from convit.jobspec.schema import JOB_NAME_MAX
from launcher.backends.base import Backend, JobStatus, JobSummary, PodStatus
from launcher.errors import LauncherError
from launcher.progress import latest_progress, latest_result
from launcher.render import render_objects
from launcher.workloads import for_object
from launcher.workloads.indexed_job import COMPLETION_INDEX

STATE = "state.json"
OBJECTS = "objects.json"  # the rendered objects, as submitted: what the supervisor runs
SUSPEND_SIGNAL = signal.SIGUSR1  # launcher -> local supervisor: stop the pods gracefully and keep the job


def local_home() -> Path:
    return Path(os.environ.get("CONVIT_LOCAL_HOME", str(Path.home() / ".convit" / "local")))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def worker_template(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The worker (or server) pod template of the rendered workload, whatever its kind."""
    from launcher.serving import SERVING_KINDS

    workload = objects[-1]
    kind = next((k for k in SERVING_KINDS.values() if k.matches(workload)), None) or for_object(workload)
    return dict(kind.worker_template(workload))


def pod_dir(state_dir: Path, index: int, incarnation: int) -> Path:
    """The emptyDir volumes of one pod incarnation (cache, home): a restarted pod is a new pod and starts with
    empty ones, as on a cluster, where every restart replaces the pod (restartPolicy Never)."""
    return state_dir / "pods" / f"pod-{index}-{incarnation}"


def pod_process(
    spec: JobSpec,
    objects: list[dict[str, Any]],
    index: int,
    state_dir: Path,
    port: int,
    incarnation: int = 0,
    metrics_port: int = 0,
) -> tuple[list[str], dict[str, str]]:
    """The command and environment of pod `index`, as the rendered container has them, resolved locally."""
    container = worker_template(objects)["spec"]["containers"][0]
    # This machine's environment stands in for the image's (PATH, AWS settings, ...); the container's own
    # variables and what the cluster would provide go on top.
    env: dict[str, str] = {k: v for k, v in os.environ.items() if not k.startswith(("MS_", "CONVIT_LOCAL"))}
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif "secretKeyRef" in item.get("valueFrom", {}):
            secret = os.environ.get(item["name"])  # the local stand-in for the Secret
            if secret is not None:
                env[item["name"]] = secret
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == COMPLETION_INDEX:
            env[item["name"]] = str(index)
    c = spec.cluster
    env.update(
        {  # what the cluster (or the AscendJob operator) provides
            contract.ENV_WORLD: str(c.world_size),
            contract.ENV_LOCAL: str(c.npus_per_pod),
            contract.ENV_NODE_RANK: str(index),
            contract.ENV_SCHED_HOST: "127.0.0.1",
            contract.ENV_SCHED_PORT: str(port),
            contract.ENV_DEVICE: "CPU",
            contract.ENV_CACHE_DIR: str(pod_dir(state_dir, index, incarnation) / "cache"),
            # rank 0's /metrics on a port of this job's own (pods share this host); the others serve none
            contract.ENV_METRICS_PORT: str(metrics_port if index == 0 else 0),
            "HOME": str(pod_dir(state_dir, index, incarnation) / "home"),
        }
    )
    env.setdefault("GLOG_v", "3")
    command = [sys.executable if part == "python" else part for part in container["command"]]
    args = [str(state_dir / contract.JOB_FILE_NAME) if a == contract.JOB_FILE else a for a in container.get("args", [])]
    if spec.serve.weights:  # a server: on a port of its own on this machine, named in the state (status shows it)
        args = [*args, "--host", "127.0.0.1", "--port", str(port)]
    return command + args, env


class LocalBackend(Backend):
    def __init__(self, namespace: str = "local") -> None:
        self.namespace = namespace
        self.home = local_home()

    def _dir(self, name: str) -> Path:
        """The job's state folder. A job name is a DNS-1035 label here too, so it can never name a path outside
        the local job home (`../x`, `/x`)."""
        if len(name) > JOB_NAME_MAX or not DNS1035_LABEL.fullmatch(name):
            raise LauncherError(
                f"{name!r} is not a job name: a DNS-1035 label of at most {JOB_NAME_MAX} characters "
                "(lower-case letters, digits and '-', a letter first)"
            )
        return self.home / name

    def _state(self, name: str) -> dict[str, Any]:
        path = self._dir(name) / STATE
        try:
            return dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise LauncherError(f"local job {name!r} not found (in {self.home})") from None
        except ValueError:
            return {"phase": "Pending", "pods": []}

    def submit(self, spec: JobSpec, *, dry_run: bool = False, evaluate: str | None = None) -> str:
        # What the pods read and write: an evaluation reads its weights and writes no checkpoint, only its
        # per-class files beside the checkpoints (launcher.render.objects.evaluation_out).
        uris = (
            (("--weights", spec.serve.weights),)  # a server reads only its weights
            if spec.serve.weights
            else (
                ("data.uri", spec.data.uri),
                ("--weights", evaluate) if evaluate else ("checkpoint.uri", spec.checkpoint.uri),
                *((("checkpoint.uri (the evaluation's per-class files)", spec.checkpoint.uri),) if evaluate else ()),
            )
        )
        for what, uri in uris:
            endpoint = (
                spec.storage.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
            )
            if uri.startswith("s3://") and not endpoint:
                raise LauncherError(
                    f"local job {spec.name}: {what} is {uri} but no S3 endpoint is set; pass --data/--output "
                    "file:///... or set AWS_ENDPOINT_URL_S3 (and the AWS keys) in the environment"
                )
        objects = render_objects(spec, evaluate=evaluate)
        if dry_run:
            return spec.name
        state_dir = self._dir(spec.name)
        if (state_dir / STATE).exists() and not (current := self.status(spec.name)).finished:
            raise LauncherError(
                f"local job {spec.name} is {current.phase.lower()}, not finished; delete it first: "
                f"python -m launcher delete {spec.name} --local"
            )
        shutil.rmtree(state_dir, ignore_errors=True)
        state_dir.mkdir(parents=True)
        if objects[0]["kind"] == "ConfigMap":  # the job file (a server has none)
            (state_dir / contract.JOB_FILE_NAME).write_text(objects[0]["data"][contract.JOB_FILE_NAME])
        (state_dir / "spec.json").write_text(json.dumps(spec.model_dump(mode="json")))
        (state_dir / OBJECTS).write_text(json.dumps(objects))
        (state_dir / STATE).write_text(json.dumps({"phase": "Pending", "pods": [], "model": spec.model.name}))
        _start_supervisor(state_dir)
        return spec.name

    def status(self, name: str) -> JobStatus:
        state = self._state(name)
        pods = [
            PodStatus(p["index"], f"{name}-{p['index']}", p["phase"], p.get("restarts", 0), "localhost")
            for p in state.get("pods", [])
        ]
        log = self._dir(name) / "pod-0.log"
        lines = _tail(log) if log.exists() else []
        phase = state.get("phase", "Pending")
        metrics = state.get("metrics") if phase == "Running" else None
        endpoint = state.get("endpoint") if phase == "Running" else None
        if endpoint and not _ready(endpoint):
            phase = "Pending"  # a server counts as running once it is ready (model loaded and warmed)
        return JobStatus(
            name,
            self.namespace,
            phase,
            pods,
            latest_progress(lines),
            latest_result(lines),
            metrics=metrics,
            endpoint=endpoint,
        )

    def logs(self, name: str, *, follow: bool = False, rank: int | None = 0) -> Iterator[str]:
        self._state(name)
        state_dir = self._dir(name)
        indexes = [rank] if rank is not None else list(range(int(self._spec(name)["cluster"]["pods"])))
        handles: dict[int, Any] = {}
        pending = {i: "" for i in indexes}
        while True:
            done = self.status(name).finished
            for i in indexes:
                path = state_dir / f"pod-{i}.log"
                if i not in handles and path.exists():
                    handles[i] = open(path, encoding="utf-8", errors="replace")
                if i in handles:
                    pending[i] += handles[i].read()
                    *lines, pending[i] = pending[i].split("\n")
                    for line in lines:
                        yield line if rank is not None else f"[pod-{i}] {line}"
            if not follow or done:
                for i, rest in pending.items():
                    if rest:
                        yield rest if rank is not None else f"[pod-{i}] {rest}"
                for handle in handles.values():
                    handle.close()
                return
            time.sleep(0.5)

    def _spec(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self._dir(name) / "spec.json").read_text()))

    def list(self) -> builtins.list[JobSummary]:
        out = []
        if self.home.is_dir():
            for path in sorted(self.home.iterdir()):
                if (path / STATE).exists() and DNS1035_LABEL.fullmatch(path.name):
                    state = self._state(path.name)
                    out.append(
                        JobSummary(path.name, self.namespace, state.get("phase", "?"), "local", state.get("model", ""))
                    )
        return out

    def suspend(self, name: str, timeout: float = 300) -> str:
        state = self._state(name)
        phase = state.get("phase", "Pending")
        if phase == "Suspended":
            return f"local job {name} is already suspended"
        if phase != "Running":
            raise LauncherError(f"local job {name} is {phase.lower()}: only a running job can be suspended")
        pid = _supervisor(state)
        if pid is None:
            raise LauncherError(f"local job {name}: its supervisor is no longer running; nothing to suspend")
        os.kill(pid, SUSPEND_SIGNAL)  # the supervisor stops the pods with SIGTERM; rank 0 checkpoints first
        deadline = time.monotonic() + timeout
        while (phase := self._state(name).get("phase", "?")) != "Suspended" and time.monotonic() < deadline:
            if not _alive(pid):
                break
            time.sleep(0.5)
        phase = self._state(name).get("phase", "?")
        if phase != "Suspended":
            why = f"within {timeout:.0f}s" if _alive(pid) else "(its supervisor exited first)"
            raise LauncherError(f"local job {name} did not suspend {why}; it is {phase.lower()}")
        return (
            f"suspended local job {name}: its pods saved a checkpoint and stopped; "
            f"resume with: python -m launcher resume {name} --local"
        )

    def resume(self, name: str) -> str:
        state = self._state(name)
        if state.get("phase") != "Suspended":
            raise LauncherError(f"local job {name} is {state.get('phase', '?').lower()}, not suspended")
        state["phase"] = "Pending"
        _write_state(self._dir(name), state)
        _start_supervisor(self._dir(name), resume=True)
        return f"resumed local job {name}: its pods restart from the newest checkpoint"

    def delete(self, name: str) -> builtins.list[str]:
        state = self._state(name)
        pid = _supervisor(state)
        if pid is not None and not self.status(name).finished:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)  # the supervisor stops the pods (they checkpoint first)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not self.status(name).finished and _alive(pid):
                time.sleep(0.5)
        for pod in self._state(name).get("pods", []):  # what is still ours: never a PID reused by another process
            if _same_process(pod.get("pid"), pod.get("start")):
                _kill_group(pod["pid"], signal.SIGKILL)
        shutil.rmtree(self._dir(name), ignore_errors=True)
        return [f"local job {name} (processes, logs and state in {self._dir(name)})"]


def _start_supervisor(state_dir: Path, resume: bool = False) -> None:
    log = open(state_dir / "supervisor.log", "ab")
    subprocess.Popen(
        [sys.executable, "-m", "launcher.backends.local", str(state_dir), *(["--resume"] if resume else [])],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / (STATE + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, state_dir / STATE)


def _ready(endpoint: str) -> bool:
    """A local server's readiness (KServe's Open Inference Protocol: /v2/health/ready answers 200)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{endpoint}/v2/health/ready", timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _tail(path: Path, limit: int = 64 * 1024) -> list[str]:
    with open(path, "rb") as handle:
        handle.seek(max(0, path.stat().st_size - limit))
        return handle.read().decode("utf-8", "replace").splitlines()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a supervisor started by this very process (submit, resume) lingers as a zombie once it exits
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22): with the PID, an identity no
    later process can take over."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _same_process(pid: Any, start: Any) -> bool:
    """True when `pid` still is the process recorded with `start`, alive: never signal a reused PID."""
    return bool(pid) and start is not None and _alive(int(pid)) and _start_time(int(pid)) == str(start)


def _supervisor(state: dict[str, Any]) -> int | None:
    pid = state.get("supervisor")
    return int(pid) if pid and _same_process(pid, state.get("supervisor_start")) else None


def _kill_group(pid: Any, sig: int) -> None:
    if pid:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), sig)


# ---- the detached supervisor ----------------------------------------------------------------------------------
def serve(state_dir: Path, spec: JobSpec, objects: list[dict[str, Any]]) -> int:
    """A local server: one process, on a free port of this machine, until it exits or is deleted (SIGTERM drains
    its requests in flight). Not restarted: `launcher serve --local` again starts a new one."""
    port = _free_port()
    command, env = pod_process(spec, objects, 0, state_dir, port, 1)
    (pod_dir(state_dir, 0, 1) / "cache").mkdir(parents=True, exist_ok=True)
    (pod_dir(state_dir, 0, 1) / "home").mkdir(parents=True, exist_ok=True)
    with open(state_dir / "pod-0.log", "ab") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    state: dict[str, Any] = {
        "phase": "Running",
        "supervisor": os.getpid(),
        "supervisor_start": _start_time(os.getpid()),
        "model": spec.model.name,
        "endpoint": f"http://127.0.0.1:{port}",
        "pods": [{"index": 0, "pid": proc.pid, "start": _start_time(proc.pid), "phase": "Running", "restarts": 0}],
    }
    _write_state(state_dir, state)

    def on_term(signum: int, _frame: Any) -> None:
        proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    code = proc.wait()
    state["pods"][0]["phase"] = "Succeeded" if code == 0 else "Failed"
    state["phase"] = "Stopped" if code == 0 else "Failed"
    _write_state(state_dir, state)
    return 0 if code == 0 else 1


def supervise(state_dir: Path, resume: bool = False) -> int:
    spec = JobSpec.model_validate(json.loads((state_dir / "spec.json").read_text()))
    saved = state_dir / OBJECTS
    objects = json.loads(saved.read_text()) if saved.exists() else render_objects(spec)
    if spec.serve.weights:
        return serve(state_dir, spec, objects)
    previous = json.loads((state_dir / STATE).read_text()) if resume else {}
    state: dict[str, Any] = {
        "phase": "Running",
        "pods": [],
        "supervisor": os.getpid(),
        "supervisor_start": _start_time(os.getpid()),
        "model": spec.model.name,
    }
    stop = {"signal": 0, "suspend": False}

    def on_term(signum: int, _frame: Any) -> None:
        stop["signal"] = signum

    def on_suspend(_signum: int, _frame: Any) -> None:
        stop["signal"], stop["suspend"] = signal.SIGTERM, True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    signal.signal(SUSPEND_SIGNAL, on_suspend)

    def save() -> None:
        _write_state(state_dir, state)

    restarts = max((int(p.get("restarts", 0)) for p in previous.get("pods", [])), default=0)
    incarnation = int(previous.get("incarnations", 0))
    if resume:
        for index in range(spec.cluster.pods):
            with open(state_dir / f"pod-{index}.log", "a") as log:
                log.write(f"--- pod {index} resumed ---\n")
    while True:
        port = _free_port()
        state["metrics"] = f"http://127.0.0.1:{(metrics := _free_port())}/metrics"
        procs = []
        incarnation += 1
        state["incarnations"] = incarnation
        for index in range(spec.cluster.pods):
            for volume in ("cache", "home"):
                (pod_dir(state_dir, index, incarnation) / volume).mkdir(parents=True, exist_ok=True)
            command, env = pod_process(spec, objects, index, state_dir, port, incarnation, metrics)
            pod_log = open(state_dir / f"pod-{index}.log", "ab")
            procs.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdout=pod_log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        state["pods"] = [
            {"index": i, "pid": p.pid, "start": _start_time(p.pid), "phase": "Running", "restarts": restarts}
            for i, p in enumerate(procs)
        ]
        save()
        forwarded = False
        while any(p.poll() is None for p in procs):
            if stop["signal"] and not forwarded:
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)  # each pod supervisor forwards it to its workers
                forwarded = True
            failed = [p for p in procs if p.returncode not in (None, 0)]
            if failed and not forwarded:  # one pod failed: stop the others, as a failed pod fails the job's ranks
                for p in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM)
                forwarded = True
            time.sleep(0.5)
        codes = [p.returncode for p in procs]
        for p in procs:  # reap what a killed worker left behind in its pod (data-loader processes)
            _kill_group(p.pid, signal.SIGKILL)
        for index in range(spec.cluster.pods):  # the pod is gone, and its emptyDirs with it
            shutil.rmtree(pod_dir(state_dir, index, incarnation), ignore_errors=True)
        for pod, code in zip(state["pods"], codes, strict=True):
            pod["phase"] = "Succeeded" if code == 0 else "Failed"
            pod["exit_code"] = code
        if stop["suspend"]:  # resumable whatever the exit codes: the pods restart from the newest checkpoint
            state["phase"], state["supervisor"] = "Suspended", None
            for index in range(spec.cluster.pods):
                with open(state_dir / f"pod-{index}.log", "a") as log:
                    log.write(f"--- pod {index} suspended (exit code {codes[index]}) ---\n")
            save()
            return 0
        if stop["signal"]:
            state["phase"] = "Failed" if any(c not in (0, STOPPED_EXIT) for c in codes) else "Stopped"
            save()
            return 0
        if not any(codes):
            state["phase"] = "Succeeded"
            save()
            return 0
        if restarts >= spec.cluster.backoff_limit or 2 in codes:  # exit 2: a bad job file, retrying cannot help
            state["phase"] = "Failed"
            save()
            return 1
        restarts += 1
        limit = spec.cluster.backoff_limit
        for index in range(spec.cluster.pods):
            with open(state_dir / f"pod-{index}.log", "a") as log:
                log.write(f"--- pod {index} restarted ({restarts}/{limit}) after exit codes {codes} ---\n")
        save()


if __name__ == "__main__":
    sys.exit(supervise(Path(sys.argv[1]), resume="--resume" in sys.argv[2:]))
