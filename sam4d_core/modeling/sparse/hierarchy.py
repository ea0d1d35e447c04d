"""Plain-PyTorch sparse layers for the LiDAR side of the SAM head, on (B, N_voxels, C) features.

The released SAM4D head moves LiDAR features between the stride-4, stride-8 and stride-16 voxels of
the MinkUNet with torchsparse convolutions whose kernel equals their stride (2x2x2, stride 2):

- the LiDAR mask prompt goes down 4 -> 8 -> 16 with two strided convs (``mask_downscaling``);
- the decoder's token features go up 16 -> 8 -> 4 with two transposed convs
  (``output_upscaling_pts``), before the dot product with the hypernetwork outputs.

With kernel == stride every finer voxel has exactly one coarser parent and sits at one of 8 offsets
inside it, so both directions reduce to "matmul with the kernel slice of the child's offset, then
gather (up) or scatter-add (down)". This module does exactly that from two index tensors per level
(:class:`VoxelHierarchy`), so the SAM head needs no sparse-convolution package and runs the same on
CPU and CUDA. Parameters keep torchsparse's names and layout (``kernel`` [8, C_in, C_out], a 1x1x1
stride-1 ``kernel`` [C_in, C_out], ``bias`` only when enabled) so official weights load unchanged.

Offset order (torchsparse, even kernel volume: z varies fastest): a child at ``c`` inside a parent
at ``p`` (both in input-grid units, the child at tensor stride ``s``) has per-axis offset
``o = (c - p) / s`` in {0, 1}^3 and kernel index ``k = o_z + 2 * (o_y + 2 * o_x)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

KERNEL_VOLUME = 8  # 2x2x2

_AXIS_BITS = 20  # per-axis key range: +-2^19 voxels
_AXIS_HALF = 1 << (_AXIS_BITS - 1)


def offset_index(delta: torch.Tensor) -> torch.Tensor:
    """Kernel index of per-axis offsets in {0, 1}^3 (torchsparse order, z fastest).

    Args:
        delta: (N, 3) integer offsets (x, y, z) of each child inside its parent, in child units.

    Returns:
        (N,) int64 in [0, 8).
    """
    d = delta.to(torch.int64)
    return d[:, 2] + 2 * (d[:, 1] + 2 * d[:, 0])


def _coord_keys(coords: torch.Tensor) -> torch.Tensor:
    """Injective int64 keys of (N, 4) ``[batch, x, y, z]`` coordinates (|x|, |y|, |z| < 2^19)."""
    c = coords.to(torch.int64)
    xyz = c[:, 1:] + _AXIS_HALF
    key = c[:, 0]
    for axis in range(3):
        key = (key << _AXIS_BITS) | xyz[:, axis]
    return key


def link_to_parents(
    fine_coords: torch.Tensor,
    coarse_coords: torch.Tensor,
    fine_stride: int,
    allow_missing: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parent row and kernel offset of every fine voxel one 2x level up.

    Args:
        fine_coords: (N_f, 4) int ``[batch, x, y, z]`` at tensor stride ``fine_stride`` (input-grid
            units, i.e. multiples of ``fine_stride``, as torchsparse stores them).
        coarse_coords: (N_c, 4) coordinates at stride ``2 * fine_stride``; must contain every
            parent (it does when the coarse level was made by downsampling the fine one).
        fine_stride: tensor stride of the fine level.
        allow_missing: a fine voxel without parent gets parent -1 (exact-release mode, where a
            strided conv drops the top plane of an axis) instead of an error.

    Returns:
        parent (N_f,) int64 rows into ``coarse_coords`` (-1: none) and offset (N_f,) int64 in
        [0, 8).

    Raises:
        ValueError: a coordinate is out of range or a fine voxel has no parent.
    """
    f = fine_coords.to(torch.int64)
    coarse_stride = 2 * fine_stride
    parent_xyz = torch.div(f[:, 1:], coarse_stride, rounding_mode="floor") * coarse_stride
    delta = torch.div(f[:, 1:] - parent_xyz, fine_stride, rounding_mode="floor")
    parent_coords = torch.cat([f[:, :1], parent_xyz], dim=1)
    for c in (parent_coords, coarse_coords):
        if c.numel() and int(c[:, 1:].abs().max()) >= _AXIS_HALF:
            raise ValueError(f"voxel coordinates must stay within +-{_AXIS_HALF}")
    coarse_keys = _coord_keys(coarse_coords)
    sorted_keys, order = torch.sort(coarse_keys)
    query = _coord_keys(parent_coords)
    if sorted_keys.numel() == 0:
        if allow_missing:
            return torch.full_like(query, -1), offset_index(delta)
        raise ValueError("some fine voxels have no parent among the coarse coordinates")
    pos = torch.searchsorted(sorted_keys, query).clamp_max(sorted_keys.numel() - 1)
    found = sorted_keys[pos] == query
    if not allow_missing and not bool(found.all()):
        raise ValueError("some fine voxels have no parent among the coarse coordinates")
    return torch.where(found, order[pos], torch.full_like(pos, -1)), offset_index(delta)


