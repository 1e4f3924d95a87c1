"""A controller's lifecycle, run for real: the emulated controller's pods as local processes, faults injected at
chosen moments, and every pod that ends handed to the emulator, whose decision is then carried out the way the
controller would: nothing, a new pod for that one (new emptyDirs: a new pod is a new pod), every pod deleted and
created again, or the job failed. tests/test_recovery.py drives it; tests/support/controllers.py has the emulators.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.controllers import (
    DISRUPTION,
    EVICTED,
    FAIL_JOB,
    NOTHING,
    RECREATE_POD,
    RESTART_JOB,
    SUCCEEDED,
    Emulator,
    Obj,
    RunningPod,
    network,
    pod_key,
    start_pod,
)

GRACE = 20.0  # seconds between SIGTERM and SIGKILL when the controller deletes a pod (ours save a checkpoint)


@dataclass(frozen=True)
class Fault:
    """When `needle` appears in the current log of the pod at position `watch`, do `action` to `target`:
    kill-worker (SIGKILL the worker process of MindSpore rank `target`), kill-scheduler (SIGKILL the MindSpore
    scheduler process), delete-pod / evict-pod (the pod at position `target` is deleted: SIGTERM, the grace
    period, SIGKILL; reported to the controller as a deletion or as the kubelet's eviction)."""

    watch: int
    needle: str
    action: str
    target: int = 0


@dataclass
class Event:
    seconds: float
    pod: str
    exit_code: int
    decision: str


@dataclass
class Outcome:
    result: str
    events: list[Event] = field(default_factory=list)
    fault_times: list[float] = field(default_factory=list)
    logs: dict[str, str] = field(default_factory=dict)

    def decisions(self) -> list[str]:
        return [e.decision for e in self.events if e.decision != NOTHING]

    def report(self) -> str:
        lines = [f"result {self.result}; faults at {self.fault_times}"]
        lines += [f"  {e.seconds:6.1f}s {e.pod} exit {e.exit_code} -> {e.decision}" for e in self.events]
        for name, text in self.logs.items():
            lines.append(f"--- {name}\n{text[-2500:]}")
        return "\n".join(lines)


class Lifecycle:
    def __init__(self, ctl: Emulator, objects: list[Obj], workdir: Path, extra_env: dict[str, str] | None = None):
        self.ctl = ctl
        self.objects = objects
        self.workdir = workdir
        self.extra_env = extra_env
        self.pods = ctl.pods()
        self.addresses, self.maps = network(ctl, objects)
        self.running: list[RunningPod | None] = [None] * len(self.pods)
        self.incarnation = [0] * len(self.pods)
        self.offsets = [0] * len(self.pods)  # where the current incarnation's lines start in the pod's log
        self.deleted: dict[int, int] = {}  # position -> DISRUPTION or EVICTED, for pods we deleted
        self.kill_at: dict[int, float] = {}  # position -> when the grace period of its deletion ends
        self.start = time.monotonic()

    # ---- pods --------------------------------------------------------------------------------------------------
    def _log(self, pos: int) -> Path:
        return self.workdir / f"{self.pods[pos].name}.log"

    def _start(self, pos: int) -> None:
        self.incarnation[pos] += 1
        log = self._log(pos)
        self.offsets[pos] = log.stat().st_size if log.exists() else 0
        root = self.workdir / f"{self.pods[pos].name}-{self.incarnation[pos]}"  # a new pod: new emptyDirs
        self.running[pos] = start_pod(
            self.pods[pos], self.objects, self.addresses, root, log, self.maps, self.extra_env
        )

    def _current_text(self, pos: int) -> str:
        log = self._log(pos)
        if not log.exists():
            return ""
        with open(log, "rb") as handle:
            handle.seek(self.offsets[pos])
            return handle.read().decode("utf-8", "replace")

    def _key(self, pos: int) -> int | str:
        return pod_key(self.ctl, pos, self.pods[pos])

    def _delete_all(self) -> None:
        """The controller deletes every pod: SIGTERM (to the container's main process, as the kubelet sends it), the
        grace period, SIGKILL (to all of it); their ends are not reported."""
        live = [r for r in self.running if r is not None and r.proc.poll() is None]
        for r in live:
            r.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE
        while any(r.proc.poll() is None for r in live) and time.monotonic() < deadline:
            time.sleep(0.2)
        for r in self.running:
            if r is not None:
                _signal_group(r, signal.SIGKILL)
                r.proc.wait()
        self.running = [None] * len(self.pods)
        self.deleted.clear()
        self.kill_at.clear()  # a pending grace period was the old pod's: never the new pod's at that position

    # ---- faults ------------------------------------------------------------------------------------------------
    def _inject(self, fault: Fault) -> None:
        if fault.action in ("delete-pod", "evict-pod"):
            pod = self.running[fault.target]
            assert pod is not None, f"pod {fault.target} is not running"
            self.deleted[fault.target] = DISRUPTION if fault.action == "delete-pod" else EVICTED
            pod.proc.send_signal(signal.SIGTERM)  # the kubelet signals the container's main process
            self.kill_at[fault.target] = time.monotonic() + GRACE
            return
        role = "MS_WORKER" if fault.action == "kill-worker" else "MS_SCHED"
        pids = [
            pid
            for pid, env in _processes()
            if f"\nMS_ROLE={role}\n" in env
            and (role == "MS_SCHED" or f"\nMS_NODE_ID={fault.target}\n" in env)
            and any(r is not None and str(r.root) in env for r in self.running)
        ]
        assert len(pids) == 1, f"{fault}: found processes {pids}"
        os.kill(pids[0], signal.SIGKILL)

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self, faults: list[Fault], timeout: float) -> Outcome:
        outcome = Outcome("timeout")
        pending = list(faults)
        for pos in range(len(self.pods)):
            self._start(pos)
        deadline = self.start + timeout
        try:
            while True:
                assert time.monotonic() < deadline, "the job did not end in time\n" + self._final(outcome).report()
                for fault in list(pending):
                    if self.running[fault.watch] is not None and fault.needle in self._current_text(fault.watch):
                        self._inject(fault)
                        outcome.fault_times.append(round(time.monotonic() - self.start, 1))
                        pending.remove(fault)
                for pos, pod in enumerate(self.running):
                    if (
                        pod is not None
                        and pod.proc.poll() is None
                        and time.monotonic() > self.kill_at.get(pos, deadline)
                    ):
                        _signal_group(pod, signal.SIGKILL)  # the deleted pod's grace period is over
                        pod.proc.wait()
                    if pod is None or pod.proc.poll() is None:
                        continue
                    self.kill_at.pop(pos, None)
                    code = self.deleted.pop(pos, pod.proc.returncode)
                    _signal_group(pod, signal.SIGKILL)  # what a dead pod's container leaves behind goes too
                    self.running[pos] = None
                    decision = self.ctl.pod_finished(self._key(pos), code)  # type: ignore[arg-type]
                    seconds = round(time.monotonic() - self.start, 1)
                    outcome.events.append(Event(seconds, self.pods[pos].name, code, decision))
                    if decision == RECREATE_POD:
                        self._start(pos)
                    elif decision == RESTART_JOB:
                        self._delete_all()
                        for again in range(len(self.pods)):
                            self._start(again)
                        break
                    elif decision in (FAIL_JOB, SUCCEEDED):
                        outcome.result = decision
                        return self._final(outcome)
                time.sleep(0.2)
        finally:
            self._delete_all()

    def _final(self, outcome: Outcome) -> Outcome:
        outcome.logs = {
            p.name: self._log(i).read_text(errors="replace") for i, p in enumerate(self.pods) if self._log(i).exists()
        }
        return outcome


def _signal_group(pod: RunningPod, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pod.proc.pid, sig)


def _processes() -> list[tuple[int, str]]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = "\n" + (entry / "environ").read_bytes().replace(b"\0", b"\n").decode("utf-8", "replace")
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"convit.train" in cmdline or b"convit.cluster" in cmdline:
            out.append((int(entry.name), env))
    return out
