"""EP-SAM's export plan (torch side): weights by role, strict, under the official key names —
``sam`` (``sam_vit_b_01ec64.pth``: ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``),
``classifier`` (``camelyon17_resnet_adl.pth``: 320 torchvision-named keys with ADL's index gaps),
``decoder`` (``camelyon17_decoder_iter3.pth``: ``mask_decoder.*`` only, loaded over the base SAM as
the released ``load_partial_weight`` does, but strictly) — and three graphs: ``classifier``
(RGB → logits, CAM; batch axis), ``encoder`` and ``decoder`` (stock SAM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsisam.errors import WeightsError
from wsisam.export.weights import (LoadReport, WeightsMismatchError, compare_keys, count_keys,
                                   read_pinned, resolve_weights)
from wsisam.systems.contract import ExportPlan
from wsisam.systems.ep_sam.model_torch import EpSam, build_epsam
from wsisam.systems.ep_sam.reference import ReferenceGraphs
from wsisam.systems.ep_sam.spec import ROLES, EpSamSpec
from wsisam.systems.sam.export import DecoderGraph, EncoderGraph
from wsisam.systems.sam.export import example_inputs as sam_examples

REFERENCE = ("wsisam.systems.ep_sam.reference: the released ResNetAdl forward with the FFT "
             "high-frequency channel and the layer4[0] CAM hook; SAM decode one prompt at a time")
# a key that marks each role's file, to name a file given under the wrong role
ROLE_MARKS = {"sam": "image_encoder.", "classifier": "layer4.", "decoder": "mask_decoder."}


def role_targets(model: EpSam, role: str) -> nn.Module:
    """The module whose ``state_dict()`` keys are the role's official keys."""
    if role == "sam":
        return model.sam
    if role == "classifier":
        return model.classifier
    return nn.ModuleDict({"mask_decoder": model.sam.mask_decoder})


def _wrong_role(role: str, state: dict) -> str | None:
    for other, mark in ROLE_MARKS.items():
        if other == role or any(k.startswith(ROLE_MARKS[role]) for k in state):
            continue
        if any(k.startswith(mark) for k in state):
            return other
    if role == "decoder" and any(k.startswith(("image_encoder.", "prompt_encoder.")) for k in state):
        return "sam"
    return None


def load_role(model: EpSam, spec: EpSamSpec, role: str, path: Path) -> dict[str, Any]:
    """Load one role's file strictly; a file of another role, or any key/shape mismatch, is one
    :class:`WeightsError` line naming the keys."""
    state, sha = read_pinned(spec, role, path, "file")
    other = _wrong_role(role, state)
    if other is not None:
        raise WeightsError(f"{path.name} looks like the {other} checkpoint "
                           f"({spec.weights[other].filename or other}), given as --weights "
                           f"{role}=; pass it as --weights {other}={path.name}")
    target = role_targets(model, role)
    kept, report = compare_keys(target, state)
    if not report.ok:
        raise WeightsMismatchError(
            f"{role} weights {path.name} do not match {spec.name}: "
            f"{count_keys('missing', report.missing)}, "
            f"{count_keys('unexpected', report.unexpected)}, "
            + count_keys("shape mismatches", [f"{k} checkpoint {c} vs model {m}"
                                              for k, c, m in report.mismatched]), report)
    target.load_state_dict(kept, strict=True)
    return {"path": str(path.resolve()), "sha256": sha, "keys": len(kept)}


def load_epsam(spec: EpSamSpec, weights: dict[str, Path],
               random_init: bool) -> tuple[EpSam, dict[str, Any]]:
    """The model with each role from its file (the decoder after the SAM base), or seeded random
    where allowed; provenance per role and ``random_parts``."""
    model = build_epsam(spec)
    roles: dict[str, Any] = {}
    for role in ROLES:  # sam before decoder: the fine-tuned decoder loads over the base
        path, source = resolve_weights(spec, role, weights.get(role), random_init)
        roles[role] = ({"source": "random-init"} if path is None
                       else {"source": source, **load_role(model, spec, role, path)})
    random_parts = [r for r, v in roles.items() if v["source"] == "random-init"]
    return model.eval(), {"roles": roles, "random_parts": random_parts,
                          "random_init": bool(random_parts)}


class ClassifierGraph(nn.Module):
    """``image`` (B, 3, p, p) RGB [0, 1] → (``logits`` (B, 1), ``cam`` (B, p/16, p/16))."""

    def __init__(self, model: EpSam) -> None:
        super().__init__()
        self.graph = model.graph

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.graph(image)


class EpSamExportPlan(ExportPlan):
    spec: EpSamSpec

    def load(self, weights: dict[str, Path], random_init: bool) -> tuple[EpSam, dict[str, Any]]:
        return load_epsam(self.spec, weights, random_init)

    def graphs(self, model: EpSam) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        g = torch.Generator().manual_seed(0)
        p = self.spec.patch_px
        return {"classifier": (ClassifierGraph(model), (torch.rand(2, 3, p, p, generator=g),)),
                "encoder": (EncoderGraph(model.sam), sam_examples(self.spec, "encoder")),
                "decoder": (DecoderGraph(model.sam), sam_examples(self.spec, "decoder"))}

    def reference(self, model: EpSam) -> ReferenceGraphs:
        return ReferenceGraphs(model)

    def details(self, provenance: dict[str, Any]) -> dict[str, Any]:
        return {"patch_px": self.spec.patch_px, "cam_hw": list(self.spec.cam_hw),
                "random_parts": provenance["random_parts"],
                "roles": {r: {k: v for k, v in d.items() if k != "path"}
                          for r, d in provenance["roles"].items()},
                "reference": REFERENCE}


__all__ = ["EpSamExportPlan", "load_epsam", "load_role", "LoadReport"]
