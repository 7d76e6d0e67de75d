"""TinyViT image encoder as used by MobileSAM and LiteMedSAM.

Stage layout (4 stages): a patch embedding, stage 0 of MBConv blocks, stages 1..3 of windowed
attention blocks, a PatchMerging downsample at the end of stages 0..2 (stride 2, except stride 1
into the last stage, so the last two stages share one grid), then SAM's 256-channel neck.
State-dict keys match the MobileSAM/LiteMedSAM checkpoints.

Between stages the feature map is NCHW; attention stages work in NHWC internally.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsisam.errors import ConfigError
from wsisam.systems.sam.modeling.common import LayerNorm2d, window_partition, window_unpartition
from wsisam.systems.sam.spec import TinyViTArch


class Conv2dBN(nn.Module):
    """Bias-free Conv2d followed by BatchNorm2d (keys ``c.*`` and ``bn.*``)."""

    def __init__(self, in_chans: int, out_chans: int, kernel: int = 1, stride: int = 1,
                 pad: int = 0, groups: int = 1) -> None:
        super().__init__()
        self.c = nn.Conv2d(in_chans, out_chans, kernel, stride, pad, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.c(x))


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    """Output length of a convolution along one axis."""
    return (size + 2 * pad - kernel) // stride + 1


class PatchEmbed(nn.Module):
    """``seq.0`` conv → GELU → ``seq.2`` conv, input RGB → ``dim`` channels.

    ``kind="conv3x3s2"``: two 3×3 stride-2 convs (/4, MobileSAM); ``"conv1x1"``: two 1×1 convs
    (no downsampling, LiteMedSAM).
    """

    def __init__(self, in_chans: int, dim: int, kind: str) -> None:
        super().__init__()
        if kind == "conv3x3s2":
            self.kernel, self.stride, self.pad = 3, 2, 1
        elif kind == "conv1x1":
            self.kernel, self.stride, self.pad = 1, 1, 0
        else:
            raise ConfigError(f"unknown TinyViT patch_embed '{kind}'; use conv3x3s2 or conv1x1")
        k, s, p = self.kernel, self.stride, self.pad
        self.seq = nn.Sequential(Conv2dBN(in_chans, dim // 2, k, s, p), nn.GELU(),
                                 Conv2dBN(dim // 2, dim, k, s, p))

    def out_size(self, size: int) -> int:
        return conv_out(conv_out(size, self.kernel, self.stride, self.pad),
                        self.kernel, self.stride, self.pad)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) → (B, dim, S', S') NCHW."""
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand → depthwise 3×3 → 1×1 project, + input, then GELU."""

    def __init__(self, dim: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(dim * expand_ratio)
        self.conv1 = Conv2dBN(dim, hidden)
        self.conv2 = Conv2dBN(hidden, hidden, 3, 1, 1, groups=hidden)
        self.conv3 = Conv2dBN(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        y = self.act(self.conv1(x))
        y = self.act(self.conv2(y))
        return self.act(self.conv3(y) + x)


class PatchMerging(nn.Module):
    """Downsample: 1×1 conv → GELU → depthwise 3×3 (``stride``) → GELU → 1×1 conv."""

    def __init__(self, dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)
        self.act = nn.GELU()

    def out_size(self, size: int) -> int:
        return conv_out(size, 3, self.stride, 1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, dim, H, W) → (B, out_dim, H', W')."""
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.conv3(x)


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks, then an optional PatchMerging (NCHW in and out)."""

    def __init__(self, dim: int, depth: int, expand_ratio: float,
                 downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio) for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


def relative_offset_index(window: int) -> Tensor:
    """(N, N) index of the |dy|, |dx| offset between every pair of the N = window² points.

    Offsets are numbered in order of first appearance when scanning point pairs row-major, which
    is what the checkpoints' ``attention_biases`` columns follow; the first point (0, 0) already
    meets every offset, so offset (dy, dx) gets number ``dy * window + dx``.
    """
    ys, xs = torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    return (ys[:, None] - ys[None, :]).abs() * window + (xs[:, None] - xs[None, :]).abs()


class WindowAttention(nn.Module):
    """Multi-head self-attention over one window with learned relative-offset biases.

    ``norm`` (LayerNorm) is applied first, inside the attention, as in TinyViT. The fused ``qkv``
    projection is laid out per head as [q | k | v] (head-major), unlike SAM's ViT.
    """

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"TinyViT dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.tokens = window * window
        self.scale = self.key_dim ** -0.5
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window * window))
        self.register_buffer("attention_bias_idxs", relative_offset_index(window),
                             persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """Tokens (B', N, C) of B' windows, N = window² → (B', N, C)."""
        x = self.norm(x)
        n, heads, kd = self.tokens, self.num_heads, self.key_dim
        # Static sizes and -1 only for the batch of windows: traced graphs need no shape arithmetic.
        qkv = self.qkv(x).reshape(-1, n, heads, 3 * kd)
        q, k, v = qkv.transpose(1, 2).split(kd, dim=-1)  # each (B', heads, N, kd)
        bias = self.attention_biases[:, self.attention_bias_idxs]  # (heads, N, N)
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias
        out = attn.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(-1, n, heads * kd))


class TinyMlp(nn.Module):
    """LayerNorm → fc1 → GELU → fc2 (keys ``norm``, ``fc1``, ``fc2``)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.act = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class TinyViTBlock(nn.Module):
    """Windowed attention (+residual) → depthwise 3×3 ``local_conv`` → MLP (+residual)."""

    def __init__(self, dim: int, resolution: tuple[int, int], num_heads: int, window: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        self.resolution = resolution
        self.dim = dim
        self.window = window
        self.attn = WindowAttention(dim, num_heads, window)
        self.local_conv = Conv2dBN(dim, dim, 3, 1, 1, groups=dim)
        self.mlp = TinyMlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        """NHWC (B, H, W, C) → (B, H, W, C), (H, W) = ``resolution``."""
        ws = self.window
        # Padding happens before the attention's own LayerNorm (as TinyViT does), so padded
        # tokens enter the softmax as normalised zeros; cropping afterwards drops them.
        windows, padded = window_partition(x, ws, self.resolution)
        attn = self.attn(windows.reshape(-1, ws * ws, self.dim)).reshape(-1, ws, ws, self.dim)
        attn = window_unpartition(attn, ws, padded, self.resolution)
        x = x + attn
        x = self.local_conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return x + self.mlp(x)


class BasicLayer(nn.Module):
    """Stages 1..3: TinyViT blocks, then an optional PatchMerging (NCHW in and out)."""

    def __init__(self, dim: int, resolution: tuple[int, int], depth: int, num_heads: int,
                 window: int, mlp_ratio: float, downsample: PatchMerging | None) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(TinyViTBlock(dim, resolution, num_heads, window, mlp_ratio)
                                    for _ in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = block(x)
        x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class TinyViT(nn.Module):
    """TinyViT encoder: (B, 3, S, S) normalised image → (B, out_chans, h, w) embedding."""

    def __init__(self, arch: TinyViTArch, in_chans: int = 3) -> None:
        super().__init__()
        n = len(arch.embed_dims)
        if not (n >= 2 and len(arch.depths) == len(arch.num_heads) == len(arch.window_sizes) == n):
            raise ConfigError("TinyViT embed_dims/depths/num_heads/window_sizes need one entry "
                              "per stage (at least 2 stages)")
        dims = arch.embed_dims
        self.patch_embed = PatchEmbed(in_chans, dims[0], arch.patch_embed)
        size = self.patch_embed.out_size(arch.img_size)
        self.layers = nn.ModuleList()
        for i in range(n):
            down = None
            if i < n - 1:
                # TinyViT-SAM keeps the resolution into the last stage (stride 1 there).
                down = PatchMerging(dims[i], dims[i + 1], stride=1 if i == n - 2 else 2)
            if i == 0:
                layer: nn.Module = ConvLayer(dims[0], arch.depths[0], arch.mbconv_expand_ratio,
                                             down)
            else:
                layer = BasicLayer(dims[i], (size, size), arch.depths[i], arch.num_heads[i],
                                   arch.window_sizes[i], arch.mlp_ratio, down)
            self.layers.append(layer)
            size = size if down is None else down.out_size(size)
        self.grid_hw = (size, size)
        self.neck = nn.Sequential(
            nn.Conv2d(dims[-1], arch.out_chans, kernel_size=1, bias=False),
            LayerNorm2d(arch.out_chans),
            nn.Conv2d(arch.out_chans, arch.out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(arch.out_chans),
        )
        if arch.with_head:
            # Unused by SAM; present only so that MobileSAM's checkpoint loads strictly.
            self.norm_head = nn.LayerNorm(dims[-1])
            self.head = nn.Linear(dims[-1], arch.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, S, S) → (B, out_chans, h, w), (h, w) = ``grid_hw``."""
        return self.forward_with_interm(x)[0]

    def forward_with_interm(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, S, S) → (embedding (B, out_chans, h, w), interm (B, h, w, C)).

        ``interm`` is the output of ``layers[1]`` (after its PatchMerging, so C = embed_dims[2]),
        NHWC, the early feature HQ-SAM/WSI-SAM fuse into their decoders.
        """
        x = self.patch_embed(x)
        interm = x
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == 1:
                interm = x.permute(0, 2, 3, 1)
        return self.neck(x), interm
