"""The compile cache in object storage: a replaced pod (a new, empty cache dir) fetches the graphs the first pod
compiled, verified against their manifest; a corrupt or partial copy is ignored; a storage outage never fails
training. Unit tests on the folder logic, then end-to-end runs of the trainer against a real S3 server process."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from convit.storage import open_storage
from convit.train.compile_cache import BLOBS, CompileCache, enable_compile_cache, manifest_of, scan
from tests.support.faultproxy import fault_proxy
from tests.support.s3server import SECRET_KEY, free_port
from tests.support.trainrun import REPO, make_sample

FILES = {
    "graph_cache/compile_cache_0.mindir": b"step graph " * 1000,
    "graph_cache/compile_cache_1.mindir": b"eval graph " * 100,
    "graph_cache/compile_dependency.hash": b"0" * 64,
}


def _rank_folder(root: Path, files: dict[str, bytes], rank: int = 0) -> Path:
    folder = root / f"rank_{rank}"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ---- unit tests: the folder, its manifest and the checks ------------------------------------------------------
@pytest.fixture(params=["file", "s3"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/bucket/compile-cache/k1"
    name = request.getfixturevalue("bucket")
    return f"s3://{name}/job/compile-cache/k1"


def test_upload_then_a_new_pod_fetches_the_same_files(remote: str, tmp_path: Path) -> None:
    notes: list[str] = []
    first = CompileCache(tmp_path / "pod1", remote, 0, notes.append)
    assert first.fetch() == 0 and notes == [f"compile cache: none in {remote} yet; compiling"]
    _rank_folder(tmp_path / "pod1", dict(list(FILES.items())[:2]))  # the step graph compiles
    first.compiled("step")
    first.compiled("step")  # once per graph kind
    first.close()
    assert notes[-1] == f"compile cache: uploaded 2 of 2 files (0.0 MB) to {remote}"
    _rank_folder(tmp_path / "pod1", FILES)  # the eval graph compiles later
    first.compiled("eval")
    first.close()
    assert notes[-1].startswith("compile cache: uploaded 1 of 3 files")  # the new one only

    store = open_storage(remote)
    manifest = json.loads(store.get("rank_0.json"))["files"]
    assert manifest == manifest_of(FILES)
    assert sorted(store.list(f"{BLOBS}/")) == sorted(f"{BLOBS}/{hashlib.sha256(d).hexdigest()}" for d in FILES.values())

    notes.clear()
    second = CompileCache(tmp_path / "pod2", remote, 0, notes.append)
    assert second.fetch() == 3
    assert scan(tmp_path / "pod2" / "rank_0") == FILES
    assert notes == [f"compile cache: fetched 3 files (0.0 MB) from {remote}"]
    second.compiled("step")  # nothing new compiled: nothing uploaded
    second.close()
    assert len(notes) == 1
    other_rank = CompileCache(tmp_path / "pod2", remote, 1, notes.append)
    assert other_rank.fetch() == 0  # rank 1 has no manifest of its own
    assert not (tmp_path / "pod2" / "rank_1").exists()


def test_a_local_cache_is_used_as_it_is(tmp_path: Path) -> None:
    remote = f"file://{tmp_path}/bucket"
    first = CompileCache(tmp_path / "pod1", remote)
    _rank_folder(tmp_path / "pod1", FILES)
    first.compiled("step")
    first.close()
    _rank_folder(tmp_path / "pod2", {"graph_cache/compile_cache_0.mindir": b"local"})
    assert CompileCache(tmp_path / "pod2", remote).fetch() == 0  # a restarted container keeps its own folder
    assert scan(tmp_path / "pod2" / "rank_0") == {"graph_cache/compile_cache_0.mindir": b"local"}


@pytest.mark.parametrize("damage", ["manifest missing", "hash wrong", "file missing", "truncated", "bad manifest"])
def test_a_corrupt_or_partial_remote_cache_is_ignored_with_one_warning(
    damage: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    remote = f"file://{tmp_path}/bucket"
    first = CompileCache(tmp_path / "pod1", remote)
    _rank_folder(tmp_path / "pod1", FILES)
    first.compiled("step")
    first.close()
    store = open_storage(remote)
    blob = f"{BLOBS}/{hashlib.sha256(FILES['graph_cache/compile_cache_0.mindir']).hexdigest()}"
    if damage == "manifest missing":
        store.delete("rank_0.json")
    elif damage == "hash wrong":
        store.put(blob, store.get(blob).replace(b"step", b"stop", 1))
    elif damage == "file missing":
        store.delete(blob)
    elif damage == "truncated":
        store.put(blob, store.get(blob)[:100])
    else:
        store.put("rank_0.json", b'{"files": {"../escape": {"size": 1, "sha256": "00"}}}')

    caplog.set_level(logging.WARNING)
    (tmp_path / "pod2").mkdir()  # as enable_compile_cache makes it
    second = CompileCache(tmp_path / "pod2", remote)
    assert second.fetch() == 0
    assert not (tmp_path / "pod2" / "rank_0").exists()
    assert [p.name for p in (tmp_path / "pod2").iterdir()] == []  # no staging left behind
    (warning,) = _warnings(caplog)
    assert warning.startswith("compile cache: ") and warning.endswith("compiling")

    # The run compiles, then replaces the damaged copy with a good one.
    _rank_folder(tmp_path / "pod2", FILES)
    second.compiled("step")
    second.close()
    third = CompileCache(tmp_path / "pod3", remote)
    assert third.fetch() == 3 and scan(tmp_path / "pod3" / "rank_0") == FILES


def test_an_unreachable_object_store_is_one_warning_and_never_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIATESTCANARY0000001")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("CONVIT_S3_RETRY_SECONDS", "1")
    caplog.set_level(logging.WARNING)
    remote = "s3://down/job/compile-cache/k1"
    cache = CompileCache(tmp_path, remote)
    assert cache.fetch() == 0
    (warning,) = _warnings(caplog)
    assert warning.startswith(f"compile cache: not fetched from {remote} (") and warning.endswith("; compiling")
    caplog.clear()
    _rank_folder(tmp_path, FILES)
    cache.compiled("step")
    cache.close()
    cache.compiled("eval")  # after a failure, no more attempts
    cache.close()
    (warning,) = _warnings(caplog)  # storage retries are not logged one by one
    assert warning.startswith(f"compile cache: not uploaded to {remote} (") and "training goes on" in warning
    assert SECRET_KEY not in caplog.text


def test_compile_cache_0_turns_everything_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from convit.jobspec import load_job

    spec = load_job("convit_tiny", [f"checkpoint.uri=file://{tmp_path}/ckpt"])
    monkeypatch.setenv("CONVIT_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("MS_COMPILER_CACHE_PATH", "MS_COMPILER_CACHE_ENABLE"):  # set below: undone after the test
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONVIT_COMPILE_CACHE", "0")
    cache = enable_compile_cache(spec, 1, 10)
    assert cache.folder is None and "MS_COMPILER_CACHE_PATH" not in os.environ
    cache.compiled("step")
    cache.close()
    monkeypatch.setenv("CONVIT_COMPILE_CACHE", "1")
    cache = enable_compile_cache(spec, 1, 10, rank=3)
    assert cache.folder is not None and cache.folder.name == "rank_3"
    assert os.environ["MS_COMPILER_CACHE_PATH"] == str(cache.folder.parent)
    assert cache.remote_uri == f"file://{tmp_path}/ckpt/compile-cache/{cache.folder.parent.name}"
    assert not (tmp_path / "ckpt").exists()  # nothing uploaded before something compiled


# ---- end to end: the trainer against a real S3 server ---------------------------------------------------------
SETS = [
    "data.layout=imagefolder",
    "data.workers=1",
    "train.batch_size=4",
    "train.epochs=2",
    "train.warmup_epochs=1",
    "logging.interval_steps=1",
    "eval.interval_epochs=1",
    "model.drop_path_rate=0.1",
    "model.num_classes=2",  # the sample's classes
]
USED = "Use the compilation cache and execute the backend actions only"  # MindSpore's own line on a cache hit


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("sample")
    make_sample(f"file://{root}", classes=2, per_class=8, val_per_class=1)  # 4 steps per epoch
    return f"file://{root}"


def _train(
    sample: str, ckpt: str, cache_dir: Path, max_steps: int, env: dict[str, str], *extra: str
) -> tuple[int, str]:
    sets = [*SETS, f"data.uri={sample}", f"checkpoint.uri={ckpt}"]
    args = ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)], "--max-steps", str(max_steps), *extra]
    full = {**os.environ, **env, "CONVIT_CACHE_DIR": str(cache_dir), "CONVIT_DEVICE": "CPU", "PYTHONUNBUFFERED": "1"}
    full.pop("MS_COMPILER_CACHE_PATH", None)
    full.pop("MS_COMPILER_CACHE_ENABLE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "convit.train", *args],
        cwd=REPO,
        env=full,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout


def _weights(ckpt: str, step: int, tmp: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    path = tmp / f"{abs(hash(ckpt))}-{step}.ckpt"
    path.write_bytes(open_storage(ckpt).get(f"checkpoints/step-{step:09d}/weights.ckpt"))
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(path)).items()}


def _remote_cache(ckpt: str) -> tuple[str, dict[str, dict[str, int | str]]]:
    """The cache's folder in the bucket (one key) and rank 0's manifest."""
    store = open_storage(ckpt).child("compile-cache")
    (manifest_key,) = [k for k in store.list() if k.endswith("/rank_0.json")]
    key = manifest_key.split("/")[0]
    return f"{ckpt}/compile-cache/{key}", json.loads(store.get(manifest_key))["files"]


@pytest.fixture(scope="module")
def first_pod(sample: str, s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A first pod: 2 steps and the final validation, an empty cache dir; its checkpoint URI and log."""
    import boto3

    from tests.support.s3server import s3_env

    env = {**s3_env(s3_endpoint), "CONVIT_S3_RETRY_SECONDS": "10"}
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        region_name="us-east-1",
    ).create_bucket(Bucket="ccache")
    ckpt = "s3://ccache/first"
    code, log = _train(sample, ckpt, tmp_path_factory.mktemp("pod1"), 2, env)
    assert code == 0, log[-3000:]
    return ckpt, log


