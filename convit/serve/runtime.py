"""The served model: weights located by URI, loaded into the runtime of the device, and what the HTTP layer needs.

  - `*.onnx` (with its `*.onnx.json` sidecar from `python -m convit.export`): onnxruntime on the CPU;
  - `*.mindir` (with its sidecar): MindSpore's GraphCell (MindSpore Lite's format; the Ascend path);
  - a checkpoint (MindCV `.ckpt`, or ours): on the CPU exported to ONNX in a temporary folder with
    `convit.export.export_onnx` (the fastest CPU runtime measured here, docs/benchmarks.md), on Ascend run by
    MindSpore in graph mode at a fixed batch (padded), so the graph compiles once.
The device is `--device`, else $CONVIT_DEVICE, else CPU. Every problem is a ConvitError naming the URI.

On the CPU the model is loaded several times: one onnxruntime session with a thread per core for a lone batch (the
lowest latency), and one single-threaded session per core ("lanes") for batches that run side by side under load.
Measured here (bench/serve.py, docs/benchmarks.md): two single-threaded sessions, each on its own batch, classify
about 1.2x as many images per second as one two-threaded session on a batch of 16, whose threads meet at a barrier
after every operator and wait for the slower one (the other core was decoding); at batch 1 the second thread gains
only 6%.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import queue
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from convit.cluster import contract
from convit.errors import ConvitError

INPUT_SIZE = 224


class Runner(Protocol):
    """Logits of a float32 (N, 3, 224, 224) batch; called from one thread at a time."""

    kind: str

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]: ...


class OnnxRunner:
    """onnxruntime, CPU provider, `threads` intra-op threads (0: one per usable core)."""

    kind = "onnxruntime"

    def __init__(self, path: Path, threads: int = 0) -> None:
        import onnxruntime as ort  # type: ignore[import-untyped]

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: no framework noise on stderr
        # No busy-waiting between calls: the decoding threads need those cores (measured: bench/serve.py).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.intra_op_num_threads = threads or usable_cores()
        self.path = path
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ConvitError(f"{path.name}: onnxruntime cannot load it ({str(exc).splitlines()[0][:160]})") from None
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[0].name
        dim = self.session.get_inputs()[0].shape[0]
        self.fixed_batch = dim if isinstance(dim, int) else None

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        n = len(batch)
        if self.fixed_batch is not None and n != self.fixed_batch:
            batch = _pad(batch, self.fixed_batch)
        out: NDArray[np.float32] = self.session.run([self.output], {self.input: batch})[0][:n]
        return out


def _pad(batch: NDArray[np.float32], size: int) -> NDArray[np.float32]:
    if len(batch) > size:
        raise ConvitError(f"a batch of {len(batch)} for a model fixed at batch {size}")
    if len(batch) == size:
        return batch
    return np.concatenate([batch, np.zeros((size - len(batch), *batch.shape[1:]), batch.dtype)])


class MindSporeRunner:
    """A MindSpore cell (our model from a checkpoint, or a MindIR's GraphCell), every batch padded to `batch` so
    that the graph compiles once (on Ascend each new shape is a new compilation)."""

    kind = "mindspore"

    def __init__(self, cell: Any, batch: int) -> None:
        self.cell = cell
        self.batch = batch

    def __call__(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        import mindspore as ms

        n = len(batch)
        out = [
            self.cell(ms.Tensor(_pad(batch[i : i + self.batch], self.batch))).asnumpy()[: min(self.batch, n - i)]
            for i in range(0, n, self.batch)
        ]
        logits: NDArray[np.float32] = np.concatenate(out).astype(np.float32)
        return logits


@dataclass
class ServedModel:
    """Everything the server needs about its model."""

    name: str  # the protocol's model name (--name, default the variant)
    variant: str
    runner: Runner  # every core's threads: a lone batch
    crop_pct: float
    class_names: list[str]
    source: str  # what was loaded, for the start line
    device: str
    lanes: list[Runner] = field(default_factory=list, init=False)  # one core each, side by side (the CPU only)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _free: queue.SimpleQueue[Runner] = field(default_factory=queue.SimpleQueue)

    def add_lanes(self, runners: list[Runner]) -> None:
        self.lanes = runners
        for lane in runners:
            self._free.put(lane)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def parallel(self) -> int:
        """Batches that may run at once."""
        return max(1, len(self.lanes))

    def logits(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """On a free lane (the batcher runs at most `parallel` batches at once), else on the runner."""
        if not self.lanes:
            return self.logits_alone(batch)
        lane = self._free.get()
        try:
            return lane(batch)
        finally:
            self._free.put(lane)

    def logits_alone(self, batch: NDArray[np.float32]) -> NDArray[np.float32]:
        """With every core's threads: for a batch that runs while nothing else does."""
        with self.lock:
            return self.runner(batch)


def device_of(device: str | None) -> str:
    device = device or os.environ.get(contract.ENV_DEVICE) or "CPU"
    if device not in ("CPU", "Ascend"):
        raise ConvitError(f"unknown device {device!r}: CPU or Ascend")
    return device


def _fetch(uri: str, dest: Path) -> None:
    from convit.inference.weights import split_uri
    from convit.storage import StorageError

    try:
        storage, key = split_uri(uri)
        if uri.startswith("file://"):
            local = Path(uri[len("file://") :])
            if not local.is_file():
                raise ConvitError(f"{uri} does not exist")
            shutil.copyfile(local, dest)
        else:
            dest.write_bytes(storage.get(key))
    except StorageError as exc:
        raise ConvitError(f"{uri}: {exc}") from None
    except OSError as exc:
        raise ConvitError(f"{uri}: cannot read it ({exc.strerror or type(exc).__name__})") from None


def read_sidecar(uri: str, model_file: Path) -> dict[str, Any]:
    """The export's sidecar `<uri>.json`, checked against the model file (sha256) and our preprocessing."""
    from convit.inference.images import mean_std
    from convit.train.checkpoints import sha256_file

    side = model_file.with_name(model_file.name + ".json")
    _fetch(uri + ".json", side)
    try:
        meta: dict[str, Any] = json.loads(side.read_text())
        sha, variant, crop, names = meta["sha256"], meta["model"], float(meta["crop_pct"]), meta["class_names"]
        shape = meta["input"]["shape"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ConvitError(f"{uri}.json: not a sidecar written by python -m convit.export") from None
    if sha != sha256_file(model_file):
        raise ConvitError(f"{uri}: sha256 differs from its sidecar's (a partial upload, or another model's sidecar)")
    if list(shape[1:]) != [3, INPUT_SIZE, INPUT_SIZE] or [list(meta["mean"]), list(meta["std"])] != [
        list(v) for v in mean_std()
    ]:
        raise ConvitError(f"{uri}.json: input {shape} / mean / std differ from this server's preprocessing")
    if not isinstance(names, list) or not names or not isinstance(variant, str) or not 0.0 < crop <= 1.0:
        raise ConvitError(f"{uri}.json: malformed model, crop_pct or class_names")
    return meta


def usable_cores() -> int:
    """The cores this process may use: its CPU affinity, bounded by its cgroup's CPU quota (a pod's CPU limit, which
    the affinity and onnxruntime's default thread count ignore: they see the node's cores)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else cores


def _cgroup_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs of the cgroup's quota (cgroup v2 cpu.max, else v1 cfs_quota_us / cfs_period_us); None when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        try:
            quota = (root / "cpu" / "cpu.cfs_quota_us").read_text().strip()
            period = (root / "cpu" / "cpu.cfs_period_us").read_text().strip()
        except OSError:
            return None
    if quota == "max" or quota.startswith("-") or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return int(quota) / int(period)


def load_model(
    weights: str,
    *,
    model: str | None,
    name: str | None,
    device: str | None,
    max_batch: int,
    ema: bool | None = None,
    lanes: int = 0,
) -> ServedModel:
    """The model of `weights` (see the module docstring), ready to run but not yet warmed. `ema`: a checkpoint's
    EMA or raw weights (convit.inference.weights.read_weights); an exported model has its weights already.
    `lanes`: single-threaded onnxruntime sessions for batches side by side (0: one per core; 1: none, every batch
    on the one many-threaded session); MindSpore runs one batch at a time."""
    from convit.inference.weights import normalize_uri

    device = device_of(device)
    uri = normalize_uri(weights)
    work = Path(tempfile.mkdtemp(prefix="convit-serve-"))
    try:
        if uri.endswith((".onnx", ".mindir")):
            served = _load_export(uri, work, model, device, max_batch)
        else:
            served = _load_checkpoint(uri, work, model, device, max_batch, ema)
        count = lanes or usable_cores()
        if isinstance(served.runner, OnnxRunner) and count > 1:
            served.add_lanes([OnnxRunner(served.runner.path, threads=1) for _ in range(count)])
    finally:
        shutil.rmtree(work, ignore_errors=True)  # onnxruntime and MindSpore hold the model in memory
    if name:
        served.name = name
    return served


def _load_export(uri: str, work: Path, model: str | None, device: str, max_batch: int) -> ServedModel:
    fmt = "onnx" if uri.endswith(".onnx") else "mindir"
    local = work / f"model.{fmt}"
    _fetch(uri, local)
    meta = read_sidecar(uri, local)
    if model and model != meta["model"]:
        raise ConvitError(f"{uri} holds a {meta['model']} model, not {model}")
    runner: Runner
    if fmt == "onnx":
        runner = OnnxRunner(local)
    else:
        import mindspore as ms
        from mindspore import nn

        from convit.inference.runtime import init_inference

        init_inference(device)
        try:
            cell = nn.GraphCell(ms.load(str(local)))
        except (RuntimeError, ValueError) as exc:
            raise ConvitError(f"{uri}: MindSpore cannot load it ({str(exc).splitlines()[0][:160]})") from None
        fixed = meta["input"]["shape"][0]
        runner = MindSporeRunner(cell, int(fixed) if fixed else max_batch)
    return ServedModel(
        name=meta["model"],
        variant=meta["model"],
        runner=runner,
        crop_pct=float(meta["crop_pct"]),
        class_names=[str(n) for n in meta["class_names"]],
        source=f"{fmt} {uri}",
        device=device if fmt == "mindir" else "CPU",
    )


def _load_checkpoint(
    uri: str, work: Path, model: str | None, device: str, max_batch: int, ema: bool | None
) -> ServedModel:
    from convit.inference.images import crop_pct_of
    from convit.inference.runtime import init_inference
    from convit.inference.weights import build_model, read_weights

    weights = read_weights(uri, ema=ema)
    init_inference(device)
    runner: Runner
    if device == "CPU":
        from convit.export import export_onnx

        # As `python -m convit.export --format onnx` writes it (the GeLU kernel, a dynamic batch).
        net = build_model(weights, model, gelu_form="kernel")
        export_onnx(net, work / "model.onnx", None, work)
        runner = OnnxRunner(work / "model.onnx")
    else:
        runner = MindSporeRunner(build_model(weights, model), max_batch)
    return ServedModel(
        name=weights.model,
        variant=weights.model,
        runner=runner,
        crop_pct=crop_pct_of(weights.model),
        class_names=weights.names,  # the checkpoint's recorded names, else ImageNet's or `class <i>`
        source=f"{weights.described} {uri}",
        device=device,
    )


def warm_up(served: ServedModel, max_batch: int) -> None:
    """One full batch and one single image through each runtime (allocations, compilation), checked for shape."""
    for runner, n in itertools.product([served.runner, *served.lanes], sorted({max_batch, 1})):
        out = runner(np.zeros((n, 3, INPUT_SIZE, INPUT_SIZE), np.float32))
        if out.shape != (n, served.num_classes):
            raise ConvitError(
                f"the model answers {out.shape} for a batch of {n}; {served.num_classes} classes expected"
            )
