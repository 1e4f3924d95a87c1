"""The launcher's command line without a cluster: evaluation manifests, flag checks, wait's exit codes."""

from __future__ import annotations

import pytest
import yaml

from launcher.__main__ import main
from launcher.backends.base import JobStatus
from launcher.cli import final_line


def test_render_evaluate_prints_the_evaluation_job(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["render", "convit_tiny", "--evaluate", "--weights", "s3://ckpt/run", "--backend", "volcano"]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    assert [o["metadata"]["name"] for o in objects] == ["convit-tiny-eval-job", "convit-tiny-eval"]
    container = objects[-1]["spec"]["tasks"][0]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "convit.cluster"]
    assert container["args"] == [
        "--module",
        "convit.evaluate",
        "--job",
        "/etc/convit/job.json",
        "--weights",
        "s3://ckpt/run",
    ]


def test_an_explicit_eval_name_is_kept(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["render", "convit_tiny", "--name", "nightly-eval", "--evaluate", "--weights", "s3://ckpt/run"]
    assert main(args) == 0
    assert [o["metadata"]["name"] for o in yaml.safe_load_all(capsys.readouterr().out)][-1] == "nightly-eval"


def test_final_line_carries_an_evaluation_result() -> None:
    done = JobStatus("e", "ml", "Succeeded", result="evaluated 8 samples: top1 50.000 top5 100.000 loss 1.2000")
    assert final_line(done) == "job e succeeded: evaluated 8 samples: top1 50.000 top5 100.000 loss 1.2000"
    assert final_line(JobStatus("t", "ml", "Failed")) == "job t failed"
