"""Our data transforms against MindCV 0.3.0's, run on the same inputs (MindCV and MindSpore are imported here only).

- AutoAugment (`autoaug-mstd0.5`, the convit_small..base_plus recipes): the policy table, every op at every
  magnitude 0..10 (noise off, both signs where MindCV flips one), and whole random sub-policies with MindCV's
  `random` module fed the same numbers as our generator.
- Random erasing: MindSpore's RandomErasing (as MindCV configures it) with its `random` fed the same numbers.
- Evaluation: MindCV's eval transforms (Decode, Resize, CenterCrop, Normalize, HWC2CHW) on generated JPEGs.
- Training crop (RandomCropDecodeResize) and colour jitter (RandomColorAdjust): MindSpore's C++ ops draw from
  std::mt19937 seeded by `ds.config.set_seed`; `Mt19937` reproduces those numbers (libstdc++'s distributions)
  behind the numpy Generator methods our transforms call, so both get the same random numbers.

Nothing here compares against values our own code produced: the reference is always MindCV/MindSpore itself.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import cv2
import mindcv.data.auto_augment as mindcv_aa
import mindspore.dataset as ds
import numpy as np
import pytest
from mindcv.data import create_transforms
from mindspore.dataset import vision
from mindspore.dataset.vision import py_transforms_util as ms_util
from mindspore.dataset.vision import transforms as ms_transforms
from numpy.typing import NDArray
from PIL import Image

from convit.data.autoaugment import IMAGENET_POLICY, OP_NAMES, SIGNED, apply_op, auto_augment, op_arg
from convit.data.decode import image_size
from convit.data.transforms import (
    MEAN,
    NO_BOX,
    SIZE,
    STD,
    color_jitter,
    erasing_box,
    eval_sample,
    normalize,
    random_resized_crop_box,
    resized_crop,
)
from convit.jobspec import load_job

RECIPES = ("convit_tiny", "convit_tiny_plus", "convit_small", "convit_small_plus", "convit_base", "convit_base_plus")
RECIPE_CROP_PCTS = (0.875, 0.87, 0.915, 0.93, 0.925)  # tiny, tiny_plus, small, small_plus and base, base_plus
MINDCV_NAME = {"Posterize": "PosterizeOriginal"}  # MindCV's "autoaug" policy uses PosterizeOriginal


class GeneratorRandom:
    """Stands in for Python's `random` module inside MindCV/MindSpore, drawing from a numpy Generator in the
    same way our transforms draw from theirs: the test then checks the structure (which draws, in which order,
    mapped how), not the random numbers."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def random(self) -> float:
        return float(self.rng.random())

    def uniform(self, a: float, b: float) -> float:
        return float(self.rng.uniform(a, b))

    def gauss(self, mu: float, sigma: float) -> float:
        return float(self.rng.normal(mu, sigma))

    def randint(self, a: int, b: int) -> int:
        return int(self.rng.integers(a, b + 1))

    def choice(self, seq: Any) -> Any:
        return seq[int(self.rng.integers(len(seq)))]