@pytest.mark.slow
def test_a_replaced_pod_fetches_the_cache_mindspore_uses_it_and_training_is_identical(
    first_pod: tuple[str, str], sample: str, s3: dict[str, str], tmp_path: Path
) -> None:
    ckpt, log = first_pod
    remote, manifest = _remote_cache(ckpt)
    assert f"compile cache: none in {remote} yet; compiling" in log
    # The step graph after step 1, then the eval graph after the validation: MindSpore 2.10's files.
    assert sorted(manifest) == [
        "graph_cache/compile_cache_0.mindir",
        "graph_cache/compile_cache_1.mindir",
        "graph_cache/compile_dependency.hash",
    ]
    assert "compile cache: uploaded 2 of 2 files" in log and "compile cache: uploaded 1 of 3 files" in log
    assert SECRET_KEY not in log and USED not in log

    # The reference: the same resume without any compile cache.
    reference = "s3://ccache/reference"
    code, ref_log = _train(sample, reference, tmp_path / "ref", 4, {"CONVIT_COMPILE_CACHE": "0"}, "--resume", ckpt)
    assert code == 0 and "resume=step 2" in ref_log, ref_log[-3000:]

    # The replaced pod: a new, empty cache dir, the same checkpoint URI.
    cache_dir = tmp_path / "pod2"
    code, log = _train(sample, ckpt, cache_dir, 4, {})
    assert code == 0, log[-3000:]
    assert "resume=step 2" in log
    assert "compile cache: fetched 3 files (" in log and f"MB) from {remote}" in log
    assert log.count(USED) >= 1 and "Execute all the compilation actions" not in log  # MindSpore compiled nothing
    assert "compile cache: uploaded" not in log  # nothing new to keep
    (folder,) = (cache_dir / "compile").glob("*/rank_0")
    assert manifest_of(scan(folder)) == manifest  # no graph file rewritten or added
    assert SECRET_KEY not in log

    a, b = _weights(ckpt, 4, tmp_path), _weights(reference, 4, tmp_path)
    assert a.keys() == b.keys() and len(a) > 100
    assert not [k for k in a if not np.array_equal(a[k], b[k])]


