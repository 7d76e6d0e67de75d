"""SAM's mask decoder: output tokens + prompt tokens through the two-way transformer, then
hypernetwork MLPs dotted with the upscaled image features give K mask logits per prompt.

Shapes: image embedding (1, C, h, w), prompts batched as N, mask logits (N, K, 4h, 4w) on the
embedding grid upscaled 4× (the low-resolution mask frame).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsisam.systems.sam.modeling.common import MLP, LayerNorm2d
from wsisam.systems.sam.modeling.transformer import TwoWayTransformer


class MaskDecoder(nn.Module):
    """Predicts K = ``num_multimask_outputs`` + 1 masks and their IoU scores per prompt."""

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer,
                 num_multimask_outputs: int = 3, iou_head_depth: int = 3,
                 iou_head_hidden_dim: int = 256) -> None:
        super().__init__()
        dim = transformer_dim
        self.transformer_dim = dim
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            nn.GELU(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens))
        self.iou_prediction_head = MLP(dim, iou_head_hidden_dim, self.num_mask_tokens,
                                       iou_head_depth)

    def _output_tokens(self) -> Tensor:
        """[iou token, mask tokens] → (1 + K, C)."""
        return torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)

    def predict_masks(self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor,
                      dense: Tensor) -> tuple[Tensor, Tensor]:
        """All N prompts of one image in one batch (the exported path).

        Args:
            image_embeddings: (1, C, h, w).
            image_pe: (1, C, h, w) positional encoding of the embedding grid.
            sparse: (N, T, C) prompt tokens, N ≥ 1.
            dense: (1, C, h, w) dense prompt embedding.
        Returns:
            masks (N, K, 4h, 4w) logits and iou (N, K), every mask token.
        """
        n = sparse.shape[0]
        tokens = torch.cat([self._output_tokens().unsqueeze(0).expand(n, -1, -1), sparse], dim=1)
        # One image for all prompts, never copied per prompt: the transformer's first layer
        # projects its image side once and broadcasts it over the prompts (matmul broadcasting),
        # which saves about a fifth of the decoder's multiply-adds per prompt.
        hs, img_tokens = self.transformer(image_embeddings + dense, image_pe, tokens)
        return self._heads(hs, img_tokens, image_embeddings.shape[-2:])

    def predict_masks_reference(self, image_embeddings: Tensor, image_pe: Tensor,
                                sparse: Tensor, dense: Tensor) -> tuple[Tensor, Tensor]:
        """The original SAM formulation (image copied per prompt with ``repeat_interleave``).

        Same arguments and results as :meth:`predict_masks`; used to check it.
        """
        output_tokens = self._output_tokens().unsqueeze(0).expand(sparse.shape[0], -1, -1)
        tokens = torch.cat([output_tokens, sparse], dim=1)
        src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0) + dense
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        hs, img_tokens = self.transformer(src, pos_src, tokens)
        return self._heads(hs, img_tokens, image_embeddings.shape[-2:])

    def _heads(self, hs: Tensor, img_tokens: Tensor,
               hw: tuple[int, int] | torch.Size) -> tuple[Tensor, Tensor]:
        """Transformer outputs → (masks (N, K, 4h, 4w), iou (N, K)).

        hs: (N, 1 + K + T, C) tokens; img_tokens: (N, h·w, C) row-major.
        """
        iou_out = hs[:, 0, :]
        mask_out = hs[:, 1:1 + self.num_mask_tokens, :]
        h, w = hw
        feats = img_tokens.transpose(1, 2).reshape(-1, self.transformer_dim, h, w)
        upscaled = self.output_upscaling(feats)  # (N, C/8, 4h, 4w)
        hyper = torch.stack([mlp(mask_out[:, i, :])
                             for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1)
        c8 = self.transformer_dim // 8
        masks = hyper @ upscaled.reshape(-1, c8, 16 * h * w)
        masks = masks.reshape(-1, self.num_mask_tokens, 4 * h, 4 * w)
        return masks, self.iou_prediction_head(iou_out)