class Mt19937:
    """MindSpore's C++ random numbers behind the numpy Generator methods our transforms call.

    A MindSpore random op seeds std::mt19937 with the dataset seed (`ds.config.set_seed`; in eager mode the op
    is rebuilt, so reseeded, on every call) and reads it through libstdc++'s distributions:
    uniform_real_distribution<float> (generate_canonical: one 32-bit draw, float32(x) / 2^32, then a + u (b - a)
    in float32), uniform_int_distribution (Lemire's multiply-and-shift with rejection, for a 32-bit generator),
    and std::shuffle (two swap positions from one draw). numpy's RandomState(seed) is the same mt19937 stream.
    """

    def __init__(self, seed: int) -> None:
        assert seed != 5489  # std::mt19937's default seed: MindSpore then draws a seed from /dev/urandom
        self.state = np.random.RandomState(seed)

    def _u32(self) -> int:
        return int(self.state.randint(0, 2**32, dtype=np.uint32))

    def _int(self, low: int, high: int) -> int:  # inclusive bounds
        span = high - low + 1
        product = self._u32() * span
        if product % 2**32 < span:
            threshold = (2**32 - span) % span
            while product % 2**32 < threshold:
                product = self._u32() * span
        return low + (product >> 32)

    def uniform(self, low: float, high: float) -> float:
        a, b = np.float32(low), np.float32(high)
        u = min(np.float32(np.float32(self._u32()) / np.float32(2.0**32)), np.nextafter(np.float32(1), np.float32(0)))
        return float(np.float32(u * np.float32(b - a) + a))

    def integers(self, low: int, high: int) -> int:  # numpy's exclusive high
        return self._int(low, high - 1)

    def permutation(self, n: int) -> NDArray[Any]:
        items, i = list(range(n)), 1
        if n % 2 == 0:
            j = self._int(0, 1)
            items[i], items[j] = items[j], items[i]
            i += 1
        while i < n:
            first, second = divmod(self._int(0, (i + 1) * (i + 2) - 1), i + 2)
            items[i], items[first] = items[first], items[i]
            items[i + 1], items[second] = items[second], items[i + 1]
            i += 2
        return np.array(items)


@pytest.fixture
def ms_seed() -> Iterator[Any]:
    """ms_seed(s): MindSpore's dataset seed for the next op call; the previous seed is restored afterwards."""
    previous = ds.config.get_seed()
    yield ds.config.set_seed
    ds.config.set_seed(previous)


def _photo(height: int, width: int, seed: int) -> NDArray[Any]:
    """Photo-like RGB uint8: smooth gradients, hard-edged patches, a disc, sensor-like noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    img = np.stack([128 + 100 * np.sin(3 * xx + 2 * yy + seed), 128 + 90 * np.cos(5 * yy - xx), 60 + 150 * xx * yy], -1)
    for _ in range(6):
        y0, x0 = int(rng.integers(0, height - 40)), int(rng.integers(0, width - 40))
        img[y0 : y0 + int(rng.integers(20, height // 2)), x0 : x0 + int(rng.integers(20, width // 2))] = rng.uniform(
            0, 255, 3
        )
    cv2.circle(img, (width // 2, height // 2), min(height, width) // 4, (250.0, 240.0, 20.0), -1)
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(image: NDArray[Any]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def mindcv_train() -> SimpleNamespace:
    """MindCV's training transforms exactly as its train.py builds them for the convit_small recipe."""
    _primary, secondary, final = create_transforms(
        dataset_name="imagenet",
        image_resize=224,
        is_training=True,
        auto_augment="autoaug-mstd0.5",
        interpolation="bicubic",
        re_prob=0.1,
        color_jitter=0.4,
        separate=True,
    )
    (autoaug,) = secondary
    (erasing,) = [t for t in final if isinstance(t, vision.RandomErasing)]
    return SimpleNamespace(autoaug=autoaug, erasing=erasing)


@pytest.fixture(scope="module")
def images() -> list[NDArray[Any]]:
    # Square like the pipeline's 224 crops, and one non-square to pin the centre conventions of Rotate/ShearX.
    return [_photo(224, 224, 1), _photo(224, 224, 2), _photo(200, 232, 3)]


