"""Trace a system's torch graphs into ONNX under the names and dynamic axes of their GraphSpec.

Always the TorchScript exporter (``dynamo=False``, opset 17): the SAM mask decoder only exports with
it, and torch ≥ 2.9 otherwise defaults to dynamo and silently raises the opset.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from wsisam.artifacts import PROTOBUF_LIMIT
from wsisam.registry import GraphSpec

OPSET = 17


def export_graph(module: nn.Module, gspec: GraphSpec, inputs: tuple[torch.Tensor, ...],
                 out_dir: Path, external_threshold: int = PROTOBUF_LIMIT) -> list[Path]:
    """Export one graph (``module`` traced on ``inputs``) to ``out_dir/<name>.onnx``; returns
    the files written. Names and dynamic axes come from ``gspec``.

    Weights move to one external-data file ``<graph>.onnx.data`` when the graph is larger than
    ``external_threshold`` bytes (the protobuf limit by default; lower in tests to exercise it).
    torch itself spills tensors of >2 GB models into many side files; tracing into a scratch folder
    and re-saving gathers them into the single data file.
    """
    import shutil
    import tempfile

    import onnx

    graph = gspec.name
    dynamic = {t.name: t.dynamic_axes() for t in (*gspec.inputs, *gspec.outputs) if t.dynamic_axes()}
    final = Path(out_dir) / f"{graph}.onnx"
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=f".{graph}-trace-") as scratch:
        traced = Path(scratch) / final.name
        with torch.no_grad(), warnings.catch_warnings():
            # the TorchScript exporter warns about its own deprecation and constant folding of
            # strided slices; neither is actionable for a user, and parity is checked below
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module.eval(), inputs, str(traced), dynamo=False,
                opset_version=OPSET, input_names=gspec.input_names,
                output_names=gspec.output_names, dynamic_axes=dynamic, do_constant_folding=True,
            )
        traced_bytes = sum(p.stat().st_size for p in Path(scratch).iterdir())
        if traced_bytes <= external_threshold:
            shutil.move(str(traced), final)
            files = [final]
        else:
            data = final.with_name(final.name + ".data")
            model = onnx.load(str(traced))
            onnx.save_model(model, str(final), save_as_external_data=True,
                            all_tensors_to_one_file=True, location=data.name, size_threshold=1024)
            files = [final, data]
    onnx.checker.check_model(str(final))
    return files
