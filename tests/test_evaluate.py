"""`python -m convit.evaluate`: a MindCV checkpoint of a 4-class head on an ImageFolder labelled by MindCV's own
pipeline scores top-1 100 %, in both layouts, from file:// and s3://, from our checkpoint format too, with 2
ranks as with 1; wrong, truncated and foreign checkpoints are one ERROR line each."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convit.evaluate import main as evaluate_main
from tests.support.inference import NUM_CLASSES, imagefolder, reference_case

VAL_IMAGES = 12
BASE = ["--job", "convit_tiny", "--batch-size", "5", "--set", "model.num_classes=4", "--set", "data.workers=1"]
BASE += ["--set", "data.layout=imagefolder"]


@pytest.fixture(scope="module")
def case() -> dict[str, Any]:
    """A MindCV checkpoint and an ImageFolder whose labels are MindCV's predictions, plus MindCV's loss."""
    ref = reference_case()
    logits = ref["logits"].astype(np.float64)
    labels = logits.argmax(axis=1)
    assert sorted(set(labels.tolist())) == list(range(NUM_CLASSES)), "every class should be predicted"
    log_z = logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))
    loss = float((log_z - logits[np.arange(len(labels)), labels]).mean())
    root = ref["root"] / "evaluate"
    data = imagefolder(root / "data", ref["images"], labels.tolist())
    return {"root": root, "ckpt": ref["ckpt"], "data": data, "loss": loss, "images": ref["images"]}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = evaluate_main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _result(args: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    code, out, err = _run([*BASE, *args, "--json"], capsys)
    assert code == 0, err
    result: dict[str, Any] = json.loads(out)
    return result


def test_mindcv_checkpoint_scores_what_mindcv_predicts(
    case: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    result = _result(["--weights", str(case["ckpt"]), "--data", case["data"]], capsys)
    assert result["samples"] == VAL_IMAGES and result["top1"] == 100.0 and result["top5"] == 100.0
    assert result["skipped"] == 0 and result["source"] == "mindcv" and result["model"] == "convit_tiny"
    assert result["loss"] == pytest.approx(case["loss"], rel=2e-3, abs=1e-4)
    case["result"] = result


def test_result_line() -> None:
    from convit.evaluate import EvalResult

    result = EvalResult("convit_tiny", "file:///w.ckpt", "mindcv", 50000, 0, 73.66, 91.72, 1.0876543, 8, 1.0)
    assert result.line() == "evaluated 50000 samples: top1 73.660 top5 91.720 loss 1.0877"


def _expected(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    if "result" not in case:  # when run alone
        case["result"] = _result(["--weights", str(case["ckpt"]), "--data", case["data"]], capsys)
    expected: dict[str, Any] = case["result"]
    return expected


def _same(result: dict[str, Any], expected: dict[str, Any]) -> None:
    for key in ("samples", "top1", "top5"):
        assert result[key] == expected[key]
    assert result["loss"] == pytest.approx(expected["loss"], abs=1e-6)


def test_sharded_layout_gives_the_same_numbers(case: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    from convit.data.__main__ import main as data_main

    expected = _expected(case, capsys)
    shards = f"file://{case['root']}/shards"
    assert data_main(["prepare", "--src", case["data"], "--dst", shards, "--quiet"]) == 0
    capsys.readouterr()
    _same(_result(["--weights", str(case["ckpt"]), "--data", shards, "--set", "data.layout=shards"], capsys), expected)


def _our_checkpoint(
    root: str, source: Path, step: int, model: str = "convit_tiny", classes: list[str] | None = None
) -> None:
    """A checkpoint in our format (weights + AdamW state, meta.json, latest.json) holding `source`'s weights."""
    import mindspore as ms

    from convit.train.checkpoints import CheckpointStore

    params = ms.load_checkpoint(str(source))
    state = [{"name": k, "data": v} for k, v in params.items()]
    state += [{"name": f"adam_m.{k}", "data": ms.Tensor(np.zeros(v.shape, np.float32))} for k, v in params.items()]
    state += [{"name": "global_step", "data": ms.Tensor(np.array([step], np.int32))}]
    state += [{"name": "beta1_power", "data": ms.Tensor(np.array([0.9], np.float32))}]
    state += [{"name": "overflow_steps", "data": ms.Tensor(np.array(0, np.int32))}]

    def write(path: Path) -> None:
        ms.save_checkpoint(state, str(path))

    store = CheckpointStore(root, source.parent / f"staging-{step}")
    meta = {"step": step, "epoch": 1, "epoch_step": 0, "model": model, "top1": None, "reason": "test"}
    if classes is not None:
        meta["classes"] = classes
    store.save(write, meta, background=False)


