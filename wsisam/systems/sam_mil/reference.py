"""Torch references written from the released code, independent of the exported modules
(export layer): the released ``sam_mil.forward_test`` with ``baseline='attn'``
(``modules/sam.py`` + ``modules/datten.py``) and CLAM's ``resnet50_baseline``, both as plain
functional torch over a state dict, in the released operation order."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from wsisam.systems.sam_mil.spec import ResNetArch


def forward_test(state: Mapping[str, Tensor], bag: Tensor) -> tuple[Tensor, Tensor]:
    """The released inference: ``bag`` (1, N, D) → logits (1, C), attention (1, N).

    ``patch_to_emb`` (Linear + ReLU; Dropout is identity at eval), ``DAttention``: ``A =
    attention(x)`` (1, N, 1), ``A = transpose(A, -1, -2)``, ``softmax(A, dim=-1)``, ``x =
    A @ x`` → (1, 1, emb), then ``predictor``."""
    x = F.relu(F.linear(bag, state["patch_to_emb.0.weight"], state["patch_to_emb.0.bias"]))
    pre = "online_encoder.attn_model.attention.attention."
    a = F.linear(F.relu(F.linear(x, state[pre + "0.weight"])), state[pre + "2.weight"])
    a = F.softmax(a.transpose(-1, -2), dim=-1)  # (1, 1, N)
    z = torch.matmul(a, x).squeeze(1)  # (1, emb)
    return F.linear(z, state["predictor.weight"], state["predictor.bias"]), a[:, 0]


def _bn(x: Tensor, state: Mapping[str, Tensor], name: str) -> Tensor:
    return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"],
                        state[f"{name}.weight"], state[f"{name}.bias"], False, 0.0, 1e-5)


def resnet50_baseline(state: Mapping[str, Tensor], arch: ResNetArch, image: Tensor) -> Tensor:
    """CLAM ``resnet50_baseline`` forward: ``image`` (B, 3, n, n) → (B, 16·width)."""
    x = F.relu(_bn(F.conv2d(image, state["conv1.weight"], stride=2, padding=3), state, "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for i, (blocks, stride) in enumerate(zip(arch.blocks, (1, 2, 2)), 1):
        for b in range(blocks):
            p, s = f"layer{i}.{b}", stride if b == 0 else 1
            y = F.relu(_bn(F.conv2d(x, state[f"{p}.conv1.weight"]), state, f"{p}.bn1"))
            y = F.relu(_bn(F.conv2d(y, state[f"{p}.conv2.weight"], stride=s, padding=1), state,
                           f"{p}.bn2"))
            y = _bn(F.conv2d(y, state[f"{p}.conv3.weight"]), state, f"{p}.bn3")
            if f"{p}.downsample.0.weight" in state:
                x = _bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=s), state,
                        f"{p}.downsample.1")
            x = F.relu(y + x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)
