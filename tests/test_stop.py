"""StopRequest (convit/train/stop.py): a signal whose Python handler cannot run, because the main thread is held
in native code as by a collective waiting for a lost peer, ends the process within the grace; a signal the main
thread handles never does, even when it keeps working (rank 0 saving its checkpoint) for longer than the grace."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The main thread blocks in native code that swallows EINTR: glibc's system() retries its waitpid, so Python's
# handler cannot run until the child ends, as in a MindSpore collective (which also releases the GIL).
PROGRAM = """
import ctypes, os, sys, time
from convit.train.stop import StopRequest

stop = StopRequest(grace=1.0)
stop.install(on_stuck=lambda signum: (print(f"stuck {signum}", flush=True), os._exit(75)))
print("ready", flush=True)
if sys.argv[1] == "native":
    ctypes.CDLL(None).system(b"exec sleep 30 >/dev/null")
    print("native call returned", flush=True)
else:
    while stop.signal is None:
        time.sleep(0.05)
    time.sleep(3.0)  # longer than the grace: the work a handled stop still does (a checkpoint)
print(f"stopped on {stop.signal}", flush=True)
"""


def _run(mode: str, signals: int) -> tuple[int, str, float]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PROGRAM, mode], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    start = time.monotonic()
    for _ in range(signals):
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return proc.returncode, out, time.monotonic() - start


def test_a_signal_the_main_thread_cannot_handle_ends_the_process_after_the_grace() -> None:
    code, out, seconds = _run("native", 1)
    assert code == 75 and out.strip() == f"stuck {int(signal.SIGTERM)}", out
    assert 1.0 <= seconds < 10.0, seconds  # the grace, not the 30 s the native call would take


def test_a_handled_signal_is_never_taken_for_a_stuck_one() -> None:
    for signals in (1, 3):  # several signals before the handler runs are one handler call
        code, out, seconds = _run("python", signals)
        assert code == 0 and "stuck" not in out and f"stopped on {int(signal.SIGTERM)}" in out, out
        assert seconds >= 3.0