def test_our_checkpoint_format_resolves_root_latest_and_step(case: dict[str, Any], tmp_path: Path) -> None:
    from convit.inference.weights import read_weights

    root = f"file://{tmp_path}/run"
    _our_checkpoint(root, case["ckpt"], step=5)
    _our_checkpoint(root, case["ckpt"], step=9)
    for uri, step in [
        (root, 9),
        (f"{root}/latest", 9),
        (f"{tmp_path}/run/latest.json", 9),
        (f"{root}/checkpoints/step-000000005", 5),
        (f"{root}/checkpoints/step-000000005/weights.ckpt", 5),
    ]:
        weights = read_weights(uri)
        assert weights.source == f"convit step {step}" and weights.model == "convit_tiny"
        assert weights.num_classes == NUM_CLASSES


def test_mindcv_checkpoint_on_s3_and_missing_objects(case: dict[str, Any], bucket: str) -> None:
    from convit.errors import ConvitError
    from convit.inference.weights import read_weights
    from convit.storage import open_storage

    open_storage(f"s3://{bucket}/zoo").put("convit_tiny_4.ckpt", case["ckpt"].read_bytes())
    weights = read_weights(f"s3://{bucket}/zoo/convit_tiny_4.ckpt")
    assert (weights.model, weights.num_classes, weights.source) == ("convit_tiny", NUM_CLASSES, "mindcv")
    with pytest.raises(ConvitError, match="does not exist"):
        read_weights(f"s3://{bucket}/zoo/other.ckpt")
    with pytest.raises(ConvitError, match="no checkpoint there"):
        read_weights(f"s3://{bucket}/no-run")


def test_our_checkpoint_and_data_on_s3(case: dict[str, Any], capsys: pytest.CaptureFixture[str], bucket: str) -> None:
    from convit.storage import open_storage

    expected = _expected(case, capsys)
    ours = f"s3://{bucket}/run"
    _our_checkpoint(ours, case["ckpt"], step=7)
    data = open_storage(f"s3://{bucket}/data")
    local = Path(case["data"][len("file://") :])
    for path in sorted(local.rglob("*.JPEG")):
        data.put(str(path.relative_to(local)), path.read_bytes())
    result = _result(["--weights", ours, "--data", f"s3://{bucket}/data"], capsys)
    assert result["source"] == "convit step 7"
    _same(result, expected)