@pytest.mark.slow
def test_a_corrupt_remote_cache_is_ignored_and_training_succeeds(
    first_pod: tuple[str, str], sample: str, s3: dict[str, str], tmp_path: Path
) -> None:
    """The damage MindSpore must never see: the step graph's file changed under its manifest (the other kinds, a
    missing or malformed manifest, a missing or truncated file, are refused the same way: the fast test above)."""
    ckpt = "s3://ccache/damaged"
    remote, manifest = _remote_cache(first_pod[0])
    src, dst = open_storage(remote), open_storage(remote.replace(first_pod[0], ckpt))
    for key in src.list():
        dst.put(key, src.get(key))
    step_blob = f"{BLOBS}/{manifest['graph_cache/compile_cache_0.mindir']['sha256']}"
    data = bytearray(dst.get(step_blob))
    data[len(data) // 2] ^= 0xFF
    dst.put(step_blob, bytes(data))

    code, log = _train(sample, ckpt, tmp_path / "pod", 1, {})
    assert code == 0 and "done step 1 (finished)" in log, log[-3000:]
    (warning,) = [line for line in log.splitlines() if line.startswith("WARNING convit.train: compile cache")]
    assert "corrupt" in warning and warning.endswith("compiling")
    assert USED not in log  # MindSpore compiled (nothing damaged reached it)
    assert "compile cache: uploaded 3 of 3 files" in log or "compile cache: uploaded 2 of 2 files" in log
    # The damaged copy is replaced by a good one.
    assert CompileCache(tmp_path / "check", dst.uri).fetch() >= 2


@contextmanager
def failing_cache_uploads(upstream: str) -> Iterator[tuple[str, list[str]]]:
    """A proxy in front of the S3 server that answers 503 to every upload under compile-cache/ (an outage of
    the object store while the cache is uploaded) and forwards everything else."""

    def upload(method: str, path: str) -> bool:
        return method == "PUT" and "/compile-cache/" in path

    with fault_proxy(upstream, refuse=upload) as (endpoint, proxy):
        yield endpoint, proxy.refused


@pytest.mark.slow
def test_an_object_store_outage_during_the_upload_never_fails_training(
    sample: str, s3: dict[str, str], bucket: str, tmp_path: Path
) -> None:
    ckpt = f"s3://{bucket}/outage"
    with failing_cache_uploads(s3["AWS_ENDPOINT_URL_S3"]) as (endpoint, refused):
        env = {"AWS_ENDPOINT_URL_S3": endpoint, "CONVIT_S3_RETRY_SECONDS": "3"}
        code, log = _train(sample, ckpt, tmp_path / "pod", 2, env)
    assert code == 0 and "done step 2 (finished)" in log, log[-3000:]
    assert refused  # the upload was tried, and failed
    warnings = [line for line in log.splitlines() if "compile cache" in line and line.startswith("WARNING")]
    assert len(warnings) == 1 and "not uploaded to" in warnings[0] and "training goes on" in warnings[0]
    assert "storage: PUT" not in log  # no line per retry
    assert "checkpoint step 2 saved" in log
    store = open_storage(ckpt)
    assert store.exists("latest.json")
    assert not [k for k in store.list("compile-cache/") if k.endswith(".json")]  # no manifest: never used
    assert SECRET_KEY not in log


@pytest.mark.slow
def test_two_ranks_each_keep_their_own_graphs_and_a_replaced_pod_uses_both(sample: str, tmp_path: Path) -> None:
    """With data parallelism each rank's graph files differ (its own collectives): each rank fetches its own."""
    from tests.support.trainrun import run_pod

    ckpt = f"file://{tmp_path}/ckpt"
    sets = [*SETS, f"data.uri={sample}", f"checkpoint.uri={ckpt}"]
    args = ["--job", "convit_tiny", *[a for s in sets for a in ("--set", s)]]
    logs = {}
    for name, steps in (("first", 2), ("replaced", 4)):
        env = {"CONVIT_CACHE_DIR": str(tmp_path / name), "CONVIT_DEBUG_LOG": "1", "GLOG_v": "2"}
        code, logs[name] = run_pod([*args, "--max-steps", str(steps)], tmp_path, name, local=2, extra_env=env)
        assert code == 0, logs[name][-3000:]
    store = open_storage(ckpt).child("compile-cache")
    manifests = {k.rsplit("/", 1)[1]: json.loads(store.get(k))["files"] for k in store.list() if k.endswith(".json")}
    assert sorted(manifests) == ["rank_0.json", "rank_1.json"]
    rank0, rank1 = manifests["rank_0.json"], manifests["rank_1.json"]
    assert rank0.keys() == rank1.keys() and rank0 != rank1  # the same graphs, not the same files
    assert "compile cache: fetched 5 files" in logs["replaced"]  # rank 0's line (the other ranks print none)
    assert logs["replaced"].count(USED) >= 2 and "Execute all the compilation actions" not in logs["replaced"]
    for rank, manifest in enumerate((rank0, rank1)):
        (folder,) = (tmp_path / "replaced" / "compile").glob(f"*/rank_{rank}")
        assert manifest_of(scan(folder)) == manifest
