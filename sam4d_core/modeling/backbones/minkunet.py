"""MinkUNet: SAM4D's LiDAR encoder (sparse residual U-Net, truncated decoder).

What the official ``MinkUNet34-W32`` backbone (``MinkUNetBackboneV2`` in SAM4D) is, and what this
module reproduces:

- input: SAM4D's two-step voxelization (:func:`.sparse.voxelize.sam4d_voxelize`), a constant
  feature 1 per point averaged onto the 0.15 m grid (so ``in_channels=1``);
- ``conv_input``: two 3x3x3 submanifold convs (1 -> 32 -> 32) with BatchNorm and ReLU;
- ``encoder``: 4 stages; stage i = a 2x2x2 stride-2 conv block (C_i -> C_i) then residual blocks
  (BasicBlock, (3, 4, 6, 3) per stage for depth 34; the first block changes C_i -> C_{i+1}), with
  channels 32 -> 32 -> 64 -> 128 -> 256 at strides 2, 4, 8, 16;
- ``decoder``: only 2 stages (SAM4D stops at stride 4): a 2x2x2 stride-2 transposed conv block,
  concatenation with the encoder feature of that stride (upsampled first), then 2 residual blocks:
  stride 16 -> 8 with 256 channels (in: 256 + 128), stride 8 -> 4 with 128 channels (in: 128 + 64);
- outputs (``pts_backbone_fpn``, finest first): stride 4 (128 ch), stride 8 (256 ch), stride 16
  (256 ch), plus the token positions: mean raw xyz of the points of each stride-16 voxel.

State-dict names (relative to ``pure_model.backbone.point.sparse_3d.0.``), mirrored here:

    conv_input.{0,3}.kernel                        Conv3d k3 ([27, C_in, C_out])
    conv_input.{1,4}.{weight,bias,running_mean,running_var,num_batches_tracked}   BatchNorm
    encoder.{i}.0.net.0.kernel, encoder.{i}.0.net.1.*          stride-2 k2 conv block ([8, C, C])
    encoder.{i}.{j}.net.{0,3}.kernel, encoder.{i}.{j}.net.{1,4}.*   residual block j >= 1
    encoder.{i}.{j}.downsample.0.kernel ([C_in, C_out]), .downsample.1.*   when C_in != C_out
    decoder.{i}.0.net.0.kernel ([8, C_in, C_out], transposed), decoder.{i}.0.net.1.*
    decoder.{i}.1.{j}.net.{0,3}.kernel, decoder.{i}.1.{j}.net.{1,4}.*, decoder.{i}.1.0.downsample.*

Verified (read from SAM4D's released config and backbone source as stored in the code search index,
and torchsparse's source): the config (``point_backbone='MinkUNet34-W32'``, ``base_channels=32``,
``encoder_channels=[32, 64, 128, 256]``, ``decoder_channels=[256, 128]``, ``decoder_blocks=[2, 2,
2]``, ``pres=0.05``, ``vres=0.15``, ``in_channels = pc_channels - 3 = 1``), the module tree
(``conv_input`` Sequential of Conv3d/BatchNorm/ReLU; ``encoder`` ModuleList of Sequential
[BasicConvolutionBlock(``.net``), blocks]; ``decoder`` ModuleList of ModuleList
[BasicDeconvolutionBlock(``.net``), Sequential(blocks)]; blocks with ``.net``/``.downsample``/
``.relu``; arch table 34 -> BasicBlock (3, 4, 6, 3)), the forward (concat order [upsampled, skip],
outputs reversed to finest first, positions from the stride-16 output) and torchsparse 2.1's
parameter layout. The parameter count of this module tree at the official sizes is 26.9 M, matching
DESIGN.md's point backbone. Not verified: a real checkpoint's key list (we have none); the exact
name of the repository that holds the SAM4D backbone file (the index returned the file without
it); whether SAM4D's ``BatchNorm`` wrapper is torchsparse's or its own (both are BatchNorm1d, same
keys).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sam4d_core.modeling.sparse.conv import BatchNorm, Conv3d, ReLU
from sam4d_core.modeling.sparse.tensor import SparseCache, SparseTensor, cat
from sam4d_core.modeling.sparse.voxelize import (
    points_to_voxel_index,
    pool_points_to_voxels,
    sam4d_voxelize,
)


class _ResidualBlock(nn.Module):
    """``relu(net(x) + downsample(x))``: the residual path ``net`` plus the shortcut, a 1x1 conv
    with BatchNorm when the channels change (identity otherwise)."""

    expansion = 1

    def __init__(self, net: nn.Sequential, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = net
        if in_channels == out_channels:
            self.downsample: nn.Module = nn.Identity()
        else:
            self.downsample = nn.Sequential(
                Conv3d(in_channels, out_channels, 1), BatchNorm(out_channels)
            )
        self.relu = ReLU(True)

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.relu(self.net(x) + self.downsample(x))


class BasicBlock(_ResidualBlock):
    """Residual block: two k3 convs with BatchNorm, a 1x1 conv shortcut when channels change."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        net = nn.Sequential(
            Conv3d(in_channels, out_channels, kernel_size),
            BatchNorm(out_channels),
            ReLU(True),
            Conv3d(out_channels, out_channels, kernel_size),
            BatchNorm(out_channels),
        )
        super().__init__(net, in_channels, out_channels)


