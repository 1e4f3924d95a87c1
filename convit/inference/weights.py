"""Weights for inference: a MindCV `.ckpt` or one of our checkpoints, located by URI and checked key by key.

Accepted URIs (s3://, file:// or a plain local path):
  .../model.ckpt                        a MindCV (or any MindSpore) checkpoint file
  <root>                                one of our checkpoint roots: the checkpoint `latest.json` points to
  <root>/latest, <root>/best            the checkpoint that pointer names (`.json` suffix optional)
  <root>/checkpoints/step-000001234     one step directory (or its weights.ckpt)
Our checkpoints are verified (size and sha256 from meta.json) before MindSpore reads them, and their recorded
variant is checked. A missing, unreadable or foreign checkpoint is a ConvitError: never random weights.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from convit.errors import ConvitError
from convit.storage import Storage, StorageError, open_storage
from convit.train.checkpoints import BEST, LATEST, CheckpointError, CheckpointStore
from convit.train.step import EMA_PREFIX

# Model tensors of our checkpoints; the rest is trainer state (AdamW moments, step counters, loss-scale state).
_MODEL_KEY = re.compile(r"^(cls_token|pos_embed|patch_embed\.|blocks\.|norm\.|classifier\.)")
_STEP = re.compile(r"^(?P<root>.+)/checkpoints/step-(?P<step>[0-9]{9})(/weights\.ckpt)?$")


@dataclass
class LoadedWeights:
    """A checkpoint's tensors (name -> MindSpore tensor) and what is known about them."""

    uri: str
    params: dict[str, Any]
    source: str  # "mindcv" (a bare .ckpt) or "convit step N"
    model: str  # the variant: recorded in our meta.json, or recognised from the tensor shapes
    num_classes: int
    classes: list[str] = field(default_factory=list)  # recorded in our meta.json; [] for a MindCV .ckpt
    ema: bool = False  # the model tensors are the EMA of the weights (see read_weights)

    @property
    def described(self) -> str:
        """`source`, saying when the tensors are the EMA weights (what the commands print and record)."""
        return f"{self.source}, EMA weights" if self.ema else self.source

    @property
    def names(self) -> list[str]:
        """The head's class names: our checkpoint's recorded ones, else ImageNet's for 1000 classes, `class <i>`."""
        from convit.inference.classes import class_names

        return list(self.classes) if len(self.classes) == self.num_classes else class_names(self.num_classes)


def normalize_uri(uri: str) -> str:
    """s3:// and file:// pass through; a plain path becomes an absolute file:// URI."""
    if uri.startswith(("s3://", "file://")):
        return uri.rstrip("/")
    if "://" in uri:
        raise ConvitError(f"unsupported URI {uri!r}: use s3://bucket/key, file:///path or a local path")
    return "file://" + str(Path(uri).expanduser().resolve())


def split_uri(uri: str) -> tuple[Storage, str]:
    """(storage rooted at the parent, last path element)."""
    parent, _, key = uri.rpartition("/")
    if not key or parent in ("s3:/", "file:/"):
        raise ConvitError(f"{uri}: not a file or checkpoint URI")
    if parent == "file://":  # file:///x
        parent = "file:///"
    return open_storage(parent), key


def _read_mindspore(path: Path, uri: str) -> dict[str, Any]:
    import mindspore as ms

    try:
        params: dict[str, Any] = ms.load_checkpoint(str(path))
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
        first = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ConvitError(f"{uri}: not a readable MindSpore checkpoint ({first})") from None
    if not params:
        raise ConvitError(f"{uri}: the checkpoint holds no tensors")
    return params


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


def recognise(params: dict[str, Any], uri: str) -> tuple[str, int]:
    """(variant, class count) from the tensor shapes: embedding width and GPSA heads pick the variant."""
    from convit.models import list_models, variant_hparams

    try:
        dim = _shape(params["pos_embed"])[-1]
        heads = _shape(params["blocks.0.attn.gating_param"])[0]
        num_classes = _shape(params["classifier.weight"])[0]
    except KeyError as exc:
        raise ConvitError(f"{uri}: not a ConViT checkpoint (no {exc.args[0]!r} tensor)") from None
    for name in list_models():
        hp = variant_hparams(name)
        if hp["embed_dim"] == dim and hp["num_heads"] == heads:
            return name, num_classes
    raise ConvitError(f"{uri}: a ConViT of width {dim} with {heads} heads is none of the known variants")


