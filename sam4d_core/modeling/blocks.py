"""Layers shared by the image backbone, the memory encoders, memory attention and the SAM head.

They keep SAM2's parameter names (``layers.N`` of an MLP, ``weight`` / ``bias`` of a LayerNorm2d,
``{q,k,v,out}_proj`` of an attention) because the official checkpoint stores them under those names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """``num_layers`` linear layers with an activation between them (none after the last).

    Args:
        input_dim, hidden_dim, output_dim: widths; every hidden layer has ``hidden_dim`` units.
        num_layers: number of linear layers (>= 1).
        activation: activation class placed between layers.
        sigmoid_output: apply a sigmoid to the output (SAM2's ``iou_prediction_use_sigmoid``).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        activation: type[nn.Module] = nn.ReLU,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.num_layers = num_layers
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out, strict=True))
        self.act = activation()
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., input_dim) -> (..., output_dim)."""
        last = self.num_layers - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = self.act(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of a (B, C, H, W) map (ConvNeXt / SAM style)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class Attention(nn.Module):
    """SAM-style multi-head attention with separate q/k/v/out projections and key padding masks.

    Args:
        embedding_dim: query (and output) width.
        num_heads: attention heads.
        downsample_rate: internal width = ``embedding_dim // downsample_rate``.
        dropout: attention-probability dropout (training only).
        kv_in_dim: key/value input width (default ``embedding_dim``).

    State-dict names follow SAM2 (``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``).
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int = 1,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = kv_in_dim if kv_in_dim is not None else embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads != 0:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.dropout_p = dropout
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, H * d) -> (B, H, N, d)."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.num_heads, -1).transpose(1, 2)

    def project_q(self, q: torch.Tensor) -> torch.Tensor:
        """(B, Nq, embedding_dim) -> (B, H, Nq, d)."""
        return self._split(self.q_proj(q))

    def project_kv(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Nk, kv_in_dim) keys and values -> two (B, H, Nk, d)."""
        return self._split(self.k_proj(k)), self._split(self.v_proj(v))

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_valid: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention on projected heads.

        Args:
            q: (B, H, Nq, d); k, v: (B, H, Nk, d) (batch sizes must match).
            key_valid: optional (B, Nk) bool, True for real keys. A query whose keys are all
                padding gets a zero update (instead of SDPA's NaN).
            bias: optional (B or 1, H or 1, Nq, Nk) float added to the attention logits; this
                call may overwrite it (padded keys set to -inf).

        Returns:
            (B, Nq, embedding_dim) after ``out_proj``.
        """
        mask: torch.Tensor | None = None
        has_key = None
        if key_valid is not None:
            has_key = key_valid.any(dim=1)  # (B,)
            # Rows without any valid key attend to everything (finite result) and are zeroed
            # below; torch.where keeps this free of data-dependent control flow (ONNX).
            safe = key_valid | ~has_key[:, None]
            mask = safe[:, None, None, :]
        if bias is not None:
            bias = bias.to(q.dtype)
            if mask is not None and mask.shape[0] == bias.shape[0]:
                bias = bias.masked_fill_(~mask, float("-inf"))  # no second Nq x Nk tensor
            elif mask is not None:
                bias = torch.where(mask, bias, float("-inf"))
            mask = bias
        p = self.dropout_p if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        b, h, n, d = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, n, h * d))
        if has_key is not None:
            out = out * has_key[:, None, None].to(out.dtype)
        return out

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """q (B, Nq, C), k/v (B, Nk, C_kv), key_valid (B, Nk) bool -> (B, Nq, C)."""
        kh, vh = self.project_kv(k, v)
        return self.attend(self.project_q(q), kh, vh, key_valid)


__all__ = ["MLP", "Attention", "LayerNorm2d"]
