"""PyTorch SAM v1 models (ViT and TinyViT encoders) with the checkpoints' state-dict keys.

:func:`build_sam` makes a :class:`Sam` from a registry spec, randomly initialised (seeded); load
trained weights with :mod:`wsisam.export.weights`.
"""

from __future__ import annotations

import torch
from torch import nn

from wsisam.systems.sam.modeling.common import LayerNorm2d
from wsisam.systems.sam.modeling.sam import Sam
from wsisam.systems.sam.modeling.tiny_vit import WindowAttention
from wsisam.systems.sam.modeling.vit import ImageEncoderViT, RelPosAttention
from wsisam.systems.sam.spec import SamSpec

__all__ = ["Sam", "build_sam"]


def build_sam(spec: SamSpec, seed: int | None = None) -> Sam:
    """A :class:`Sam` for ``spec`` in eval mode, randomly initialised with ``seed``
    (``spec.seed`` when None). The global torch RNG is left untouched.

    Works under ``with torch.device("meta"):`` to inspect large models without allocating them.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed if seed is None else seed)
        sam = Sam(spec)
        perturb_defaults(sam)
    return sam.eval()


@torch.no_grad()
def perturb_defaults(model: nn.Module) -> None:
    """Replace the constant initialisations that trained checkpoints never have.

    Norm affines, BatchNorm statistics, position embeddings, relative-position tables and
    attention biases start as exact 0/1 in their reference code, which would leave those paths
    untested (any wrong index or layout multiplies zeros) in random-weight models.
    """
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.running_mean.normal_(0.0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
        elif isinstance(m, (nn.LayerNorm, LayerNorm2d)):
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
        elif isinstance(m, RelPosAttention):
            m.rel_pos_h.normal_(0.0, 0.02)
            m.rel_pos_w.normal_(0.0, 0.02)
        elif isinstance(m, WindowAttention):
            m.attention_biases.normal_(0.0, 0.5)
        elif isinstance(m, ImageEncoderViT):
            m.pos_embed.normal_(0.0, 0.02)
