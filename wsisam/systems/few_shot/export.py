"""Few-shot export plan (torch side): the base SAM encoder as ``encoder``, and the reformulated
decoder (support tokens as constants, no prompt encoder) as ``decoder``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wsisam.errors import ConfigError
from wsisam.registry import get_model
from wsisam.systems.contract import ExportPlan
from wsisam.systems.few_shot.spec import FewShotSpec
from wsisam.systems.few_shot.train import FewShotDecoder
from wsisam.systems.sam.export import EncoderGraph, load_model

BANK = "support_bank.npz"


class FewShotGraph(nn.Module):
    """``image_embeddings`` (B,C,h,w) [, ``dense_prompt`` (B,1,4h,4w)] → ``fg_logits``
    (B,1,4h,4w); tokens (2,C) constants."""

    def __init__(self, dec: FewShotDecoder, tokens: torch.Tensor) -> None:
        super().__init__()
        self.dec = dec
        self.register_buffer("tokens", tokens)

    def forward(self, image_embeddings: torch.Tensor,
                dense_prompt: torch.Tensor | None = None) -> torch.Tensor:
        return self.dec(image_embeddings, self.tokens, dense_prompt)


class FewShotModel(nn.Module):
    def __init__(self, sam: nn.Module, graph: FewShotGraph) -> None:
        super().__init__()
        self.sam, self.graph = sam, graph


class FewShotExportPlan(ExportPlan):
    """Roles: ``sam`` (the base SAM checkpoint) and ``fewshot`` (``decoder.pt`` from
    ``wsisam-train fewshot``, with ``support_bank.npz`` and ``train_report.json`` beside it)."""

    spec: FewShotSpec

    def load(self, weights: dict[str, Path], random_init: bool) -> tuple[Any, dict[str, Any]]:
        sam, prov = load_model(get_model(self.spec.base), weights.get("sam"), random_init)
        dec = FewShotDecoder(sam, dense_prompt=self.spec.stain_prompt)
        path = weights.get("fewshot")
        if path is None:
            if self.spec.weights["fewshot"].kind != "random" and not random_init:
                raise ConfigError(f"{self.spec.name} needs its trained decoder: --weights "
                                  f"fewshot=MODEL_DIR/decoder.pt (from wsisam-train fewshot)")
            tokens = dec.tokens(torch.zeros(2, self.spec.embed_dim)).detach()
            details: dict[str, Any] = {"modality": None, "support": []}
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
            missing, unexpected = dec.load_state_dict(state, strict=False)
            if missing and all(k.startswith("mask_downscaling.") for k in missing):
                raise ConfigError(f"'{path}' was trained without the stain prompt that "
                                  f"{self.spec.name} now takes; retrain it with wsisam-train "
                                  f"fewshot (same support images)")
            if missing or unexpected:
                raise ConfigError(f"'{path}' is not a {self.spec.name} decoder (missing "
                                  f"{len(missing)} keys, unexpected {len(unexpected)})")
            bank = Path(path).with_name(BANK)
            if not bank.exists():
                raise ConfigError(f"no {BANK} beside '{path}'; pass the decoder.pt that "
                                  f"wsisam-train fewshot wrote")
            tokens = torch.from_numpy(np.load(bank)["tokens"])
            rep = Path(path).with_name("train_report.json")
            import json
            r = json.loads(rep.read_text()) if rep.exists() else {}
            details = {"modality": r.get("modality"), "support": r.get("support", []),
                       "token_mode": r.get("mode"), "stain_ref": r.get("stain_ref"),
                       "logit_threshold": r.get("recipe", {}).get("logit_threshold", 0.0)}
        model = FewShotModel(sam, FewShotGraph(dec, tokens.float()).eval()).eval()
        self._details = details
        return model, {**prov, "random_init": prov["source"] == "random-init" or path is None,
                       "fewshot": str(path) if path else None}

    def graphs(self, model: FewShotModel) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        g = torch.Generator().manual_seed(0)
        n, (h, w), (mh, mw) = self.spec.input_px, self.spec.embed_hw, self.spec.mask_hw
        dec_in: tuple[torch.Tensor, ...] = (torch.randn(2, self.spec.embed_dim, h, w, generator=g),)
        if self.spec.stain_prompt:  # prompts span the stain map's range [-4, 8]
            dec_in += (4 * torch.randn(2, 1, mh, mw, generator=g),)
        return {"encoder": (EncoderGraph(model.sam), (torch.randn(2, 3, n, n, generator=g),)),
                "decoder": (model.graph, dec_in)}

    def details(self, provenance: dict[str, Any]) -> dict[str, Any]:
        return dict(getattr(self, "_details", {}))
