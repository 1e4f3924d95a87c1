"""Reference material for the inference tests: a MindCV checkpoint with a small head, real JPEGs, and what
MindCV's own pipeline (create_transforms(..., is_training=False) + MindCV's model) makes of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import simplejpeg

from convit.data.sample import make_image

NUM_CLASSES = 4
CROP_PCT = 0.875  # convit_tiny's recipe


def jpegs(count: int, seed: int = 0) -> list[bytes]:
    """Real JPEGs of assorted sizes and aspect ratios (landscape, portrait, smaller than the resize)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        data = make_image(i % 7, 7, rng)
        if i % 3 == 1:  # portrait
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB").transpose(1, 0, 2)
            data = simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=90, colorspace="RGB")
        elif i % 3 == 2:  # small: upscaled by the resize
            pixels = simplejpeg.decode_jpeg(data, colorspace="RGB")[: 200 + i, : 230 + 2 * i]
            data = simplejpeg.encode_jpeg(np.ascontiguousarray(pixels), quality=85, colorspace="RGB")
        out.append(bytes(data))
    return out


def mindcv_inputs(images: list[bytes]) -> np.ndarray:
    """MindCV's eval transforms (create_transforms(..., is_training=False), bicubic) on each encoded image."""
    from mindcv.data import create_transforms

    transforms = create_transforms(
        "imagenet", image_resize=224, is_training=False, crop_pct=CROP_PCT, interpolation="bicubic"
    )
    batch = []
    for data in images:
        item: Any = np.frombuffer(data, np.uint8)
        for op in transforms:
            item = op(item)
        batch.append(np.asarray(item, np.float32))
    return np.stack(batch)


def mindcv_checkpoint(
    path: Path, images: list[bytes], variant: str = "convit_tiny", num_classes: int = NUM_CLASSES, seed: int = 0
) -> Path:
    """MindCV's model with a `num_classes` head, saved as MindCV saves its weights.

    The backbone keeps MindCV's random init; the head is set like a trained one would be, so that the images
    spread over every class with clear margins: class c's row is the (centred, normalised) feature of
    image c as MindCV's pipeline computes it."""
    import mindspore as ms
    from mindcv.models import create_model

    ms.set_seed(seed)
    model = create_model(variant, num_classes=num_classes, pretrained=False)
    model.set_train(False)
    features = model.forward_features(ms.Tensor(mindcv_inputs(images))).asnumpy().astype(np.float64)
    centred = features - features.mean(axis=0)
    rows = centred[:num_classes] / np.linalg.norm(centred[:num_classes], axis=1, keepdims=True)
    model.classifier.weight.set_data(ms.Tensor((rows * 1.0).astype(np.float32)))
    model.classifier.bias.set_data(ms.Tensor(np.zeros(num_classes, np.float32)))
    ms.save_checkpoint(model, str(path))
    return path


def mindcv_logits(checkpoint: Path, images: list[bytes], variant: str = "convit_tiny") -> np.ndarray:
    """Logits of MindCV's own eval pipeline: its transforms on each JPEG, its model loaded from `checkpoint`."""
    import mindspore as ms
    from mindcv.models import create_model

    model = create_model(variant, num_classes=NUM_CLASSES, checkpoint_path=str(checkpoint))
    model.set_train(False)
    logits: np.ndarray = model(ms.Tensor(mindcv_inputs(images))).asnumpy()
    return logits


def imagefolder(root: Path, images: list[bytes], labels: list[int], num_classes: int = NUM_CLASSES) -> str:
    """An ImageNet-format tree: val/<class>/ holds each image under its label; train/ one image per class
    (the class list comes from train/). Returns its file:// URI."""
    for cls in range(num_classes):
        (root / "train" / f"n{cls:08d}").mkdir(parents=True, exist_ok=True)
        (root / "train" / f"n{cls:08d}" / "t.JPEG").write_bytes(images[0])
        (root / "val" / f"n{cls:08d}").mkdir(parents=True, exist_ok=True)
    for i, (data, label) in enumerate(zip(images, labels, strict=True)):
        (root / "val" / f"n{label:08d}" / f"v{i:04d}.JPEG").write_bytes(data)
    return f"file://{root}"


_CASE: dict[str, Any] = {}


def reference_case() -> dict[str, Any]:
    """One per test process (evaluate, predict and export tests share it): 12 JPEGs, a MindCV checkpoint of a
    4-class convit_tiny, and MindCV's logits for those JPEGs through MindCV's own pipeline."""
    if not _CASE:
        import atexit
        import shutil
        import tempfile

        import mindspore as ms

        ms.set_context(mode=ms.GRAPH_MODE)
        root = Path(tempfile.mkdtemp(prefix="convit-inference-test-"))
        atexit.register(shutil.rmtree, root, True)
        images = jpegs(12)
        ckpt = mindcv_checkpoint(root / "mindcv_convit_tiny_4.ckpt", images)
        _CASE.update(root=root, images=images, ckpt=ckpt, logits=mindcv_logits(ckpt, images))
    return _CASE
