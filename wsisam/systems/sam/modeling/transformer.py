"""SAM's two-way transformer: prompt tokens and image tokens attend to each other.

Shapes: tokens (N, T, C) for N prompts; image tokens (N, h·w, C). Image-side positional
encodings may have batch 1 and broadcast over N.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from wsisam.errors import ConfigError
from wsisam.systems.sam.modeling.common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v projections into ``dim // downsample_rate``."""

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        internal = embedding_dim // downsample_rate
        if internal % num_heads:
            raise ConfigError(f"attention width {internal} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = internal // num_heads
        self.temperature = math.sqrt(internal // num_heads)
        self.q_proj = nn.Linear(embedding_dim, internal)
        self.k_proj = nn.Linear(embedding_dim, internal)
        self.v_proj = nn.Linear(embedding_dim, internal)
        self.out_proj = nn.Linear(internal, embedding_dim)

    def _heads(self, x: Tensor) -> Tensor:
        """(N, T, heads·c) → (N, heads, T, c)."""
        # One dynamic size and one -1: the lightest shape arithmetic in a traced graph.
        return x.reshape(x.shape[0], -1, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q (N|1, Tq, C), k and v (N|1, Tk, C) → (N, Tq, C); a batch of 1 broadcasts."""
        q, k, v = (self._heads(self.q_proj(q)), self._heads(self.k_proj(k)),
                   self._heads(self.v_proj(v)))
        attn = (q @ k.transpose(-2, -1)) / self.temperature
        out = attn.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(out.shape[0], -1, self.num_heads * self.head_dim)
        return self.out_proj(out)


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token→image cross-attention, token MLP, image→token
    cross-attention, each followed by a LayerNorm (``norm1``..``norm4``)."""

    def __init__(self, embedding_dim: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int = 2, skip_first_layer_pe: bool = False) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, nn.ReLU)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor,
                key_pe: Tensor) -> tuple[Tensor, Tensor]:
        """queries (N, T, C), keys (1|N, hw, C), query_pe (N, T, C), key_pe (1|N, hw, C).

        Keys of batch 1 (the first layer's: one image for every prompt) are projected once and
        broadcast; they come out (N, hw, C), as the image→token attention makes them per prompt.
        """
        if self.skip_first_layer_pe:
            # The first layer's queries are the prompt embeddings themselves (PE included), and
            # the attention output replaces them rather than being added.
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)

        q, k = queries + query_pe, keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))
        queries = self.norm3(queries + self.mlp(queries))

        q, k = queries + query_pe, keys + key_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """``depth`` two-way blocks, then ``final_attn_token_to_image`` and ``norm_final_attn``."""

    def __init__(self, depth: int, embedding_dim: int, num_heads: int, mlp_dim: int,
                 attention_downsample_rate: int = 2) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(embedding_dim, num_heads, mlp_dim, attention_downsample_rate,
                                 skip_first_layer_pe=(i == 0))
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(embedding_dim, num_heads,
                                                   attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor,
                point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        """Run the transformer.

        Args:
            image_embedding: (1 or N, C, h, w): 1 shares the image between the N prompts.
            image_pe: (1 or N, C, h, w).
            point_embedding: (N, T, C) tokens (output tokens + prompt tokens).
        Returns:
            tokens (N, T, C) and image tokens (N, h·w, C), row-major over the grid.
        """
        keys = image_embedding.flatten(2).transpose(1, 2)
        key_pe = image_pe.flatten(2).transpose(1, 2)
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