@dataclass
class VoxelHierarchy:
    """Parent links between the stride-4, stride-8 and stride-16 voxels of one LiDAR sweep.

    Rows follow the backbone's feature order at each level (stride-4 rows = the rows of the
    stride-4 features and of the LiDAR mask logits; stride-16 rows = the LiDAR tokens).

    Attributes:
        parent_s4: (N4,) int64 stride-8 row of each stride-4 voxel.
        offset_s4: (N4,) int64 kernel offset of each stride-4 voxel inside its parent.
        parent_s8: (N8,) int64 stride-16 row of each stride-8 voxel.
        offset_s8: (N8,) int64 kernel offset of each stride-8 voxel inside its parent.
        num_s16: number of stride-16 voxels (tokens) N16.
        missing_s4, missing_s8: some parent is -1 (none; exact-release mode, see
            :func:`link_to_parents`): the layers then skip those voxels.
    """

    parent_s4: torch.Tensor
    offset_s4: torch.Tensor
    parent_s8: torch.Tensor
    offset_s8: torch.Tensor
    num_s16: int
    missing_s4: bool = False
    missing_s8: bool = False

    @property
    def num_s4(self) -> int:
        return self.parent_s4.shape[0]

    @property
    def num_s8(self) -> int:
        return self.parent_s8.shape[0]

    def to(self, device: torch.device | str) -> VoxelHierarchy:
        return VoxelHierarchy(
            self.parent_s4.to(device),
            self.offset_s4.to(device),
            self.parent_s8.to(device),
            self.offset_s8.to(device),
            self.num_s16,
            self.missing_s4,
            self.missing_s8,
        )

    @classmethod
    def from_coords(
        cls,
        coords_s4: torch.Tensor,
        coords_s8: torch.Tensor,
        coords_s16: torch.Tensor,
        stride_s4: int = 4,
        allow_missing: bool = False,
    ) -> VoxelHierarchy:
        """Build the links from the three levels' (N, 4) ``[batch, x, y, z]`` coordinates.

        ``stride_s4`` is the tensor stride of the finest level in the coordinates' units (4 for
        torchsparse-style coordinates where the input grid has stride 1). ``allow_missing``: see
        :func:`link_to_parents`.
        """
        p4, o4 = link_to_parents(coords_s4, coords_s8, stride_s4, allow_missing)
        p8, o8 = link_to_parents(coords_s8, coords_s16, 2 * stride_s4, allow_missing)
        miss4 = allow_missing and bool((p4 < 0).any())
        miss8 = allow_missing and bool((p8 < 0).any())
        return cls(p4, o4, p8, o8, coords_s16.shape[0], miss4, miss8)

    @classmethod
    def from_source_index(
        cls, source_s4: torch.Tensor, source_s8: torch.Tensor, num_s16: int
    ) -> VoxelHierarchy:
        """Build the links from single-source transposed kernel maps (``row * 8 + k`` per voxel).

        This is what ``sparse.kernel_map.KernelMap.source_index()`` returns for the 2x2x2 stride-2
        transposed maps 8 -> 4 (``source_s4``) and 16 -> 8 (``source_s8``).
        """
        s4 = source_s4.to(torch.int64)
        s8 = source_s8.to(torch.int64)
        return cls(
            s4 // KERNEL_VOLUME,
            s4 % KERNEL_VOLUME,
            s8 // KERNEL_VOLUME,
            s8 % KERNEL_VOLUME,
            num_s16,
        )


