"""Class names from the data (folders, a timm-style class map, ImageNet wnids), the check of model.num_classes
against them, and per-class evaluation on a confusion matrix worked out by hand."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from convit.data.errors import DataError
from convit.data.index import apply_class_map, checked_class_names, list_imagefolder, open_split, read_class_map
from convit.inference import per_class as pc
from convit.inference.classes import imagenet_wnids, readable_names
from convit.storage import open_storage


def _tree(root: Path, splits: dict[str, dict[str, int]]) -> str:
    for split, classes in splits.items():
        for name, count in classes.items():
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                (root / split / name / f"{i}.jpg").write_bytes(b"x")
    return f"file://{root}"


def test_folder_names_are_the_classes_in_sorted_order(tmp_path: Path) -> None:
    uri = _tree(tmp_path, {"train": {"tulip": 1, "daisy": 2, "rose": 1}, "val": {"rose": 1, "daisy": 1}})
    table = open_split(open_storage(uri), "imagefolder", "val")
    assert table.classes == ["daisy", "rose", "tulip"] and table.labels.tolist() == [0, 1]
    assert checked_class_names(table, 3, uri) == ["daisy", "rose", "tulip"]


def test_num_classes_is_checked_against_the_data_with_the_fix_named(tmp_path: Path) -> None:
    uri = _tree(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}})
    table = list_imagefolder(open_storage(uri), "train")
    with pytest.raises(DataError) as error:
        checked_class_names(table, 1000, uri)
    assert str(error.value) == f"model.num_classes is 1000 but {uri} has 3 classes: set model.num_classes=3"


def test_imagenet_wnids_become_readable_names_other_folders_stay() -> None:
    wnids = list(imagenet_wnids())
    assert len(wnids) == 1000 and wnids[0] == "n01440764" and wnids[999] == "n15075141"
    names = readable_names(wnids)
    assert names[0] == "tench" and names[999] == "toilet paper"
    assert readable_names(["n01443537", "n01440764"]) == ["goldfish", "tench"]  # any subset, any order
    assert readable_names(["n00000000", "n00000001"]) == ["n00000000", "n00000001"]  # not ImageNet's
    assert readable_names(["cat", "n01440764"]) == ["cat", "n01440764"]


def test_a_class_map_orders_the_labels_and_leaves_other_classes_out(tmp_path: Path) -> None:
    uri = _tree(tmp_path / "data", {"train": {"cat": 2, "dog": 1, "fox": 1}, "val": {"dog": 1, "cat": 1, "fox": 1}})
    (tmp_path / "map.txt").write_text("dog\ncat\n\n")  # timm's --class-map file: label = line
    names = read_class_map(f"file://{tmp_path}/map.txt")
    assert names == ["dog", "cat"]
    train = open_split(open_storage(uri), "imagefolder", "train", f"file://{tmp_path}/map.txt")
    assert train.classes == ["dog", "cat"]
    assert list(zip(train.keys, train.labels.tolist(), strict=True)) == [
        ("train/cat/0.jpg", 1),
        ("train/cat/1.jpg", 1),
        ("train/dog/0.jpg", 0),
    ]
    val = open_split(open_storage(uri), "imagefolder", "val", f"file://{tmp_path}/map.txt")
    assert val.keys == ["val/cat/0.jpg", "val/dog/0.jpg"] and val.labels.tolist() == [1, 0]
    with pytest.raises(DataError, match="none of its classes"):
        apply_class_map(train, ["wolf"], uri)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [("", "names no class"), ("a\n\nb\n", "line 2 is empty"), ("a\nb\na\n", "'a' is on lines 1 and 3")],
)
def test_a_malformed_class_map_is_one_clear_error(tmp_path: Path, text: str, complaint: str) -> None:
    (tmp_path / "map.txt").write_text(text)
    with pytest.raises(DataError, match=complaint):
        read_class_map(f"file://{tmp_path}/map.txt")
    with pytest.raises(DataError, match="cannot read it"):
        read_class_map(f"file://{tmp_path}/missing.txt")


def test_class_map_in_the_job_spec() -> None:
    from convit.jobspec import JobSpecError, load_job

    spec = load_job("convit_tiny", ["data.class_map=s3://bucket/classes.txt"])
    assert spec.data.class_map == "s3://bucket/classes.txt"
    assert load_job("convit_tiny", []).data.class_map == ""
    with pytest.raises(JobSpecError, match="data.class_map"):
        load_job("convit_tiny", ["data.class_map=classes.txt"])


# A confusion matrix worked out by hand: 6 samples of 3 classes.
#   true:      a a a b b c
#   predicted: a b a b b a
# rows = true class, columns = prediction:
#   a: [2 1 0]  -> 2 of 3 right: 66.667 %
#   b: [0 2 0]  -> 2 of 2 right: 100 %
#   c: [1 0 0]  -> 0 of 1 right: 0 %
NAMES = ["a", "b", "c"]
TRUE = np.array([0, 0, 0, 1, 1, 2])
PREDICTED = np.array([0, 1, 0, 1, 1, 0])


def _confusion() -> np.ndarray:
    confusion = np.zeros((3, 3), np.int64)
    pc.add_batch(confusion, TRUE[:4], PREDICTED[:4])  # two batches add up
    pc.add_batch(confusion, TRUE[4:], PREDICTED[4:])
    return confusion


def test_per_class_accuracy_and_confusion_matrix_by_hand() -> None:
    confusion = _confusion()
    assert confusion.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    rows = pc.per_class(confusion, NAMES)
    assert rows == [
        {"index": 0, "class": "a", "samples": 3, "correct": 2, "top1": 66.667},
        {"index": 1, "class": "b", "samples": 2, "correct": 2, "top1": 100.0},
        {"index": 2, "class": "c", "samples": 1, "correct": 0, "top1": 0.0},
    ]
    assert pc.worst(rows) == [
        {"class": "c", "top1": 0.0, "samples": 1},
        {"class": "a", "top1": 66.667, "samples": 3},
        {"class": "b", "top1": 100.0, "samples": 2},
    ]
    assert pc.worst(rows, 1) == [{"class": "c", "top1": 0.0, "samples": 1}]
    assert pc.worst_line(pc.worst(rows, 2)) == "worst classes: c 0.0 % (1), a 66.7 % (3)"
    assert pc.per_class_csv(rows).decode() == (
        "index,class,samples,correct,top1\n0,a,3,2,66.667\n1,b,2,2,100.000\n2,c,1,0,0.000\n"
    )
    assert pc.confusion_csv(confusion, NAMES).decode() == ("true \\ predicted,a,b,c\na,2,1,0\nb,0,2,0\nc,1,0,0\n")


def test_a_class_without_samples_has_no_accuracy_and_is_not_among_the_worst() -> None:
    confusion = np.array([[1, 1], [0, 0]])
    rows = pc.per_class(confusion, ["x", "empty, really"])
    assert rows[1]["top1"] is None and pc.worst(rows) == [{"class": "x", "top1": 50.0, "samples": 2}]
    assert pc.per_class_csv(rows).decode().splitlines()[2] == '1,"empty, really",0,0,'


def test_the_heat_map_is_a_png_for_people() -> None:
    from PIL import Image

    image = Image.open(io.BytesIO(pc.confusion_png(_confusion(), NAMES, "hand-checked")))
    assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 300
    big = np.diag(np.arange(1, 201))  # 200 classes: no names on the axes, still one image
    assert Image.open(io.BytesIO(pc.confusion_png(big, [f"c{i}" for i in range(200)], "big"))).format == "PNG"


def test_weights_name_their_classes_and_the_export_sidecar_carries_them(tmp_path: Path) -> None:
    from convit.export import sidecar
    from convit.inference.classes import imagenet_names
    from convit.inference.weights import LoadedWeights

    ours = LoadedWeights("file:///ckpt", {}, "convit step 4", "convit_tiny", 2, ["face", "uniform"])
    assert ours.names == ["face", "uniform"]
    assert LoadedWeights("file:///m.ckpt", {}, "mindcv", "convit_tiny", 1000).names == list(imagenet_names())
    assert LoadedWeights("file:///m.ckpt", {}, "mindcv", "convit_tiny", 2).names == ["class 0", "class 1"]
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    meta = sidecar(
        model="convit_tiny", fmt="onnx", file_name="m.onnx", batch=None, crop_pct=0.875, num_classes=2,
        weights=ours, path=model,
    )  # fmt: skip
    assert meta["class_names"] == ["face", "uniform"] and meta["num_classes"] == 2


def test_the_finetune_recipe_is_a_job_starting_from_a_mindcv_checkpoint() -> None:
    from convit.jobspec import load_job

    spec = load_job("finetune")
    assert spec.model.name == "convit_tiny" and spec.model.pretrained.endswith("convit_tiny-e31023f2.ckpt")
    assert spec.data.layout == "imagefolder" and spec.train.epochs == 30 and spec.train.peak_lr(256) == 1e-4
    assert spec.augment.mixup == 0.0 and spec.augment.cutmix == 0.0
    assert load_job("finetune", ["model.num_classes=7"]).model.num_classes == 7