@pytest.fixture
def feed(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """feed(rng): route MindCV's and MindSpore's Python-level `random` through `rng` (or a stand-in object)."""

    def install(rng: np.random.Generator | Any) -> None:
        shim = GeneratorRandom(rng) if isinstance(rng, np.random.Generator) else rng
        monkeypatch.setattr(mindcv_aa, "random", shim)
        monkeypatch.setattr(ms_transforms, "random", shim)
        monkeypatch.setattr(ms_util, "random", shim)

    yield install


def test_the_recipes_use_what_is_tested_here() -> None:
    jobs = [load_job(name, []) for name in RECIPES]
    assert {job.eval.crop_pct for job in jobs} == set(RECIPE_CROP_PCTS)
    assert {job.augment.auto_augment for job in jobs} == {"", "autoaug-mstd0.5"}


def test_policy_table_is_mindcvs(mindcv_train: SimpleNamespace) -> None:
    theirs = [
        tuple((op.name, op.prob, op.magnitude) for op in sub_policy) for sub_policy in mindcv_train.autoaug.policy
    ]
    ours = [tuple((MINDCV_NAME.get(n, n), p, m) for n, p, m in sub_policy) for sub_policy in IMAGENET_POLICY]
    assert ours == theirs
    ops = {op.name: op for sub_policy in mindcv_train.autoaug.policy for op in sub_policy}
    assert {MINDCV_NAME.get(n, n) for n in OP_NAMES} == set(ops)
    assert all(op.magnitude_std == 0.5 for op in ops.values())


@pytest.mark.parametrize("name", OP_NAMES)
def test_each_op_at_each_magnitude_equals_mindcv(
    name: str, mindcv_train: SimpleNamespace, images: list[NDArray[Any]], feed: Any
) -> None:
    """Exact (0 grey levels): MindSpore's kernels are OpenCV 4.11 calls and ours are the same calls."""
    template = next(op for sp in mindcv_train.autoaug.policy for op in sp if op.name == MINDCV_NAME.get(name, name))
    signs = (False, True) if name in SIGNED else (False,)
    for magnitude in [*range(11), 2.71, 6.18, 9.45]:  # and a few of the noisy, fractional magnitudes
        for negate in signs:
            # MindCV negates when random() > 0.5; with p = 1 and no noise that is its only draw.
            feed(SimpleNamespace(random=lambda negate=negate: 0.75 if negate else 0.25))
            op = mindcv_aa.AugmentOp(template.name, prob=1.0, magnitude=magnitude, hparams=dict(template.hparams))
            op.magnitude_std = 0.0
            for image in images:
                theirs = op(image.copy())
                ours = apply_op(name, image, op_arg(name, magnitude, negate))
                assert ours.dtype == np.uint8 and ours.shape == theirs.shape
                diff = np.abs(ours.astype(np.int16) - theirs.astype(np.int16))
                assert diff.max() == 0, f"{name} m={magnitude} negate={negate}: max {diff.max()}, mean {diff.mean()}"


def test_random_sub_policies_equal_mindcv_given_the_same_draws(
    mindcv_train: SimpleNamespace, images: list[NDArray[Any]], feed: Any
) -> None:
    """Sub-policy choice, probability tests, Gaussian magnitude noise with clipping, sign flips: same numbers in,
    same image out, for many seeds (every sub-policy is hit)."""
    chosen = set()
    for seed in range(300):
        image = images[seed % len(images)]
        feed(np.random.default_rng(seed))
        theirs = mindcv_train.autoaug(image.copy())
        ours = auto_augment(image, np.random.default_rng(seed), magnitude_std=0.5)
        assert np.array_equal(ours, theirs), f"seed {seed}"
        chosen.add(int(np.random.default_rng(seed).integers(len(IMAGENET_POLICY))))
    assert len(chosen) == len(IMAGENET_POLICY)


def _erased_box(out: NDArray[Any]) -> tuple[int, int, int, int]:
    zero = np.all(out == 0, axis=0)
    if not zero.any():
        return NO_BOX
    rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
    box = (int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1))
    assert zero.sum() == box[2] * box[3]  # one filled rectangle
    return box


