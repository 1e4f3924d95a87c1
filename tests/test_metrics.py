"""Rank 0's Prometheus /metrics (convit/train/metrics.py): scraped from a real training process while it trains,
the values are the ones its progress lines print; a resumed start counts itself in convit_restarts; a port in use
is one warning line and training goes on."""

from __future__ import annotations

import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from convit.errors import STOPPED_EXIT
from tests.support.s3server import free_port
from tests.support.trainrun import REPO, make_sample

_LINE = re.compile(
    r"^epoch (\d+)/(\d+) step (\d+)/(\d+) loss (\S+) lr (\S+) img/s (\S+) s/step (\S+) eta (\S+) overflows (\d+)$",
    re.M,
)


def scrape(port: int) -> dict[str, float]:
    """Every sample of the endpoint, by name, read with prometheus_client's own text parser."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {s.name: float(s.value) for family in text_string_to_metric_families(text) for s in family.samples}


# ---- unit: the registry, without a trainer ------------------------------------------------------------------------
def test_values_names_and_help_text_of_the_registry() -> None:
    from prometheus_client import generate_latest

    from convit.train.metrics import TrainMetrics

    metrics = TrainMetrics()
    metrics.progress(
        epoch=2, step=7, steps=12, loss=1.5, lr=3e-4, images_per_s=99.0, step_time=0.25, eta_s=5.0, overflows=1
    )
    metrics.progress(
        epoch=2, step=8, steps=12, loss=1.25, lr=2e-4, images_per_s=98.0, step_time=0.5, eta_s=4.0, overflows=1,
        data_wait_s=0.75,
    )  # fmt: skip
    metrics.validation(top1=50.0, top5=90.0)
    metrics.resumed(restarts=2, step=4, saved_at=time.time() - 30)
    text = generate_latest(metrics.registry).decode()
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(text))
    assert all(f.name.startswith("convit_") and f.documentation for f in families)
    values = {s.name: s.value for f in families for s in f.samples}
    assert values["convit_step"] == 8 and values["convit_epoch"] == 2 and values["convit_total_steps"] == 12
    assert values["convit_loss"] == 1.25 and values["convit_learning_rate"] == 2e-4
    assert values["convit_data_wait_seconds_total"] == 0.75 and values["convit_overflowed_steps"] == 1
    assert values["convit_top1_percent"] == 50.0 and values["convit_restarts"] == 2
    assert values["convit_checkpoint_step"] == 4 and 29 <= values["convit_checkpoint_age_seconds"] < 60
    assert math.isnan(values["convit_checkpoint_upload_seconds"])
    metrics.checkpoint_uploaded(step=9, seconds=1.5)
    values = {s.name: s.value for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())
              for s in f.samples}  # fmt: skip
    assert values["convit_checkpoint_step"] == 9 and values["convit_checkpoint_upload_seconds"] == 1.5
    assert 0 <= values["convit_checkpoint_age_seconds"] < 5
    # Its own registry: nothing in prometheus_client's global one.
    from prometheus_client import REGISTRY

    assert not [n for n in REGISTRY._names_to_collectors if n.startswith("convit_")]


def test_a_port_in_use_is_one_warning_and_no_server(caplog: pytest.LogCaptureFixture) -> None:
    from convit.train.metrics import TrainMetrics

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with caplog.at_level("WARNING", logger="convit.train"):
            assert TrainMetrics().serve(port) is False
    (record,) = caplog.records
    assert f"port {port}" in record.getMessage() and "training goes on without metrics" in record.getMessage()


def test_the_port_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from convit.cluster import contract
    from convit.train.metrics import metrics_port

    monkeypatch.delenv(contract.ENV_METRICS_PORT, raising=False)
    assert metrics_port() == contract.METRICS_PORT == 9100
    monkeypatch.setenv(contract.ENV_METRICS_PORT, "0")
    assert metrics_port() == 0
    monkeypatch.setenv(contract.ENV_METRICS_PORT, "nope")
    assert metrics_port() == 0


# ---- a real local training run --------------------------------------------------------------------------------------
SETS = [
    "train.batch_size=4",
    "train.epochs=3",
    "train.warmup_epochs=1",
    "train.amp_level=O0",  # the faster graph on the CPU; the metrics do not depend on it
    "data.workers=1",
    "data.layout=imagefolder",
    "logging.interval_steps=1",
    "eval.interval_epochs=0",
    "checkpoint.interval_steps=1",
    "model.drop_path_rate=0.0",
    "model.num_classes=2",  # the sample's classes
]


class Run:
    def __init__(self, tmp: Path, name: str, data: str, ckpt: str, port: int) -> None:
        sets = [*SETS, f"data.uri={data}", f"checkpoint.uri={ckpt}"]
        args = ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)]]
        env = {
            **os.environ,
            "CONVIT_DEVICE": "CPU",
            "PYTHONUNBUFFERED": "1",
            "CONVIT_CACHE_DIR": str(tmp / "cache"),
            "CONVIT_METRICS_PORT": str(port),
            "CONVIT_TERMINATION_LOG": str(tmp / f"{name}.termination"),
        }
        for key in ("MS_ROLE", "MS_WORKER_NUM", "MS_LOCAL_WORKER", "MS_NODE_ID"):
            env.pop(key, None)
        self.port = port
        self.out = tmp / f"{name}.log"
        self.termination = tmp / f"{name}.termination"
        self.handle = open(self.out, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "convit.train", *args],
            cwd=REPO,
            env=env,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
        )

    def text(self) -> str:
        return self.out.read_text(errors="replace")

    def scrape_until(self, done: Callable[[dict[str, float]], bool], timeout: float = 120) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"trainer exited ({self.proc.returncode}):\n{self.text()[-3000:]}")
            try:
                values = scrape(self.port)
            except OSError:
                values = {}
            if values and done(values):
                return values
            if time.monotonic() > deadline:
                raise AssertionError(f"metrics never got there: {values}\n{self.text()[-3000:]}")
            time.sleep(0.1)

    def line_of(self, step: int, timeout: float = 30) -> re.Match[str]:
        """The progress line of `step` (printed just after the metrics took its values)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for match in _LINE.finditer(self.text()):
                if int(match[3]) == step:
                    return match
            time.sleep(0.1)
        raise AssertionError(f"no progress line for step {step}:\n{self.text()[-3000:]}")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=120)
        finally:
            self.handle.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.handle.close()