def _init_kernel(kernel: torch.Tensor, bias: torch.Tensor | None, fan: int) -> None:
    # torchsparse's initialization: U(-std, std), std = 1 / sqrt(fan * kernel volume).
    std = 1.0 / math.sqrt(fan)
    nn.init.uniform_(kernel, -std, std)
    if bias is not None:
        nn.init.uniform_(bias, -std, std)


class _StrideTwoConv(nn.Module):
    """Parameters of a 2x2x2 stride-2 sparse convolution: ``kernel`` (8, C_in, C_out) in
    torchsparse's offset order, ``bias`` (C_out,) when enabled."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool, fan_channels: int) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel = nn.Parameter(torch.empty(KERNEL_VOLUME, in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _init_kernel(self.kernel, self.bias, fan_channels * KERNEL_VOLUME)


class SparseDownsample(_StrideTwoConv):
    """2x2x2 stride-2 sparse convolution (torchsparse ``Conv3d(c_in, c_out, 2, stride=2)``).

    ``out[p] = sum over children c of p of x[c] @ kernel[offset(c)] (+ bias)``.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__(in_channels, out_channels, bias, fan_channels=in_channels)

    def forward(
        self,
        x: torch.Tensor,
        parent: torch.Tensor,
        offset: torch.Tensor,
        num_coarse: int,
        missing: bool = False,
    ) -> torch.Tensor:
        """(B, N_fine, C_in) -> (B, N_coarse, C_out); ``parent``, ``offset``: (N_fine,).

        ``missing``: some ``parent`` is -1; those children contribute nothing."""
        b = x.shape[0]
        # Per-child kernel slices: N_fine * C_in * C_out values, small on the mask path (1->4->16).
        per_child = torch.einsum("bnc,ncd->bnd", x, self.kernel[offset])
        # per_child's dtype, not x's: under autocast the einsum runs in half precision.
        if missing:
            # Orphans go to a spare last row that is dropped.
            out = per_child.new_zeros(b, num_coarse + 1, self.out_channels)
            spare = torch.full_like(parent, num_coarse)
            out = out.index_add(1, torch.where(parent >= 0, parent, spare), per_child)
            out = out[:, :num_coarse]
        else:
            out = per_child.new_zeros(b, num_coarse, self.out_channels)
            out = out.index_add(1, parent, per_child)
        return out if self.bias is None else out + self.bias


