"""Positional encodings of image cells and 3D points (the fixed parts of SAM4D's UMPE).

Two encodings live here; the learned part (the shared ray / point MLP) is in :mod:`.umpe`.

- :class:`PositionEmbeddingSine`: SAM2-style 2D sine encoding of image positions, for the dense
  stride-16 feature grid and for 2D clicks. It reproduces the released SAM4D variant: positions at
  cell centres, and (behind ``released_frequency_quirk``) the operator-precedence bug that makes
  every frequency 1 (see :func:`sine_frequencies`).
- :class:`PositionEmbeddingRandom`: random Fourier features (RFF) of raw metric xyz in the LiDAR
  frame, for LiDAR tokens and 3D clicks: ``[sin(x @ G), cos(x @ G)]`` with a fixed Gaussian matrix
  ``G`` (3 x C/2), stored as the buffer ``positional_encoding_gaussian_matrix`` like SAM's.

Facts from the released SAM4D ``position_encoding.py`` (read, not copied): the sine encoding takes
``num_pos_feats`` = the total width (256) and gives 128 channels per axis in the order (y, x); grid
positions are ``(i + 0.5) / (n + 1e-6) * 2 pi``; the RFF matrix is ``scale * randn(3, 128)`` with
``scale = 1`` and is applied to raw metres with no ``2 pi`` factor and no normalisation.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sine_frequencies(
    num_pos_feats: int,
    temperature: float = 10000.0,
    released_frequency_quirk: bool = False,
    device: torch.device | None = None,
) -> torch.Tensor:
    """Divisors of the sine encoding for one axis, shape (num_pos_feats // 2,).

    ``num_pos_feats`` is the total encoding width (both axes). Channel ``i`` of one axis encodes
    ``pos / dim_t[i]`` (``sin`` for even ``i``, ``cos`` for odd ``i``).

    Intended (SAM2, DETR): ``dim_t[i] = T ** (2 * (i // 2) / (num_pos_feats // 2))``, a geometric
    range of wavelengths from 1 to ~T.

    Released SAM4D quirk: the code writes ``T ** (2 * (i // 2) / num_pos_feats // 2)``. Python
    binds ``/`` and ``//`` left to right with equal precedence, so this is
    ``T ** (((2 * (i // 2)) / num_pos_feats) // 2)``; the inner ratio is at most
    ``(num_pos_feats - 4) / num_pos_feats < 1``, its floor division by 2 is 0, and every divisor
    is ``T ** 0 = 1``. Each axis then carries the same ``(sin p, cos p)`` pair repeated
    ``num_pos_feats // 4`` times. The released checkpoint was trained with this, so it must be
    reproduced (``released_frequency_quirk=True``) to load it.
    """
    assert num_pos_feats % 4 == 0, "Expecting a width divisible by 4 (sin/cos pairs per axis)"
    half = num_pos_feats // 2
    i = torch.arange(half, dtype=torch.float32, device=device)
    if released_frequency_quirk:
        # Exactly the released expression, precedence included.
        exponent = 2 * torch.div(i, 2, rounding_mode="floor") / num_pos_feats // 2
    else:
        exponent = 2 * torch.div(i, 2, rounding_mode="floor") / half
    return temperature**exponent


class PositionEmbeddingSine(nn.Module):
    """2D sine positional encoding of image positions (SAM2 / DETR style).

    Args:
        num_pos_feats: total encoding width C (both axes together; 256 in SAM4D).
        temperature: wavelength range of the frequencies.
        normalize: divide positions by the grid size (positions in [0, 1]) before scaling.
        scale: multiplier of normalised positions (default 2 pi).
        released_frequency_quirk: reproduce the released SAM4D bug that sets every frequency to 1
            (see :func:`sine_frequencies`). Must be on for the official checkpoint.
        pixel_centers: grid positions at cell centres, ``(i + 0.5) / n`` (released SAM4D; matches
            the UMPE frustum that samples the ray through each cell centre), instead of SAM2's
            ``(i + 1) / n``.

    The encoding of a position (x, y) in [0, 1]^2 is ``cat(enc(y * scale), enc(x * scale))``
    where ``enc(p)[2k] = sin(p / dim_t[2k])`` and ``enc(p)[2k + 1] = cos(p / dim_t[2k + 1])``.
    It has no parameters or buffers (nothing in the state dict).
    """

    def __init__(
        self,
        num_pos_feats: int = 256,
        temperature: float = 10000.0,
        normalize: bool = True,
        scale: float | None = None,
        released_frequency_quirk: bool = False,
        pixel_centers: bool = True,
    ) -> None:
        super().__init__()
        assert num_pos_feats % 4 == 0, "Expecting a width divisible by 4"
        if scale is not None and not normalize:
            raise ValueError("normalize should be True if scale is passed")
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        self.released_frequency_quirk = released_frequency_quirk
        self.pixel_centers = pixel_centers

    def _encode_axis(self, p: torch.Tensor) -> torch.Tensor:
        """(...,) scaled positions -> (..., C/2) interleaved sin/cos."""
        dim_t = sine_frequencies(
            self.num_pos_feats, self.temperature, self.released_frequency_quirk, p.device
        )
        q = p[..., None] / dim_t
        return torch.stack((q[..., 0::2].sin(), q[..., 1::2].cos()), dim=-1).flatten(-2)

    def encode_xy(self, xy: torch.Tensor) -> torch.Tensor:
        """Encode normalised positions (sparse prompts).

        Args:
            xy: (..., 2) positions (x, y) normalised to [0, 1] by the image width / height.
        Returns:
            (..., C) float32 encodings, (y, x) halves like :meth:`forward`.
        """
        assert xy.shape[-1] == 2, f"expected (..., 2), got {tuple(xy.shape)}"
        xy = xy.float()
        pos_x = self._encode_axis(xy[..., 0] * self.scale)
        pos_y = self._encode_axis(xy[..., 1] * self.scale)
        return torch.cat((pos_y, pos_x), dim=-1)

    def encode_pixels(self, uv: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
        """Encode pixel coordinates (u, v) of an image of ``image_size`` = (H, W).

        Args:
            uv: (..., 2) pixel coordinates, continuous (pixel ``j`` spans [j, j + 1), so a cell
                centre is ``(j + 0.5) * stride``).
        Returns:
            (..., C) float32 encodings.
        """
        h, w = image_size
        scale = uv.new_tensor([1.0 / w, 1.0 / h], dtype=torch.float32)
        return self.encode_xy(uv.float() * scale)

    def grid(self, height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
        """Dense encoding of an (H, W) grid: (C, H, W) float32."""
        offset = 0.5 if self.pixel_centers else 1.0
        y = torch.arange(height, dtype=torch.float32, device=device) + offset
        x = torch.arange(width, dtype=torch.float32, device=device) + offset
        if self.normalize:
            eps = 1e-6
            # Released SAM4D divides by the grid size (SAM2 by the last position); with pixel
            # centres they agree up to the constant offset.
            denom_y = (height if self.pixel_centers else y[-1]) + eps
            denom_x = (width if self.pixel_centers else x[-1]) + eps
            y = y / denom_y * self.scale
            x = x / denom_x * self.scale
        pos_y = self._encode_axis(y)[:, None, :].expand(height, width, -1)
        pos_x = self._encode_axis(x)[None, :, :].expand(height, width, -1)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Dense encoding for a feature map.

        Args:
            x: (B, *, H, W) feature map; only its shape and device are used.
        Returns:
            (B, C, H, W) float32 encodings (the same for every batch entry).
        """
        b, h, w = x.shape[0], x.shape[-2], x.shape[-1]
        return self.grid(h, w, x.device)[None].expand(b, -1, -1, -1)

    def extra_repr(self) -> str:
        return (
            f"num_pos_feats={self.num_pos_feats}, temperature={self.temperature}, "
            f"released_frequency_quirk={self.released_frequency_quirk}, "
            f"pixel_centers={self.pixel_centers}"
        )


class PositionEmbeddingRandom(nn.Module):
    """Random Fourier features of raw metric coordinates (3D points in the LiDAR frame).

    ``enc(p) = cat(sin(p @ G), cos(p @ G))`` with ``G = scale * randn(in_channels, C / 2)``, a
    fixed (non-trainable) buffer named ``positional_encoding_gaussian_matrix`` (it is in the state
    dict: ``union_pe_func.pts_pe_layer.positional_encoding_gaussian_matrix`` [3, 128] in the
    official checkpoint). As in the released SAM4D, coordinates are raw metres: no normalisation
    to a range and no ``2 pi`` factor, so with ``scale = 1`` the frequencies are ~N(0, 1) rad/m
    (wavelengths of a few metres).

    Args:
        num_pos_feats: output width C (256); the matrix has C / 2 columns.
        in_channels: coordinate dimension (3 for xyz).
        scale: standard deviation of the Gaussian frequencies (None or <= 0 -> 1.0).
    """

    positional_encoding_gaussian_matrix: torch.Tensor

    def __init__(
        self, num_pos_feats: int = 256, in_channels: int = 3, scale: float | None = None
    ) -> None:
        super().__init__()
        assert num_pos_feats % 2 == 0, "Expecting an even width (sin and cos halves)"
        if scale is None or scale <= 0.0:
            scale = 1.0
        self.num_pos_feats = num_pos_feats
        self.in_channels = in_channels
        self.register_buffer(
            "positional_encoding_gaussian_matrix",
            scale * torch.randn((in_channels, num_pos_feats // 2)),
        )

    def forward(self, coords: torch.Tensor) -> torch.Tensor:
        """Encode points.

        Args:
            coords: (..., in_channels) raw coordinates (metres).
        Returns:
            (..., C) float32 encodings.
        """
        assert coords.shape[-1] == self.in_channels, f"got {tuple(coords.shape)}"
        proj = coords.float() @ self.positional_encoding_gaussian_matrix.float()
        return torch.cat((proj.sin(), proj.cos()), dim=-1)

    # Name of the released method, for code ported from SAM4D.
    forward_with_coords = forward
