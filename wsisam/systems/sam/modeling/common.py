"""Building blocks shared by the SAM encoders and the mask decoder.

Layouts: ``NCHW`` is (batch, channels, rows, cols); ``NHWC`` is (batch, rows, cols, channels);
tokens are (batch, count, channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map (SAM's neck and upscaling norm)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W), each pixel normalised over C."""
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MLPBlock(nn.Module):
    """Two-layer feed-forward ``lin1 → act → lin2`` (keys ``lin1``/``lin2``)."""

    def __init__(self, embedding_dim: int, mlp_dim: int,
                 act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = nn.Linear(embedding_dim, mlp_dim)
        self.lin2 = nn.Linear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        """(..., D) → (..., D)."""
        return self.lin2(self.act(self.lin1(x)))


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (keys ``layers.{i}``).

    The mask decoder's hypernetworks and IoU head.
    """

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int,
                 sigmoid_output: bool = False) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        """(..., input_dim) → (..., output_dim)."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


def window_partition(x: Tensor, window: int, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
    """Cut an NHWC map (B, H, W, C), (H, W) = ``hw``, into ``window``×``window`` tiles.

    The map is zero-padded bottom/right to a multiple of ``window`` first. Returns the tiles
    (B·nH·nW, window, window, C), ordered batch-major then row-major over tiles, and the padded
    size (Hp, Wp) needed by :func:`window_unpartition`. ``hw`` is passed as plain ints (the
    encoder's grid is fixed) so that traced graphs get constant shapes, not shape arithmetic.
    """
    h, w = hw
    c = x.shape[-1]
    pad_b, pad_r = (window - h % window) % window, (window - w % window) % window
    if pad_b or pad_r:
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
    hp, wp = h + pad_b, w + pad_r
    # -1 keeps the batch axis symbolic when traced for ONNX (the encoder batch is dynamic).
    x = x.reshape(-1, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def window_unpartition(windows: Tensor, window: int, padded_hw: tuple[int, int],
                       hw: tuple[int, int]) -> Tensor:
    """Inverse of :func:`window_partition`: tiles → NHWC map (B, H, W, C), padding cropped."""
    hp, wp = padded_hw
    h, w = hw
    c = windows.shape[-1]
    x = windows.reshape(-1, hp // window, wp // window, window, window, c)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)
    if hp != h or wp != w:
        x = x[:, :h, :w, :]
    return x
