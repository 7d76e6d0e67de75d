"""WSI-SAM's export plan (torch side): MobileSAM-family SAM + the two official head files loaded
strictly (:mod:`.weights`), the encoder (embedding + early feature) and the fused HR/LR decoder
traced, and the step-by-step reference of the released inference (:mod:`.reference`) that parity
is measured against.

Graphs (names and shapes: :class:`~wsisam.systems.wsi_sam.spec.WsiSamSpec`):

- ``encoder``: ``image`` → ``image_embeddings``, ``interm_embeddings`` (run on HR and LR tiles);
- ``decoder``: HR embedding + HR early feature + LR embedding + HR/LR prompt coordinates + labels
  → ``masks`` (N, 1, n, n) logits in the HR frame, ``iou_predictions`` (N, 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsisam.errors import ConfigError
from wsisam.systems.contract import ExportPlan
from wsisam.systems.wsi_sam.model_torch import WsiSam
from wsisam.systems.wsi_sam.reference import reference_decode
from wsisam.systems.wsi_sam.spec import HEAD_ROLES, WsiSamSpec
from wsisam.systems.wsi_sam.weights import load_wsisam

REFERENCE = ("wsisam.systems.wsi_sam.reference: the released network.py per-decoder forward and "
             "inference.py fusion, step by step")


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


class ReleasedReference:
    """The released inference as a graph set: the encoder's early feature returned NCHW like the
    graph (the released code's NHWC permuted), the decoder computed by
    :func:`~wsisam.systems.wsi_sam.reference.reference_decode` — both heads in full, so it also
    takes the LR early feature (``lr_interm_embeddings``) that the graph prunes."""

    takes_lr_interm = True

    def __init__(self, model: WsiSam) -> None:
        self.model = model

    def run(self, graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feed.items()}
        with torch.no_grad():
            if graph == "encoder":
                emb, interm = self.model.sam.image_encoder.forward_with_interm(t["image"])
                return {"image_embeddings": emb.numpy(),
                        "interm_embeddings": interm.permute(0, 3, 1, 2).numpy()}
            nhwc = {k: t[k].permute(0, 2, 3, 1).contiguous()
                    for k in ("hr_interm_embeddings", "lr_interm_embeddings")}
            m, s = reference_decode(self.model, t["hr_image_embeddings"],
                                    nhwc["hr_interm_embeddings"], t["lr_image_embeddings"],
                                    nhwc["lr_interm_embeddings"], t["hr_point_coords"],
                                    t["lr_point_coords"], t["point_labels"])
        return {"masks": m.numpy(), "iou_predictions": s.numpy()}


class WsiSamExportPlan(ExportPlan):
    """Weight roles ``sam`` (the SAM checkpoint), ``head_high`` and ``head_low`` (net_high.pth,
    net_low.pth), given together or not at all."""

    spec: WsiSamSpec

    def load(self, weights: dict[str, Path], random_init: bool) -> tuple[WsiSam, dict[str, Any]]:
        given = [r for r in HEAD_ROLES if r in weights]
        if len(given) == 1:
            raise ConfigError("give both WSI-SAM head files (--heads net_high.pth net_low.pth), "
                              "or neither")
        heads = (weights["head_high"], weights["head_low"]) if given else None
        model, provenance = load_wsisam(self.spec, weights.get("sam"), heads, random_init)
        return model, {**provenance, "random_init": bool(provenance["random_parts"])}

    def graphs(self, model: WsiSam) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        return {"encoder": (WsiEncoderGraph(model), example_inputs(self.spec, "encoder")),
                "decoder": (WsiDecoderGraph(model), example_inputs(self.spec, "decoder"))}

    def reference(self, model: WsiSam) -> ReleasedReference:
        return ReleasedReference(model)

    def details(self, provenance: dict[str, Any]) -> dict[str, Any]:
        spec = self.spec
        return {"hr_mpp": spec.mpp, "lr_mpp": spec.lr_mpp, "lr_scale": spec.heads.lr_scale,
                "vit_dim": spec.heads.vit_dim, "default_lr_layout": spec.heads.lr_layout,
                "random_parts": provenance["random_parts"], "heads": provenance["heads"],
                "reference": REFERENCE,
                "decoder_inputs_note": "no LR early feature: it cannot affect the released fusion"}
