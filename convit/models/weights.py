"""Loading weights: MindCV `convit_*` checkpoints and our own, with every key accounted for."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from convit.errors import ConvitError

# Optimizer and training-loop entries of MindCV/MindSpore checkpoints: not model weights.
_NON_MODEL = re.compile(
    r"^(adam_m\.|adam_v\.|moments\.|accum\.|global_step$|beta1_power$|beta2_power$|learning_rate$|"
    r"current_iterator_step$|overflow_steps$|last_overflow_iterator_step$|epoch_num$|step_num$|scale_sense$|convit\.)"
)


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def load_weights(model: Any, params: Mapping[str, Any], *, strict: bool = True) -> None:
    """Copy `params` into `model`; with strict, every model key must be present and nothing else left over."""
    import mindspore as ms

    own = {p.name: p for p in model.get_parameters()}
    weights = {k: v for k, v in params.items() if not _NON_MODEL.match(k)}
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    mismatched = [
        f"shape of {k} {_shape(weights[k])} != {_shape(own[k])}"
        for k in own
        if k in weights and _shape(weights[k]) != _shape(own[k])
    ]
    problems = []
    if missing and strict:
        problems.append(
            f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        )
    if unexpected and strict:
        problems.append(
            f"unexpected {', '.join(unexpected[:3])}"
            + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
        )
    problems.extend(mismatched[:3])
    if problems:
        name = getattr(model, "variant_name", type(model).__name__)
        raise ConvitError(f"checkpoint does not fit {name}: {'; '.join(problems)}")
    for key, param in own.items():
        if key in weights:
            value = weights[key]
            data = value.asnumpy() if hasattr(value, "asnumpy") else np.asarray(value)
            param.set_data(ms.Tensor(data.astype(np.float32)))


def load_mindcv_checkpoint(model: Any, path: str | Path) -> None:
    """Load a MindCV (or convit) `.ckpt` file into `model`, weights only."""
    import mindspore as ms

    try:
        params = ms.load_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError) as exc:
        raise ConvitError(f"{path}: not a readable MindSpore checkpoint ({str(exc).splitlines()[0][:160]})") from None
    load_weights(model, params, strict=True)
