"""MindSpore's graph compile cache, so a restarted or resumed process does not compile its graphs again.

Compiling the ConViT training step takes about 17 s on the CPU here and 130-150 s on Ascend; a fault-tolerant job
pays it on every restart. MindSpore keeps compiled graphs under MS_COMPILER_CACHE_PATH (one `rank_<n>` folder per
rank). The folder is keyed by everything that shapes the graphs (the model and head, the recipe values the step
depends on, the world size, MindSpore's version and the source of the model and step), so a changed model or
recipe never reuses a stale graph. It lives under the pod's cache dir (an emptyDir): it survives container
restarts within a pod, not a pod's replacement, which compiles once and caches again.
"""

from __future__ import annotations

import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

from convit.cluster import contract
from convit.jobspec import JobSpec

_GRAPH_SOURCES = ("models/convit.py", "models/layers.py", "train/step.py", "train/adamw.py", "train/evaluate.py")


def cache_key(spec: JobSpec, world_size: int, lr_table: int) -> str:
    package = Path(__file__).resolve().parents[1]
    facts = {
        "model": spec.model.model_dump(exclude={"pretrained"}),
        "train": spec.train.model_dump(include={"batch_size", "amp_level", "loss_scale", "beta1", "beta2", "eps"}),
        "eval_batch": spec.train.batch_size,
        "world_size": world_size,
        "lr_table": lr_table,
        "mindspore": metadata.version("mindspore"),
        "sources": [hashlib.sha256((package / name).read_bytes()).hexdigest() for name in _GRAPH_SOURCES],
    }
    return hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()[:16]


def enable_compile_cache(spec: JobSpec, world_size: int, lr_table: int) -> Path | None:
    """Point MindSpore's compile cache at <cache dir>/compile/<key>; call before MindSpore compiles anything
    (MindSpore reads the variables when it compiles).

    CONVIT_COMPILE_CACHE=0 turns it off; a cache the user configured (MS_COMPILER_CACHE_PATH) is left alone."""
    if os.environ.get("CONVIT_COMPILE_CACHE", "1") == "0" or os.environ.get("MS_COMPILER_CACHE_PATH"):
        return None
    root = (
        Path(os.environ.get(contract.ENV_CACHE_DIR, "/tmp/convit-cache"))
        / "compile"
        / cache_key(spec, world_size, lr_table)
    )
    root.mkdir(parents=True, exist_ok=True)
    os.environ["MS_COMPILER_CACHE_ENABLE"] = "1"
    os.environ["MS_COMPILER_CACHE_PATH"] = str(root)
    return root