@pytest.mark.parametrize("prob", [1.0, 0.25, 0.1])
def test_erasing_box_equals_mindspores_random_erasing(prob: float, mindcv_train: SimpleNamespace, feed: Any) -> None:
    erasing = mindcv_train.erasing
    assert (erasing.scale, erasing.ratio, erasing.value, erasing.max_attempts) == ((0.02, 0.33), (0.3, 3.3), 0, 10)
    erasing.prob = prob
    ones = np.ones((3, SIZE, SIZE), np.float32)
    erased = 0
    for seed in range(1500):
        feed(np.random.default_rng(seed))
        theirs = _erased_box(erasing(ones))
        ours = erasing_box(np.random.default_rng(seed), prob)
        assert ours == theirs, f"seed {seed}"
        erased += ours != NO_BOX
    assert abs(erased / 1500 - prob) < 0.05


def test_erasing_is_applied_after_normalisation_with_value_zero(
    mindcv_train: SimpleNamespace, images: list[NDArray[Any]], feed: Any
) -> None:
    erasing = mindcv_train.erasing
    erasing.prob = 1.0
    image = images[0]
    mean, std = [float(m) for m in MEAN], [float(s) for s in STD]
    for seed in range(20):
        feed(np.random.default_rng(seed))
        theirs = erasing(vision.HWC2CHW()(vision.Normalize(mean=mean, std=std)(image)))
        box = erasing_box(np.random.default_rng(seed), 1.0)
        ours = normalize(image[None], np.array([box]))[0]
        assert np.abs(ours - theirs).max() * STD.max() < 1e-3  # float rounding of the normalisation only


@pytest.fixture(scope="module")
def jpegs() -> dict[tuple[int, int], bytes]:
    return {
        (w, h): _jpeg(_photo(h, w, seed))
        for seed, (w, h) in enumerate([(500, 375), (375, 500), (500, 333), (800, 600)])
    }


@pytest.fixture
def scalar_opencv() -> Iterator[None]:
    """OpenCV without its SIMD kernels, like the OpenCV build bundled in MindSpore 2.10."""
    cv2.setUseOptimized(False)
    try:
        yield
    finally:
        cv2.setUseOptimized(True)


def _mindcv_eval(data: bytes, crop_pct: float) -> NDArray[Any]:
    """MindCV's eval transforms as its train.py/validate.py build them (the recipes' interpolation: bicubic)."""
    transforms = create_transforms(
        dataset_name="imagenet", image_resize=224, is_training=False, crop_pct=crop_pct, interpolation="bicubic"
    )
    assert [type(t).__name__ for t in transforms] == ["Decode", "Resize", "CenterCrop", "Normalize", "HWC2CHW"]
    out: Any = np.frombuffer(data, np.uint8)
    for t in transforms:
        out = t(out)
    return np.asarray(out)


@pytest.mark.parametrize("crop_pct", RECIPE_CROP_PCTS)
def test_eval_preprocessing_equals_mindcv(crop_pct: float, jpegs: dict[tuple[int, int], bytes]) -> None:
    """Within 1 grey level mean (measured: at most 1 grey level on ~3-5% of pixels, mean <= 0.06): opencv-python's
    SIMD bicubic resize rounds its vertical pass differently from the scalar kernel in MindSpore's OpenCV."""
    for (w, h), data in jpegs.items():
        theirs = _mindcv_eval(data, crop_pct)
        ours_uint8 = eval_sample(data, crop_pct)
        ours = normalize(ours_uint8[None])[0]
        assert ours.shape == theirs.shape == (3, SIZE, SIZE)
        grey = np.abs(ours - theirs) * STD[:, None, None]  # back to grey levels
        assert grey.mean() <= 0.1, f"{w}x{h} crop_pct {crop_pct}: mean {grey.mean():.3f} grey levels"
        assert grey.max() <= 1.0 + 1e-3, f"{w}x{h} crop_pct {crop_pct}: max {grey.max():.3f} grey levels"


