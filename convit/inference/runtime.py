"""The MindSpore context for inference commands, also when called in a process that already ran kernels."""

from __future__ import annotations

import os
from typing import Any

from convit.cluster import contract
from convit.errors import ConvitError


def init_inference(device: str | None) -> Any:
    """Graph mode on `device` (default $CONVIT_DEVICE or CPU); under a MindSpore cluster, join it like training.

    Returns convit.train.runtime.Runtime. In a single process whose runtime is already initialised on the same
    device (a test, a notebook), the device is left as it is instead of failing as `mindspore.set_device` does.
    """
    import mindspore as ms

    from convit.train.runtime import Runtime, cluster_world_size, init_runtime

    if cluster_world_size() > 1:
        return init_runtime(device)
    device = device or os.environ.get(contract.ENV_DEVICE) or "CPU"
    local_rank = int(os.environ.get("DEVICE_ID", "0"))
    ms.set_context(mode=ms.GRAPH_MODE)
    try:
        if device == "Ascend":
            ms.set_device("Ascend", local_rank)
        else:
            ms.set_device("CPU")
    except RuntimeError as exc:
        current = ms.get_context("device_target")
        if current != device:
            raise ConvitError(
                f"MindSpore already runs on {current} in this process; cannot switch to {device}"
            ) from exc
    return Runtime(rank=0, world_size=1, local_rank=local_rank, device=device)
