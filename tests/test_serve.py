"""`python -m convit.serve`: real server processes on 127.0.0.1 serving real weights (a MindCV-format checkpoint,
and the ONNX model `python -m convit.export` writes, fetched from S3) answer exactly what `convit.predict` answers
on real photographs; concurrent clients are batched; hostile requests get one clear 4xx and the server goes on;
SIGTERM drains. The batcher and the v2 request checks also have fast unit tests."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.support import serve_client as http
from tests.support.inference import NUM_CLASSES, reference_case

# Served logits (onnxruntime on the exported model) against convit.predict's (MindSpore graph mode): measured
# max |difference| 5.7e-6 on these images (logits up to 12.9), at batch 1 and 17; the bound is tests/test_export.py's.
TOLERANCE = 1e-4
MODEL = "convit_tiny"


# ---- fast unit tests: the batcher and the protocol -----------------------------------------------------------


def test_batcher_gathers_concurrent_requests_and_does_not_hold_a_lone_one() -> None:
    from convit.serve.batching import Batcher

    sizes: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        time.sleep(0.02)
        return batch.reshape(len(batch), -1)[:, :2] * 2

    async def scenario() -> tuple[float, list[np.ndarray]]:
        batcher = Batcher(run, max_batch=8, max_wait=0.5, on_batch=sizes.append)
        batcher.start()
        start = time.perf_counter()
        with batcher.expect() as ticket:  # nobody else on the way: runs at once, not after max_wait
            await batcher.submit(np.ones((1, 2), np.float32), ticket)
        lone = time.perf_counter() - start

        async def client(i: int) -> np.ndarray:
            with batcher.expect() as ticket:
                await asyncio.sleep(0.001 * i)  # "decoding"
                return await batcher.submit(np.full((1 + i % 3, 2), i, np.float32), ticket)

        outs = await asyncio.gather(*(client(i) for i in range(10)))
        big = await batcher.submit(np.arange(40, dtype=np.float32).reshape(20, 2))  # cut into 8 + 8 + 4
        await batcher.stop()
        return lone, [*outs, big]

    lone, outs = asyncio.run(scenario())
    assert lone < 0.2, lone
    for i, out in enumerate(outs[:10]):
        np.testing.assert_array_equal(out, np.full((1 + i % 3, 2), 2 * i, np.float32))
    np.testing.assert_array_equal(outs[10], np.arange(40, dtype=np.float32).reshape(20, 2) * 2)
    assert sizes[0] == 1 and max(sizes[1:]) == 8 and sum(sizes) == 1 + sum(1 + i % 3 for i in range(10)) + 20
    assert len(sizes) <= 1 + 4 + 3  # 20 rows of clients in at most 4 batches (items are never split)


def test_batcher_runs_batches_side_by_side_and_a_lone_one_with_every_core() -> None:
    from convit.serve.batching import Batcher

    spans: list[tuple[str, float, float]] = []

    def runner(kind: str) -> Callable[[np.ndarray], np.ndarray]:
        def run(batch: np.ndarray) -> np.ndarray:
            start = time.perf_counter()
            time.sleep(0.2)
            spans.append((kind, start, time.perf_counter()))
            return batch * 2

        return run

    async def scenario() -> list[np.ndarray]:
        batcher = Batcher(runner("lane"), max_batch=2, max_wait=0.0, workers=2, run_alone=runner("alone"))
        batcher.start()
        await batcher.submit(np.ones((1, 2), np.float32))  # nothing else running, queued or on its way
        outs = await asyncio.gather(*(batcher.submit(np.full((1, 2), i, np.float32)) for i in range(4)))
        await batcher.stop()
        return outs

    outs = asyncio.run(scenario())
    assert [float(o[0, 0]) for o in outs] == [0.0, 2.0, 4.0, 6.0]
    assert spans[0][0] == "alone" and len(spans) == 3 and all(kind == "lane" for kind, _, _ in spans[1:])
    (_, a0, a1), (_, b0, b1) = spans[1:]
    assert max(a0, b0) < min(a1, b1), spans  # the two batches of 2 ran at the same time


def test_batcher_passes_runtime_errors_to_every_request_of_the_batch() -> None:
    from convit.errors import ConvitError
    from convit.serve.batching import Batcher

    def run(batch: np.ndarray) -> np.ndarray:
        raise ConvitError("device lost")

    async def scenario() -> list[BaseException | np.ndarray]:
        batcher = Batcher(run, max_batch=4, max_wait=0.01)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit(np.zeros((1, 2), np.float32)) for _ in range(3)), return_exceptions=True
        )
        await batcher.stop()
        return results

    assert all(isinstance(r, ConvitError) for r in asyncio.run(scenario()))


def test_a_pods_cpu_limit_bounds_the_cores_the_server_uses(tmp_path: Path) -> None:
    """The runtime lanes, onnxruntime's threads and the decoders count the cgroup's CPU quota, not the node's cores."""
    from convit.serve.runtime import _cgroup_quota

    (tmp_path / "cpu.max").write_text("250000 100000\n")  # cgroup v2, a limit of 2.5 CPUs
    assert _cgroup_quota(tmp_path) == 2.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert _cgroup_quota(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert _cgroup_quota(v1) == 4.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert _cgroup_quota(v1) is None and _cgroup_quota(tmp_path / "absent") is None


def test_mindspore_runner_pads_to_its_fixed_batch() -> None:
    """The Ascend path (MindSpore at a fixed batch) without an NPU: a stand-in cell records the shapes it gets."""
    from convit.serve.runtime import MindSporeRunner

    seen: list[tuple[int, ...]] = []

    class Cell:
        def __call__(self, x: Any) -> Any:
            seen.append(tuple(x.shape))
            out = x.asnumpy().reshape(x.shape[0], -1)[:, :3]
            return type("T", (), {"asnumpy": lambda self: out})()

    batch = np.random.default_rng(0).random((11, 3, 4, 4)).astype(np.float32)
    out = MindSporeRunner(Cell(), 4)(batch)
    assert seen == [(4, 3, 4, 4)] * 3
    np.testing.assert_array_equal(out, batch.reshape(11, -1)[:, :3])


def _v2(shape: Any, data: Any, **extra: Any) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "image", "datatype": "FP32", "shape": shape, "data": data, **extra}]}
    ).encode()


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{", "malformed JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[]", "JSON object"),
        (b'{"inputs": {}}', "exactly one tensor"),
        (_v2([1, 3, 224], []), "NCHW"),
        (_v2([1, 3, 224, 224], [1.0] * 5), "needs 150528"),
        (_v2([0, 3, 224, 224], []), "1 <= N"),
        (_v2([1, 3, 224, 224], [[1, 2], [3]]), "ragged"),
        (_v2([1, 3, 224, 224], ["a"] * 150528), "numbers only"),
        (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1,3,224,224], "data": [NaN]}]}', "NaN"),
    ],
)
def test_infer_request_checks(body: bytes, fragment: str) -> None:
    from convit.serve.protocol import ApiError, parse_infer

    with pytest.raises(ApiError, match=re.escape(fragment)) as info:
        parse_infer(body, 16)
    assert info.value.status == 400


