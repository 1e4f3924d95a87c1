"""Images/s of the data pipeline, side by side in one run, on generated ImageNet-sized JPEGs.

    .venv/bin/python bench/data_pipeline.py [--images 512] [--workers 2] [--batch 32]

Rows: raw simplejpeg decode from local disk (the ceiling); decode + RandomResizedCrop + flip + normalize in one
process (the per-core figure); the full training transform of the recipe (colour jitter, random erasing,
mixup/cutmix) through the loader from a local ImageFolder, from S3 shards and from an S3 ImageFolder (a real
moto S3 server on loopback, started here); and MindCV 0.3.0's own ImageNet pipeline on the same files.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_images(root: Path, count: int, classes: int = 8) -> None:
    import simplejpeg

    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        # Smooth structure plus noise: compresses like a photo (about 110 KB at 500x375, quality 90).
        yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
        base = 128 + 60 * np.sin(xx / (20 + i % 13))[..., None] * np.cos(yy / (15 + i % 7))[..., None]
        image = np.clip(base + rng.normal(0, 25, (375, 500, 3)), 0, 255).astype(np.uint8)
        (folder / f"img_{i:05d}.JPEG").write_bytes(simplejpeg.encode_jpeg(image, quality=90, colorspace="RGB"))
    for c in range(classes):
        val = root / "val" / f"n{c:08d}"
        val.mkdir(parents=True, exist_ok=True)
        src = next((root / "train" / f"n{c:08d}").iterdir())
        (val / src.name).write_bytes(src.read_bytes())


def rate(count: int, seconds: float) -> float:
    return count / seconds


def loader_rate(uri: str, layout: str, workers: int, batch: int) -> float:
    from convit.data import build_train_loader
    from convit.jobspec import load_job

    spec = load_job(
        "convit_tiny",
        [f"data.uri={uri}", f"data.layout={layout}", f"data.workers={workers}", f"train.batch_size={batch}"],
    )
    loader = build_train_loader(spec, 0, 1)
    list(loader.epoch(0))  # warm-up: starts the workers, fills caches of the storage server
    start = time.perf_counter()
    n = sum(len(x) for x, _ in loader.epoch(1))
    seconds = time.perf_counter() - start
    loader.close()
    return rate(n, seconds)


def mindcv_rate(root: Path, workers: int, batch: int) -> float:
    from mindcv.data import create_dataset, create_loader, create_transforms

    def run() -> tuple[int, float]:
        dataset = create_dataset(name="", root=str(root), split="train", shuffle=True, num_parallel_workers=workers)
        transforms = create_transforms(dataset_name="imagenet", image_resize=224, is_training=True, re_prob=0.25)
        loader = create_loader(
            dataset=dataset,
            batch_size=batch,
            drop_remainder=True,
            is_training=True,
            transform=transforms,
            num_parallel_workers=workers,
            num_classes=8,
        )
        start = time.perf_counter()
        n = 0
        for images, _ in loader.create_tuple_iterator(output_numpy=True):
            n += len(images)
        return n, time.perf_counter() - start

    run()
    n, seconds = run()
    return rate(n, seconds)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    import simplejpeg

    from convit.data.__main__ import main as data_main
    from convit.data.order import epoch_rng
    from convit.data.transforms import TrainAugment, normalize, train_sample
    from convit.storage import open_storage
    from tests.support.s3server import s3_env, s3_server

    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    make_images(tmp / "img", args.images)
    files = sorted((tmp / "img" / "train").rglob("*.JPEG"))
    blobs = [f.read_bytes() for f in files]
    rows: list[tuple[str, float, int]] = []

    start = time.perf_counter()
    for blob in blobs:
        simplejpeg.decode_jpeg(blob, colorspace="RGB")
    rows.append(("raw decode, local disk (simplejpeg, full size)", rate(len(blobs), time.perf_counter() - start), 1))

    aug = TrainAugment(color_jitter=0.0, re_prob=0.0)
    start = time.perf_counter()
    for i, blob in enumerate(blobs):
        image, _ = train_sample(blob, aug, epoch_rng(0, 0, i))
        normalize(image[None])
    rows.append(("decode + crop + flip + normalize, 1 process", rate(len(blobs), time.perf_counter() - start), 1))

    w = args.workers
    rows.append(
        ("full train transform, local ImageFolder", loader_rate(f"file://{tmp}/img", "imagefolder", w, args.batch), w)
    )
    with s3_server(tmp) as endpoint:
        os.environ.update(s3_env(endpoint))
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        dst = open_storage("s3://bench/img")
        for key in open_storage(f"file://{tmp}/img").list():
            dst.put(key, (tmp / "img" / key).read_bytes())
        data_main(
            ["prepare", "--src", f"file://{tmp}/img", "--dst", "s3://bench/shards", "--shard-size", "16MB", "--quiet"]
        )
        rows.append(
            ("full train transform, S3 shards (moto)", loader_rate("s3://bench/shards", "shards", w, args.batch), w)
        )
        rows.append(
            (
                "full train transform, S3 ImageFolder (moto)",
                loader_rate("s3://bench/img", "imagefolder", w, args.batch),
                w,
            )
        )
    rows.append(("MindCV 0.3.0 pipeline, local ImageFolder", mindcv_rate(tmp / "img", w, args.batch), w))

    print(f"{args.images} JPEGs of 500x375 (q90), batch {args.batch}, {w} decode workers, {os.cpu_count()} cores")
    print(f"{'pipeline':<50}{'images/s':>10}{'per core':>10}")
    for label, value, cores in rows:
        print(f"{label:<50}{value:>10.0f}{value / min(cores, os.cpu_count() or 1):>10.0f}")
    local = rows[2][1]
    print(f"S3 shards / local ImageFolder: {rows[3][1] / local:.2f}; S3 ImageFolder / local: {rows[4][1] / local:.2f}")


if __name__ == "__main__":
    main()
