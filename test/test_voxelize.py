"""Voxelization, SAM4D's two-step grid, pooling to voxels and trilinear devoxelization."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sam4d_core.modeling.sparse import (
    SparseTensor,
    devoxelize,
    devoxelize_weights,
    pool_points_to_voxels,
    sam4d_voxelize,
    voxel_to_point,
    voxelize,
)
from sam4d_core.modeling.sparse.kernel_map import downsample_coords


def random_points(n: int = 500, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([4.0, 4.0, 1.0])


def test_voxelize_floor_mean_and_index() -> None:
    pts = random_points()
    batch = torch.arange(pts.shape[0]) % 2
    feats = torch.randn(pts.shape[0], 3, dtype=torch.float64)
    vox = voxelize(pts, feats, 0.25, batch)
    cells = torch.floor(pts / 0.25).long()
    # Every point's voxel row holds its (batch, cell).
    expected = torch.cat([batch[:, None], cells], dim=1)
    assert torch.equal(vox.coords[vox.point_to_voxel].long(), expected)
    assert vox.coords.shape[0] == torch.unique(expected, dim=0).shape[0]
    assert int(vox.counts.sum()) == pts.shape[0]
    for v in [0, 5, vox.coords.shape[0] - 1]:
        members = vox.point_to_voxel == v
        torch.testing.assert_close(vox.feats[v], feats[members].mean(dim=0))


def test_sam4d_voxelize_matches_official_arithmetic() -> None:
    pts = random_points(800, seed=1) * 10  # spans negative and positive metres
    batch = (torch.arange(pts.shape[0]) >= 300).long()
    out = sam4d_voxelize(pts, batch)
    p = pts.numpy()
    for b in (0, 1):
        sel = batch.numpy() == b
        # SparseVoxelization: int32 truncation of xyz / 0.05, minus the per-sweep minimum.
        c = (p[sel] / np.float32(0.05)).astype(np.int32)
        c -= c.min(axis=0, keepdims=True)
        # initial_voxelize: (C * pres) / vres in float32.
        grid = (c.astype(np.float32) * np.float32(0.05)) / np.float32(0.15)
        np.testing.assert_array_equal(out.point_grid_coords[torch.from_numpy(sel)].numpy(), grid)
        cells = out.voxels.coords[out.voxels.point_to_voxel[torch.from_numpy(sel)]][:, 1:]
        np.testing.assert_array_equal(cells.numpy(), np.floor(grid).astype(np.int32))
    assert bool((out.voxels.coords[:, 1:] >= 0).all())
    torch.testing.assert_close(out.voxels.feats, torch.ones(out.voxels.coords.shape[0], 1))


def test_truncation_differs_from_floor_near_zero() -> None:
    pts = torch.tensor([[-0.07, 0.0, 0.0], [0.07, 0.0, 0.0], [0.2, 0.0, 0.0]])
    out = sam4d_voxelize(pts)
    # trunc(-1.4) = -1 and trunc(1.4) = 1: after the shift 0, 2 (floor would give 0, 3).
    c = torch.round(out.point_grid_coords[:, 0] * 3).long().tolist()
    assert c == [0, 2, 5]


def sparse_at_stride(stride: int, channels: int = 4, seed: int = 0) -> SparseTensor:
    """A random set of voxels at ``stride`` (coordinates multiples of it), two batch elements."""
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(2, 5, 5, 5, generator=g) < 0.6
    idx = occ.nonzero()
    coords = torch.cat([idx[:, :1], idx[:, 1:] * stride], dim=1).to(torch.int32)
    feats = torch.randn(coords.shape[0], channels, generator=g, dtype=torch.float64)
    return SparseTensor(feats, coords, stride=stride)


@pytest.mark.parametrize("stride", [1, 4])
def test_devoxelize_exact_at_voxel_anchors(stride: int) -> None:
    x = sparse_at_stride(stride)
    pos = x.coords[:, 1:].float()
    batch = x.coords[:, 0].long()
    # Default (torchsparse): a voxel's sample sits at its coordinate.
    torch.testing.assert_close(voxel_to_point(x, pos, batch), x.feats)
    # align="center": the sample sits at the voxel centre.
    centre = pos + stride / 2
    torch.testing.assert_close(voxel_to_point(x, centre, batch, align="center"), x.feats)


def test_devoxelize_constant_stays_constant_and_weights_normalized() -> None:
    x = sparse_at_stride(2)
    x = x.replace_feats(torch.full((x.num_points, 3), 2.5, dtype=torch.float64))
    # Random points in the lower half of occupied voxels: the own voxel's weight is >= 1/8, so
    # torchsparse's +1e-8 in the renormalization is negligible.
    g = torch.Generator().manual_seed(1)
    rows = torch.randint(0, x.num_points, (300,), generator=g)
    pos = x.coords[rows, 1:].float() + torch.rand(300, 3, generator=g)
    batch = x.coords[rows, 0].long()
    idx, w = devoxelize_weights(x, pos, batch)
    torch.testing.assert_close(w.sum(dim=1), torch.ones(300), atol=1e-6, rtol=0)
    assert bool((w[idx < 0] == 0).all())
    torch.testing.assert_close(
        devoxelize(x.feats, idx, w), torch.full((300, 3), 2.5).double(), rtol=1e-6, atol=0
    )


def test_devoxelize_is_trilinear() -> None:
    # On a fully occupied block, trilinear interpolation reproduces an affine field exactly.
    s = 2
    grid = torch.stack(torch.meshgrid(*[torch.arange(4)] * 3, indexing="ij"), -1).reshape(-1, 3)
    coords = torch.cat([torch.zeros(grid.shape[0], 1, dtype=torch.long), grid * s], dim=1)
    a = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    feats = (coords[:, 1:].double() @ a + 0.7)[:, None]
    x = SparseTensor(feats, coords.to(torch.int32), stride=s)
    g = torch.Generator().manual_seed(2)
    pos = torch.rand(200, 3, generator=g) * (3 * s - 1e-3)  # inside the occupied span
    out = voxel_to_point(x, pos, torch.zeros(200, dtype=torch.long))
    torch.testing.assert_close(out[:, 0], pos.double() @ a + 0.7, atol=1e-5, rtol=1e-5)


def test_devoxelize_gradient_flows() -> None:
    x = sparse_at_stride(1)
    feats = x.feats.clone().requires_grad_(True)
    pos = x.coords[:, 1:].float() + 0.3
    idx, w = devoxelize_weights(x, pos, x.coords[:, 0].long())
    devoxelize(feats, idx, w).sum().backward()
    torch.testing.assert_close(feats.grad.sum(dim=0), w.sum().double().expand(4))


def test_pool_points_to_voxels_mean_xyz() -> None:
    pts = random_points(600, seed=3) * 20
    batch = (torch.arange(600) % 3 == 0).long()
    out = sam4d_voxelize(pts, batch)
    coords16, _ = downsample_coords(out.voxels.coords, (1, 1, 1), (16, 16, 16), (16, 16, 16))
    x16 = SparseTensor(torch.zeros(coords16.shape[0], 1), coords16, stride=16)
    mean_xyz = pool_points_to_voxels(x16, out.point_grid_coords, out.point_batch, pts)
    # Brute force: group points by (batch, floor(p / 16)).
    cell = torch.floor(out.point_grid_coords / 16).long() * 16
    key = torch.cat([batch[:, None], cell], dim=1)
    for r in range(coords16.shape[0]):
        members = (key == coords16[r].long()).all(dim=1)
        assert members.any()
        torch.testing.assert_close(mean_xyz[r], pts[members].mean(dim=0))
