"""``wsisam-export --model wsisam``: WSI-SAM → checked encoder.onnx + fused decoder.onnx + report +
manifest, written atomically like every export (:mod:`wsisam.export.run`).

Graphs (names and shapes: :class:`~wsisam.registry.WsiSamSpec`):

- ``encoder``: ``image`` → ``image_embeddings``, ``interm_embeddings`` (run on HR and LR tiles);
- ``decoder``: HR embedding + HR early feature + LR embedding + HR/LR prompt coordinates + labels
  → ``masks`` (N, 1, n, n) logits in the HR frame, ``iou_predictions`` (N, 1).

Parity: ONNX Runtime against the torch reference of the released inference
(:mod:`wsisam.export.wsisam_parity`), on random inputs and on real HR/LR tissue pairs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsisam.engines.manifest import write_manifest
from wsisam.errors import ConfigError, ParityError
from wsisam.export.modeling.wsisam import WsiSam
from wsisam.export.onnx_export import PROTOBUF_LIMIT, export_graph
from wsisam.export.run import (PARITY_TILES_WSISAM, REPORT_NAME, _check_destination, _manifest,
                               _parity_results, _report)
from wsisam.export.wsisam_weights import load_wsisam
from wsisam.registry import WsiSamSpec, get_model
from wsisam.runtime.writers.atomic import staged_dir

REFERENCE = ("wsisam.export.modeling.wsisam_reference: the released network.py per-decoder "
             "forward and inference.py fusion, step by step")


class WsiEncoderGraph(nn.Module):
    """``image`` (B,3,n,n) → (``image_embeddings`` (B,C,h,w), ``interm_embeddings`` (B,vit,h,w))."""

    def __init__(self, model: WsiSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode(image)


class WsiDecoderGraph(nn.Module):
    """The fused HR/LR decoder (:meth:`WsiSam.decode`)."""

    def __init__(self, model: WsiSam) -> None:
        super().__init__()
        self.model = model

    def forward(self, hr_emb: torch.Tensor, hr_interm: torch.Tensor, lr_emb: torch.Tensor,
                hr_coords: torch.Tensor, lr_coords: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.decode(hr_emb, hr_interm, lr_emb, hr_coords, lr_coords, labels)


def example_inputs(spec: WsiSamSpec, graph: str) -> tuple[torch.Tensor, ...]:
    """Trace inputs; dynamic axes get sizes > 1 so that none is specialised to 1."""
    g = torch.Generator().manual_seed(0)
    n = spec.input_px
    if graph == "encoder":
        return (torch.randn(2, 3, n, n, generator=g),)
    (h, w), c = spec.embed_hw, spec.embed_dim
    coords = torch.rand(3, 2, 2, generator=g) * n
    return (torch.randn(1, c, h, w, generator=g), torch.randn(1, spec.heads.vit_dim, h, w,
                                                              generator=g),
            torch.randn(1, c, h, w, generator=g), coords, coords / 2 + n / 4,
            torch.tensor([[2.0, 3.0]] * 3))


def run_wsisam_export(model: str, out_dir: Path, weights: Path | None = None,
                      heads: tuple[Path, Path] | None = None, random_init: bool = False,
                      parity_slides: list[Path] | None = None,
                      parity_tiles: int = PARITY_TILES_WSISAM,
                      external_threshold: int | None = None, check: bool = True,
                      precision: str = "fp32") -> dict[str, Any]:
    """Export the WSI-SAM ``model`` into ``out_dir``; see :func:`wsisam.export.run.run_export`.

    Refuses (before writing anything) without head files unless ``random_init``. Raises
    :class:`ParityError`, writing nothing, when a graph is beyond the tolerances.
    """
    if precision != "fp32":
        raise ConfigError(f"--precision {precision} is not built for WSI-SAM yet (its fused "
                          f"decoder has no FP16/INT8 policy); export fp32")
    spec = get_model(model)
    if not isinstance(spec, WsiSamSpec):
        raise ConfigError(f"{model} is not a WSI-SAM model")
    out_dir = Path(out_dir)
    _check_destination(out_dir)
    t0 = time.perf_counter()
    wsi, provenance = load_wsisam(spec, weights, heads, random_init)
    with staged_dir(out_dir) as stage:
        modules = {"encoder": WsiEncoderGraph(wsi), "decoder": WsiDecoderGraph(wsi)}
        files = {g: export_graph(wsi, spec, g, stage, external_threshold or PROTOBUF_LIMIT,
                                 module=m, inputs=example_inputs(spec, g))
                 for g, m in modules.items()}
        t_export = time.perf_counter() - t0
        parity = _parity(wsi, spec, stage, parity_slides, parity_tiles) if check else {}
        report = _report(spec, provenance, files, parity, t_export, time.perf_counter() - t0)
        report["random_init"] = bool(provenance["random_parts"])
        report["wsisam"] = _summary(spec, provenance)
        from wsisam.runtime.writers.report import write_json

        write_json(stage / REPORT_NAME, report)
        if report["parity"].get("failures"):
            raise ParityError(f"{model} export failed parity: "
                              f"{'; '.join(report['parity']['failures'])}")
        manifest = _manifest(spec, provenance, files, report)
        manifest["wsisam"] = report["wsisam"]
        write_manifest(stage, manifest)
    return report


def _summary(spec: WsiSamSpec, provenance: dict[str, Any]) -> dict[str, Any]:
    return {"hr_mpp": spec.mpp, "lr_mpp": spec.lr_mpp, "lr_scale": spec.heads.lr_scale,
            "vit_dim": spec.heads.vit_dim, "default_lr_layout": spec.heads.lr_layout,
            "random_parts": provenance["random_parts"], "heads": provenance["heads"],
            "reference": REFERENCE,
            "decoder_inputs_note": "no LR early feature: it cannot affect the released fusion"}


def _parity(wsi: WsiSam, spec: WsiSamSpec, stage: Path, slides: list[Path] | None,
            n_tiles: int) -> dict[str, Any]:
    from wsisam.export.wsisam_parity import WsiGraphPair, gate, random_parity, real_parity

    results = _parity_results(WsiGraphPair(wsi, spec, stage), spec, slides, n_tiles,
                              random_parity, real_parity)
    results["tolerances"] = {**vars(spec.tolerances), "end_to_end_logits_max_abs":
                             spec.heads.end_to_end_logits_max_abs}
    results["reference"] = REFERENCE
    results["failures"] = gate(spec, results)
    return results
