"""Two-way transformer of the SAM mask decoder, shared by the camera and the LiDAR branch.

Prompt tokens (output tokens + sparse prompt embeddings) and scene tokens (image stride-16 cells or
LiDAR stride-16 voxels, already conditioned on memory) attend to each other in both directions, as
in SAM/SAM2: per block, token self-attention, token -> scene cross-attention, a token MLP, and
scene -> token cross-attention; then a final token -> scene attention. Scene tokens come flattened,
(B, N, C), so one module serves an image grid and an unordered voxel set alike.

Beyond SAM2, the prompt tokens accept a validity mask: padded tokens (objects with fewer clicks
batched with objects with more) are removed from every attention's keys, so padding never changes
the result of the real tokens. Without a mask the computation is SAM2's.
"""

from __future__ import annotations

import torch
from torch import nn

from sam4d_core.modeling.blocks import MLP, Attention


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token -> scene, token MLP, scene -> token (post-norm, SAM layout).

    Args:
        embedding_dim: token width.
        num_heads: attention heads.
        mlp_dim: hidden width of the token MLP.
        activation: MLP activation.
        attention_downsample_rate: internal width divisor of the two cross attentions.
        skip_first_layer_pe: first block: the self-attention sees the raw tokens (no PE added and
            no residual), as in SAM.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, num_layers=2, activation=activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        query_pe: torch.Tensor,
        key_pe: torch.Tensor,
        token_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """queries (B, T, C) tokens, keys (B, N, C) scene; PEs of the same shapes (key_pe may have
        batch 1); token_valid (B, T) bool. Returns the updated (queries, keys)."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(queries, queries, queries, token_valid)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries, token_valid)
        queries = self.norm1(queries)

        q = queries + query_pe
        # keys do not change until the end of the block: one (B, N, C) add serves both attentions.
        k = keys + key_pe
        queries = self.norm2(queries + self.cross_attn_token_to_image(q, k, keys))

        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, q, queries, token_valid))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """SAM's two-way transformer decoder on flattened scene tokens.

    Args:
        depth: number of :class:`TwoWayAttentionBlock` (2 in SAM4D).
        embedding_dim: token width (256).
        num_heads: attention heads (8).
        mlp_dim: token MLP hidden width (2048).
        activation: MLP activation (ReLU, as SAM).
        attention_downsample_rate: internal width divisor of token <-> scene attentions (2).
    """

    def __init__(
        self,
        depth: int = 2,
        embedding_dim: int = 256,
        num_heads: int = 8,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self,
        scene_embedding: torch.Tensor,
        scene_pe: torch.Tensor,
        point_embedding: torch.Tensor,
        token_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the decoder.

        Args:
            scene_embedding: (B, N, C) scene tokens (an image map flattened row-major, or voxels).
            scene_pe: (B or 1, N, C) their positional encodings.
            point_embedding: (B, T, C) output tokens + prompt tokens; also their query PE.
            token_valid: optional (B, T) bool, False for padding tokens.

        Returns:
            (B, T, C) processed tokens and (B, N, C) processed scene tokens.
        """
        queries = point_embedding
        keys = scene_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, scene_pe, token_valid)
        q = queries + point_embedding
        k = keys + scene_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys


__all__ = ["Attention", "TwoWayAttentionBlock", "TwoWayTransformer"]
