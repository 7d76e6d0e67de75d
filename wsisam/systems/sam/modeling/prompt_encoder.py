"""SAM's prompt encoder: random-Fourier positional encoding of points, learned label embeddings.

Point coordinates are in the *model-input* frame: pixels of the padded ``input_px``×``input_px``
encoder input, x then y. Labels: 1 foreground point, 0 background point, 2/3 top-left/bottom-right
box corner, -1 padding ("not a point").
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from wsisam.systems.sam.modeling.common import LayerNorm2d

NUM_POINT_EMBEDDINGS = 4  # background, foreground, box top-left, box bottom-right
PAD_LABEL = -1


class PositionEmbeddingRandom(nn.Module):
    """Random-Fourier features of [0, 1]² coordinates: [sin, cos](2π · (2p − 1) · G)."""

    def __init__(self, num_pos_feats: int, scale: float = 1.0) -> None:
        super().__init__()
        # A persistent buffer (not a parameter), as in the checkpoints.
        self.register_buffer("positional_encoding_gaussian_matrix",
                             scale * torch.randn(2, num_pos_feats))

    def encode(self, coords01: Tensor) -> Tensor:
        """(..., 2) x/y in [0, 1] → (..., 2·num_pos_feats)."""
        proj = (2 * coords01 - 1) @ self.positional_encoding_gaussian_matrix
        proj = 2 * math.pi * proj
        return torch.cat([torch.sin(proj), torch.cos(proj)], dim=-1)

    def grid(self, hw: tuple[int, int]) -> Tensor:
        """Encoding of the centres of an h×w grid of cells → (2·num_pos_feats, h, w)."""
        h, w = hw
        device = self.positional_encoding_gaussian_matrix.device
        ys = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
        xs = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
        xy = torch.stack([xs[None, :].expand(h, w), ys[:, None].expand(h, w)], dim=-1)
        return self.encode(xy).permute(2, 0, 1)


class PromptEncoder(nn.Module):
    """Embeds point/box prompts into sparse tokens and (absent) masks into a dense map.

    Args:
        embed_dim: token / embedding channels C.
        image_embedding_size: (h, w) of the image embedding.
        input_image_size: (H, W) of the padded encoder input, the frame of the coordinates.
        mask_in_chans: hidden channels of the mask-input downscaler.
    """

    def __init__(self, embed_dim: int, image_embedding_size: tuple[int, int],
                 input_image_size: tuple[int, int], mask_in_chans: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.pe_layer = PositionEmbeddingRandom(embed_dim // 2)
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim)
                                              for _ in range(NUM_POINT_EMBEDDINGS))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            nn.GELU(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            nn.GELU(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    # -- dense inputs -------------------------------------------------------------------------

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the image-embedding grid, (1, C, h, w)."""
        return self.pe_layer.grid(self.image_embedding_size).unsqueeze(0)

    def no_mask_dense(self) -> Tensor:
        """Dense embedding when no mask is given: ``no_mask_embed`` everywhere, (1, C, h, w)."""
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(1, -1, h, w)

    # -- sparse inputs ------------------------------------------------------------------------

    def _point_pe(self, coords_in: Tensor) -> Tensor:
        """(..., 2) model-input px → (..., C): shift to pixel centres, normalise, encode."""
        h, w = self.input_image_size
        size = torch.tensor([w, h], dtype=coords_in.dtype, device=coords_in.device)
        return self.pe_layer.encode((coords_in + 0.5) / size)

    def embed_points(self, coords: Tensor, labels: Tensor) -> Tensor:
        """Sparse tokens of point sets, ONNX/TensorRT-friendly.

        Args:
            coords: (N, P, 2) float, model-input px (x, y).
            labels: (N, P) float in {-1, 0, 1, 2, 3}.
        Returns:
            (N, P, C). Padding (-1) becomes ``not_a_point_embed`` alone; label k adds
            ``point_embeddings[k]`` to the positional encoding. Label masks multiply instead of
            boolean-indexed writes, so the exported graph has no ScatterND.
        """
        pe = self._point_pe(coords)
        lab = labels.unsqueeze(-1)
        is_pad = (lab == PAD_LABEL).to(pe.dtype)
        pe = pe * (1 - is_pad) + self.not_a_point_embed.weight * is_pad
        for k, emb in enumerate(self.point_embeddings):
            pe = pe + emb.weight * (lab == k).to(pe.dtype)
        return pe

    def embed_points_reference(self, coords: Tensor, labels: Tensor) -> Tensor:
        """Same as :meth:`embed_points`, written the original SAM way (boolean-index writes)."""
        pe = self._point_pe(coords)
        pe[labels == PAD_LABEL] = 0.0
        pe[labels == PAD_LABEL] += self.not_a_point_embed.weight
        for k in range(NUM_POINT_EMBEDDINGS):
            pe[labels == k] += self.point_embeddings[k].weight
        return pe

    # -- SAM-style interface ------------------------------------------------------------------

    def forward(self, points: tuple[Tensor, Tensor] | None, boxes: Tensor | None,
                masks: Tensor | None) -> tuple[Tensor, Tensor]:
        """SAM's prompt-encoder interface (torch-side use only; not exported).

        Args:
            points: coords (B, P, 2) model-input px and labels (B, P) in {-1, 0, 1}, or None.
                As in SAM, a padding point is appended when no boxes are given.
            boxes: (B, 4) xyxy model-input px, or None.
            masks: (B, 1, 4h, 4w) low-resolution mask logits, or None.
        Returns:
            sparse (B, T, C) and dense (B, C, h, w) embeddings.
        """
        batch = self._batch_size(points, boxes, masks)
        tokens = [torch.empty(batch, 0, self.embed_dim,
                              device=self.no_mask_embed.weight.device)]
        if points is not None:
            coords, labels = points
            if boxes is None:
                coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, 2)], dim=1)
                labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), PAD_LABEL)],
                                   dim=1)
            tokens.append(self.embed_points_reference(coords, labels.to(coords.dtype)))
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([2.0, 3.0], device=corners.device).expand(len(corners), 2)
            tokens.append(self.embed_points_reference(corners, corner_labels))
        if masks is not None:
            dense = self.mask_downscaling(masks)
        else:
            dense = self.no_mask_dense().expand(batch, -1, -1, -1)
        return torch.cat(tokens, dim=1), dense

    @staticmethod
    def _batch_size(points: tuple[Tensor, Tensor] | None, boxes: Tensor | None,
                    masks: Tensor | None) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        return masks.shape[0] if masks is not None else 1
