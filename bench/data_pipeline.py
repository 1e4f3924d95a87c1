"""The training input pipeline, ours beside MindCV 0.3.0's, in one run on the same generated ImageNet-sized JPEGs.

    .venv/bin/python bench/data_pipeline.py [--recipe convit_tiny] [--images 512] [--batch 32] [--workers 1,2,4]
                                            [--profile] [--s3]

Both pipelines run the recipe's full training transform from a local ImageFolder: MindCV's exactly as its
train.py builds it from the recipe (RandomCropDecodeResize bicubic, flip, RandomColorAdjust or AutoAugment,
Normalize, HWC2CHW, RandomErasing, batch, Mixup/CutMix), ours through `build_train_loader` (the same transform,
mixup/cutmix and label smoothing included). For each number of decode workers the table gives images/s (wall
clock) and images per CPU-second: the CPU time of every process and thread of the pipeline (ours: the trainer
process and its decode workers; MindCV: its process, whose C++ threads do the work), which is the per-core
figure and, unlike the wall clock, does not move when other jobs share the machine. The ratio is ours / MindCV.

--profile adds where our time goes: per stage in one process (fetch, decode, crop + resize, flip, colour jitter
or AutoAugment, erasing, normalise, mixup/cutmix, transfer to the trainer) and per process in the loader.
--s3 adds our loader from S3 shards and from an S3 ImageFolder (a moto server on loopback, started here).
"""

from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TICK = os.sysconf("SC_CLK_TCK")


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def queue_wait(pids: list[int]) -> float:
    """Seconds the threads of these processes spent runnable but waiting for a CPU (/proc/<pid>/task/*/schedstat):
    on a shared machine, the part of the wall clock that other jobs took."""
    total = 0
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                total += int((task / "schedstat").read_text().split()[1])
            except (FileNotFoundError, ProcessLookupError):
                continue
    return total / 1e9


class Run:
    """images, wall seconds and CPU seconds of one measured epoch; cpu_split names where the CPU time went."""

    def __init__(self, images: int, wall: float, cpu: float, cpu_split: dict[str, float], waited: float) -> None:
        self.images, self.wall, self.cpu, self.cpu_split, self.waited = images, wall, cpu, cpu_split, waited

    @property
    def rate(self) -> float:
        return self.images / self.wall

    @property
    def per_cpu(self) -> float:
        return self.images / self.cpu


def ours(uri: str, layout: str, recipe: str, workers: int, batch: int) -> Run:
    from convit.data import build_train_loader
    from convit.jobspec import load_job

    spec = load_job(
        recipe, [f"data.uri={uri}", f"data.layout={layout}", f"data.workers={workers}", f"train.batch_size={batch}"]
    )
    loader = build_train_loader(spec, 0, 1)
    try:
        list(loader.epoch(0))  # warm-up: starts the workers, fills the page cache or the storage server's
        assert loader._workers is not None and loader._workers.pool is not None
        pids = [p.pid for p in loader._workers.pool._pool]  # type: ignore[attr-defined]
        before, waited = [cpu_seconds(p) for p in pids], queue_wait([os.getpid(), *pids])
        main0, start = time.process_time(), time.perf_counter()
        n = sum(len(x) for x, _ in loader.epoch(1))
        wall, main = time.perf_counter() - start, time.process_time() - main0
        work = sum(cpu_seconds(p) - b for p, b in zip(pids, before, strict=True))
        waited = queue_wait([os.getpid(), *pids]) - waited
    finally:
        loader.close()
    return Run(n, wall, main + work, {"trainer process": main, "decode workers": work}, waited)


