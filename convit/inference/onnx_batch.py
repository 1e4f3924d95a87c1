"""A dynamic batch dimension for MindSpore's ONNX export.

MindSpore 2.10 exports ONNX only at a fixed input shape (`mindspore.onnx.export(..., dynamic_axes=...)` names
the input's axis but leaves every Reshape/Expand shape constant at the traced batch, so any other batch fails
in the first Reshape). The fix here: export the same network at two batch sizes, find the constants that
differ, and check that each is a Reshape target whose only difference is the leading (batch-proportional)
dimension, which becomes -1, or the target of the class token's Expand, which becomes
concat(shape(input)[0:1], rest). Anything else is refused rather than guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convit.errors import ConvitError

TRACE_BATCHES = (2, 3)  # the two traced batch sizes; distinct and > 1 so batch-proportional dims are told apart


def _constants(graph: Any) -> dict[str, Any]:
    from onnx import numpy_helper

    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _set_constant(graph: Any, name: str, value: Any) -> None:
    from onnx import numpy_helper

    for init in graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(value, name))
            return
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            node.attribute[0].t.CopyFrom(numpy_helper.from_array(value, name))
            return
    raise ConvitError(f"ONNX rewrite: constant {name} not found")


def _remove_constant(graph: Any, name: str) -> None:
    for i, init in enumerate(graph.initializer):
        if init.name == name:
            del graph.initializer[i]
            return
    for i, node in enumerate(graph.node):
        if node.op_type == "Constant" and node.output[0] == name:
            del graph.node[i]
            return


def make_batch_dynamic(path_a: Path, path_b: Path, out: Path, batch_name: str = "batch") -> None:
    """Write to `out` the model of `path_a` (traced at TRACE_BATCHES[0]) with a symbolic batch dimension."""
    import onnx
    from onnx import helper

    ba, bb = TRACE_BATCHES
    model_a, model_b = onnx.load(str(path_a)), onnx.load(str(path_b))
    graph = model_a.graph
    if [n.op_type for n in graph.node] != [n.op_type for n in model_b.graph.node]:
        raise ConvitError("ONNX export: the graphs traced at two batch sizes differ; cannot make the batch dynamic")
    const_a, const_b = _constants(graph), _constants(model_b.graph)
    # The two exports name tensors identically (names come from the network's structure).
    if set(const_a) != set(const_b):
        raise ConvitError("ONNX export: the two traces name their constants differently")
    consumers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, index))
    image = graph.input[0].name
    extra_nodes: list[Any] = []
    for name, va in const_a.items():
        vb = const_b[name]
        if va.shape == vb.shape and np.array_equal(va, vb):
            continue
        uses = consumers.get(name, [])
        ok = (
            va.ndim == 1
            and va.shape == vb.shape
            and va.dtype.kind == "i"
            and np.array_equal(va[1:], vb[1:])
            and bool((va[1:] > 0).all())
            and va[0] * bb == vb[0] * ba
            and bool(uses)
        )
        if not ok or any(index != 1 or node.op_type not in ("Reshape", "Expand") for node, index in uses):
            what = ", ".join(f"{node.op_type}[{index}]" for node, index in uses) or "nothing"
            raise ConvitError(f"ONNX export: batch-dependent constant {name} (used by {what}) cannot be generalised")
        if all(node.op_type == "Reshape" for node, _ in uses):
            _set_constant(graph, name, np.concatenate([[-1], va[1:]]).astype(va.dtype))
            continue
        if va[0] != ba:
            raise ConvitError(f"ONNX export: Expand target {name} is not the batch size")
        prefix = f"dyn_batch/{name}"
        graph.initializer.extend(
            [
                onnx.numpy_helper.from_array(np.array([0], np.int64), f"{prefix}/start"),
                onnx.numpy_helper.from_array(np.array([1], np.int64), f"{prefix}/end"),
                onnx.numpy_helper.from_array(va[1:].astype(np.int64), f"{prefix}/rest"),
            ]
        )
        extra_nodes += [
            helper.make_node("Shape", [image], [f"{prefix}/shape"]),
            helper.make_node("Slice", [f"{prefix}/shape", f"{prefix}/start", f"{prefix}/end"], [f"{prefix}/batch"]),
            helper.make_node("Concat", [f"{prefix}/batch", f"{prefix}/rest"], [f"{prefix}/target"], axis=0),
        ]
        for node, index in uses:
            node.input[index] = f"{prefix}/target"
        _remove_constant(graph, name)  # every use now reads the computed target
    for i, node in enumerate(extra_nodes):
        graph.node.insert(i, node)
    for value in (*graph.input, *graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.ClearField("dim_value")
        dim.dim_param = batch_name
    del graph.value_info[:]  # intermediate shapes were recorded at the traced batch
    try:
        onnx.checker.check_model(model_a)
    except onnx.checker.ValidationError as exc:
        raise ConvitError(f"ONNX export: the rewritten model does not validate ({str(exc)[:200]})") from None
    onnx.save(model_a, str(out))
