"""Throughput of the full trainer (data + step) against the bare step, and checkpoint cost against a step.

    .venv/bin/python bench/train_step.py [--model convit_tiny] [--batch 16] [--steps 8]

Prints, side by side, for one process on this machine's CPU:
  - bare step:    median seconds of the graph-mode training step on tensors already in memory;
  - full trainer: median seconds per step of Trainer.run's loop, data pipeline included (local ImageFolder);
  - checkpoint:   local save (model + AdamW state), upload to file:// and to a real S3 server (moto, loopback),
                  and the mean stall a background upload adds to the steps that overlap it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="convit_tiny")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    import mindspore as ms

    from convit.data.__main__ import main as data_main
    from convit.jobspec import load_job
    from convit.train.checkpoints import CheckpointStore
    from convit.train.loop import Trainer
    from convit.train.runtime import init_runtime
    from convit.train.step import drop_noise
    from tests.support.s3server import s3_env, s3_server

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    per_class = max(4, (args.batch * (args.steps + 3)) // 4 + 1)
    data_main(
        [
            "make-sample",
            "--dst",
            f"file://{tmp}/data",
            "--classes",
            "4",
            "--per-class",
            str(per_class),
            "--val-per-class",
            "1",
        ]
    )
    spec = load_job(
        args.model,
        [
            f"train.batch_size={args.batch}",
            "train.epochs=50",  # a schedule longer than the steps run here (the LR table is indexed by step)
            "train.warmup_epochs=1",
            "data.layout=imagefolder",
            f"data.uri=file://{tmp}/data",
            f"data.workers={args.workers}",
            f"checkpoint.uri=file://{tmp}/ckpt",
            "logging.interval_steps=1",
            f"train.max_steps={args.steps + 2}",
            "model.num_classes=4",  # the sample's classes
        ],
    )
    runtime = init_runtime("CPU")
    trainer = Trainer(spec, runtime)
    step = trainer.train_step
    images = ms.Tensor(np.random.rand(args.batch, 3, 224, 224).astype(np.float32))
    targets = ms.Tensor(np.eye(spec.model.num_classes, dtype=np.float32)[np.arange(args.batch) % 4])
    noise = ms.Tensor(drop_noise(trainer.model, args.batch, np.random.default_rng(0)))
    step(images, targets, noise).asnumpy()  # compile
    bare = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step(images, targets, noise).asnumpy()
        bare.append(time.perf_counter() - t)

    # Full loop: the trainer's own progress timing (data wait included), first two steps dropped as warm-up.
    loader = trainer.train_loader
    full = []
    batches = loader.epoch(0, 0)
    t = time.perf_counter()
    for i, (x, y) in enumerate(batches):
        step(ms.Tensor(x), ms.Tensor(y), noise).asnumpy()
        now = time.perf_counter()
        if i >= 2:
            full.append(now - t)
        t = now
        if len(full) >= args.steps:
            break
    loader.close()

    # Checkpoint: local save, then uploads to file:// and to S3, and the stall of an overlapped upload.
    ckpt_local = tmp / "save.ckpt"
    t = time.perf_counter()
    trainer._write_checkpoint(ckpt_local)
    save_s = time.perf_counter() - t
    size_mb = ckpt_local.stat().st_size / 1e6
    uploads: dict[str, float] = {}
    stalls: dict[str, float] = {}
    with s3_server(tmp) as endpoint:
        os.environ.update(s3_env(endpoint))
        import boto3

        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        for label, uri in (("file://", f"file://{tmp}/ckpt-up"), ("s3 (moto)", "s3://bench/ckpt")):
            store = CheckpointStore(uri, tmp / "stage", keep_last=100)
            meta = {"epoch": 0, "epoch_step": 0, "model": args.model, "top1": None}
            t = time.perf_counter()
            store.save(lambda p: p.write_bytes(ckpt_local.read_bytes()), {"step": 1, **meta}, background=False)
            uploads[label] = time.perf_counter() - t
            # baseline right before, then a background upload with the steps that run meanwhile
            quiet = []
            for _ in range(4):
                s = time.perf_counter()
                step(images, targets, noise).asnumpy()
                quiet.append(time.perf_counter() - s)
            store.save(lambda p: p.write_bytes(ckpt_local.read_bytes()), {"step": 2, **meta}, background=True)
            overlapped = []
            while (store._upload is not None and store._upload.is_alive()) or not overlapped:
                s = time.perf_counter()
                step(images, targets, noise).asnumpy()
                overlapped.append(time.perf_counter() - s)
            store.wait()
            stalls[label] = statistics.mean(overlapped) - statistics.median(quiet)

    b, f = statistics.median(bare), statistics.median(full)
    print(f"model {args.model}, batch {args.batch}, CPU, one process, {os.cpu_count()} cores")
    print(f"{'measure':<44}{'seconds':>10}{'vs bare step':>14}")
    print(f"{'bare training step (median)':<44}{b:>10.3f}{1.0:>14.2f}")
    print(f"{'full trainer step, data included (median)':<44}{f:>10.3f}{f / b:>14.2f}")
    print(f"{f'checkpoint local save ({size_mb:.0f} MB)':<44}{save_s:>10.3f}{save_s / b:>14.2f}")
    for label in uploads:
        print(f"{f'checkpoint upload to {label}':<44}{uploads[label]:>10.3f}{uploads[label] / b:>14.2f}")
        print(f"{f'  stall per overlapped step ({label})':<44}{stalls[label]:>10.3f}{stalls[label] / b:>14.2f}")
    print(f"images/s: bare {args.batch / b:.1f}, full trainer {args.batch / f:.1f}")


if __name__ == "__main__":
    main()
