"""Small building blocks shared by the SAM head: MLP, channel LayerNorm, 1D sine encoding.

The MLP and LayerNorm2d keep SAM2's parameter names (``layers.N``, ``weight``/``bias``) because the
official checkpoint stores the SAM head under those names.
"""

from __future__ import annotations

import torch
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


def get_1d_sine_pe(pos: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Transformer sine/cosine encoding of scalar positions (SAM2's object-pointer temporal PE).

    Args:
        pos: (...) float positions (for pointers: signed frame gap / max gap, in [-1, 1]).
        dim: output width (even); the first half are sines, the second half cosines.

    Returns:
        (..., dim) encoding in ``pos``'s dtype (computed in float32).
    """
    half = dim // 2
    idx = torch.arange(half, dtype=torch.float32, device=pos.device)
    # Frequencies pair up (0, 0, 1, 1, ...) as in SAM2, so a checkpoint trained with it matches.
    freq = temperature ** (2 * torch.div(idx, 2, rounding_mode="floor") / half)
    angles = pos.float().unsqueeze(-1) / freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1).to(
        pos.dtype if pos.is_floating_point() else torch.float32
    )


def expand_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    """Broadcast a leading batch of 1 to ``batch`` (no copy); other sizes must already match."""
    if x.shape[0] == batch:
        return x
    if x.shape[0] != 1:
        raise ValueError(f"batch {x.shape[0]} cannot be broadcast to {batch}")
    return x.expand(batch, *x.shape[1:])


__all__ = ["MLP", "LayerNorm2d", "expand_batch", "get_1d_sine_pe"]
