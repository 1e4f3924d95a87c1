"""Serving throughput and latency: `python -m convit.serve` on the exported ONNX model under 1, 4 and 16 concurrent
clients, next to onnxruntime called directly in this process, in one run.

    .venv/bin/python bench/serve.py [--onnx MODEL.onnx] [--concurrency 1 4 16] [--requests 48] [--seconds 8]

The model is convit_tiny (1000 classes; random weights unless --onnx names an export with its sidecar), exported
with `python -m convit.export --format onnx` (dynamic batch). Clients send one real photograph per request
(matplotlib's sample photographs and crops of them, JPEG/PNG) as the raw body of POST /v1/classify, on a new
connection each, back to back, for --seconds or --requests per client at least. Direct: onnxruntime's
InferenceSession on the same file with the server's session options (a thread per core), batch 16 (images/s) and
batch 1 (the goals' references), and the server's lanes (one single-threaded session per core, batch 8 each), measured
before each concurrency level and after the last (the machine is shared), plus the decode + preprocessing of one image
(convit.inference.images.preprocess, what the server runs), median of --steps calls. Goals (issue 18): at
concurrency 16, >= 0.85x the direct batch-16 throughput; at concurrency 1, p50 <= 1.2x (one direct batch-1 call +
one decode). The clients run in this process (threads), on the same cores as the server.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def photographs() -> list[bytes]:
    import cv2
    from matplotlib import cbook

    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    parcel = Path(cbook.get_sample_data("Minduka_Present_Blue_Pack.png", asfileobj=False)).read_bytes()
    pixels = cv2.imdecode(np.frombuffer(hopper, np.uint8), cv2.IMREAD_COLOR)
    crops = [pixels[150:450, :], pixels[:, 100:400], pixels[50:550, 20:500]]
    return [hopper, parcel, *(bytes(cv2.imencode(".jpg", c, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]) for c in crops)]


def export_model(work: Path) -> Path:
    """A random-init convit_tiny, saved and exported by `python -m convit.export` in child processes (MindSpore
    stays out of this process, whose onnxruntime is the direct reference)."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    save = (
        "import mindspore as ms; from convit.models import create_model; ms.set_context(mode=ms.GRAPH_MODE); "
        "ms.set_device('CPU'); ms.set_seed(0); "
        f"ms.save_checkpoint(create_model('convit_tiny', drop_path_rate=0.0), {str(work / 'convit_tiny.ckpt')!r})"
    )
    out = work / "convit_tiny.onnx"
    for argv in (
        ["-c", save],
        ["-m", "convit.export", "--weights", str(work / "convit_tiny.ckpt"), "--format", "onnx", "--output", str(out)],
    ):
        subprocess.run([sys.executable, *argv], cwd=root, check=True)
    return out