def mindcv(root: Path, recipe: str, workers: int, batch: int) -> Run:
    """MindCV 0.3.0's training loader exactly as its train.py builds it from the recipe."""
    import mindspore.dataset as ds
    from mindcv.data import create_dataset, create_loader, create_transforms

    from convit.jobspec import load_job

    spec = load_job(recipe, [])
    a = spec.augment
    ds.config.set_seed(spec.train.seed)

    workers = min(workers, os.cpu_count() or 1)  # MindSpore refuses more parallel workers than cores

    def run() -> tuple[int, float, float]:
        dataset = create_dataset(name="", root=str(root), split="train", shuffle=True, num_parallel_workers=workers)
        transforms = create_transforms(
            dataset_name="imagenet",
            is_training=True,
            image_resize=224,
            scale=(a.scale_min, 1.0),
            ratio=(0.75, 1.333),
            hflip=a.hflip,
            color_jitter=a.color_jitter,
            interpolation="bicubic",
            auto_augment=a.auto_augment or None,
            re_prob=a.re_prob,
        )
        loader = create_loader(
            dataset=dataset,
            batch_size=batch,
            drop_remainder=True,
            is_training=True,
            mixup=a.mixup,
            cutmix=a.cutmix,
            cutmix_prob=1.0,  # the recipes' cutmix_prob
            num_classes=spec.model.num_classes,
            transform=transforms,
            num_parallel_workers=workers,
        )
        cpu0, start = time.process_time(), time.perf_counter()
        n = 0
        for images, _ in loader.create_tuple_iterator(output_numpy=True, num_epochs=1):
            n += len(images)
        return n, time.perf_counter() - start, time.process_time() - cpu0

    run()
    n, wall, cpu = run()
    # (no run-queue figure: MindSpore's pipeline threads end, and take their counters with them, before the last
    # batch is read)
    return Run(n, wall, cpu, {f"MindCV process (all threads, {workers} parallel workers)": cpu}, 0.0)


def timed(label: str, count: int, fn: Callable[[int], Any], rows: list[tuple[str, float]]) -> list[Any]:
    start = time.process_time()  # CPU time: steadier than the wall clock on a shared machine
    out = [fn(i) for i in range(count)]
    rows.append((label, (time.process_time() - start) / count * 1e3))
    return out


def profile(files: list[Path], recipe: str, batch: int) -> list[tuple[str, float]]:
    """Milliseconds per image of each stage of our training transform, one process, same order as the loader."""
    import cv2

    from convit.data.autoaugment import auto_augment
    from convit.data.decode import decode, image_size
    from convit.data.mixup import mix_batch
    from convit.data.order import epoch_rng
    from convit.data.transforms import (
        color_jitter,
        erasing_box,
        normalize,
        random_resized_crop_box,
        resized_crop,
    )
    from convit.jobspec import load_job

    spec = load_job(recipe, [])
    a, n = spec.augment, len(files)
    rows: list[tuple[str, float]] = []
    blobs = timed("fetch (local file read)", n, lambda i: files[i].read_bytes(), rows)
    rngs = [epoch_rng(0, 0, i) for i in range(n)]
    boxes = timed(
        "crop box (header + draws)",
        n,
        lambda i: random_resized_crop_box(*image_size(blobs[i]), a.scale_min, rngs[i]),
        rows,
    )
    timed("decode, full image (reference only)", n, lambda i: decode(blobs[i]), rows)
    crops = timed("decode + crop + resize 224 bicubic", n, lambda i: resized_crop(blobs[i], boxes[i]), rows)
    flips = timed(
        "horizontal flip", n, lambda i: cv2.flip(crops[i], 1) if rngs[i].random() < a.hflip else crops[i], rows
    )
    if a.auto_augment:
        augs = timed("AutoAugment", n, lambda i: auto_augment(flips[i], rngs[i], magnitude_std=0.5), rows)
    else:
        augs = timed("colour jitter", n, lambda i: color_jitter(flips[i], a.color_jitter, rngs[i]), rows)
    ebox = timed("erasing box", n, lambda i: erasing_box(rngs[i], a.re_prob), rows)
    windows = [np.stack(augs[i : i + batch]) for i in range(0, n - batch + 1, batch)]
    transfer = [(w, np.array(ebox[: len(w)], np.int32)) for w in windows]
    start = time.process_time()
    received = [pickle.loads(pickle.dumps(t, protocol=pickle.HIGHEST_PROTOCOL)) for t in transfer]
    rows.append(("transfer to the trainer (pickle round trip)", (time.process_time() - start) / n * 1e3))
    labels = np.arange(batch) % 8
    norm = mix = 0.0
    for j, (w, b) in enumerate(received):  # one batch at a time, as the loader does
        start = time.process_time()
        x = normalize(w, b)
        norm += time.process_time() - start
        start = time.process_time()
        mix_batch(
            x,
            labels,
            num_classes=spec.model.num_classes,
            smoothing=spec.train.label_smoothing,
            mixup_alpha=a.mixup,
            cutmix_alpha=a.cutmix,
            switch_prob=a.mixup_switch_prob,
            rng=epoch_rng(0, 0, 0, j, 7),
        )
        mix += time.process_time() - start
    rows.append(("normalise + erasing (trainer)", norm / n * 1e3))
    rows.append(("mixup/cutmix + label smoothing (trainer)", mix / n * 1e3))
    return rows


