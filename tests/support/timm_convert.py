"""Copy our MindSpore ConViT weights into timm's PyTorch ConViT (name mapping from the spec)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np


def to_timm_state(params: dict[str, np.ndarray], local_up_to_layer: int = 10) -> dict[str, Any]:
    import torch

    out: dict[str, np.ndarray] = {}
    for name, value in params.items():
        key = name.replace(".gamma", ".weight").replace(".beta", ".bias").replace("classifier.", "head.")
        match = re.match(r"blocks\.(\d+)\.attn\.(q|k|v)\.weight$", name)
        if match:
            block, which = int(match.group(1)), match.group(2)
            if block < local_up_to_layer and which == "v":
                out[key] = value
            continue  # q and k (and v after the class token) are packed below
        out[key] = value
    blocks = {int(m.group(1)) for n in params if (m := re.match(r"blocks\.(\d+)\.", n))}
    for block in blocks:
        p = f"blocks.{block}.attn"
        if block < local_up_to_layer:
            out[f"{p}.qk.weight"] = np.concatenate([params[f"{p}.q.weight"], params[f"{p}.k.weight"]])
        else:
            out[f"{p}.qkv.weight"] = np.concatenate(
                [params[f"{p}.q.weight"], params[f"{p}.k.weight"], params[f"{p}.v.weight"]]
            )
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in out.items()}