def test_infer_request_nested_and_flat_data_are_the_same_tensor() -> None:
    from convit.serve.protocol import parse_infer

    tensor = np.random.default_rng(1).random((2, 3, 224, 224)).astype(np.float32)
    flat, _ = parse_infer(_v2([2, 3, 224, 224], tensor.ravel().tolist())[:-1] + b', "id": "r1"}', 16)
    nested, _ = parse_infer(_v2([2, 3, 224, 224], tensor.tolist()), 16)
    np.testing.assert_array_equal(flat, tensor)
    np.testing.assert_array_equal(nested, tensor)


# ---- real servers ----------------------------------------------------------------------------------------------


def photographs() -> list[tuple[str, bytes]]:
    """Real photographs shipped with matplotlib (Grace Hopper's portrait, a photo of a parcel), as files and as
    crops of other shapes and formats (landscape PNG, portrait JPEG, a small image upscaled by the resize)."""
    from matplotlib import cbook

    hopper = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    parcel = Path(cbook.get_sample_data("Minduka_Present_Blue_Pack.png", asfileobj=False)).read_bytes()
    pixels = cv2.imdecode(np.frombuffer(hopper, np.uint8), cv2.IMREAD_COLOR)
    landscape = bytes(cv2.imencode(".png", pixels[150:450, :])[1])
    portrait = bytes(cv2.imencode(".jpg", pixels[:, 100:400], [cv2.IMWRITE_JPEG_QUALITY, 92])[1])
    small = bytes(cv2.imencode(".jpg", pixels[200:380, 150:330])[1])
    return [
        ("grace_hopper.jpg", hopper),
        ("parcel.png", parcel),
        ("hopper-landscape.png", landscape),
        ("hopper-portrait.jpg", portrait),
        ("hopper-small.jpg", small),
    ]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, s3_endpoint: str) -> Iterator[dict[str, Any]]:
    """Two servers: the MindCV-format checkpoint (exported to ONNX in memory by the server), and the ONNX model of
    `python -m convit.export` on S3; plus convit.predict's answers for every image (photographs + reference JPEGs)."""
    import boto3

    from convit.export import main as export_main
    from convit.predict import main as predict_main
    from tests.support.s3server import s3_env

    ref = reference_case()
    root = tmp_path_factory.mktemp("serve")
    env = s3_env(s3_endpoint)
    ckpt_server = http.ServerProcess(["--weights", str(ref["ckpt"]), "--model", MODEL], root / "ckpt.log")
    try:
        bucket = f"serve-{int(time.time() * 1000) % 10**9}"
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"], **_keys(env)).create_bucket(Bucket=bucket)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            assert export_main(["--weights", str(ref["ckpt"]), "--format", "onnx",
                                "--output", f"s3://{bucket}/models/tiny4.onnx"]) == 0  # fmt: skip
        onnx_server = http.ServerProcess(
            ["--weights", f"s3://{bucket}/models/tiny4.onnx", "--max-body-mb", "16", "--max-images", "24"],
            root / "onnx.log", env,
        )  # fmt: skip
        images = [*photographs(), *((f"ref-{i:02d}.jpg", data) for i, data in enumerate(ref["images"]))]
        paths = []
        for name, data in images:
            paths.append(root / name)
            paths[-1].write_bytes(data)
        expected = _predict(predict_main, ref["ckpt"], paths)
        ckpt_server.wait_ready()
        onnx_server.wait_ready()
        yield {"ckpt": ckpt_server, "onnx": onnx_server, "images": images, "expected": expected, "env": env}
        for server in (ckpt_server, onnx_server):
            assert server.stop() == 0, server.text()
    finally:
        for server in [ckpt_server, *([onnx_server] if "onnx_server" in locals() else [])]:
            if server.proc.poll() is None:
                server.stop()