class Bottleneck(_ResidualBlock):
    """Bottleneck residual block of SAM4D's deeper variants (1x1 - k3 - 1x1, no expansion)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        net = nn.Sequential(
            Conv3d(in_channels, out_channels, 1),
            BatchNorm(out_channels),
            ReLU(True),
            Conv3d(out_channels, out_channels, kernel_size),
            BatchNorm(out_channels),
            ReLU(True),
            Conv3d(out_channels, out_channels, 1),
            BatchNorm(out_channels),
        )
        super().__init__(net, in_channels, out_channels)


class ConvBlock(nn.Module):
    """Conv3d + BatchNorm + ReLU under ``.net`` (SAM4D's Basic(De)ConvolutionBlock)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 2,
        stride: int = 2,
        transposed: bool = False,
    ) -> None:
        super().__init__()
        self.net = nn.Sequential(
            Conv3d(in_channels, out_channels, kernel_size, stride=stride, transposed=transposed),
            BatchNorm(out_channels),
            ReLU(True),
        )

    def forward(self, x: SparseTensor) -> SparseTensor:
        return self.net(x)


ARCH_SETTINGS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


@dataclass
class MinkUNetConfig:
    """Sizes of a :class:`MinkUNetBackbone`.

    Attributes:
        in_channels: input feature channels (1: SAM4D's constant feature).
        base_channels: ``conv_input`` width (the "W" of "MinkUNet34-W32").
        encoder_channels: output channels of the 4 encoder stages (strides 2, 4, 8, 16).
        depth: 18 / 34 / 50 / 101, picks the block type and blocks per stage.
        encoder_blocks: override of the blocks per encoder stage (tiny variants).
        block: override of the block type ("basic" or "bottleneck").
        decoder_channels: output channels of the decoder stages (stride 8, then 4, ...).
        decoder_blocks: residual blocks per decoder stage.
        pre_voxel_size, voxel_size: SAM4D's two voxelization steps, metres.
        exact_release: compute what the released code computes with torchsparse 2.1's default
            semantics (on for the official checkpoint): strided convs bounded as torchsparse's
            ``hashmap_on_the_fly`` bounds them and k4 s4 offsets = position in the parent cell
            (:mod:`~sam4d_core.modeling.sparse.kernel_map`), the released ``voxel_to_point``
            and float64 0.05 m quantisation (:mod:`~sam4d_core.modeling.sparse.voxelize`). Off:
            every parent voxel kept, centred offsets, trilinear devoxelization, float32; what our
            own models are trained with.
    """

    in_channels: int = 1
    base_channels: int = 32
    encoder_channels: tuple[int, ...] = (32, 64, 128, 256)
    depth: int = 34
    encoder_blocks: tuple[int, ...] | None = None
    block: str | None = None
    decoder_channels: tuple[int, ...] = (256, 128)
    decoder_blocks: tuple[int, ...] = (2, 2)
    pre_voxel_size: float = 0.05
    voxel_size: float = 0.15
    exact_release: bool = False

    def sparse_cache(self) -> SparseCache:
        """A fresh cache for a sweep's sparse tensors, with this config's kernel-map semantics."""
        return SparseCache(release_semantics=self.exact_release)


def minkunet34_w32_config() -> MinkUNetConfig:
    """The official SAM4D point backbone (``MinkUNet34-W32``, 26.9 M parameters), exact-release."""
    return MinkUNetConfig(exact_release=True)


def minkunet_tiny_config() -> MinkUNetConfig:
    """A small variant for CPU real time and tests (same structure, 2.6 M parameters)."""
    return MinkUNetConfig(
        base_channels=16,
        encoder_channels=(16, 32, 64, 128),
        encoder_blocks=(1, 1, 1, 1),
        decoder_channels=(128, 64),
        decoder_blocks=(1, 1),
    )


@dataclass
class PointBackboneOutput:
    """Multi-scale LiDAR features.

    Attributes:
        features: sparse features finest first: [stride 4, stride 8, stride 16] for the official
            decoder (SAM4D's ``pts_backbone_fpn`` order).
        token_xyz: (N_16, 3) mean raw xyz of the points in each voxel of ``features[-1]``.
        point_grid_coords: (N, 3) float point coordinates in ``voxel_size`` units.
        point_batch: (N,) batch index per point.
    """

    features: list[SparseTensor]
    token_xyz: torch.Tensor
    point_grid_coords: torch.Tensor
    point_batch: torch.Tensor


