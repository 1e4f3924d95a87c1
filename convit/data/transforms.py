"""The recipes' image transforms. Every random choice comes from the generator handed in, which the loader
seeds from (seed, epoch, sample index): the same sample gets the same augmentation in a resumed run and
whatever the number of decode workers.

Per sample, in decode workers (uint8): MindSpore's RandomCropDecodeResize 224 (bicubic), horizontal flip,
colour jitter (RandomColorAdjust) or AutoAugment, and the random-erasing box, each drawing as MindCV 0.3.0's
MindSpore op does (tests/test_mindcv_parity_data.py). In the trainer process, per sample as it arrives
(float32): normalisation and erasing to 0; per batch: mixup/cutmix (convit/data/mixup.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from convit.data.autoaugment import apply_op, auto_augment
from convit.data.decode import MAX_PIXELS, UndecodableImage, decode, image_size

SIZE = 224
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
INV_STD = (1.0 / STD).astype(np.float32)
# (3, 256): channel c, grey level x -> (x - mean[c]) * (1 / std[c]), in float32 as the arithmetic would be
_NORMALIZE_LUT = np.ascontiguousarray(((np.arange(256, dtype=np.float32)[:, None] - MEAN) * INV_STD).T)
NO_BOX = (0, 0, 0, 0)
ERASE_SCALE = (0.02, 0.33)
ERASE_RATIO = (0.3, 3.3)
ERASE_ATTEMPTS = 10
CROP_ATTEMPTS = 10
CROP_RATIO = (0.75, 1.333)  # MindCV's `ratio` default and every recipe's (not 3/4..4/3)
_RATIO32 = (float(np.float32(CROP_RATIO[0])), float(np.float32(CROP_RATIO[1])))  # MindSpore stores them as float
_LOG_RATIO = (float(np.log(np.float32(CROP_RATIO[0]))), float(np.log(np.float32(CROP_RATIO[1]))))
# The work one image may cost, besides its decoded size (decode.MAX_PIXELS): a 114-byte 10000x1 PNG decodes to
# 30 KB, but the eval resize (shorter side to 256) would make it 256 x 2,560,000 (1.9 GB of pixels). Images
# longer than MAX_ASPECT_RATIO times their width (or wider than that times their height) are refused, and so is
# any image whose eval resize exceeds MAX_RESIZED_PIXELS (16 MP, 48 MB; a 4:1 panorama at crop_pct 0.875 is 0.3 MP).
MAX_ASPECT_RATIO = 32
MAX_RESIZED_PIXELS = 16_000_000


@dataclass(frozen=True)
class TrainAugment:
    scale_min: float = 0.08
    hflip: float = 0.5
    color_jitter: float = 0.4
    auto_augment: str = ""
    re_prob: float = 0.25


def _round(x: float) -> int:
    """C++ std::round for x >= 0: halves away from zero (Python's round() goes to even)."""
    return math.floor(x + 0.5)


def random_resized_crop_box(
    height: int, width: int, scale_min: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of MindSpore's RandomCropDecodeResize / RandomResizedCrop as MindCV 0.3.0 configures
    it (scale (scale_min, 1.0), ratio (0.75, 1.333), 10 attempts).

    MindSpore (RandomCropAndResizeOp::GetCropBox) draws per attempt an area fraction and a log aspect ratio,
    both float32 uniform, then w = round(sqrt(H * W * scale * aspect)), h = round(w / aspect) (std::round:
    halves away from zero), accepts w <= W and h <= H and draws the left edge, then the top edge (inclusive
    bounds). After 10 failed attempts: the whole image clamped to the nearest allowed ratio, centred with
    round((W - w) / 2). The same draws here, from the sample's generator; `tests/test_mindcv_parity_data.py`
    feeds MindSpore's op and this function the same random numbers and gets the same boxes.
    """
    for _ in range(CROP_ATTEMPTS):
        scale = float(np.float32(rng.uniform(scale_min, 1.0)))
        aspect = math.exp(float(np.float32(rng.uniform(*_LOG_RATIO))))
        w = max(_round(math.sqrt(height * width * scale * aspect)), 1)
        h = max(_round(w / aspect), 1)
        if w <= width and h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return top, left, h, w
    ratio = width / height
    if ratio < _RATIO32[0]:
        w, h = width, _round(width / _RATIO32[0])
    elif ratio > _RATIO32[1]:
        h, w = height, _round(height * _RATIO32[1])
    else:
        w, h = width, height
    return _round((height - h) / 2), _round((width - w) / 2), h, w


def color_jitter(image: NDArray[Any], strength: float, rng: np.random.Generator) -> NDArray[Any]:
    """MindSpore's RandomColorAdjust(brightness=s, contrast=s, saturation=s) as MindCV 0.3.0 applies it.

    MindSpore shuffles (brightness, contrast, saturation, hue) with std::shuffle, then for each in that order
    draws its factor (float32 uniform in [max(0, 1 - s), 1 + s]) just before applying it; hue, whose range is
    (0, 0), is skipped without a draw. Kernels as MindSpore's: brightness x * f saturated, contrast a blend with
    the rounded mean grey level, saturation a blend with the grey image (OpenCV's RGB2GRAY), all in uint8.
    """
    low, high = max(0.0, 1.0 - strength), 1.0 + strength
    img = image
    for op in rng.permutation(4):
        if op == 3:  # hue: range (0, 0), not run
            continue
        f = float(np.float32(rng.uniform(low, high)))
        if op == 0:  # AdjustBrightness
            img = cv2.addWeighted(img, f, img, 0.0, 0.0)
        elif op == 1:  # AdjustContrast (AutoAugment's Contrast is the same kernel)
            img = apply_op("Contrast", img, f)
        else:  # AdjustSaturation: grey * (1 - f) + img * f, in that operand order (it sets how halves round;
            # AutoAugment's Color, MindSpore's RandomColor, has them the other way round)
            grey = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
            img = cv2.addWeighted(grey, 1.0 - f, img, f, 0.0)
    return img


def erasing_box(rng: np.random.Generator, prob: float) -> tuple[int, int, int, int]:
    """(top, left, h, w) of MindSpore's RandomErasing as MindCV 0.3.0 configures it, or NO_BOX.

    MindCV: vision.RandomErasing(prob, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0, max_attempts=10) after
    Normalize and HWC2CHW. MindSpore draws `prob > random()`, then per attempt an area fraction and an aspect
    ratio, both uniform (not log-uniform), w = round(sqrt(area * ratio)), h = round(w / ratio) (Python's
    round-half-even), accepts h < 224 and w < 224, and places the box with randint (inclusive bounds). After 10
    failed attempts it leaves the image unchanged. The same draws here, from the sample's generator.
    """
    if prob <= 0 or not prob > rng.random():
        return NO_BOX
    for _ in range(ERASE_ATTEMPTS):
        erase_area = rng.uniform(*ERASE_SCALE) * (SIZE * SIZE)
        aspect = rng.uniform(*ERASE_RATIO)
        w = round(math.sqrt(erase_area * aspect))
        h = round(w / aspect)
        if h < SIZE and w < SIZE:
            top = int(rng.integers(0, SIZE - h + 1))
            left = int(rng.integers(0, SIZE - w + 1))
            return top, left, h, w
    return NO_BOX


def resized_crop(data: bytes, box: tuple[int, int, int, int]) -> NDArray[Any]:
    """The crop `box` (top, left, h, w) of the image, bicubic-resized to 224 x 224 (uint8 RGB)."""
    top, left, h, w = box
    # Full-resolution decode, then crop and bicubic resize, as MindSpore's RandomCropDecodeResize (which MindCV
    # uses): its libjpeg crop decode gives the same pixels as a full decode cropped (tested).
    image = decode(data)[top : top + h, left : left + w]
    out: NDArray[Any] = cv2.resize(image, (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return out


def check_image_shape(height: int, width: int, crop_pct: float | None = None) -> None:
    """The one rule bounding the work per image, for training, validation, evaluate and predict: UndecodableImage
    (whose message says why) for an empty image, more than MAX_PIXELS, an aspect ratio beyond MAX_ASPECT_RATIO,
    or, with `crop_pct` (the eval transform), an eval resize of more than MAX_RESIZED_PIXELS. Checked from the
    header before decoding, and again on the decoded pixels before resizing."""
    if height <= 0 or width <= 0:
        raise UndecodableImage(f"zero-sized image ({width}x{height})")
    if height * width > MAX_PIXELS:
        raise UndecodableImage(f"{width}x{height} exceeds the {MAX_PIXELS // 1_000_000} MP limit")
    if max(height, width) > MAX_ASPECT_RATIO * min(height, width):
        raise UndecodableImage(f"{width}x{height}: aspect ratio beyond the {MAX_ASPECT_RATIO}:1 limit")
    if crop_pct is not None:
        if not 0.0 < crop_pct <= 1.0:  # also NaN
            raise ValueError(f"crop_pct {crop_pct} is not in (0, 1]")
        new_h, new_w = eval_resize_shape(height, width, crop_pct)
        if new_h * new_w > MAX_RESIZED_PIXELS:
            raise UndecodableImage(
                f"{width}x{height}: the eval resize to {new_w}x{new_h} exceeds the "
                f"{MAX_RESIZED_PIXELS // 1_000_000} MP limit"
            )


def train_sample(
    data: bytes, aug: TrainAugment, rng: np.random.Generator
) -> tuple[NDArray[Any], tuple[int, int, int, int]]:
    """(uint8 224x224x3 image, erasing box) for one training image."""
    height, width = image_size(data)
    check_image_shape(height, width)
    out = resized_crop(data, random_resized_crop_box(height, width, aug.scale_min, rng))
    if rng.random() < aug.hflip:
        out = cv2.flip(out, 1)
    if aug.auto_augment:
        out = auto_augment(out, rng, magnitude_std=0.5)
    elif aug.color_jitter > 0:
        out = color_jitter(out, aug.color_jitter, rng)
    return np.ascontiguousarray(out), erasing_box(rng, aug.re_prob)


def eval_resize_shape(height: int, width: int, crop_pct: float) -> tuple[int, int]:
    """(h, w) of MindSpore's Resize(int(floor(224 / crop_pct))): the shorter side to that size, the longer to
    floor(float32(long) / short * size), in float32 as MindSpore's ResizeOp computes it (a square goes to size)."""
    size = math.floor(SIZE / crop_pct)
    if height < width:
        return size, math.floor(np.float32(width) / np.float32(height) * np.float32(size))
    return math.floor(np.float32(height) / np.float32(width) * np.float32(size)), size


def exact_bicubic_resize(image: NDArray[Any], width: int, height: int) -> NDArray[Any]:
    """OpenCV's bicubic resize with its SIMD paths off: byte-identical to MindSpore's Resize (whose bundled
    OpenCV runs the scalar kernel). The SIMD kernel rounds its vertical pass differently (+-1 grey level on a
    few % of pixels). Evaluation pays the ~0.4 ms for exact parity; training keeps the fast kernel."""
    cv2.setUseOptimized(False)
    try:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_CUBIC)
    finally:
        cv2.setUseOptimized(True)


def eval_sample(data: bytes, crop_pct: float) -> NDArray[Any]:
    """MindCV's eval transform up to Normalize: full-resolution decode, Resize(floor(224 / crop_pct)) bicubic
    (OpenCV INTER_CUBIC, as MindSpore's Resize), CenterCrop 224 (offsets floored). Images beyond the bounds of
    `check_image_shape` are UndecodableImage before any pixel is decoded or resized."""
    check_image_shape(*image_size(data), crop_pct)
    image = decode(data)
    check_image_shape(image.shape[0], image.shape[1], crop_pct)  # the decoded shape is the one resized
    new_h, new_w = eval_resize_shape(image.shape[0], image.shape[1], crop_pct)
    if (new_h, new_w) != image.shape[:2]:
        image = exact_bicubic_resize(image, new_w, new_h)
    top, left = (new_h - SIZE) // 2, (new_w - SIZE) // 2
    return np.ascontiguousarray(image[top : top + SIZE, left : left + SIZE])


def normalize_into(out: NDArray[Any], image: NDArray[Any], box: Sequence[int] = NO_BOX) -> None:
    """One uint8 (H, W, 3) image -> `out`, float32 (3, H, W), with ImageNet mean/std; the erasing box set to 0.

    One float32 lookup table per channel, (x - mean) * (1 / std) for the 256 grey levels, applied by OpenCV's LUT
    straight into the CHW output: the same float32 values as the arithmetic, in one pass, about 2x faster than
    OpenCV's blobFromImages and 3x faster than numpy.
    """
    for c, plane in enumerate(cv2.split(image)):
        cv2.LUT(plane, _NORMALIZE_LUT[c], dst=out[c])
    top, left, h, w = (int(v) for v in box)
    if h and w:
        out[:, top : top + h, left : left + w] = 0.0


def normalize(batch: NDArray[Any] | Sequence[NDArray[Any]], boxes: NDArray[Any] | None = None) -> NDArray[Any]:
    """uint8 (N, H, W, 3) images -> float32 (N, 3, H, W) with ImageNet mean/std; erasing boxes set to 0."""
    out = np.empty((len(batch), 3, SIZE, SIZE), np.float32)
    for i, image in enumerate(batch):
        normalize_into(out[i], image, NO_BOX if boxes is None else boxes[i])
    return out
