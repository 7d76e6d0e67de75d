"""FP16 graphs with the numerically fragile ops kept FP32 by explicit casts in the graph.

Pure-FP16 SAM encoders overflow in LayerNorm (segment-anything#540, efficientvit#142), and
TensorRT 11 drops the FP16 builder flag for strong typing: the precision of every op must be
written in the ONNX graph. The conversion is ONNX Runtime's ``onnxruntime.transformers.float16.
convert_float_to_float16`` — the maintained fork of ``onnxconverter-common``'s converter, shipped
inside onnxruntime (no extra dependency) — which, unlike ``onnxconverter-common`` 1.16, retargets the
graph's own ``Cast(to=float)`` nodes (SAM's prompt-label masks) and keeps float32 outputs written
by a kept-FP32 node. Weights and activations become FP16 except the blocked nodes, which get
``Cast`` nodes to FP32 before and back to FP16 after. Graph I/O stays float32 (``keep_io_types``),
so the runtime and :class:`~wsisam.registry.GraphSpec` are unchanged.

Kept FP32: ``LayerNormalization`` and ``Softmax`` nodes, and every node of a *decomposed* norm
(SAM's ``LayerNorm2d`` exports as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul/Add inside one
module scope: the variance ``Pow`` is what overflows), found as the module scopes holding both a
``ReduceMean`` and a ``Sqrt``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wsisam.artifacts import save_graph
from wsisam.errors import require


def norm_scopes(model: Any) -> set[str]:
    """Module scopes (node-name prefixes) that hold a decomposed normalisation."""
    ops_by_scope: dict[str, set[str]] = {}
    for n in model.graph.node:
        ops_by_scope.setdefault(n.name.rsplit("/", 1)[0], set()).add(n.op_type)
    return {s for s, ops in ops_by_scope.items() if {"ReduceMean", "Sqrt"} <= ops}


def kept_fp32_nodes(model: Any, keep_ops: tuple[str, ...]) -> list[str]:
    """Names of the nodes to keep FP32: ops of ``keep_ops`` and all nodes of decomposed norms."""
    scopes = norm_scopes(model)
    return [n.name for n in model.graph.node
            if n.op_type in keep_ops or n.name.rsplit("/", 1)[0] in scopes]


def convert_fp16(src: Path, dst: Path, keep_ops: tuple[str, ...]) -> dict[str, Any]:
    """FP32 graph file ``src`` → FP16 graph ``dst`` (float32 I/O, external data beyond 2 GB).

    Returns what was kept FP32 and the files written (``files``)."""
    onnx = require("onnx", "export", "FP16 conversion")
    from onnxruntime.transformers import float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    kept = kept_fp32_nodes(model, keep_ops)
    # OnnxModel's wrapper: conversion, then cascaded/no-op Cast removal
    wrapper = OnnxModel(model)
    wrapper.convert_float_to_float16(
        use_symbolic_shape_infer=False, keep_io_types=True, node_block_list=kept,
        op_block_list=list(keep_ops) + list(float16.DEFAULT_OP_BLOCK_LIST))
    fp16 = wrapper.model
    dropped = _drop_duplicate_casts(fp16)
    wrapper.topological_sort()  # the converter appends its casts; ONNX/TensorRT need order
    files = save_graph(fp16, dst)
    return {"files": files, "tool": "onnxruntime.transformers.float16.convert_float_to_float16",
            "keep_io_types": True, "kept_fp32_ops": list(keep_ops),
            "kept_fp32_norm_scopes": sorted(norm_scopes(model)), "kept_fp32_nodes": len(kept),
            "casts": sum(n.op_type == "Cast" for n in fp16.graph.node),
            "duplicate_casts_dropped": dropped}


def _drop_duplicate_casts(model: Any) -> int:
    """Remove exact duplicates of Cast nodes (same name, input, output and target type).

    The converter inserts one FP32 cast per kept-FP32 reader of an FP16 tensor, all with the same
    name and output, when one tensor feeds several kept nodes (a decomposed LayerNorm's input feeds
    its ReduceMean and its Sub); ONNX forbids the repeats, and they compute the same thing."""
    seen: set[tuple[Any, ...]] = set()
    dupes = []
    for n in model.graph.node:
        if n.op_type != "Cast":
            continue
        key = (n.name, tuple(n.input), tuple(n.output), n.attribute[0].i)
        if key in seen:
            dupes.append(n)
        seen.add(key)
    for n in dupes:
        model.graph.node.remove(n)
    return len(dupes)
