"""EP-SAM's torch modeling: ``ResNetAdl`` under torchvision's key names (ADL has no parameters,
so its positions leave index gaps: ``layer3.{0,2,..}``, ``layer4.{0,2,3}``), the closed-form
high-frequency channel (no FFT: not exportable to ONNX), the classifier graph (logits + CAM) and
the whole model (classifier + SAM)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wsisam.systems.ep_sam.spec import EpSamSpec, ResNetAdlArch
from wsisam.systems.sam.modeling import Sam, build_sam
from wsisam.systems.sam.modeling import perturb_defaults


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=False)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        idt = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + idt)


class Adl(nn.Module):
    """ADL at eval: the identity (its training-time drop/importance maps have no parameters)."""

    def forward(self, x: Tensor) -> Tensor:
        return x


# (layer, block index after which ADL sits), as ``_ADL_POSITION`` in the released code
ADL_AFTER = {3: (0,), 4: (0, 2)}


def high_frequency_matrices(n: int) -> tuple[Tensor, Tensor]:
    """(cos, sin) parts of the projection onto DFT frequencies {0, −1} along an axis of ``n``:
    A[m, m'] = Σ_{k∈{0,−1}} e^{2πik(m−m')/n} = 1 + cos(2π(m−m')/n) − i·sin(2π(m−m')/n)."""
    d = torch.arange(n, dtype=torch.float64)
    ang = 2 * math.pi * (d[:, None] - d[None, :]) / n
    return (1 + torch.cos(ang)), -torch.sin(ang)


class HighFrequency(nn.Module):
    """``patch_classifier/fft.py`` in closed form: |x − Re(the 2×2 centre of fftshift(fft2))|,
    then mean over RGB. Re(A x Bᵀ)/(HW) = (Ar x Brᵀ − Ai x Biᵀ)/(HW)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        ar, ai = high_frequency_matrices(n)
        self.register_buffer("ar", (ar / n).float(), persistent=False)
        self.register_buffer("ai", (ai / n).float(), persistent=False)

    def forward(self, rgb: Tensor) -> Tensor:
        """(B, 3, n, n) in [0, 1] → (B, 1, n, n)."""
        low = self.ar @ rgb @ self.ar.T - self.ai @ rgb @ self.ai.T
        return (rgb - low).abs().mean(dim=1, keepdim=True)


class ResNetAdl(nn.Module):
    """The released ``ResNetAdl`` at eval (keys ``conv1``, ``bn1``, ``layer1.0.conv1``, …, ``fc``)."""

    def __init__(self, arch: ResNetAdlArch) -> None:
        super().__init__()
        w = arch.width
        self.inplanes = w
        self.conv1 = nn.Conv2d(arch.in_chans, w, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=False)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        strides = (1, 2, 2, 1)  # large_feature_map=False: layer4 keeps stride 1
        for i, (blocks, stride) in enumerate(zip(arch.layers, strides), start=1):
            setattr(self, f"layer{i}", self._make_layer(w * 2 ** (i - 1), blocks, stride,
                                                        ADL_AFTER.get(i, ())))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(arch.feat_dim, 1)

    def _make_layer(self, planes: int, blocks: int, stride: int,
                    adl_after: tuple[int, ...]) -> nn.Sequential:
        down = None
        if stride != 1 or self.inplanes != planes * 4:
            down = nn.Sequential(nn.Conv2d(self.inplanes, planes * 4, 1, stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
        mods: list[nn.Module] = [Bottleneck(self.inplanes, planes, stride, down)]
        self.inplanes = planes * 4
        if 0 in adl_after:
            mods.append(Adl())
        for b in range(1, blocks):
            mods.append(Bottleneck(self.inplanes, planes))
            if b in adl_after:
                mods.append(Adl())
        return nn.Sequential(*mods)

    def trunk(self, x4: Tensor) -> Tensor:
        """(B, 4, p, p) → features after ``layer4[0]`` (B, 8·4·width, p/16, p/16)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x4))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.layer4[0](x)

    def head(self, f: Tensor) -> Tensor:
        """layer4[0] features → logits (B, 1) through the rest of layer4, pool and fc."""
        for m in list(self.layer4)[1:]:
            f = m(f)
        return self.fc(torch.flatten(self.avgpool(f), 1))


class EpSamClassifier(nn.Module):
    """The ``classifier`` graph: RGB [0, 1] → (logits (B, 1), cam (B, h, w) before ReLU)."""

    def __init__(self, net: ResNetAdl, patch_px: int) -> None:
        super().__init__()
        self.net = net
        self.high = HighFrequency(patch_px)

    def forward(self, rgb: Tensor) -> tuple[Tensor, Tensor]:
        f = self.net.trunk(torch.cat([rgb, self.high(rgb)], dim=1))
        cam = torch.einsum("c,bchw->bhw", self.net.fc.weight[0], f)
        return self.net.head(f), cam


class EpSam(nn.Module):
    """Classifier + SAM (the fine-tuned decoder lives in ``sam.mask_decoder``)."""

    def __init__(self, spec: EpSamSpec) -> None:
        super().__init__()
        self.sam: Sam = build_sam(spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(spec.seed + 1)
            self.classifier = ResNetAdl(spec.classifier)
            perturb_defaults(self.classifier)
        self.graph = EpSamClassifier(self.classifier, spec.patch_px)


def build_epsam(spec: EpSamSpec) -> EpSam:
    return EpSam(spec).eval()
