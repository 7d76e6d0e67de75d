"""Trace the registry's graphs out of a torch :class:`~wsisam.export.modeling.Sam` into ONNX.

Always the TorchScript exporter (``dynamo=False``, opset 17): the SAM mask decoder only exports with
it, and torch ≥ 2.9 otherwise defaults to dynamo and silently raises the opset.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from wsisam.registry import GraphSpec, ModelSpec

OPSET = 17
PROTOBUF_LIMIT = 2**31 - 1  # a single ONNX protobuf cannot exceed 2 GB


class EncoderGraph(nn.Module):
    """``image`` (B, 3, n, n) normalised+padded → ``image_embeddings`` (B, C, h, w)."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.sam.encode(image)


class DecoderGraph(nn.Module):
    """(``image_embeddings`` (1,C,h,w), ``point_coords`` (N,P,2), ``point_labels`` (N,P)) →
    (``low_res_masks`` (N,K,mh,mw), ``iou_predictions`` (N,K))."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor,
                point_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sam.decode(image_embeddings, point_coords, point_labels)


def example_inputs(spec: ModelSpec, graph: str) -> tuple[torch.Tensor, ...]:
    """Trace inputs for ``graph``; dynamic axes get sizes > 1 so no axis is specialised to 1."""
    g = torch.Generator().manual_seed(0)
    n = spec.input_px
    if graph == "encoder":
        return (torch.randn(2, 3, n, n, generator=g),)
    h, w = spec.embed_hw
    emb = torch.randn(1, spec.embed_dim, h, w, generator=g)
    coords = torch.rand(3, 2, 2, generator=g) * n
    labels = torch.tensor([[2.0, 3.0]] * 3)
    return emb, coords, labels


def export_graph(sam: nn.Module, spec: ModelSpec, graph: str, out_dir: Path,
                 external_threshold: int = PROTOBUF_LIMIT, module: nn.Module | None = None,
                 inputs: tuple[torch.Tensor, ...] | None = None) -> list[Path]:
    """Export one graph to ``out_dir/<graph>.onnx``; returns the files written.

    ``module``/``inputs`` replace the SAM graph wrapper and its trace inputs (other families,
    e.g. WSI-SAM, bring their own); names and dynamic axes still come from ``spec.graphs()``.

    Weights move to one external-data file ``<graph>.onnx.data`` when the graph is larger than
    ``external_threshold`` bytes (the protobuf limit by default; lower in tests to exercise it).
    torch itself spills tensors of >2 GB models into many side files; tracing into a scratch folder
    and re-saving gathers them into the single data file.
    """
    import shutil
    import tempfile

    import onnx

    gspec: GraphSpec = spec.graphs()[graph]
    if module is None:
        module = EncoderGraph(sam) if graph == "encoder" else DecoderGraph(sam)
    if inputs is None:
        inputs = example_inputs(spec, graph)
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