@pytest.mark.parametrize("crop_pct", RECIPE_CROP_PCTS)
def test_eval_preprocessing_is_identical_with_mindspores_opencv_kernels(
    crop_pct: float, jpegs: dict[tuple[int, int], bytes], scalar_opencv: None
) -> None:
    """With OpenCV's SIMD off the pixels are identical: same decode, resize shape, kernel and crop offsets."""
    for (w, h), data in jpegs.items():
        theirs = _mindcv_eval(data, crop_pct).transpose(1, 2, 0) * STD + MEAN
        assert np.abs(theirs - np.rint(theirs)).max() < 1e-3  # MindCV's output is normalised uint8 pixels
        assert np.array_equal(eval_sample(data, crop_pct), np.rint(theirs)), f"{w}x{h} crop_pct {crop_pct}"


def _coordinates(height: int, width: int) -> NDArray[Any]:
    """Each pixel spells its own (row, column): R = row % 256, G = column % 256, B = 16 (row // 256) + column // 256."""
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([yy % 256, xx % 256, (yy // 256) * 16 + xx // 256], -1).astype(np.uint8)


def _box_of(out: NDArray[Any]) -> tuple[int, int, int, int]:
    """(top, left, h, w) of the crop that a nearest-neighbour upscale of _coordinates() shows."""

    def where(pixel: NDArray[Any]) -> tuple[int, int]:
        r, g, b = (int(v) for v in pixel)
        return (b // 16) * 256 + r, (b % 16) * 256 + g

    (top, left), (bottom, right) = where(out[0, 0]), where(out[-1, -1])
    return top, left, bottom - top + 1, right - left + 1


def test_mindcv_crops_and_jitters_as_tested_here() -> None:
    primary, secondary, _ = create_transforms(
        dataset_name="imagenet", image_resize=224, is_training=True, interpolation="bicubic", color_jitter=0.4,
        separate=True,
    )  # fmt: skip
    crop, jitter = primary[0], secondary[0]
    assert isinstance(crop, vision.RandomCropDecodeResize) and isinstance(jitter, vision.RandomColorAdjust)
    assert (crop.size, crop.scale, crop.ratio, crop.max_attempts) == ((SIZE, SIZE), (0.08, 1.0), (0.75, 1.333), 10)
    assert crop.interpolation == vision.Inter.BICUBIC
    assert (jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue) == ((0.6, 1.4),) * 3 + ((0, 0),)
    assert {load_job(name, []).augment.scale_min for name in RECIPES} == {0.08}


# Photo-like sizes, a square, and images so elongated that every attempt fails (MindSpore's fallback box, with
# std::round's halves away from zero: 100 x 2002 is centred at 935, not Python's 934).
FALLBACK = {(100, 2002): (0, 935, 100, 133), (2002, 100): (935, 0, 133, 100), (101, 2003): (0, 934, 101, 135)}
CROP_SHAPES = [(375, 500), (500, 333), (64, 900), (1000, 1000), *FALLBACK]


@pytest.mark.parametrize(("height", "width"), CROP_SHAPES)
def test_crop_box_equals_mindspores_given_the_same_draws(height: int, width: int, ms_seed: Any) -> None:
    """MindSpore's RandomResizedCrop (the box code RandomCropDecodeResize shares), nearest-upscaled so that the
    output's corners name the crop's, against our box fed the same mt19937 numbers: identical for every seed."""
    op = vision.RandomResizedCrop(
        (max(height, width) + 1,) * 2, scale=(0.08, 1.0), ratio=(0.75, 1.333), interpolation=vision.Inter.NEAREST
    )
    image = _coordinates(height, width)
    for seed in range(300):
        ms_seed(seed)
        theirs = _box_of(op(image))
        ours = random_resized_crop_box(height, width, 0.08, Mt19937(seed))  # type: ignore[arg-type]
        assert ours == theirs, f"{height}x{width} seed {seed}"
        assert theirs == FALLBACK.get((height, width), theirs)  # the fallback shapes never draw a box


def _edge_columns(width: int) -> int:
    """Output columns at each side of a bicubic resize of a `width`-wide crop to 224 that read the crop's
    first (or, mirrored, last) source column."""
    src = (np.arange(SIZE) + 0.5) * width / SIZE - 0.5
    return int(np.count_nonzero(np.floor(src) - 1 <= 0))


def _crop_pairs(jpegs: dict[tuple[int, int], bytes], ms_seed: Any) -> Iterator[tuple[str, Any, Any, int]]:
    """(label, MindCV's RandomCropDecodeResize output, ours for the same draws, output columns at each side that
    read the crop's edge source columns) for 40 seeds on each JPEG."""
    primary, _, _ = create_transforms(
        dataset_name="imagenet", image_resize=224, is_training=True, interpolation="bicubic", separate=True
    )
    op = primary[0]
    for (w, h), data in jpegs.items():
        for seed in range(40):
            ms_seed(seed)
            theirs = op(np.frombuffer(data, np.uint8)).astype(np.int16)
            box = random_resized_crop_box(*image_size(data), 0.08, Mt19937(seed))  # type: ignore[arg-type]
            ours = resized_crop(data, box).astype(np.int16)
            yield f"{w}x{h} seed {seed} box {box}", theirs, ours, _edge_columns(box[3])


def test_train_crop_and_resize_equal_random_crop_decode_resize(
    jpegs: dict[tuple[int, int], bytes], ms_seed: Any, scalar_opencv: None
) -> None:
    """MindCV's RandomCropDecodeResize (libjpeg crop decode + bicubic resize) against our box, full decode, crop
    and resize, with OpenCV's SIMD off (MindSpore's bundled OpenCV is scalar): identical pixels except in the
    output columns that read the crop's first or last source column. libjpeg's crop decode upsamples chroma
    only within the decoded columns (the crop, widened to the 16-pixel MCU boundary on the left), so at an edge
    it replicates the chroma sample where a full decode interpolates with the neighbouring one."""
    edge_diffs = 0
    for label, theirs, ours, edge in _crop_pairs(jpegs, ms_seed):
        inner = slice(edge, SIZE - edge)
        assert np.array_equal(ours[:, inner], theirs[:, inner]), label
        edge_diffs += not np.array_equal(ours, theirs)
    assert 0 < edge_diffs < 160 * 0.75, edge_diffs


def test_train_crop_with_simd_resize_is_close_to_mindcv(jpegs: dict[tuple[int, int], bytes], ms_seed: Any) -> None:
    """As trained (OpenCV's SIMD resize on): at most 1 grey level away from the crop's edge columns; the edge
    columns can differ by tens of grey levels on a sharp colour edge, but the mean stays small."""
    inner_max, means = 0, []
    for label, theirs, ours, edge in _crop_pairs(jpegs, ms_seed):
        diff = np.abs(ours - theirs)
        inner_max = max(inner_max, int(diff[:, edge : SIZE - edge].max()))
        means.append(float(diff.mean()))
        assert diff.mean() < 0.1, label
    assert inner_max <= 1 and np.mean(means) < 0.05, (inner_max, np.mean(means))


def test_color_jitter_equals_random_color_adjust_given_the_same_draws(images: list[NDArray[Any]], ms_seed: Any) -> None:
    """MindCV's RandomColorAdjust(0.4, 0.4, 0.4): the shuffled order of brightness/contrast/saturation (hue off),
    one float32 factor per op drawn as it is applied, MindSpore's kernels: identical bytes for every seed."""
    _, secondary, _ = create_transforms(
        dataset_name="imagenet", image_resize=224, is_training=True, color_jitter=0.4, separate=True
    )
    (op,) = secondary
    orders = set()
    for seed in range(300):
        image = images[seed % len(images)]
        ms_seed(seed)
        theirs = op(image)
        ours = color_jitter(image, 0.4, Mt19937(seed))  # type: ignore[arg-type]
        assert np.array_equal(ours, theirs), f"seed {seed}"
        orders.add(tuple(Mt19937(seed).permutation(4)))
    assert len(orders) == 24  # every order of the four was exercised
