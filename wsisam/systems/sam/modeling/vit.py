"""SAM's ``ImageEncoderViT``: patch embedding, absolute position embedding, transformer blocks
with decomposed relative positions (windowed, or global at ``global_attn_indexes``), 256-ch neck.

Inside the blocks the map is NHWC (B, H/p, W/p, D); state-dict keys match segment-anything.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsisam.errors import ConfigError
from wsisam.systems.sam.modeling.common import (LayerNorm2d, MLPBlock, window_partition,
                                           window_unpartition)
from wsisam.systems.sam.spec import ViTArch


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch``×``patch`` conv: (B, 3, S, S) → NHWC (B, S/p, S/p, D)."""

    def __init__(self, patch: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def relative_table(rel_pos: Tensor, size: int) -> Tensor:
    """(2·size−1, C) learned embeddings → (size, size, C) table of entry (q, k) = offset q−k.

    Queries and keys always share one grid here, so SAM's resizing of the table to other sizes is
    never needed (a checkpoint with another table length fails strict shape checking instead).
    """
    idx = torch.arange(size)[:, None] - torch.arange(size)[None, :] + (size - 1)
    return rel_pos[idx.to(rel_pos.device)]


class RelPosAttention(nn.Module):
    """Multi-head self-attention on an NHWC grid with decomposed (row + column) relative bias."""

    def __init__(self, dim: int, num_heads: int, grid: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"ViT embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.grid = grid
        self.head_dim = head_dim = dim // num_heads
        self.scale = head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * grid - 1, head_dim))

    def forward(self, x: Tensor) -> Tensor:
        """(B, g, g, D) → (B, g, g, D), g = ``grid`` (the window, or the whole grid)."""
        g, heads = self.grid, self.num_heads
        # qkv is laid out [q | k | v] then heads (SAM), unlike TinyViT's head-major layout.
        # Static grid sizes and -1 only for the batch: traced graphs need no shape arithmetic.
        qkv = self.qkv(x).reshape(-1, g * g, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, -1, g * g, self.head_dim).unbind(0)  # (B·heads, g², c)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = self._add_rel_pos(attn, q, g, g)
        out = (attn.softmax(dim=-1) @ v).reshape(-1, heads, g, g, self.head_dim)
        return self.proj(out.permute(0, 2, 3, 1, 4).reshape(-1, g, g, heads * self.head_dim))

    def _add_rel_pos(self, attn: Tensor, q: Tensor, h: int, w: int) -> Tensor:
        """attn (B', HW, HW) + q·R_h[qy, ky] + q·R_w[qx, kx] (MViTv2 decomposed rel-pos)."""
        r_q = q.reshape(-1, h, w, self.head_dim)
        rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, relative_table(self.rel_pos_h, h))
        rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, relative_table(self.rel_pos_w, w))
        attn = attn.reshape(-1, h, w, h, w) + rel_h[:, :, :, :, None] + rel_w[:, :, :, None, :]
        return attn.reshape(-1, h * w, h * w)


class ViTBlock(nn.Module):
    """Pre-norm transformer block; ``window`` > 0 attends within padded windows, 0 globally."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, window: int,
                 grid: int) -> None:
        super().__init__()
        self.window = window
        self.grid = grid
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = RelPosAttention(dim, num_heads, window if window > 0 else grid)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)

    def forward(self, x: Tensor) -> Tensor:
        """(B, H, W, D) → (B, H, W, D)."""
        y = self.norm1(x)
        if self.window > 0:
            # SAM pads after norm1, so padded tokens are exact zeros inside the attention.
            hw = (self.grid, self.grid)
            windows, padded = window_partition(y, self.window, hw)
            y = window_unpartition(self.attn(windows), self.window, padded, hw)
        else:
            y = self.attn(y)
        x = x + y
        return x + self.mlp(self.norm2(x))


class ImageEncoderViT(nn.Module):
    """SAM ViT encoder: (B, 3, S, S) normalised image → (B, out_chans, S/p, S/p) embedding."""

    def __init__(self, arch: ViTArch, in_chans: int = 3) -> None:
        super().__init__()
        if arch.img_size % arch.patch_size:
            raise ConfigError(f"ViT img_size {arch.img_size} is not a multiple of patch_size "
                              f"{arch.patch_size}")
        grid = arch.img_size // arch.patch_size
        self.grid_hw = (grid, grid)
        self.global_attn_indexes = tuple(arch.global_attn_indexes)
        self.patch_embed = PatchEmbed(arch.patch_size, in_chans, arch.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, arch.embed_dim))
        self.blocks = nn.ModuleList(
            ViTBlock(arch.embed_dim, arch.num_heads, arch.mlp_ratio,
                     0 if i in self.global_attn_indexes else arch.window_size, grid)
            for i in range(arch.depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(arch.embed_dim, arch.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(arch.out_chans),
            nn.Conv2d(arch.out_chans, arch.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(arch.out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) → (B, out_chans, h, w), (h, w) = ``grid_hw``."""
        return self.forward_with_interm(x)[0]

    def forward_with_interm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) → (embedding (B, out_chans, h, w), interm (B, h, w, D)).

        ``interm`` is the output of the first global-attention block (the input to the neck when
        there is none), the early feature HQ-SAM/WSI-SAM fuse into their decoders.
        """
        x = self.patch_embed(x) + self.pos_embed
        first_global = min(self.global_attn_indexes, default=len(self.blocks) - 1)
        interm = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == first_global:
                interm = x
        return self.neck(x.permute(0, 3, 1, 2)), interm
