"""CellSAM's export plan (torch side): the SAM-family model (role ``sam``, strict
segment-anything keys) and the trained head (role ``head``), traced as two graphs."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsisam.export.weights import load_weights, read_pinned, resolve_weights
from wsisam.systems.cell_sam.model_torch import CellHead, build_head
from wsisam.systems.cell_sam.spec import CellSamSpec
from wsisam.systems.contract import ExportPlan
from wsisam.systems.sam.export import DecoderGraph, EncoderGraph, example_inputs, load_model
from wsisam.systems.sam.modeling import Sam


class CellSam(nn.Module):
    """The frozen SAM model and the head, for export (inference only)."""

    def __init__(self, sam: Sam, head: CellHead) -> None:
        super().__init__()
        self.sam, self.head = sam, head


def load_head(spec: CellSamSpec, path: Path | None, source: str) -> tuple[CellHead, str | None]:
    """The head of ``spec`` with the weights of ``path`` loaded strictly (the shipped file's
    hash checked) and their sha256; None: seeded random."""
    head = build_head(spec.head, spec.embed_dim, spec.head_stride, spec.seed)
    sha = None
    if path is not None:
        state, sha = read_pinned(spec, "head", path, source)
        state.setdefault("stain_ref", torch.zeros(2, 3))  # heads trained before normalisation
        load_weights(head, state, spec, "head")
    return head.eval(), sha


class CellSamExportPlan(ExportPlan):
    """Roles ``sam`` (segment-anything layout) and ``head`` (``wsisam-train cellsam``'s file)."""

    spec: CellSamSpec

    def load(self, weights: dict[str, Path], random_init: bool) -> tuple[CellSam, dict[str, Any]]:
        sam, sam_prov = load_model(self.spec, weights.get("sam"), random_init)
        path, source = resolve_weights(self.spec, "head", weights.get("head"), random_init)
        head, sha = load_head(self.spec, path, source)
        head_prov = {"source": source, "path": str(path.resolve()) if path else None,
                     "sha256": sha}
        random = sam_prov["source"] == "random-init" or source == "random-init"
        return CellSam(sam, head), {**sam_prov, "head": head_prov, "random_init": random,
                                    "watershed": [round(float(v), 4) for v in head.watershed],
                                    "stain_ref": head.stain_ref.tolist()}

    def graphs(self, model: CellSam) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        g = torch.Generator().manual_seed(1)
        n, (h, w) = self.spec.head_px, self.spec.embed_hw
        head_inputs = (torch.randn(2, 3, n, n, generator=g),
                       torch.randn(2, self.spec.embed_dim, h, w, generator=g))
        return {"encoder": (EncoderGraph(model.sam), example_inputs(self.spec, "encoder")),
                "head": (model.head, head_inputs),
                "decoder": (DecoderGraph(model.sam), example_inputs(self.spec, "decoder"))}

    def details(self, provenance: dict[str, Any]) -> dict[str, Any]:
        fg, centre, boundary = provenance["watershed"]
        return {"head": provenance["head"], "embed_stride": self.spec.embed_stride,
                "head_arch": asdict(self.spec.head), "head_mpp": self.spec.head_mpp,
                "watershed": {"fg_thresh": fg, "centre_thresh": centre,
                              "boundary_thresh": boundary},
                "stain_ref": provenance["stain_ref"]}
