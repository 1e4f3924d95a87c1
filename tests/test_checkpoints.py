"""Checkpoint store: pointer written last, corrupt checkpoints skipped, retention, on file:// and S3."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from convit.storage import open_storage
from convit.train.checkpoints import LATEST, CheckpointError, CheckpointMeta, CheckpointStore


def _meta(step: int, top1: float | None = None) -> dict[str, object]:
    return {"step": step, "epoch": step // 10, "epoch_step": step % 10, "model": "convit_tiny", "top1": top1}


def _writer(payload: bytes):  # type: ignore[no-untyped-def]
    return lambda path: path.write_bytes(payload)


@pytest.fixture(params=["file", "s3"])
def uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        return f"file://{tmp_path}/ckpt"
    return f"s3://{request.getfixturevalue('bucket')}/jobs/demo"


def test_save_restore_newest_and_retention(uri: str, tmp_path: Path) -> None:
    store = CheckpointStore(uri, tmp_path / "stage", keep_last=2)
    for step in (10, 20, 30, 40):
        store.save(_writer(f"weights-{step}".encode()), _meta(step, top1=float(step == 20)))
    store.wait()
    # keep the last 2, plus the best by top-1 (step 20)
    assert store.complete_steps() == [20, 30, 40]
    seen: list[tuple[int, bytes]] = []
    meta = store.restore(lambda m, p: seen.append((m.step, p.read_bytes())))
    assert meta is not None and meta.step == 40 and seen == [(40, b"weights-40")]
    best = json.loads(open_storage(uri).get("best.json"))
    assert best["step"] == 20


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete_weights"])
def test_corrupt_newest_falls_back_to_previous(uri: str, tmp_path: Path, damage: str) -> None:
    store = CheckpointStore(uri, tmp_path / "stage", keep_last=5)
    store.save(_writer(b"A" * 1000), _meta(1), background=False)
    store.save(_writer(b"B" * 1000), _meta(2), background=False)
    storage = open_storage(uri)
    key = "checkpoints/step-000000002/weights.ckpt"
    data = bytearray(storage.get(key))
    if damage == "flip":
        data[500] ^= 0xFF
        storage.put(key, bytes(data))
    elif damage == "truncate":
        storage.put(key, bytes(data[:600]))
    else:
        storage.delete(key)
    seen: list[int] = []
    meta = store.restore(lambda m, p: seen.append(m.step))
    assert meta is not None and meta.step == 1 and seen == [1]


def test_crash_between_upload_and_pointer_never_exposes_partial(uri: str, tmp_path: Path) -> None:
    store = CheckpointStore(uri, tmp_path / "stage")
    store.save(_writer(b"old"), _meta(5), background=False)
    storage = open_storage(uri)
    # A later save that died after uploading weights but before meta.json and the pointer:
    storage.put("checkpoints/step-000000009/weights.ckpt", b"half-written")
    assert json.loads(storage.get(LATEST))["step"] == 5
    assert store.candidates() == [5]
    meta = store.restore(lambda m, p: None)
    assert meta is not None and meta.step == 5


def test_apply_failure_is_reported_and_skipped(uri: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(uri, tmp_path / "stage")
    store.save(_writer(b"one"), _meta(1), background=False)
    store.save(_writer(b"two"), _meta(2), background=False)

    def apply(meta: CheckpointMeta, path: Path) -> None:
        if meta.step == 2:
            raise CheckpointError("it does not fit this model")

    assert store.restore(apply).step == 1  # type: ignore[union-attr]
    assert "skipping step 2: it does not fit this model" in caplog.text


def test_no_checkpoint_gives_none(uri: str, tmp_path: Path) -> None:
    assert CheckpointStore(uri, tmp_path / "stage").restore(lambda m, p: None) is None


def test_refuses_to_start_over_when_no_checkpoint_is_usable(uri: str, tmp_path: Path) -> None:
    store = CheckpointStore(uri, tmp_path / "stage")
    store.save(_writer(b"one"), _meta(1), background=False)

    def apply(meta: CheckpointMeta, path: Path) -> None:
        raise CheckpointError("it holds convit_base, not convit_tiny")

    with pytest.raises(CheckpointError, match="none is usable.*refusing to start over"):
        store.restore(apply)
    assert store.complete_steps() == [1]  # nothing deleted


def test_signal_save_during_an_upload_publishes_only_complete_checkpoints(tmp_path: Path) -> None:
    """What the trainer does on SIGTERM while a background upload is in flight: the final, synchronous save
    first waits for that upload, so every pointer ever written names a checkpoint whose files are complete."""
    import threading
    import time

    store = CheckpointStore(f"file://{tmp_path}/ckpt", tmp_path / "stage", keep_last=5)
    storage = store.storage
    slow_put_file = storage.put_file
    pointers: list[int] = []
    real_put = storage.put

    def slow(key: str, path: Path) -> None:
        time.sleep(0.5)  # a large upload
        slow_put_file(key, path)

    def recording_put(key: str, data: bytes) -> None:
        if key == LATEST:
            step = json.loads(data)["step"]
            prefix = f"checkpoints/step-{step:09d}"
            assert storage.exists(f"{prefix}/weights.ckpt") and storage.exists(f"{prefix}/meta.json")
            pointers.append(step)
        real_put(key, data)

    storage.put_file = slow  # type: ignore[method-assign]
    storage.put = recording_put  # type: ignore[method-assign]
    store.save(_writer(b"interval" * 1000), _meta(10), background=True)
    assert threading.active_count() >= 2  # the upload is in flight
    store.save(_writer(b"signal" * 1000), _meta(11), background=False)  # the SIGTERM path
    assert pointers == [10, 11]
    assert json.loads(storage.get(LATEST))["step"] == 11