def _keys(env: dict[str, str]) -> dict[str, str]:
    return {"aws_access_key_id": env["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"]}


def _predict(predict_main: Any, ckpt: Path, paths: list[Path]) -> dict[str, dict[str, Any]]:
    """convit.predict --json on every image: {file name: {"order": [class indices], "logits": [per class]}}."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = predict_main(["--weights", str(ckpt), "--top", str(NUM_CLASSES), "--json", *map(str, paths)])
    assert code == 0
    expected = {}
    for result in json.loads(out.getvalue()):
        logits = [0.0] * NUM_CLASSES
        for item in result["top"]:
            logits[item["index"]] = item["logit"]
        expected[Path(result["image"]).name] = {"order": [i["index"] for i in result["top"]], "logits": logits}
    return expected


def _check_classified(result: dict[str, Any], expected: dict[str, Any]) -> float:
    """Same top-K order as convit.predict; the probabilities sum to 1; returns max |logit difference|."""
    top = result["top"]
    assert [item["index"] for item in top] == expected["order"][: len(top)], (result["image"], top)
    if len(top) == NUM_CLASSES:
        assert sum(item["prob"] for item in top) == pytest.approx(1.0, abs=1e-6)
    assert all(item["name"] == f"class {item['index']}" for item in top)  # a 4-class head: no ImageNet names
    return max(abs(item["logit"] - expected["logits"][item["index"]]) for item in top)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ckpt", "onnx"])
def test_health_and_metadata(served: dict[str, Any], which: str) -> None:
    port = served[which].port
    assert http.request(port, "GET", "/v2/health/live").json() == {"live": True}
    assert http.request(port, "GET", "/v2/health/ready").json() == {"ready": True}
    assert http.request(port, "GET", f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    meta = http.request(port, "GET", f"/v2/models/{MODEL}").json()
    assert meta["name"] == MODEL and meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 224, 224]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, NUM_CLASSES]}]
    assert "ready: model convit_tiny" in served[which].text()


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ckpt", "onnx"])
def test_classify_answers_what_predict_answers_on_photographs(served: dict[str, Any], which: str) -> None:
    port, images, expected = served[which].port, served["images"], served["expected"]
    answer = http.classify(port, images, f"?top_k={NUM_CLASSES}")
    assert answer.status == 200, answer
    results = answer.json()["results"]
    assert answer.json()["model_name"] == MODEL and [r["image"] for r in results] == [n for n, _ in images]
    worst = max(_check_classified(r, expected[r["image"]]) for r in results)
    assert worst <= TOLERANCE, worst
    for name, data in images[:3]:  # one image as the raw body; the default top-K (5, at most the 4 classes)
        one = http.classify_one(port, data)
        assert one.status == 200, one
        result = one.json()["results"][0]
        assert result["image"] == "image" and len(result["top"]) == NUM_CLASSES
        assert _check_classified({**result, "image": name}, expected[name]) <= TOLERANCE
    top1 = http.classify_one(port, images[0][1], "?top_k=1").json()["results"][0]["top"]
    assert [t["index"] for t in top1] == expected[images[0][0]]["order"][:1]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["ckpt", "onnx"])
def test_v2_infer_answers_what_predict_answers(served: dict[str, Any], which: str) -> None:
    from convit.inference.images import preprocess

    port, images, expected = served[which].port, served["images"][:4], served["expected"]
    tensor = np.stack([preprocess(data, 0.875) for _, data in images])  # what a v2 client sends: the model input
    flat = {"id": "req-1", "inputs": [{"name": "image", "shape": list(tensor.shape), "datatype": "FP32",
                                       "data": tensor.ravel().tolist()}]}  # fmt: skip
    nested = {"inputs": [{"name": "image", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": tensor[3:].tolist()}],
              "outputs": [{"name": "logits"}]}  # fmt: skip
    for payload, names in [(flat, [n for n, _ in images]), (nested, [images[3][0]])]:
        answer = http.infer(port, MODEL, payload)
        assert answer.status == 200, answer
        body = answer.json()
        assert body["model_name"] == MODEL and body.get("id") == payload.get("id")
        (out,) = body["outputs"]
        assert out["name"] == "logits" and out["datatype"] == "FP32" and out["shape"] == [len(names), NUM_CLASSES]
        logits = np.asarray(out["data"], np.float64).reshape(out["shape"])
        want = np.asarray([expected[n]["logits"] for n in names])
        np.testing.assert_allclose(logits, want, atol=TOLERANCE, rtol=0)
        assert [list(np.argsort(-row, kind="stable")) for row in logits] == [expected[n]["order"] for n in names]


@pytest.mark.slow
def test_concurrent_clients_are_batched_and_all_answered_correctly(served: dict[str, Any]) -> None:
    server, images, expected = served["onnx"], served["images"], served["expected"]
    port = server.port
    before_batches = http.metric(port, "convit_serve_batch_size_count")
    before_single = http.metric(port, "convit_serve_batch_size_bucket", 'le="1.0"')
    clients, per_client = 16, 4
    failures: list[str] = []
    worst = [0.0]

    def client(c: int) -> None:
        for r in range(per_client):
            name, data = images[(c + r) % len(images)]
            try:
                answer = http.classify_one(port, data)
                if answer.status != 200:
                    failures.append(f"{name}: {answer}")
                    continue
                result = {**answer.json()["results"][0], "image": name}
                worst[0] = max(worst[0], _check_classified(result, expected[name]))
            except (OSError, AssertionError) as exc:
                failures.append(f"{name}: {exc!r}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    elapsed = time.perf_counter() - start
    assert not failures, failures
    assert worst[0] <= TOLERANCE
    batches = http.metric(port, "convit_serve_batch_size_count") - before_batches
    single = http.metric(port, "convit_serve_batch_size_bucket", 'le="1.0"') - before_single
    images_run = clients * per_client
    assert batches < images_run and single < batches, (batches, single)  # batches larger than 1 happened
    print(f"{images_run} requests from {clients} clients in {elapsed:.1f} s: {batches:.0f} batches")
    assert http.metric(port, "convit_serve_requests_total", 'code="200",endpoint="/v1/classify"') >= images_run


@pytest.mark.slow
def test_mindir_export_is_served_by_mindspore(served: dict[str, Any], tmp_path: Path) -> None:
    """The Ascend path's runtime (MindSpore running the exported MindIR at a fixed, padded batch) on the CPU."""
    from convit.export import main as export_main

    assert export_main(["--weights", str(reference_case()["ckpt"]), "--format", "mindir",
                        "--output", str(tmp_path / "tiny4.mindir")]) == 0  # fmt: skip
    server = http.ServerProcess(["--weights", str(tmp_path / "tiny4.mindir"), "--max-batch", "4"], tmp_path / "log")
    try:
        server.wait_ready()
        assert http.request(server.port, "GET", f"/v2/models/{MODEL}").json()["platform"] == "mindspore"
        images = served["images"][:6]  # one batch of 4, one of 2 padded to 4
        answer = http.classify(server.port, images, f"?top_k={NUM_CLASSES}")
        assert answer.status == 200, answer
        worst = max(_check_classified(r, served["expected"][r["image"]]) for r in answer.json()["results"])
        assert worst <= TOLERANCE, worst
        assert "via mindspore" in server.text()
    finally:
        assert server.stop() == 0, server.text()