def test_per_class_accuracy_confusion_matrix_and_worst_classes(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two images moved to another class's folder: MindCV predicts each image's own class (the case's labels),
    so the confusion matrix is the diagonal of the class counts with those two samples moved off it, by hand."""
    import csv

    predicted = reference_case()["logits"].argmax(axis=1).tolist()
    labels = list(predicted)
    labels[0] = (predicted[0] + 1) % NUM_CLASSES
    labels[1] = (predicted[1] + 1) % NUM_CLASSES
    data = imagefolder(tmp_path / "data", case["images"], labels)
    expected = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for true, guess in zip(labels, predicted, strict=True):
        expected[true, guess] += 1
    out = tmp_path / "eval"
    code, stdout, err = _run([*BASE, "--weights", str(case["ckpt"]), "--data", data, "--out", str(out)], capsys)
    assert code == 0, err
    names = [f"n{c:08d}" for c in range(NUM_CLASSES)]  # the folder names
    with open(out / "confusion_matrix.csv", newline="") as handle:
        table = list(csv.reader(handle))
    assert table[0] == ["true \\ predicted", *names]
    assert [row[0] for row in table[1:]] == names
    assert np.array([[int(v) for v in row[1:]] for row in table[1:]]).tolist() == expected.tolist()
    with open(out / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    for c, row in enumerate(rows):
        assert row["class"] == names[c] and int(row["samples"]) == expected[c].sum()
        assert int(row["correct"]) == expected[c, c]
        assert float(row["top1"]) == pytest.approx(100.0 * expected[c, c] / expected[c].sum(), abs=1e-3)
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = json.loads((out / "result.json").read_text())
    assert result["top1"] == pytest.approx(100.0 * 10 / 12, abs=1e-3) and len(result["per_class"]) == NUM_CLASSES
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("evaluated 12 samples: top1 83.333")
    worst = sorted(range(NUM_CLASSES), key=lambda c: (expected[c, c] / expected[c].sum(), expected[c].sum(), c))
    assert lines[1].startswith("worst classes: ") and lines[1].split(": ", 1)[1].split(" ")[0] == names[worst[0]]
    assert result["worst"][0]["class"] == names[worst[0]]
    assert lines[2] == f"per-class accuracy and confusion matrix written to file://{out}/"


def test_our_checkpoint_names_its_classes_and_must_match_the_data(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    names = [f"n{c:08d}" for c in range(NUM_CLASSES)]
    good, bad = f"file://{tmp_path}/good", f"file://{tmp_path}/bad"
    _our_checkpoint(good, case["ckpt"], step=2, classes=names)
    _our_checkpoint(bad, case["ckpt"], step=2, classes=["cat", "dog", "fox", "owl"])
    result = _result(["--weights", good, "--data", case["data"]], capsys)
    assert [row["class"] for row in result["per_class"]] == names
    code, out, err = _run([*BASE, "--weights", bad, "--data", case["data"]], capsys)
    assert code == 1 and out == ""
    assert err.count("ERROR: ") == 1 and "trained on the classes [cat, dog, fox, owl]" in err, err


def _tiny_plus_checkpoint(path: Path) -> Path:
    import mindspore as ms
    from mindcv.models import create_model

    ms.save_checkpoint(create_model("convit_tiny_plus", num_classes=NUM_CLASSES), str(path))
    return path


@pytest.mark.parametrize(
    ("kind", "fragment"),
    [
        ("missing", "does not exist"),
        ("missing-dir", "no checkpoint there"),
        ("truncated", "not a readable MindSpore checkpoint"),
        ("not-a-checkpoint", "not a readable MindSpore checkpoint"),
        ("other-variant", "holds convit_tiny_plus weights, not convit_tiny"),
        ("other-head", "4-class head, but 1000 classes"),
        ("ours-corrupt", "corrupt (sha256 mismatch)"),
        ("ours-other-variant", "meta.json says convit_small"),
    ],
)
def test_bad_weights_are_one_error_line(
    kind: str, fragment: str, case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt: Path = case["ckpt"]
    args = [*BASE, "--data", case["data"]]
    if kind == "missing":
        weights = str(tmp_path / "nope.ckpt")
    elif kind == "missing-dir":
        weights = f"file://{tmp_path}/no-run"
    elif kind == "truncated":
        weights = str(tmp_path / "truncated.ckpt")
        Path(weights).write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif kind == "not-a-checkpoint":
        weights = str(tmp_path / "image.ckpt")
        Path(weights).write_bytes(case["images"][0])
    elif kind == "other-variant":
        weights = str(_tiny_plus_checkpoint(tmp_path / "tiny_plus.ckpt"))
    elif kind == "other-head":
        weights = str(ckpt)
        args = [a for a in args if a != "model.num_classes=4"]
        args.remove("--set")
    elif kind == "ours-corrupt":
        weights = f"file://{tmp_path}/run"
        _our_checkpoint(weights, ckpt, step=3)
        blob = tmp_path / "run" / "checkpoints" / "step-000000003" / "weights.ckpt"
        raw = bytearray(blob.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        blob.write_bytes(bytes(raw))
    else:
        weights = f"file://{tmp_path}/run"
        _our_checkpoint(weights, ckpt, step=3, model="convit_small")
    code, out, err = _run([*args, "--weights", weights], capsys)
    assert code == 1
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: ") and fragment in lines[0], err


@pytest.mark.slow
def test_two_ranks_report_the_same_numbers_as_one(
    case: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Scheduler + 2 workers of a MindSpore cluster on the CPU (MS_ROLE set, as AscendJob pods have it)."""
    from convit.cluster.supervisor import worker_env
    from tests.support.trainrun import REPO, free_port, pod_env

    single = _expected(case, capsys)
    base = pod_env(1, 2, 0, free_port())
    argv = [sys.executable, "-m", "convit.evaluate", *BASE, "--weights", str(case["ckpt"]), "--data", case["data"]]
    argv.append("--json")
    procs = [subprocess.Popen(argv, env={**base, "MS_ROLE": "MS_SCHED"}, cwd=REPO, stdout=subprocess.DEVNULL)]
    outs = [tmp_path / f"rank{i}.out" for i in range(2)]
    for i in range(2):
        with open(outs[i], "wb") as handle:
            procs.append(subprocess.Popen(argv, env=worker_env(base, 0, 2, i), cwd=REPO, stdout=handle))
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0, 0]
    double = json.loads(outs[0].read_text())
    assert outs[1].read_text() == ""  # only rank 0 prints
    assert double["world_size"] == 2 and single["world_size"] == 1
    _same(double, single)


def test_a_pod_hands_its_ranks_to_the_pod_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """In a training pod (MS_LOCAL_WORKER, no node id) the command starts the pod's processes, like training."""
    from convit.cluster import supervisor

    calls: list[tuple[list[str], str]] = []

    def supervise(argv: list[str], module: str = "convit.train") -> int:
        calls.append((argv, module))
        return 0

    monkeypatch.setattr(supervisor, "supervise", supervise)
    monkeypatch.setattr(supervisor, "supervises", lambda *_: True, raising=False)
    monkeypatch.setenv("MS_LOCAL_WORKER", "2")
    monkeypatch.delenv("MS_ROLE", raising=False)
    monkeypatch.delenv("MS_NODE_ID", raising=False)
    argv = ["--job", "convit_tiny", "--weights", "s3://b/run"]
    assert evaluate_main(argv) == 0
    assert calls == [(argv, "convit.evaluate")]
