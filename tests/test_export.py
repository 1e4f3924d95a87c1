"""`python -m convit.export`: ONNX (dynamic batch, run by onnxruntime) and MindIR (loaded by MindSpore's
GraphCell) give our model's logits; files land atomically on file:// and s3:// with a sidecar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convit.export import main as export_main
from tests.support.inference import NUM_CLASSES, reference_case


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    from convit.inference.images import preprocess
    from convit.inference.weights import build_model, read_weights
    from convit.predict import logits_of

    ref = reference_case()
    inputs = np.stack([preprocess(data, 0.875) for data in ref["images"][:4]])
    model = build_model(read_weights(str(ref["ckpt"])))
    logits = logits_of(model, inputs, batch=4)  # one compiled shape; a batch of 1 is row 0
    expected = {1: logits[:1], 4: logits}
    return {**ref, "inputs": inputs, "expected": expected}


def _export(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    code = export_main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def _check_sidecar(meta: dict[str, Any], fmt: str, batch: int | None, model_file: Path) -> None:
    from convit.train.checkpoints import sha256_file

    assert meta["model"] == "convit_tiny" and meta["format"] == fmt and meta["num_classes"] == NUM_CLASSES
    assert meta["input"]["shape"] == [batch, 3, 224, 224] and meta["dynamic_batch"] == (batch is None)
    assert meta["mean"] == [0.485, 0.456, 0.406] and meta["std"] == [0.229, 0.224, 0.225]
    assert meta["crop_pct"] == 0.875 and len(meta["class_names"]) == NUM_CLASSES
    assert meta["sha256"] == sha256_file(model_file) and meta["bytes"] == model_file.stat().st_size


def test_onnx_dynamic_batch_to_s3_runs_in_onnxruntime(
    case: dict[str, Any], bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime as ort

    from convit.storage import open_storage

    out = _export(["--weights", str(case["ckpt"]), "--model", "convit_tiny", "--format", "onnx",
                   "--output", f"s3://{bucket}/models/tiny4"], capsys)  # fmt: skip
    assert "dynamic batch" in out and f"s3://{bucket}/models/tiny4.onnx" in out
    store = open_storage(f"s3://{bucket}/models")
    assert sorted(store.list()) == ["tiny4.onnx", "tiny4.onnx.json"]
    local = tmp_path / "tiny4.onnx"
    local.write_bytes(store.get("tiny4.onnx"))
    _check_sidecar(json.loads(store.get("tiny4.onnx.json")), "onnx", None, local)
    session = ort.InferenceSession(str(local), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == "image" and session.get_inputs()[0].shape[0] == "batch"
    for b in (1, 4):
        logits = session.run(["logits"], {"image": case["inputs"][:b]})[0]
        np.testing.assert_allclose(logits, case["expected"][b], atol=1e-4, rtol=0)


def test_onnx_fixed_batch(case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import onnxruntime as ort

    _export(["--weights", str(case["ckpt"]), "--format", "onnx", "--batch", "4", "--output", str(tmp_path / "m.onnx")],
            capsys)  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m.onnx.json"]
    _check_sidecar(json.loads((tmp_path / "m.onnx.json").read_text()), "onnx", 4, tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [4, 3, 224, 224]
    logits = session.run(["logits"], {"image": case["inputs"][:4]})[0]
    np.testing.assert_allclose(logits, case["expected"][4], atol=1e-4, rtol=0)


def test_mindir_dynamic_batch_loads_in_graphcell(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mindspore as ms
    from mindspore import nn

    target = f"file://{tmp_path}/serve/tiny4.mindir"
    _export(["--weights", str(case["ckpt"]), "--format", "mindir", "--output", target], capsys)
    path = tmp_path / "serve" / "tiny4.mindir"
    _check_sidecar(json.loads((tmp_path / "serve" / "tiny4.mindir.json").read_text()), "mindir", None, path)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind
    cell = nn.GraphCell(ms.load(str(path)))
    for b in (1, 4):
        logits = cell(ms.Tensor(case["inputs"][:b])).asnumpy()
        np.testing.assert_allclose(logits, case["expected"][b], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--weights", "/nonexistent/w.ckpt"], "does not exist"),
        (["--model", "convit_base"], "holds convit_tiny weights, not convit_base"),
        (["--batch", "0"], "--batch must be positive"),
        (["--output", "ftp://host/m.onnx"], "unsupported URI"),
    ],
)
def test_bad_input_is_one_error_line(
    args: list[str], fragment: str, case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--weights": str(case["ckpt"]), "--format": "onnx", "--output": str(tmp_path / "m.onnx")}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    code = export_main([a for kv in base.items() for a in kv])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.startswith("ERROR: ") and captured.err.count("\n") == 1 and fragment in captured.err
    assert not (tmp_path / "m.onnx").exists()