# ---- hostile requests ----------------------------------------------------------------------------------------


def _png(height: int, width: int) -> bytes:
    return bytes(cv2.imencode(".png", np.zeros((height, width, 3), np.uint8))[1])


def _png_claiming(height: int, width: int) -> bytes:
    """A 1x1 PNG whose IHDR (CRC fixed up) claims another size (as tests/test_hostile_input.py builds it)."""
    data = bytearray(_png(1, 1))
    data[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    return bytes(data)


def _raw(port: int, head: bytes) -> tuple[int, bytes]:
    """Send raw request bytes (headers only: a body that never comes); (status, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    return int(head_part.split()[1]), body


JPEG_HEAD = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01"
IMG = {"Content-Type": "image/jpeg"}
JSON = {"Content-Type": "application/json"}
INFER = f"/v2/models/{MODEL}/infer"


def _hostile(images: list[tuple[str, bytes]]) -> list[tuple[str, str, str, bytes, dict[str, str], int, str]]:
    """(id, method, path, body, headers, status, fragment of the error message)."""
    jpeg = images[0][1]
    many, many_type = http.multipart([(f"{i}.jpg", _png(8, 8)) for i in range(25)])
    text_only, text_type = http.multipart([], {"note": "no file"})
    tensor = [0.0] * (3 * 224 * 224)
    return [
        ("not-an-image", "POST", "/v1/classify", b"hello, this is text", IMG, 400, "not a usable image"),
        ("truncated-jpeg", "POST", "/v1/classify", jpeg[: len(jpeg) // 3], IMG, 400, "not a usable image"),
        ("jpeg-header-only", "POST", "/v1/classify", JPEG_HEAD, IMG, 400, "not a usable image"),
        ("bomb-header-100000x100000", "POST", "/v1/classify", _png_claiming(100_000, 100_000), IMG, 400, "MP limit"),
        ("bomb-aspect-10000x1", "POST", "/v1/classify", _png(1, 10000), IMG, 400, "aspect ratio"),
        ("empty-body", "POST", "/v1/classify", b"", IMG, 400, "empty body"),
        ("json-to-classify", "POST", "/v1/classify", b'{"image": 1}', JSON, 415, "multipart/form-data"),
        (
            "multipart-no-boundary",
            "POST",
            "/v1/classify",
            b"--x\r\n",
            {"Content-Type": "multipart/form-data"},
            400,
            "multipart",
        ),
        ("multipart-no-file", "POST", "/v1/classify", text_only, {"Content-Type": text_type}, 400, "no image file"),
        ("multipart-too-many-files", "POST", "/v1/classify", many, {"Content-Type": many_type}, 400, "many files"),
        ("top-k-zero", "POST", "/v1/classify?top_k=0", jpeg, IMG, 400, "top_k"),
        ("top-k-text", "POST", "/v1/classify?top_k=all", jpeg, IMG, 400, "top_k"),
        ("malformed-json", "POST", INFER, b'{"inputs": [', JSON, 400, "malformed JSON"),
        ("json-not-object", "POST", INFER, b"[1, 2]", JSON, 400, "JSON object"),
        ("wrong-shape", "POST", INFER, _v2([1, 3, 32, 32], [0.0] * 3072), JSON, 400, "NCHW"),
        (
            "wrong-datatype",
            "POST",
            INFER,
            json.dumps(
                {"inputs": [{"name": "image", "datatype": "INT64", "shape": [1, 3, 224, 224], "data": tensor}]}
            ).encode(),
            JSON,
            400,
            "FP32",
        ),
        ("too-few-values", "POST", INFER, _v2([2, 3, 224, 224], tensor), JSON, 400, "needs 301056"),
        ("too-many-rows", "POST", INFER, _v2([25, 3, 224, 224], []), JSON, 400, "N <= 24"),
        ("strings-as-data", "POST", INFER, _v2([1, 3, 224, 224], ["0"] * len(tensor)), JSON, 400, "numbers only"),
        ("nan-in-data", "POST", INFER, _v2([1, 3, 224, 224], tensor).replace(b"0.0", b"NaN", 1), JSON, 400, "NaN"),
        ("beyond-fp32", "POST", INFER, _v2([1, 3, 224, 224], [1e39] * len(tensor)), JSON, 400, "FP32's range"),
        (
            "unknown-input",
            "POST",
            INFER,
            json.dumps(
                {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 3, 224, 224], "data": tensor}]}
            ).encode(),
            JSON,
            400,
            "unknown input",
        ),
        (
            "unknown-output",
            "POST",
            INFER,
            _v2([1, 3, 224, 224], tensor)[:-1] + b', "outputs": [{"name": "probs"}]}',
            JSON,
            400,
            "unknown output",
        ),
        ("binary-extension", "POST", INFER, b"{}", {**JSON, "Inference-Header-Content-Length": "2"}, 415, "binary"),
        (
            "unknown-model-infer",
            "POST",
            "/v2/models/resnet50/infer",
            _v2([1, 3, 224, 224], tensor),
            JSON,
            404,
            "unknown model 'resnet50'",
        ),
        ("unknown-model-metadata", "GET", "/v2/models/resnet50", b"", {}, 404, "unknown model"),
        ("unknown-endpoint", "GET", "/v3/anything", b"", {}, 404, "no endpoint"),
        ("wrong-method", "GET", INFER, b"", {}, 405, "GET is not allowed"),
    ]


@pytest.mark.slow
def test_hostile_requests_get_one_clear_4xx_and_the_server_goes_on(served: dict[str, Any]) -> None:
    server, images, expected = served["onnx"], served["images"], served["expected"]
    port = server.port
    name, data = images[0]
    cases = _hostile(images)
    assert len(cases) >= 15
    for case_id, method, path, body, headers, status, fragment in cases:
        answer = http.request(port, method, path, body or None, headers)
        assert answer.status == status, (case_id, answer)
        message = answer.json()
        assert list(message) == ["error"] and fragment in message["error"] and "\n" not in message["error"], (
            case_id, message,
        )  # fmt: skip
        ok = http.classify_one(port, data)  # and the server still serves
        assert ok.status == 200 and _check_classified({**ok.json()["results"][0], "image": name}, expected[name]) <= (
            TOLERANCE
        ), case_id
    # a body over the limit (16 MiB here), announced by Content-Length: refused before it is read
    status, body = _raw(port, f"POST {INFER} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        f"Content-Length: {100 << 20}\r\n\r\n".encode())  # fmt: skip
    assert status == 413 and "limit" in json.loads(body)["error"]
    assert http.classify_one(port, data).status == 200
    errors = http.metric(port, "convit_serve_errors_total", 'endpoint="/v1/classify",kind="client"')
    assert errors >= 12
    assert "Traceback" not in server.text()


@pytest.mark.slow
def test_sigterm_during_load_drains_and_loses_no_accepted_request(served: dict[str, Any], tmp_path: Path) -> None:
    """16 clients keep sending; SIGTERM: every request the server accepted is answered (200, right classes), the
    others are refused at connect; the server exits 0. Accepted = an access-log line."""
    images, expected = served["images"], served["expected"]
    weights = served["onnx"].proc.args[3:5]  # --weights s3://.../tiny4.onnx
    server = http.ServerProcess([*weights, "--max-wait-ms", "20"], tmp_path / "drain.log", served["env"])
    server.wait_ready()
    answered: list[str] = []
    refused: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def client(c: int) -> None:
        i = 0
        while not stop.is_set():
            name, data = images[(c + i) % len(images)]
            i += 1
            try:
                answer = http.classify_one(server.port, data)
            except (ConnectionRefusedError, ConnectionResetError) as exc:
                refused.append(repr(exc))
                time.sleep(0.05)
                if server.proc.poll() is not None:
                    return
                continue
            except OSError as exc:  # anything else (a cut answer) is a lost request
                failures.append(f"{name}: {exc!r}")
                continue
            try:
                assert answer.status == 200, answer
                _check_classified({**answer.json()["results"][0], "image": name}, expected[name])
                answered.append(name)
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(2.0)
    before = len(answered)
    server.proc.send_signal(signal.SIGTERM)
    code = server.proc.wait(60)
    stop.set()
    for thread in threads:
        thread.join(30)
    log = server.text()
    server.handle.close()
    assert code == 0, log
    assert not failures, failures[:5]
    accepted = len(re.findall(r'"POST /v1/classify HTTP/1.1" 200 ', log))
    assert accepted == len(answered) and len(answered) > before > 0, (accepted, len(answered), before)
    assert "draining" in log and "stopped" in log and "Traceback" not in log
    drained = log.split("draining", 1)[1]
    assert re.search(r'"POST /v1/classify HTTP/1.1" 200 ', drained)  # requests in flight at SIGTERM were answered


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--weights", "/nonexistent/w.ckpt"], 1, "does not exist"),
        (["--weights", "/nonexistent/m.onnx"], 1, "does not exist"),
        (["--weights", "x.ckpt", "--model", "convit_huge"], 2, "unknown model 'convit_huge'"),
    ],
)
def test_startup_errors_are_one_error_line(args: list[str], code: int, fragment: str, tmp_path: Path) -> None:
    server = http.ServerProcess(args, tmp_path / "log")
    assert server.proc.wait(120) == code
    lines = [line for line in server.text().splitlines() if "ERROR" in line or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and fragment in lines[0], server.text()
