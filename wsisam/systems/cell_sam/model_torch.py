"""CellSAM's trainable part in torch: a small full-resolution CNN encoder, fused with the frozen
SAM-family image embedding, and a UNet decoder to three nucleus maps.

Frames: ``image`` is the SAM-preprocessed tile (B, 3, n, n) at the head's µm/px
(``spec.head_mpp``; n = ``spec.head_px``, the large encoder's input upscaled by
``spec.head.upscale``); ``image_embeddings`` is the large encoder's output (B, C, n/s, n/s)
with ``s = spec.head_stride``; ``maps`` (B, 3, n, n) in [0, 1] are
foreground, centre distance and boundary distance (:mod:`wsisam.systems.cell_sam.instances`).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from wsisam.systems.cell_sam.instances import WatershedConfig
from wsisam.systems.cell_sam.spec import HeadArch

_WS = WatershedConfig()
WATERSHED_DEFAULTS = (_WS.fg_thresh, _WS.centre_thresh, _WS.boundary_thresh)


def block(cin: int, cout: int, n: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(cin if i == 0 else cout, cout, 3, padding=1, bias=False),
                   nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class CellHead(nn.Module):
    """Small encoder (stride 1, 2, 4, … ``2**(len(widths)-1)``), fusion of the large embedding at
    its stride (a 1×1 reduction concatenated to the small encoder's feature there), UNet decoder.

    ``distill`` (training only; None for inference, and not in the weights file): a 1×1 projection of the small encoder's feature at
    the embedding's stride to the embedding's channels, trained to match it (feature distillation).
    """

    def __init__(self, arch: HeadArch, embed_dim: int, embed_stride: int) -> None:
        super().__init__()
        self.arch = arch
        w = arch.widths
        self.fuse_level = int(math.log2(embed_stride))
        if not 0 < self.fuse_level < len(w) or 2 ** self.fuse_level != embed_stride:
            raise ValueError(f"embedding stride {embed_stride} must be one of the encoder's "
                             f"strides 2..{2 ** (len(w) - 1)}")
        self.stem = block(3, w[0])
        self.down = nn.ModuleList(block(w[i - 1], w[i]) for i in range(1, len(w)))
        fuse_in = w[self.fuse_level]
        self.reduce = nn.Sequential(nn.Conv2d(embed_dim, arch.fuse_dim, 1, bias=False),
                                    nn.BatchNorm2d(arch.fuse_dim), nn.ReLU(inplace=True))
        self.fuse = block(fuse_in + (arch.fuse_dim if arch.use_embedding else 0), fuse_in, 1)
        self.context = nn.ModuleList(
            nn.Sequential(nn.Conv2d(fuse_in, fuse_in, 3, padding=2 ** (i + 1),
                                    dilation=2 ** (i + 1), bias=False),
                          nn.BatchNorm2d(fuse_in), nn.ReLU(inplace=True))
            for i in range(arch.context))
        self.up = nn.ModuleList(block(w[i] + w[i - 1], w[i - 1], 1)
                                for i in range(len(w) - 1, 0, -1))
        self.out = nn.Conv2d(w[0], 3, 1)
        self.distill: nn.Module | None = nn.Conv2d(fuse_in, embed_dim, 1)
        # seeded-watershed thresholds (fg, centre, boundary) chosen after training; kept in the
        # weights file so that a head and its thresholds travel together
        self.register_buffer("watershed", torch.tensor(WATERSHED_DEFAULTS))
        # the training set's tissue colour statistics (L*a*b* mean, std; runtime.stain_norm)
        # that every input is normalised to; zeros: trained without normalisation
        self.register_buffer("stain_ref", torch.zeros(2, 3))

    def features(self, image: torch.Tensor, image_embeddings: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """→ (maps (B,3,n,n), small feature at the embedding's stride before fusion)."""
        skips = [self.stem(image)]
        for i, down in enumerate(self.down, start=1):
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        small = skips[self.fuse_level]
        if self.arch.use_embedding:
            fused = self.fuse(torch.cat([small, self.reduce(image_embeddings)], dim=1))
        else:
            fused = self.fuse(small)
        for layer in self.context:
            fused = fused + layer(fused)
        skips[self.fuse_level] = fused
        x = skips[-1]
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = up(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="nearest"), skip], 1))
        return torch.sigmoid(self.out(x)), small

    def forward(self, image: torch.Tensor, image_embeddings: torch.Tensor) -> torch.Tensor:
        return self.features(image, image_embeddings)[0]


def build_head(arch: HeadArch, embed_dim: int, embed_stride: int, seed: int,
               training: bool = False) -> CellHead:
    """A seeded head; without ``training`` its distillation projection is dropped."""
    torch.manual_seed(seed)
    head = CellHead(arch, embed_dim, embed_stride)
    if not training:
        head.distill = None
    return head.eval()
