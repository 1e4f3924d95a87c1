"""Shared fixtures: a real S3 server process, its environment and fresh buckets; the fake Kubernetes API server
the launcher's kubeconfig points at."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fake_apiserver import FakeApiServer, fake_apiserver
from tests.support.s3server import s3_env, s3_server


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with s3_server(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint


@pytest.fixture()
def s3(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The S3 environment set for this test (and its child processes)."""
    env = s3_env(s3_endpoint)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("CONVIT_S3_RETRY_SECONDS", "10")
    return env


@pytest.fixture()
def bucket(s3: dict[str, str]) -> str:
    """A new, empty bucket; returns its name."""
    import boto3

    name = f"t-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3["AWS_ENDPOINT_URL_S3"]).create_bucket(Bucket=name)
    return name


@pytest.fixture()
def local_uri(tmp_path: Path) -> str:
    return f"file://{tmp_path}"


@pytest.fixture()
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeApiServer]:
    """A fake API server (tests/support/fake_apiserver.py) with KUBECONFIG pointing at it, out of any cluster."""
    with fake_apiserver() as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig(tmp_path / "kubeconfig")))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield server


def pytest_unconfigure(config: pytest.Config) -> None:
    """MindSpore's Cell.__del__ fails on cells still alive at interpreter shutdown (its module globals are gone by
    then) and prints a traceback per cell after the summary; only those are silenced, every other one still shows."""
    import sys

    default = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        where = getattr(unraisable.object, "__qualname__", "")
        if where == "Cell.__del__" and isinstance(unraisable.exc_value, AttributeError):
            return
        default(unraisable)

    sys.unraisablehook = hook