def median_seconds(fn: Any, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def direct(model: Path, images: list[bytes], steps: int) -> dict[str, float]:
    import onnxruntime as ort

    from convit.inference.images import preprocess
    from convit.serve.runtime import usable_cores

    options = ort.SessionOptions()  # the server's options (convit/serve/runtime.py): no busy-waiting threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    rows = np.stack([preprocess(images[i % len(images)], 0.875) for i in range(16)])
    batch16 = median_seconds(lambda: session.run(["logits"], {"image": rows}), steps)
    batch1 = median_seconds(lambda: session.run(["logits"], {"image": rows[:1]}), steps * 2)
    decode = statistics.median(
        median_seconds(lambda data=data: preprocess(data, 0.875), max(3, steps // 2), 1) for data in images
    )
    # The server's lanes: one single-threaded session per core, each on its own batch of 8, side by side.
    cores = usable_cores()
    options.intra_op_num_threads = 1
    lanes = [ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"]) for _ in range(cores)]

    def side_by_side() -> None:
        threads = [threading.Thread(target=lane.run, args=(["logits"], {"image": rows[:8]})) for lane in lanes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    lanes_ips = 8 * cores / median_seconds(side_by_side, max(3, steps // 2))
    return {"batch16_ips": 16 / batch16, "batch1_s": batch1, "decode_s": decode, "lanes_ips": lanes_ips}


def load(port: int, images: list[bytes], clients: int, seconds: float, requests: int) -> dict[str, float]:
    from tests.support.serve_client import classify_one

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    start_gate = threading.Barrier(clients)

    def client(c: int) -> None:
        start_gate.wait()
        began = time.perf_counter()
        i = 0
        while i < requests or time.perf_counter() - began < seconds:
            data = images[(c + i) % len(images)]
            t0 = time.perf_counter()
            answer = classify_one(port, data)
            elapsed = time.perf_counter() - t0
            with lock:
                (latencies.append(elapsed) if answer.status == 200 else errors.append(repr(answer)))
            i += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, e.g. {errors[0]}")
    ordered = sorted(latencies)
    return {
        "ips": len(latencies) / wall,
        "p50": ordered[len(ordered) // 2],
        "p99": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
        "n": len(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--onnx", type=Path, help="an exported model with its sidecar (default: export one)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=24, help="per client, at least")
    parser.add_argument("--seconds", type=float, default=8.0, help="per concurrency level, at least")
    parser.add_argument("--steps", type=int, default=15)
    args = parser.parse_args()

    from tests.support.serve_client import ServerProcess, classify_one, metric

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        model = args.onnx or export_model(work)
        images = photographs()
        server = ServerProcess(["--weights", str(model)], work / "server.log")
        try:
            server.wait_ready()
            for data in images:  # first requests: thread pools, allocations
                assert classify_one(server.port, data).status == 200
            refs = [direct(model, images, args.steps)]
            rows = []
            for clients in args.concurrency:
                before = (metric(server.port, "convit_serve_batch_size_sum"),
                          metric(server.port, "convit_serve_batch_size_count"))  # fmt: skip
                result = load(server.port, images, clients, args.seconds, max(1, args.requests // clients))
                after = (metric(server.port, "convit_serve_batch_size_sum"),
                         metric(server.port, "convit_serve_batch_size_count"))  # fmt: skip
                result["mean_batch"] = (after[0] - before[0]) / max(1.0, after[1] - before[1])
                rows.append((clients, result))
                print(f"c={clients}: {result}", file=sys.stderr, flush=True)
                # direct again after each level: the machine is shared and its load drifts; each level is compared
                # with the mean of the direct figures measured just before and just after it
                refs.append(direct(model, images, args.steps))
        finally:
            code = server.stop()
            if code != 0:
                print(server.text(), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print("direct onnxruntime, measured before each level and after the last: batch 16 "
          + " / ".join(f"{r['batch16_ips']:.1f}" for r in refs) + " images/s; batch 1 "
          + " / ".join(f"{r['batch1_s'] * 1000:.1f}" for r in refs) + " ms; decode + preprocess "
          + " / ".join(f"{r['decode_s'] * 1000:.1f}" for r in refs) + " ms; single-threaded sessions side by side "
          + "(one per core, batch 8 each) " + " / ".join(f"{r['lanes_ips']:.1f}" for r in refs)
          + " images/s")  # fmt: skip
    print()
    print("| clients | images/s | direct batch 16 images/s | ratio | p50 ms | p99 ms | direct batch 1 + decode ms "
          "| p50 ratio | mean batch |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for i, (clients, r) in enumerate(rows):
        batch16 = (refs[i]["batch16_ips"] + refs[i + 1]["batch16_ips"]) / 2
        one = sum(refs[j]["batch1_s"] + refs[j]["decode_s"] for j in (i, i + 1)) / 2
        print(
            f"| {clients} | {r['ips']:.1f} | {batch16:.1f} | {r['ips'] / batch16:.2f}x | {r['p50'] * 1000:.1f} "
            f"| {r['p99'] * 1000:.1f} | {one * 1000:.1f} | {r['p50'] / one:.2f}x | {r['mean_batch']:.1f} |"
        )


if __name__ == "__main__":
    main()