class MinkUNetBackbone(nn.Module):
    """Sparse residual U-Net over voxelized LiDAR points (see the module docstring)."""

    def __init__(self, config: MinkUNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or minkunet34_w32_config()
        self.config = cfg
        block_name, default_blocks = ARCH_SETTINGS[cfg.depth]
        block_name = cfg.block or block_name
        block_cls = {"basic": BasicBlock, "bottleneck": Bottleneck}[block_name]
        enc_blocks = tuple(cfg.encoder_blocks or default_blocks)
        if len(enc_blocks) != len(cfg.encoder_channels):
            raise ValueError("encoder_blocks and encoder_channels must have the same length")
        if len(cfg.decoder_channels) > len(cfg.encoder_channels):
            raise ValueError("more decoder stages than encoder stages")
        if len(cfg.decoder_blocks) < len(cfg.decoder_channels):
            raise ValueError("decoder_blocks needs one entry per decoder stage")

        base = cfg.base_channels
        self.conv_input = nn.Sequential(
            Conv3d(cfg.in_channels, base, 3),
            BatchNorm(base),
            ReLU(True),
            Conv3d(base, base, 3),
            BatchNorm(base),
            ReLU(True),
        )
        enc = [base, *cfg.encoder_channels]
        self.encoder = nn.ModuleList()
        for i, num_blocks in enumerate(enc_blocks):
            layers: list[nn.Module] = [ConvBlock(enc[i], enc[i], kernel_size=2, stride=2)]
            for j in range(num_blocks):
                layers.append(block_cls(enc[i] if j == 0 else enc[i + 1], enc[i + 1]))
            self.encoder.append(nn.Sequential(*layers))

        dec = [enc[-1], *cfg.decoder_channels]
        self.decoder = nn.ModuleList()
        for i in range(len(cfg.decoder_channels)):
            up = ConvBlock(dec[i], dec[i + 1], kernel_size=2, stride=2, transposed=True)
            skip = enc[-2 - i]
            blocks = [
                block_cls(dec[i + 1] + skip if j == 0 else dec[i + 1], dec[i + 1])
                for j in range(cfg.decoder_blocks[i])
            ]
            self.decoder.append(nn.ModuleList([up, nn.Sequential(*blocks)]))

    @property
    def out_strides(self) -> list[int]:
        """Strides of :meth:`forward_sparse`'s outputs, finest first (official: [4, 8, 16])."""
        coarsest = 2 ** len(self.encoder)
        return [coarsest // 2**i for i in range(len(self.decoder), -1, -1)]

    def forward_sparse(self, x: SparseTensor) -> list[SparseTensor]:
        """Runs the U-Net on stride-1 voxels.

        Args:
            x: (M, in_channels) voxel features at stride 1.

        Returns:
            Sparse features finest first ([stride 4, 8, 16] for the official decoder).
        """
        x = self.conv_input(x)
        laterals = [x]
        for stage in self.encoder:
            x = stage(x)
            laterals.append(x)
        laterals = laterals[:-1][::-1]
        outs = [x]
        for i, (up, blocks) in enumerate(self.decoder):
            x = cat([up(x), laterals[i]])
            x = blocks(x)
            outs.append(x)
        return outs[::-1]

    def forward(
        self,
        points: torch.Tensor,
        batch_idx: torch.Tensor | None = None,
        point_feats: torch.Tensor | None = None,
    ) -> PointBackboneOutput:
        """Voxelizes a (batched) point cloud SAM4D's way and encodes it.

        Args:
            points: (N, >=3) points, xyz in metres (LiDAR frame) in the first three columns.
            batch_idx: (N,) batch index per point (default: one sweep).
            point_feats: (N, in_channels) per-point features (default: constant 1).

        Returns:
            :class:`PointBackboneOutput`.
        """
        cfg = self.config
        vox = sam4d_voxelize(
            points, batch_idx, point_feats, cfg.pre_voxel_size, cfg.voxel_size, cfg.exact_release
        )
        feats = vox.voxels.feats.to(self.conv_input[0].kernel.dtype)
        x = SparseTensor(feats, vox.voxels.coords, stride=1, cache=cfg.sparse_cache())
        features = self.forward_sparse(x)
        grid, batch = vox.point_grid_coords, vox.point_batch
        rows = points_to_voxel_index(
            features[-1], grid, batch, voxels=(vox.voxels.coords, vox.voxels.point_to_voxel)
        )
        token_xyz = pool_points_to_voxels(
            features[-1], grid, batch, points[:, :3].float(), point_rows=rows
        )
        return PointBackboneOutput(
            features=features,
            token_xyz=token_xyz,
            point_grid_coords=vox.point_grid_coords,
            point_batch=vox.point_batch,
        )


def build_minkunet(config: MinkUNetConfig | None = None) -> MinkUNetBackbone:
    """Builds a :class:`MinkUNetBackbone` (official MinkUNet34-W32 sizes by default)."""
    return MinkUNetBackbone(config)
