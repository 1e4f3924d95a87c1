"""A table of hostile and malformed inputs across the CLI, job files, --set, Helm values, data sets and
checkpoints. Each gets a clear one-line error and a non-zero exit (or is handled safely): never a
traceback, never a changed manifest structure, never a shell, never lost data."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from convit.data.__main__ import main as data_main
from launcher.__main__ import main as launcher_main
from tests.test_chart import CHART, REPO, helm

BILLION_LAUGHS = "a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
TINY = (REPO / "jobs" / "convit_tiny.yaml").read_text()

# (id, launcher argv, expected fragment of the one ERROR line)
CLI_CASES = [
    ("unknown-recipe", ["render", "convit_nope"], "unknown job 'convit_nope'"),
    ("missing-file", ["render", "/nonexistent/job.yaml"], "does not exist"),
    ("zero-pods", ["render", "convit_tiny", "--pods", "0"], "cluster.pods"),
    ("negative-pods", ["render", "convit_tiny", "--pods", "-3"], "cluster.pods"),
    ("too-many-pods", ["render", "convit_tiny", "--set", "cluster.pods=100000"], "cluster.pods"),
    ("bad-name", ["render", "convit_tiny", "--name", "Bad_Name"], "DNS-1123"),
    ("long-name", ["render", "convit_tiny", "--name", "a" * 50], "at most 45"),
    ("newline-name", ["render", "convit_tiny", "--name", "a\nkind: Secret"], "DNS-1123"),
    ("newline-set", ["render", "convit_tiny", "--set", "name=a\nkind: Secret"], "single line"),
    ("template-name", ["render", "convit_tiny", "--name", "{{ .Release.Name }}"], "DNS-1123"),
    ("http-data", ["render", "convit_tiny", "--data", "http://example.com/x"], "data.uri"),
    ("dotdot-data", ["render", "convit_tiny", "--data", "s3://bucket/../etc"], "data.uri"),
    ("ftp-output", ["render", "convit_tiny", "--output", "ftp://host/x"], "checkpoint.uri"),
    ("space-uri", ["render", "convit_tiny", "--data", "s3://bucket/x --- y"], "data.uri"),
    ("quote-image", ["render", "convit_tiny", "--image", 'img"; rm -rf /'], "cluster.image"),
    ("space-namespace", ["render", "convit_tiny", "-n", "kube system"], "cluster.namespace"),
    ("negative-lr", ["render", "convit_tiny", "--set", "train.lr=-1"], "train.lr"),
    ("unknown-key", ["render", "convit_tiny", "--set", "train.bogus=1"], "train.bogus: unknown key"),
    ("no-equals", ["render", "convit_tiny", "--set", "noequals"], "expected key=value"),
    ("bad-set-key", ["render", "convit_tiny", "--set", "Train.LR=1"], "dotted lower-case"),
    ("list-for-float", ["render", "convit_tiny", "--set", "train.lr=[1,2]"], "train.lr"),
    ("float-for-int", ["render", "convit_tiny", "--set", "train.batch_size=1e9"], "train.batch_size"),
    ("huge-epochs", ["render", "convit_tiny", "--set", "train.epochs=99999999"], "train.epochs"),
    ("warmup-too-long", ["render", "convit_tiny", "--set", "train.warmup_epochs=400"], "warmup_epochs"),
    ("unknown-model", ["render", "convit_tiny", "--set", "model.name=resnet50"], "model.name"),
    ("shell-cpu", ["render", "convit_tiny", "--set", "cluster.cpu=$(reboot)"], "cluster.cpu"),
    ("creds-endpoint", ["render", "convit_tiny", "--set", "storage.endpoint=http://user:pw@host"], "storage.endpoint"),
    ("section-scalar", ["render", "convit_tiny", "--set", "train=5"], "train"),
    ("set-into-scalar", ["render", "convit_tiny", "--set", "name.x=1"], "not a section"),
]


@pytest.mark.parametrize(("argv", "fragment"), [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_error_line(argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert launcher_main(argv) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("ERROR: ") and captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert fragment in captured.err


def test_usage_errors_exit_2_without_traceback() -> None:
    result = subprocess.run(
        ["python", "-m", "launcher", "submit", "convit_tiny", "--backend", "kubeflow"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2 and "invalid choice" in result.stderr and "Traceback" not in result.stderr


FILE_CASES = [
    ("billion-laughs", BILLION_LAUGHS, "aliases/anchors are not allowed"),
    ("duplicate-key", TINY + "name: other\n", "duplicate key 'name'"),
    ("not-a-mapping", "- a\n- b\n", "must be a YAML mapping"),
    ("syntax-error", "name: [unclosed\n", "invalid YAML"),
    ("empty", "", "must be a YAML mapping"),
    ("two-documents", TINY + "---\nname: x\n", "invalid YAML"),
    ("unknown-top-key", TINY + "extra: 1\n", "extra: unknown key"),
    ("wrong-section-type", TINY.replace("logging:\n  interval_steps: 20\n  format: text\n", "logging: 5\n"), "logging"),
    ("python-tag", TINY + "evil: !!python/object/apply:os.system ['id']\n", "invalid YAML"),
]


@pytest.mark.parametrize(("text", "fragment"), [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES])
def test_malformed_job_files(text: str, fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    assert launcher_main(["render", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1 and fragment in err


def test_non_utf8_and_oversized_job_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    assert launcher_main(["render", str(tmp_path / "latin1.yaml")]) == 1
    assert "not UTF-8" in capsys.readouterr().err
    (tmp_path / "big.yaml").write_text(TINY + "# " + "x" * 300_000 + "\n")
    assert launcher_main(["render", str(tmp_path / "big.yaml")]) == 1
    assert "larger than" in capsys.readouterr().err


HELM_CASES = [
    ("unknown-key", "cluster.bogus", 1),
    ("negative-pods", "cluster.pods", -1),
    ("template-name", "name", "{{ .Release.Name }}"),
    ("quote-image", "cluster.image", 'img"x'),
    ("newline-secret", "storage.secret", "a\nb"),
    ("shell-queue", "cluster.queue", "$(id)"),
    ("string-pods", "cluster.pods", "8"),
    ("document-break-uri", "data.uri", "s3://bucket/x\n---\nkind: Secret"),
]


@pytest.mark.parametrize(("key", "value"), [c[1:] for c in HELM_CASES], ids=[c[0] for c in HELM_CASES])
def test_helm_rejects_bad_values(key: str, value: object, tmp_path: Path) -> None:
    import yaml

    section, _, field = key.rpartition(".")
    override = {section: {field: value}} if section else {field: value}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(override))
    result = helm(
        "template", "r", str(CHART), "-f", str(REPO / "jobs" / "convit_tiny.yaml"), "-f", str(tmp_path / "bad.yaml")
    )
    assert result.returncode != 0 and "schema" in result.stderr


def test_dataset_tree_problems(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty" / "train").mkdir(parents=True)
    assert data_main(["prepare", "--src", f"file://{tmp_path}/empty", "--dst", f"file://{tmp_path}/o1"]) == 1
    assert capsys.readouterr().err.startswith("ERROR: no images under")
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "train" / "a.JPEG").write_bytes(b"")
    assert data_main(["prepare", "--src", f"file://{tmp_path}/flat", "--dst", f"file://{tmp_path}/o2"]) == 1
    assert "malformed ImageFolder tree" in capsys.readouterr().err
    # A non-UTF-8 file name: handled safely (kept, reported by its escaped name if it fails to decode).
    assert (
        data_main(
            [
                "make-sample",
                "--dst",
                f"file://{tmp_path}/odd",
                "--classes",
                "2",
                "--per-class",
                "2",
                "--val-per-class",
                "0",
            ]
        )
        == 0
    )
    odd = os.fsencode(str(tmp_path / "odd" / "train" / "n00000000")) + b"/caf\xe9.JPEG"
    with open(odd, "wb") as handle:
        handle.write(b"")  # also zero bytes
    code = data_main(["prepare", "--src", f"file://{tmp_path}/odd", "--dst", f"file://{tmp_path}/o3", "--quiet"])
    err = capsys.readouterr().err
    assert code in (0, 1) and "Traceback" not in err
    if code == 0:
        index = json.loads((tmp_path / "o3" / "index.json").read_text())
        assert index["splits"]["train"]["num_samples"] == 5
