"""The image cannot be built here (no Docker engine): lint it, and check that what the manifests run
(command, entrypoint, environment) exists in the package."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from convit.cluster import contract
from convit.jobspec import load_job
from launcher.render import render_objects

REPO = Path(__file__).resolve().parents[1]
HADOLINT = Path(sys.executable).with_name("hadolint")


def test_hadolint_passes() -> None:
    result = subprocess.run([str(HADOLINT), str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_entrypoint_is_the_command_the_manifests_run() -> None:
    text = (REPO / "Dockerfile").read_text()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entry is not None
    import json

    assert tuple(json.loads(entry.group(1))) == contract.POD_COMMAND
    assert re.search(r"^USER \$\{APP_UID\}:\$\{DRIVER_GID\}$", text, re.M), "the image must run as non-root"
    for package in ("convit", "launcher", "jobs"):
        assert re.search(rf"^COPY {package} ", text, re.M)


# MindSpore/CANN pairs listed together by MindSpore's install documentation and the MindSpore Transformers tables.
DOCUMENTED_PAIRS = {("2.6.0rc1", "8.1.RC1"), ("2.7.1", "8.3.RC1"), ("2.7.2", "8.5.0"), ("2.9.0", "9.0.0")}


def test_base_image_and_mindspore_are_one_documented_pair() -> None:
    text = (REPO / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.M))
    assert (args["MINDSPORE_VERSION"], args["CANN_VERSION"]) in DOCUMENTED_PAIRS
    assert "${CANN_VERSION}" in args["BASE_IMAGE"], "the base image must follow CANN_VERSION"
    # The build swaps pyproject's MindSpore pin for MINDSPORE_VERSION: the pattern must match pyproject's line.
    sed = re.search(r'sed -i -E "s/(.+?)/\\"mindspore==\$\{MINDSPORE_VERSION\}\\"/"', text)
    assert sed is not None
    pattern = sed.group(1).replace('\\"', '"')
    pyproject = (REPO / "pyproject.toml").read_text()
    assert len(re.findall(pattern, pyproject)) == 1


def test_rendered_command_runs_and_every_env_name_is_read_by_the_package() -> None:
    container = render_objects(load_job("convit_tiny"))[-1]["spec"]["template"]["spec"]["containers"][0]
    command = [sys.executable if c == "python" else c for c in container["command"]]
    result = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0 and "--job" in result.stdout
    source = "\n".join(p.read_text() for p in (REPO / "convit").rglob("*.py"))
    standard = {
        "HOME",
        "PYTHONUNBUFFERED",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
        "AWS_ENDPOINT_URL_S3",
        contract.ENV_OVERFLOW_MODE,
    }  # read by Python, boto3 and MindSpore themselves
    constants = {v for k, v in vars(contract).items() if k.startswith("ENV_")}
    for item in container["env"]:
        name = item["name"]
        assert name in standard or name in constants or f'"{name}"' in source, f"{name} is set but never read"
