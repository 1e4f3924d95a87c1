"""Fine-tuning on real photographs, end to end: jobs/finetune.yaml from a MindCV checkpoint with a new 2-class head
on an ImageFolder tree, then predict and evaluate name the classes by their folders.

The photographs: the one real photograph a dependency ships (matplotlib's sample_data/grace_hopper.jpg, a
portrait), cut into two classes by what they show: `face` (crops around the face) and `uniform` (crops of the
uniform and its medals below it), at assorted positions, sizes and mirrorings, re-encoded as JPEG files."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.support.trainrun import REPO, pod_env

pytestmark = pytest.mark.slow

CLASSES = ("face", "uniform")
# (left, top, right, bottom) regions of the 512 x 600 portrait each class's crops are centred in.
REGIONS = {"face": (170, 90, 350, 290), "uniform": (120, 400, 400, 560)}


def _photographs(root: Path, per_class: dict[str, int], seed: int) -> None:
    """`root/<split>/<class>/<i>.jpg`: crops of the real photograph, each class from its own region."""
    import matplotlib
    from PIL import Image

    photo = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg").convert("RGB")
    rng = np.random.default_rng(seed)
    for split, count in per_class.items():
        for name in CLASSES:
            left, top, right, bottom = REGIONS[name]
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                size = int(rng.integers(150, 200))
                cx = int(rng.integers(left, right + 1))
                cy = int(rng.integers(top, bottom + 1))
                box = (max(0, cx - size // 2), max(0, cy - size // 2))
                box = (min(box[0], photo.width - size), min(box[1], photo.height - size))
                crop = photo.crop((*box, box[0] + size, box[1] + size)).resize((240, 240), Image.Resampling.BICUBIC)
                if rng.random() < 0.5:
                    crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
                crop.save(folder / f"{name}-{i}.jpg", quality=int(rng.integers(80, 95)))


def _train(sets: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    args = ["--job", "finetune", *[a for s in sets for a in ("--set", s)]]
    env = {**pod_env(1, 1, 0, 0), "MS_LOCAL_WORKER": "", "CONVIT_CACHE_DIR": str(tmp_path / "cache")}
    return subprocess.run(
        [sys.executable, "-m", "convit.train", *args], cwd=REPO, capture_output=True, text=True, timeout=600, env=env
    )


def test_fine_tune_on_photographs_then_predict_and_evaluate_by_folder_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import mindspore as ms
    from mindcv.models import create_model as mindcv_create

    from convit.evaluate import main as evaluate_main
    from convit.predict import main as predict_main

    pretrained = tmp_path / "mindcv_convit_tiny.ckpt"  # MindCV's model and file format, 1000-class head
    ms.save_checkpoint(mindcv_create("convit_tiny"), str(pretrained))
    data = tmp_path / "photos"
    _photographs(data, {"train": 8, "val": 3}, seed=0)
    ckpt = f"file://{tmp_path}/ckpt"
    sets = [
        f"data.uri=file://{data}",
        f"model.pretrained=file://{pretrained}",
        f"checkpoint.uri={ckpt}",
        "data.workers=1",
        "train.batch_size=4",  # 16 photographs: 4 steps per epoch
        "train.epochs=2",
        "train.warmup_epochs=1",
        "train.max_steps=4",
        "train.amp_level=O0",  # float32: the faster graph on the CPU
        "logging.interval_steps=1",
    ]

    # The head must fit the data: one line naming the fix, before anything is compiled.
    wrong = _train([*sets, "model.num_classes=3"], tmp_path)
    assert wrong.returncode != 0
    errors = [line for line in wrong.stderr.splitlines() if line.startswith("ERROR:")]
    assert errors == [f"ERROR: model.num_classes is 3 but file://{data} has 2 classes: set model.num_classes=2"], (
        wrong.stderr[-3000:]
    )
    assert "Traceback" not in wrong.stderr

    run = _train(sets, tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "loaded pretrained weights from file://" in run.stdout and "classifier re-initialised" in run.stdout
    latest = json.loads((tmp_path / "ckpt" / "latest.json").read_text())
    meta = json.loads((tmp_path / "ckpt" / latest["dir"] / "meta.json").read_text())
    assert meta["classes"] == list(CLASSES) and meta["step"] == 4

    images = sorted(str(p) for p in (data / "val").rglob("*.jpg"))
    assert predict_main(["--weights", ckpt, "--top", "2", "--json", *images]) == 0
    results = json.loads(capsys.readouterr().out)
    assert len(results) == 6
    for result in results:
        assert sorted(item["name"] for item in result["top"]) == list(CLASSES)  # folder names, not "class 0"
        assert [CLASSES[item["index"]] for item in result["top"]] == [item["name"] for item in result["top"]]
    assert predict_main(["--weights", ckpt, images[0]]) == 0
    text = capsys.readouterr().out
    assert "] face" in text and "] uniform" in text and "class 0" not in text

    out = tmp_path / "eval"
    args = ["--job", "finetune", "--weights", ckpt, "--data", f"file://{data}", "--out", str(out)]
    assert evaluate_main([*args, "--set", "data.workers=1", "--batch-size", "4"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("evaluated 6 samples: top1 ") and lines[1].startswith("worst classes: ")
    with open(out / "per_class.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class"] for row in rows] == list(CLASSES) and [row["samples"] for row in rows] == ["3", "3"]
    with open(out / "confusion_matrix.csv", newline="") as handle:
        matrix = list(csv.reader(handle))
    assert matrix[0] == ["true \\ predicted", *CLASSES] and sum(int(v) for row in matrix[1:] for v in row[1:]) == 6
