"""Helpers of the SAM head: the 1D sine encoding of object-pointer time gaps, batch broadcasting.

The layers shared with the rest of the model (MLP, LayerNorm2d, attention) are in
:mod:`sam4d_core.modeling.blocks`.
"""

from __future__ import annotations

import torch


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


__all__ = ["expand_batch", "get_1d_sine_pe"]
