"""The data pipeline against a real S3 server process and file://: layouts, the per-rank plan, determinism,
resume, corrupt images, retries through injected faults, and clear errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import simplejpeg

from convit.data import DataError, build_train_loader, build_val_loader
from convit.data.__main__ import main as data_main
from convit.data.decode import UndecodableImage, decode
from convit.data.mixup import mix_batch, smooth_one_hot
from convit.data.order import rank_plan, val_plan
from convit.data.transforms import eval_sample
from convit.jobspec import load_job
from convit.storage import StorageError, open_storage
from tests.support.faultproxy import fault_proxy

PLAIN = ["augment.mixup=0.0", "augment.cutmix=0.0", "train.label_smoothing=0.0", "augment.re_prob=0.0"]


def _spec(uri: str, layout: str, *extra: str):  # type: ignore[no-untyped-def]
    return load_job(
        "convit_tiny", [f"data.uri={uri}", f"data.layout={layout}", "train.batch_size=4", "data.workers=1", *extra]
    )


@pytest.fixture(scope="module")
def sample_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("data")
    assert (
        data_main(
            ["make-sample", "--dst", f"file://{root}/img", "--classes", "5", "--per-class", "7", "--val-per-class", "2"]
        )
        == 0
    )
    assert (
        data_main(
            [
                "prepare",
                "--src",
                f"file://{root}/img",
                "--dst",
                f"file://{root}/shards",
                "--shard-size",
                "100KB",
                "--quiet",
            ]
        )
        == 0
    )
    return {"imagefolder": f"file://{root}/img", "shards": f"file://{root}/shards", "root": str(root)}


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("block", [1, 32])
def test_plan_is_disjoint_equal_and_drops_only_the_remainder(world: int, block: int) -> None:
    n, batch = 1003, 7
    plans = [rank_plan(n, seed=1, epoch=2, rank=r, world=world, batch=batch, block=block) for r in range(world)]
    steps = n // (batch * world)
    assert all(len(p) == steps * batch for p in plans)
    everything = np.concatenate(plans)
    assert len(np.unique(everything)) == len(everything) == steps * batch * world
    assert n - len(everything) < batch * world
    again = rank_plan(n, seed=1, epoch=2, rank=0, world=world, batch=batch, block=block)
    other_epoch = rank_plan(n, seed=1, epoch=3, rank=0, world=world, batch=batch, block=block)
    assert np.array_equal(plans[0], again) and not np.array_equal(plans[0], other_epoch)


def test_val_plan_covers_everything_once() -> None:
    parts = [val_plan(50, r, 3) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == list(range(50))


@pytest.mark.parametrize("layout", ["imagefolder", "shards"])
def test_every_sample_once_per_epoch_across_ranks_on_s3(layout: str, sample_dirs: dict[str, str], bucket: str) -> None:
    # Copy the local tree to the S3 server, then read it back as 3 ranks.
    src, dst = open_storage(sample_dirs[layout]), open_storage(f"s3://{bucket}/{layout}")
    for key in src.list():
        dst.put(key, src.get(key))
    uri = f"s3://{bucket}/{layout}"
    seen = []
    for rank in range(3):
        loader = build_train_loader(_spec(uri, layout, *PLAIN), rank, 3)
        labels = [t.argmax(1) for _, t in loader.epoch(0)]
        plan = rank_plan(35, seed=42, epoch=0, rank=rank, world=3, batch=4, block=32 if layout == "shards" else 1)
        assert loader.steps_per_epoch == 2 and len(labels) == 2
        assert np.array_equal(np.concatenate(labels), loader.table.labels[plan])
        seen.append(plan)
        loader.close()
    allseen = np.concatenate(seen)
    assert len(set(allseen.tolist())) == 24  # 35 samples, global batch 12: 2 steps, 11 dropped


def test_order_and_pixels_are_deterministic_and_independent_of_workers(sample_dirs: dict[str, str]) -> None:
    spec1 = _spec(sample_dirs["shards"], "shards", "data.workers=1")
    spec2 = _spec(sample_dirs["shards"], "shards", "data.workers=2")
    a = list(build_train_loader(spec1, 0, 2).epoch(1))
    b = list(build_train_loader(spec2, 0, 2).epoch(1))
    c = list(build_train_loader(spec1, 0, 2).epoch(2))
    assert len(a) == len(b) == 4
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])
    assert a[0][0].dtype == np.float32 and a[0][0].shape == (4, 3, 224, 224)
    assert np.allclose(a[0][1].sum(1), 1.0)


def test_mid_epoch_resume_yields_exactly_the_remaining_batches(sample_dirs: dict[str, str]) -> None:
    loader = build_train_loader(_spec(sample_dirs["imagefolder"], "imagefolder"), 1, 2)
    full = list(loader.epoch(3))
    rest = list(loader.epoch(3, start_step=2))
    assert len(rest) == len(full) - 2
    for (xa, ya), (xb, yb) in zip(full[2:], rest, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
    loader.close()


def test_stopping_mid_epoch_leaves_the_shared_ring_reusable_and_close_frees_it(sample_dirs: dict[str, str]) -> None:
    """Decode workers write into shared-memory slots that the trainer reads while the rest of a window is still
    being decoded: a consumer that stops early must not leave a window in flight over a slot the next epoch
    reuses, and close() must free the segment."""
    loader = build_train_loader(_spec(sample_dirs["imagefolder"], "imagefolder", "data.workers=2"), 0, 1)
    full = list(loader.epoch(4))
    for stop in (1, 3):
        partial = loader.epoch(4)
        head = [next(partial) for _ in range(stop)]
        partial.close()  # stops while windows are in flight
        again = list(loader.epoch(4))
        for (xa, ya), (xb, yb) in zip(full, [*head, *again[stop:]], strict=True):
            assert np.array_equal(xa, xb) and np.array_equal(ya, yb)
        for (xa, _), (xb, _) in zip(full, again, strict=True):
            assert np.array_equal(xa, xb)
    workers = loader._workers
    assert workers is not None and workers.shm is not None
    name = workers.shm.name
    loader.close()
    assert not Path(f"/dev/shm/{name.lstrip('/')}").exists()
    # Validation tasks are whole batches: one larger than a training window gets slots that large.
    val = build_val_loader(_spec(sample_dirs["imagefolder"], "imagefolder"), 0, 1)
    small = [x for x, _ in val.batches(4)]
    large = [x for x, _ in val.batches(300)]  # 300 > WINDOW (256) samples per slot
    assert np.array_equal(np.concatenate(small), np.concatenate(large))
    val.close()


def test_too_small_dev_shm_is_a_clear_error(sample_dirs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import convit.data.loader as loader_module

    monkeypatch.setattr(loader_module, "_shm_free", lambda: 64 << 20)  # Docker's default /dev/shm
    loader = build_train_loader(_spec(sample_dirs["imagefolder"], "imagefolder", "data.workers=2"), 0, 1)
    with pytest.raises(DataError, match=r"/dev/shm has 64 MiB free; 2 decode workers need 147 MiB"):
        next(loader.epoch(0))
    loader.close()


def _corrupt_set(root: Path) -> dict[str, bytes]:
    good = Path(next(iter(sorted(root.glob("img/train/*/*.JPEG"))))).read_bytes()
    sof = good.find(b"\xff\xc0")
    huge = bytearray(good)
    huge[sof + 5 : sof + 9] = (9000).to_bytes(2, "big") + (9000).to_bytes(2, "big")  # claims 81 MP
    return {
        "truncated.JPEG": good[: len(good) // 3],
        "empty.JPEG": b"",
        "garbage.JPEG": os.urandom(3000),
        "huge.JPEG": bytes(huge),
    }


def test_corrupt_images_are_skipped_counted_and_reported(
    sample_dirs: dict[str, str], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = Path(sample_dirs["root"])
    store = open_storage(f"file://{tmp_path}/mixed")
    for key in open_storage(sample_dirs["imagefolder"]).list():
        store.put(key, (Path(root / "img") / key).read_bytes())
    bad = _corrupt_set(root)
    for name, data in bad.items():
        store.put(f"train/n00000000/{name}", data)
    loader = build_train_loader(_spec(f"file://{tmp_path}/mixed", "imagefolder", "data.workers=2"), 0, 1)
    with caplog.at_level(logging.WARNING, logger="convit.data"):
        batches = list(loader.epoch(0))
    assert len(batches) == loader.steps_per_epoch == 39 // 4
    assert all(np.isfinite(x).all() for x, _ in batches)
    reported = {name for name in bad if f"train/n00000000/{name}" in caplog.text}
    expected_in_epoch = loader.skipped
    assert expected_in_epoch >= 1 and len(reported) == expected_in_epoch  # every skip named once
    loader.close()


def test_decode_refuses_bad_inputs() -> None:
    with pytest.raises(UndecodableImage, match="empty"):
        decode(b"")
    with pytest.raises(UndecodableImage):
        decode(b"\xff\xd8\xff" + b"\x00" * 100)
    image = simplejpeg.encode_jpeg(np.zeros((40, 30, 3), np.uint8), colorspace="RGB")
    assert decode(image).shape == (40, 30, 3)


def test_eval_transform_crop_math() -> None:
    image = simplejpeg.encode_jpeg(np.full((300, 400, 3), 128, np.uint8), colorspace="RGB")
    out = eval_sample(image, crop_pct=0.875)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8  # resized to 256x341, centre 224


def test_mixup_and_label_smoothing_targets() -> None:
    rng = np.random.default_rng(0)
    labels = np.array([0, 1, 2, 3], np.int32)
    smooth = smooth_one_hot(labels, 10, 0.1)
    assert np.allclose(smooth.sum(1), 1.0) and np.isclose(smooth[0, 0], 0.91) and np.isclose(smooth[0, 1], 0.01)
    images = rng.standard_normal((4, 3, 224, 224)).astype(np.float32)
    for _ in range(5):
        _, targets = mix_batch(
            images.copy(),
            labels,
            num_classes=10,
            smoothing=0.1,
            mixup_alpha=0.2,
            cutmix_alpha=1.0,
            switch_prob=0.5,
            rng=rng,
        )
        assert np.allclose(targets.sum(1), 1.0)
        assert np.all(targets[:, 4:] <= 0.01 + 1e-6)  # mass only on the batch's own (and smoothed) classes


def test_reads_retry_through_injected_server_errors(
    sample_dirs: dict[str, str],
    bucket: str,
    s3: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    src = open_storage(sample_dirs["shards"])
    dst = open_storage(f"s3://{bucket}/shards")
    for key in src.list():
        dst.put(key, src.get(key))
    clean = list(build_train_loader(_spec(f"s3://{bucket}/shards", "shards"), 0, 1).epoch(0))
    with fault_proxy(s3["AWS_ENDPOINT_URL_S3"], rate=0.3, seed=3) as (endpoint, proxy):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        monkeypatch.setenv("CONVIT_S3_RETRY_SECONDS", "60")
        with caplog.at_level(logging.WARNING):
            loader = build_train_loader(_spec(f"s3://{bucket}/shards", "shards"), 0, 1)
            faulty = list(loader.epoch(0))
            loader.close()
        # The driver process's own reads (index, table) log here; worker retries log in the workers.
        assert sum(proxy.injected.values()) > 0
    assert len(faulty) == len(clean)
    for (xa, ya), (xb, yb) in zip(clean, faulty, strict=True):
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb)


def test_outage_longer_than_the_budget_is_one_clear_error(
    bucket: str, s3: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    open_storage(f"s3://{bucket}").put("k", b"v")
    with fault_proxy(s3["AWS_ENDPOINT_URL_S3"]) as (endpoint, proxy):
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        monkeypatch.setenv("CONVIT_S3_RETRY_SECONDS", "3")
        proxy.outage(30)
        with caplog.at_level(logging.WARNING, logger="convit.storage"), pytest.raises(StorageError) as info:
            open_storage(f"s3://{bucket}").get("k")
        assert "still failing after" in str(info.value) and "ServiceUnavailable" in str(info.value)
        assert "retry 1" in caplog.text
        proxy.outage(1.5)  # a short outage inside the budget is ridden out
        monkeypatch.setenv("CONVIT_S3_RETRY_SECONDS", "20")
        assert open_storage(f"s3://{bucket}").get("k") == b"v"


def test_missing_bucket_prefix_or_index_are_clear_errors(
    s3: dict[str, str], bucket: str, sample_dirs: dict[str, str]
) -> None:
    with pytest.raises(DataError, match="bucket 'no-such-bucket' does not exist"):
        build_train_loader(_spec("s3://no-such-bucket/x", "shards"), 0, 1)
    with pytest.raises(DataError, match="no images under"):
        build_train_loader(_spec(f"s3://{bucket}/nothing-here", "imagefolder"), 0, 1)
    with pytest.raises(DataError, match="no shard index"):
        build_train_loader(_spec(sample_dirs["imagefolder"], "shards"), 0, 1)
    with pytest.raises(DataError, match="cannot fill one global batch"):
        build_train_loader(_spec(sample_dirs["imagefolder"], "imagefolder", "train.batch_size=64"), 0, 1)
    val = build_val_loader(_spec(sample_dirs["shards"], "shards"), 0, 1)
    assert val.num_samples == 10 and sum(len(y) for _, y in val.batches(4)) == 10
    val.close()


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    assert data_main(["prepare", "--src", f"file://{tmp_path}/empty", "--dst", f"file://{tmp_path}/out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: no images under") and err.count("\n") == 1
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "train" / "x.JPEG").write_bytes(b"x")
    assert data_main(["prepare", "--src", f"file://{tmp_path}/flat", "--dst", f"file://{tmp_path}/out"]) == 1
    assert "malformed ImageFolder tree" in capsys.readouterr().err
    assert data_main(["prepare", "--src", f"file://{tmp_path}/missing", "--dst", f"file://{tmp_path}/o"]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert data_main(["make-sample", "--dst", f"file://{tmp_path}/s", "--classes", "0"]) == 1
    assert data_main(["prepare", "--src", f"file://{tmp_path}/flat", "--dst", "x", "--shard-size", "huge"]) == 1


def test_prepare_resumes_after_an_interruption(sample_dirs: dict[str, str], tmp_path: Path) -> None:
    dst = f"file://{tmp_path}/shards"
    assert (
        data_main(["prepare", "--src", sample_dirs["imagefolder"], "--dst", dst, "--shard-size", "100KB", "--quiet"])
        == 0
    )
    store = open_storage(dst)
    first = {k: store.get(k) for k in store.list() if k.endswith(".shard")}
    victim = sorted(first)[1]
    store.delete("index.json")
    store.put(victim, b"half")  # an interrupted upload: size and checksum no longer match the marker
    mtimes = {k: (tmp_path / "shards" / k).stat().st_mtime_ns for k in first}
    assert (
        data_main(["prepare", "--src", sample_dirs["imagefolder"], "--dst", dst, "--shard-size", "100KB", "--quiet"])
        == 0
    )
    assert {k: store.get(k) for k in first} == first
    rewritten = [k for k in first if (tmp_path / "shards" / k).stat().st_mtime_ns != mtimes[k]]
    assert rewritten == [victim] and store.exists("index.json")


def test_data_tools_take_the_job_specs_storage_settings(
    bucket: str, s3: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m convit.data --endpoint URL` as the job spec's storage.endpoint (checked the same way): a sample is
    written to a real S3 server named only by the flag; an endpoint with credentials in it is one ERROR line."""
    from convit.data.__main__ import main as data_main
    from convit.storage import open_storage

    endpoint = s3["AWS_ENDPOINT_URL_S3"]
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    args = ["make-sample", "--dst", f"s3://{bucket}/sample", "--classes", "2", "--per-class", "2"]
    assert data_main([*args, "--endpoint", endpoint, "--addressing-style", "path"]) == 0
    assert capsys.readouterr().out.startswith("wrote 14 images (2 classes)")  # 2 x (2 train + 5 val)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    assert len([k for k in open_storage(f"s3://{bucket}/sample").list() if k.endswith(".JPEG")]) == 14
    assert data_main([*args, "--endpoint", "http://key:secret@" + endpoint.split("://", 1)[1]]) == 1
    err = capsys.readouterr().err
    assert err.startswith("ERROR: --endpoint:") and "secret" not in err and err.count("\n") == 1
