"""Model registry: variant name -> hyperparameters, so each variant is one small dict, not a copied function."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from convit.errors import ConvitError

_VARIANTS: dict[str, dict[str, Any]] = {}
_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_variant(name: str, builder: Callable[..., Any], **hparams: Any) -> None:
    if name in _VARIANTS:
        raise ValueError(f"model {name!r} registered twice")
    _VARIANTS[name] = hparams
    _BUILDERS[name] = builder


def list_models() -> list[str]:
    return sorted(_VARIANTS)


def variant_hparams(name: str) -> dict[str, Any]:
    _check(name)
    return dict(_VARIANTS[name])


def _check(name: str) -> None:
    if name not in _VARIANTS:
        raise ConvitError(f"unknown model {name!r}; known models: {', '.join(list_models())}")


def create_model(name: str, **overrides: Any) -> Any:
    """Build a registered variant: `create_model("convit_small_plus", num_classes=1000, drop_path_rate=0.1)`."""
    _check(name)
    return _BUILDERS[name](**{**_VARIANTS[name], **overrides})
