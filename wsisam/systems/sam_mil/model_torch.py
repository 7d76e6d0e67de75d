"""SAM-MIL's torch modules with the released checkpoint key names (export layer).

- :class:`ResNetBaseline`: CLAM ``resnet50_baseline`` — torchvision ``resnet50`` names
  (``conv1``, ``bn1``, ``layer1.0.conv1`` … ``layer3.*``; no ``layer4``/``fc``), bottleneck
  stride on ``conv2`` as in CLAM's ``Bottleneck_Baseline``, global average pooling.
- :class:`AbMil`: ``sam_mil`` with ``baseline='attn'`` at inference (``forward_test``): keys
  ``patch_to_emb.0.*``, ``online_encoder.attn_model.attention.attention.{0,2}.weight``,
  ``predictor.*``.
"""

from __future__ import annotations

import torch
from torch import nn

from wsisam.systems.sam_mil.spec import MilArch, ResNetArch


class Bottleneck(nn.Module):
    """1×1 → 3×3 (stride) → 1×1 (×4 channels), with a projection shortcut where shapes change."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != out:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, out, 1, stride=stride,
                                                      bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNetBaseline(nn.Module):
    """``image`` (B, 3, n, n) ImageNet-normalised → ``features`` (B, 16·width)."""

    def __init__(self, arch: ResNetArch) -> None:
        super().__init__()
        w = arch.width
        self.conv1 = nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = w
        for i, (blocks, stride) in enumerate(zip(arch.blocks, (1, 2, 2)), 1):
            planes = w * 2 ** (i - 1)
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(inplanes, planes, stride if b == 0 else 1))
                inplanes = planes * Bottleneck.expansion
            setattr(self, f"layer{i}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(image))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.avgpool(x).flatten(1)


class _Attention(nn.Module):
    """``Attention`` of the released ``datten.py``: Linear(no bias) ReLU Linear(no bias)."""

    def __init__(self, emb: int, att: int) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Linear(emb, att, bias=False), nn.ReLU(),
                                       nn.Linear(att, 1, bias=False))


class _DAttention(nn.Module):
    def __init__(self, emb: int, att: int) -> None:
        super().__init__()
        self.attention = _Attention(emb, att)


class _Backbone(nn.Module):
    def __init__(self, emb: int, att: int) -> None:
        super().__init__()
        self.attn_model = _DAttention(emb, att)


class AbMil(nn.Module):
    """``bag`` (N, D) → (``slide_logits`` (1, classes), ``attention`` (N,)), softmax over N."""

    def __init__(self, arch: MilArch) -> None:
        super().__init__()
        self.patch_to_emb = nn.Sequential(nn.Linear(arch.input_dim, arch.emb_dim), nn.ReLU(),
                                          nn.Dropout(0.25))
        self.online_encoder = _Backbone(arch.emb_dim, arch.att_dim)
        self.predictor = nn.Linear(arch.emb_dim, arch.n_classes)

    def forward(self, bag: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.patch_to_emb(bag)  # (N, emb)
        a = self.online_encoder.attn_model.attention.attention(h)[:, 0]  # (N,)
        a = torch.softmax(a, dim=0)
        return self.predictor((a[:, None] * h).sum(0, keepdim=True)), a