def s3_rows(tmp: Path, recipe: str, workers: int, batch: int) -> list[tuple[str, Run]]:
    from convit.data.__main__ import main as data_main
    from convit.storage import open_storage
    from tests.support.s3server import s3_env, s3_server

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
        return [
            ("ours, S3 shards (moto)", ours("s3://bench/shards", "shards", recipe, workers, batch)),
            ("ours, S3 ImageFolder (moto)", ours("s3://bench/img", "imagefolder", recipe, workers, batch)),
        ]


def interleaved(tmp: Path, recipe: str, workers: list[int], batch: int) -> Iterator[tuple[int, Run, Run]]:
    for w in workers:
        yield w, ours(f"file://{tmp}/img", "imagefolder", recipe, w, batch), mindcv(tmp / "img", recipe, w, batch)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="convit_tiny")
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--s3", action="store_true")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        run_all(args, tmp, workers)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_all(args: argparse.Namespace, tmp: Path, workers: list[int]) -> None:
    make_images(tmp / "img", args.images)
    files = sorted((tmp / "img" / "train").rglob("*.JPEG"))
    cores = os.cpu_count() or 1
    print(
        f"{args.recipe}: {args.images} JPEGs of 500x375 (q90), batch {args.batch}, {cores} cores, "
        f"load average {os.getloadavg()[0]:.1f} at start"
    )
    if args.profile:
        print("\nour transform per stage, one process (ms per image):")
        for label, ms in profile(files, args.recipe, args.batch):
            print(f"  {label:<48}{ms:>8.3f}")

    print(f"\n{'workers':<9}{'ours img/s':>11}{'MindCV img/s':>14}{'ours img/CPU-s':>16}{'MindCV img/CPU-s':>18}"
          f"{'ratio/core':>12}{'ratio wall':>12}")  # fmt: skip
    results = []
    for w, mine, theirs in interleaved(tmp, args.recipe, workers, args.batch):
        results.append((w, mine, theirs))
        print(
            f"{w:<9}{mine.rate:>11.0f}{theirs.rate:>14.0f}{mine.per_cpu:>16.0f}{theirs.per_cpu:>18.0f}"
            f"{mine.per_cpu / theirs.per_cpu:>12.2f}{mine.rate / theirs.rate:>12.2f}",
            flush=True,
        )
    if any(w > cores for w in workers):
        print(f"(MindCV runs at most {cores} workers here: MindSpore refuses more parallel workers than cores)")
    if args.profile:
        print(
            "\nCPU seconds per process in the measured epoch (ours: and runnable-but-waiting seconds, all processes):"
        )
        for w, mine, theirs in results:
            split = ", ".join(f"{k} {v:.2f}" for k, v in {**mine.cpu_split, **theirs.cpu_split}.items())
            print(f"  {w} workers: {split}; ours waited {mine.waited:.2f} s for a CPU in {mine.wall:.2f} s")
    if args.s3:
        w = workers[min(1, len(workers) - 1)]
        local = next(m for n, m, _ in results if n == w)
        print(f"\nours from S3, {w} workers:")
        for label, run in s3_rows(tmp, args.recipe, w, args.batch):
            print(
                f"  {label:<32}{run.rate:>8.0f} img/s{run.per_cpu:>8.0f} img/CPU-s  {run.rate / local.rate:.2f}x local"
            )


if __name__ == "__main__":
    main()
