"""`python -m convit.predict`: MindCV's logits on the same JPEGs and checkpoint, ImageNet names, bad files
reported by name and skipped with a failing exit code."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convit.predict import main as predict_main
from tests.support.inference import NUM_CLASSES, mindcv_inputs, reference_case


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ref = reference_case()
    folder = tmp_path_factory.mktemp("predict")
    paths = []
    for i, data in enumerate(ref["images"]):
        paths.append(folder / f"image-{i:02d}.jpg")
        paths[-1].write_bytes(data)
    return {**ref, "paths": paths, "folder": folder}


def _predict(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any, str]:
    code = predict_main([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out else None, captured.err


def test_logits_match_mindcvs_pipeline(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    paths = [str(p) for p in case["paths"]]
    code, results, err = _predict(["--weights", str(case["ckpt"]), "--top", str(NUM_CLASSES), *paths], capsys)
    assert code == 0, err
    assert [r["image"] for r in results] == paths
    ours = np.zeros_like(case["logits"])
    for row, result in enumerate(results):
        assert len(result["top"]) == NUM_CLASSES
        assert sum(item["prob"] for item in result["top"]) == pytest.approx(1.0, abs=1e-6)
        for item in result["top"]:
            assert item["name"] == f"class {item['index']}"  # a 4-class head has no ImageNet names
            ours[row, item["index"]] = item["logit"]
    np.testing.assert_allclose(ours, case["logits"], atol=1e-4, rtol=0)


def test_model_alone_matches_mindcv_on_mindcvs_inputs(case: dict[str, Any]) -> None:
    """The same check without the preprocessing: our model on MindCV's transformed images."""
    from convit.inference.weights import build_model, read_weights
    from convit.predict import logits_of

    model = build_model(read_weights(str(case["ckpt"])))
    ours = logits_of(model, mindcv_inputs(case["images"]))
    np.testing.assert_allclose(ours, case["logits"], atol=1e-4, rtol=0)


def test_bad_files_are_named_and_skipped(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    folder: Path = case["folder"]
    good = case["paths"][:2]
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(case["images"][3][:300])
    text = folder / "notes.jpg"
    text.write_text("not an image\n")
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    missing = folder / "missing.jpg"
    args = [str(good[0]), str(truncated), str(text), str(missing), str(empty), str(good[1])]
    code, results, err = _predict(["--weights", str(case["ckpt"]), "--top", "2", *args], capsys)
    assert code == 1
    assert [r["image"] for r in results] == [str(good[0]), str(good[1])]
    lines = err.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("ERROR: ") for line in lines), err
    for bad in (truncated, text, missing, empty):
        assert sum(str(bad) in line for line in lines) == 1, (bad, err)


def test_imagenet_names_and_text_output(
    tmp_path: Path, case: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    import mindspore as ms
    from mindcv.models import create_model

    from convit.inference.classes import class_names

    names = class_names(1000)
    assert len(names) == 1000 and names[0] == "tench" and names[1] == "goldfish" and names[999] == "toilet paper"
    ckpt = tmp_path / "imagenet.ckpt"
    ms.save_checkpoint(create_model("convit_tiny", num_classes=1000), str(ckpt))
    code = predict_main(["--weights", str(ckpt), "--model", "convit_tiny", "--top", "3", str(case["paths"][0])])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == str(case["paths"][0]) and len(lines) == 4
    for line in lines[1:]:
        index = int(line.split("[")[1].split("]")[0])
        assert line.endswith(f"] {names[index]}") and " %  logit " in line


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--model", "convit_small"], "holds convit_tiny weights, not convit_small"),
        (["--top", "0"], "--top must be positive"),
    ],
)
def test_bad_arguments_are_one_error_line(
    args: list[str], fragment: str, case: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code = predict_main(["--weights", str(case["ckpt"]), *args, str(case["paths"][0])])
    captured = capsys.readouterr()
    assert code == 1 and captured.out == ""
    assert captured.err.startswith("ERROR: ") and captured.err.count("\n") == 1 and fragment in captured.err