def _same_as_line(values: dict[str, float], line: re.Match[str]) -> None:
    epoch, epochs, step, steps, loss, lr, ips, spt, _eta, overflows = line.groups()
    assert values["convit_step"] == int(step) and values["convit_total_steps"] == int(steps)
    assert values["convit_epoch"] == int(epoch) and int(epochs) == 3
    assert values["convit_loss"] == pytest.approx(float(loss), abs=5.1e-5)  # printed with 4 decimals
    assert values["convit_learning_rate"] == pytest.approx(float(lr), rel=5.1e-3, abs=1e-15)  # 3 digits
    assert values["convit_images_per_second"] == pytest.approx(float(ips), abs=0.051)
    assert values["convit_step_seconds"] == pytest.approx(float(spt), abs=5.1e-4)
    assert values["convit_overflowed_steps"] == int(overflows)
    expected_eta = values["convit_step_seconds"] * (int(steps) - int(step))
    assert values["convit_eta_seconds"] == pytest.approx(expected_eta, rel=1e-6, abs=1e-6)


@pytest.mark.slow
def test_a_training_process_serves_the_numbers_of_its_progress_lines_and_counts_its_restarts(tmp_path: Path) -> None:
    data, ckpt = f"file://{tmp_path}/data", f"file://{tmp_path}/ckpt"
    make_sample(data, classes=2, per_class=8, val_per_class=1)  # 4 steps per epoch, 12 in all
    first = Run(tmp_path, "first", data, ckpt, free_port())
    try:
        # Step 2 printed, and a checkpoint (one per step) complete in storage.
        values = first.scrape_until(lambda v: v["convit_step"] >= 2 and v["convit_checkpoint_step"] >= 1)
        _same_as_line(values, first.line_of(int(values["convit_step"])))
        assert values["convit_restarts"] == 0
        assert values["convit_checkpoint_upload_seconds"] > 0 and 0 <= values["convit_checkpoint_age_seconds"] < 60
        assert values["convit_data_wait_seconds_total"] > 0
        assert math.isnan(values["convit_top1_percent"])  # no validation yet
        assert first.stop() == STOPPED_EXIT  # SIGTERM: a checkpoint, then the end (not 0: not finished)
    finally:
        first.kill()
    log = first.text()
    assert "stopped by signal, checkpoint saved" in log, log[-3000:]
    stopped = int(re.findall(r"^done step (\d+)", log, re.M)[-1])
    # Its termination message ends with the result line of a stopped run.
    message = first.termination.read_text().splitlines()
    assert message[-1].startswith(f"trained {stopped} steps (stopped by signal, checkpoint saved): loss ")
    assert message[-1].endswith(f"checkpoint {ckpt}/checkpoints/step-{stopped:09d}")
    assert message[0].startswith("epoch ") and f"step {stopped}/12 " in message[0]

    second = Run(tmp_path, "second", data, ckpt, free_port())  # resumes from that checkpoint: a restart
    try:
        values = second.scrape_until(lambda v: v["convit_restarts"] == 1)  # set as it resumes, before step 1
        assert values["convit_checkpoint_step"] == stopped and 0 <= values["convit_checkpoint_age_seconds"] < 600
        values = second.scrape_until(lambda v: v["convit_step"] > stopped)
        _same_as_line(values, second.line_of(int(values["convit_step"])))
        assert values["convit_restarts"] == 1
        assert second.stop() == STOPPED_EXIT
    finally:
        second.kill()
    assert f"resume=step {stopped} " in second.text()
