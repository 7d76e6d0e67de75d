"""The toy system's torch side: three small modules, seeded random weights."""

from __future__ import annotations

import torch
from torch import nn

from wsisam.systems.contract import ExportPlan


class Pool(nn.Module):
    """ABMIL-style attention pooling over a bag (instances, C) → logits (1, 2), attention."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.att = nn.Sequential(nn.Linear(c, 4), nn.Tanh(), nn.Linear(4, 1))
        self.cls = nn.Linear(c, 2)

    def forward(self, bag: torch.Tensor):
        a = torch.softmax(self.att(bag)[:, 0], dim=0)
        return self.cls((a[:, None] * bag).sum(0, keepdim=True)), a


class ToyExportPlan(ExportPlan):
    def load(self, weights, random_init):
        from tests.systems.toy_system import C

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.spec.seed)
            model = nn.ModuleDict({"stem": nn.Conv2d(3, C, 4, 4), "head": nn.Conv2d(C, 1, 1),
                                   "pool": Pool(C)})
        return model.eval(), {"source": "random-init", "random_init": True}

    def graphs(self, model):
        from tests.systems.toy_system import C, N

        g = torch.Generator().manual_seed(0)
        return {"stem": (model["stem"], (torch.randn(2, 3, N, N, generator=g),)),
                "head": (model["head"], (torch.randn(2, C, N // 4, N // 4, generator=g),)),
                "pool": (model["pool"], (torch.randn(5, C, generator=g),))}