class SparseUpsample(_StrideTwoConv):
    """2x2x2 stride-2 transposed sparse convolution back to the finer level's voxels.

    ``out[c] = x[parent(c)] @ kernel[offset(c)] (+ bias)`` (torchsparse ``Conv3d(..., 2, stride=2,
    transposed=True)`` with the coordinates cached by the matching downsampling).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        # A transposed conv's fan is its output width (torchsparse).
        super().__init__(in_channels, out_channels, bias, fan_channels=out_channels)

    def forward(
        self, x: torch.Tensor, parent: torch.Tensor, offset: torch.Tensor, missing: bool = False
    ) -> torch.Tensor:
        """(B, N_coarse, C_in) -> (B, N_fine, C_out); ``parent``, ``offset``: (N_fine,).

        ``missing``: some ``parent`` is -1; those fine voxels receive 0 (plus the bias), as a
        transposed conv gives an output without source."""
        b, n_coarse, _ = x.shape
        # Matmul every coarse row with all 8 slices, then gather: one GEMM instead of 8 masked ones,
        # and B * N_coarse * 8 * C_out values, less than gathering C_in-wide rows per fine voxel.
        every = torch.einsum("bnc,kcd->bnkd", x, self.kernel).reshape(
            b, n_coarse * KERNEL_VOLUME, self.out_channels
        )
        if missing:
            valid = parent >= 0
            out = every.index_select(1, (parent * KERNEL_VOLUME + offset).clamp_min(0))
            out = out * valid[None, :, None].to(out.dtype)
        else:
            out = every.index_select(1, parent * KERNEL_VOLUME + offset)
        return out if self.bias is None else out + self.bias


class PointwiseConv(nn.Module):
    """1x1x1 stride-1 sparse convolution: a per-voxel linear map (``kernel`` [C_in, C_out])."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = False) -> None:
        super().__init__()
        self.kernel = nn.Parameter(torch.empty(in_channels, out_channels))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        _init_kernel(self.kernel, self.bias, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., C_in) -> (..., C_out)."""
        out = x @ self.kernel
        return out if self.bias is None else out + self.bias


def batch_norm_objects(bn: nn.BatchNorm1d, x: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d on (B, N, C) voxel features of B objects.

    In training, statistics are taken per object (the released head runs its sparse layers one
    object at a time), so an object's result does not depend on the others in the batch. In eval
    the running statistics make it batch-independent anyway and all objects go in one call.
    """
    b, n, c = x.shape
    if bn.training or not bn.track_running_stats:
        return torch.stack([bn(x[i]) for i in range(b)], dim=0)
    return bn(x.reshape(b * n, c)).reshape(b, n, c)


class SparseDownsampleBlock(nn.Module):
    """Strided conv + BatchNorm + ReLU (the ``BasicConvolutionBlock`` of the released code).

    Submodules live in ``net`` (``net.0`` conv, ``net.1`` BatchNorm, ``net.2`` ReLU) so the state
    dict reads ``net.0.kernel``, ``net.1.weight`` ... as in the official checkpoint.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            SparseDownsample(in_channels, out_channels),
            nn.BatchNorm1d(out_channels),
            nn.ReLU(inplace=True),
        )

    def forward(
        self,
        x: torch.Tensor,
        parent: torch.Tensor,
        offset: torch.Tensor,
        num_coarse: int,
        missing: bool = False,
    ) -> torch.Tensor:
        conv, bn, act = self.net
        return act(batch_norm_objects(bn, conv(x, parent, offset, num_coarse, missing)))


def scatter_mean(values: torch.Tensor, index: torch.Tensor, num_rows: int) -> torch.Tensor:
    """Mean of ``values`` (B, N, ...) per target row ``index`` (N,) -> (B, num_rows, ...).

    Rows that receive nothing are 0; an ``index`` of -1 (a point whose voxel an exact-release
    strided conv dropped) is skipped. Use it to turn a per-point LiDAR mask into a per-voxel one
    (``index`` = the stride-4 voxel of each point) before the LiDAR prompt encoder.
    """
    # -1 goes to a spare last row (no sync to look for it).
    index = torch.where(index >= 0, index, torch.full_like(index, num_rows))
    out = values.new_zeros(values.shape[0], num_rows + 1, *values.shape[2:])
    out = out.index_add(1, index, values)
    count = torch.zeros(num_rows + 1, dtype=values.dtype, device=values.device)
    count = count.index_add(0, index, torch.ones_like(index, dtype=values.dtype))
    shape = (1, num_rows) + (1,) * (values.dim() - 2)
    return out[:, :num_rows] / count[:num_rows].clamp_min(1).view(shape)


__all__ = [
    "KERNEL_VOLUME",
    "PointwiseConv",
    "SparseDownsample",
    "SparseDownsampleBlock",
    "SparseUpsample",
    "VoxelHierarchy",
    "batch_norm_objects",
    "link_to_parents",
    "offset_index",
    "scatter_mean",
]