@contextmanager
def _scratch() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="convit-weights-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _pointer_step(store: CheckpointStore, pointer: str, uri: str) -> int:
    try:
        raw = store.storage.get(pointer)
    except StorageError as exc:
        raise CheckpointError(f"{exc} (no {pointer} pointer: is {store.uri} a checkpoint directory?)") from None
    try:
        return int(json.loads(raw)["step"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{store.uri}/{pointer} is malformed") from None


def _ours(root: str, step: int | None, pointer: str, uri: str) -> LoadedWeights:
    with _scratch() as tmp:
        store = CheckpointStore(root, tmp)
        if step is None:
            if pointer == LATEST and not store.storage.exists(LATEST):
                steps = store.complete_steps()
                if not steps:
                    raise CheckpointError(
                        f"{uri}: no checkpoint there (neither a .ckpt file nor a checkpoint directory "
                        f"with {LATEST} or checkpoints/step-*/)"
                    )
                step = steps[-1]
            else:
                step = _pointer_step(store, pointer, uri)
        meta, path = store.fetch(step)
        params = _read_mindspore(path, f"{root}/checkpoints/{meta.name}/weights.ckpt")
    model, num_classes = recognise(params, uri)
    if meta.model and meta.model != model:
        raise CheckpointError(f"{uri}: meta.json says {meta.model} but the tensors are {model}'s")
    return LoadedWeights(uri, params, f"convit step {meta.step}", model, num_classes, list(meta.classes))


def read_weights(uri: str, *, ema: bool | None = None) -> LoadedWeights:
    """Locate, download, verify and read a checkpoint (see the module docstring for the accepted URIs).

    `ema`: the model tensors are the EMA of the weights (`ema.<name>`, what a run with `train.ema_decay`
    validated on; MindCV's `--ema` checkpoints name them the same) when True, the raw weights when False; None
    takes the EMA when the checkpoint has one. Asking for an EMA a checkpoint does not hold is an error.
    """
    uri = normalize_uri(uri)
    try:
        return _average(_read_weights(uri), ema)
    except OSError as exc:  # a local path that is no file or directory to read (/dev/zero, a file as a folder)
        raise ConvitError(f"{uri}: cannot read a checkpoint there ({exc.strerror or type(exc).__name__})") from None


def _read_weights(uri: str) -> LoadedWeights:
    step_match = _STEP.fullmatch(uri)
    if step_match:
        root = step_match.group("root")
        return _ours(root, int(step_match.group("step")), LATEST, uri)
    base, _, last = uri.rpartition("/")
    if last in ("latest", LATEST):
        return _ours(base, None, LATEST, uri)
    if last in ("best", BEST):
        return _ours(base, None, BEST, uri)
    if last.endswith(".ckpt"):
        storage, key = split_uri(uri)
        with _scratch() as tmp:
            if uri.startswith("file://"):
                local = Path(uri[len("file://") :])
                if not local.is_file():
                    raise ConvitError(f"{uri} does not exist")
            else:
                local = tmp / "weights.ckpt"
                local.write_bytes(storage.get(key))
            params = _read_mindspore(local, uri)
        model, num_classes = recognise(params, uri)
        return LoadedWeights(uri, params, "mindcv", model, num_classes)
    return _ours(uri, None, LATEST, uri)


def _average(weights: LoadedWeights, ema: bool | None) -> LoadedWeights:
    prefix = EMA_PREFIX + "."
    averages = {k.removeprefix(prefix): v for k, v in weights.params.items() if k.startswith(prefix)}
    if ema and not averages:
        raise ConvitError(f"{weights.uri}: the checkpoint holds no EMA weights (trained without train.ema_decay)")
    use = bool(averages) if ema is None else ema
    params = {k: v for k, v in weights.params.items() if not k.startswith(prefix)}
    return replace(weights, params=params | averages if use else params, ema=use)


def add_ema_flag(parser: argparse.ArgumentParser) -> None:
    """`--ema` / `--no-ema` for the commands that read weights (read_weights' `ema`)."""
    parser.add_argument(
        "--ema",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="use the checkpoint's EMA weights (default: when it has them, as a run with train.ema_decay "
        "validated on them); --no-ema: the raw weights",
    )


def build_model(
    weights: LoadedWeights, model: str | None = None, num_classes: int | None = None, *, gelu_form: str = "auto"
) -> Any:
    """Our ConViT for inference (no drop path, eval mode) with every weight from the checkpoint.

    `model` / `num_classes`, when given, must match the checkpoint: a checkpoint of another variant or head
    is an error, not a partial load. `gelu_form`: see ConViT.
    """
    from convit.models import create_model, load_weights

    name = model or weights.model
    if name != weights.model:
        raise ConvitError(f"{weights.uri} holds {weights.model} weights, not {name}")
    classes = num_classes or weights.num_classes
    if classes != weights.num_classes:
        raise ConvitError(
            f"{weights.uri} has a {weights.num_classes}-class head, but {classes} classes were asked for "
            f"(set model.num_classes={weights.num_classes})"
        )
    net = create_model(name, num_classes=classes, drop_path_rate=0.0, gelu_form=gelu_form)
    net.variant_name = name
    params = weights.params
    if weights.source != "mindcv":  # ours: every model tensor checked, the trainer's own state set aside
        params = {k: v for k, v in params.items() if _MODEL_KEY.match(k)}
    load_weights(net, params, strict=True)
    net.set_train(False)
    return net
