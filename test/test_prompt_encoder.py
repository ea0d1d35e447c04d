"""SAM head prompt encoders (camera and LiDAR), the cross-modal concatenation, box helpers and the
plain-torch sparse layers that carry LiDAR masks between voxel levels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam4d_core.modeling.sam import (
    NOT_A_POINT_LABEL,
    PAD_LABEL,
    PromptEncoder2D,
    PromptEncoder3D,
    bev_boxes_to_points_3d,
    boxes3d_to_points,
    boxes_to_points_2d,
    cross_modal_prompts,
)
from sam4d_core.modeling.sparse.hierarchy import (
    SparseDownsample,
    SparseUpsample,
    VoxelHierarchy,
    offset_index,
    scatter_mean,
)

C = 32


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def voxel_levels(n: int = 400, extent: int = 16, seed: int = 0, shuffle: bool = True):
    """Random stride-4 voxels in a [0, 4 * extent) cube (torchsparse units) and their stride-8/16
    parents, rows shuffled (the hierarchy must not rely on any order)."""
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randint(0, extent, (n, 3), generator=g) * 4
    c4 = torch.unique(torch.cat([torch.zeros(n, 1, dtype=torch.int64), xyz], 1), dim=0)

    def parents(c: torch.Tensor, s: int) -> torch.Tensor:
        return torch.unique(
            torch.cat([c[:, :1], torch.div(c[:, 1:], s, rounding_mode="floor") * s], 1), dim=0
        )

    c8 = parents(c4, 8)
    c16 = parents(c8, 16)
    if shuffle:
        c4 = c4[torch.randperm(c4.shape[0], generator=g)]
        c8 = c8[torch.randperm(c8.shape[0], generator=g)]
        c16 = c16[torch.randperm(c16.shape[0], generator=g)]
    return c4, c8, c16


def dense_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """torchsparse [8, C_in, C_out] (x-major offsets) -> (C_in, C_out, 2, 2, 2) [ox, oy, oz]."""
    c_in, c_out = kernel.shape[1:]
    return kernel.reshape(2, 2, 2, c_in, c_out).permute(3, 4, 0, 1, 2)


def test_offset_index_order() -> None:
    # Even kernel volume: z varies fastest (torchsparse / MinkowskiEngine layout).
    d = torch.tensor([[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [1, 1, 1]])
    assert offset_index(d).tolist() == [0, 1, 2, 4, 7]


def test_sparse_up_and_down_match_dense_convs() -> None:
    torch.manual_seed(0)
    c4, c8, c16 = voxel_levels(300, extent=8)
    h = VoxelHierarchy.from_coords(c4, c8, c16)  # only the 4 -> 8 links are used here
    n4, n8 = c4.shape[0], c8.shape[0]
    fine_idx = (c4[:, 1:] // 4).T  # 8^3 fine grid at stride 4
    coarse_idx = (c8[:, 1:] // 8).T  # 4^3 coarse grid at stride 8

    up = SparseUpsample(5, 3, bias=True)
    x8 = torch.randn(2, n8, 5)
    grid = torch.zeros(2, 5, 4, 4, 4)
    grid[:, :, coarse_idx[0], coarse_idx[1], coarse_idx[2]] = x8.transpose(1, 2)
    ref = F.conv_transpose3d(grid, dense_kernel(up.kernel), up.bias, stride=2)
    ref = ref[:, :, fine_idx[0], fine_idx[1], fine_idx[2]].transpose(1, 2)
    out = up(x8, h.parent_s4, h.offset_s4)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    down = SparseDownsample(3, 4)
    x4 = torch.randn(2, n4, 3)
    grid = torch.zeros(2, 3, 8, 8, 8)
    grid[:, :, fine_idx[0], fine_idx[1], fine_idx[2]] = x4.transpose(1, 2)
    w = dense_kernel(down.kernel).permute(1, 0, 2, 3, 4)  # (C_out, C_in, 2, 2, 2)
    ref = F.conv3d(grid, w, stride=2)[:, :, coarse_idx[0], coarse_idx[1], coarse_idx[2]]
    out = down(x4, h.parent_s4, h.offset_s4, n8)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)


def test_hierarchy_matches_sparse_package() -> None:
    """Our links == the sparse package's transposed kernel maps (same offsets, same layout)."""
    sparse = pytest.importorskip("sam4d_core.modeling.sparse")
    c4, _, _ = voxel_levels(300, extent=16, shuffle=False)
    x = sparse.SparseTensor(torch.randn(c4.shape[0], 6), c4.int(), stride=4)
    conv8 = sparse.Conv3d(6, 6, kernel_size=2, stride=2)
    conv16 = sparse.Conv3d(6, 6, kernel_size=2, stride=2)
    x8 = conv8(x)
    x16 = conv16(x8)
    h = VoxelHierarchy.from_coords(x.coords, x8.coords, x16.coords)
    up16 = sparse.Conv3d(6, 5, kernel_size=2, stride=2, transposed=True)
    up8 = sparse.Conv3d(5, 4, kernel_size=2, stride=2, transposed=True, bias=True)
    ours16 = SparseUpsample(6, 5)
    ours8 = SparseUpsample(5, 4, bias=True)
    ours16.load_state_dict(up16.state_dict())
    ours8.load_state_dict(up8.state_dict())
    ref = up8(up16(x16)).feats
    out = ours8(ours16(x16.feats[None], h.parent_s8, h.offset_s8), h.parent_s4, h.offset_s4)[0]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    ours_down = SparseDownsample(6, 6)
    ours_down.load_state_dict(conv8.state_dict())
    torch.testing.assert_close(
        ours_down(x.feats[None], h.parent_s4, h.offset_s4, h.num_s8)[0],
        x8.feats,
        rtol=1e-5,
        atol=1e-5,
    )


def test_hierarchy_from_source_index_and_errors() -> None:
    c4, c8, c16 = voxel_levels(200)
    h = VoxelHierarchy.from_coords(c4, c8, c16)
    src4 = h.parent_s4 * 8 + h.offset_s4
    src8 = h.parent_s8 * 8 + h.offset_s8
    h2 = VoxelHierarchy.from_source_index(src4, src8, c16.shape[0])
    for a, b in zip(
        (h.parent_s4, h.offset_s4, h.parent_s8, h.offset_s8),
        (h2.parent_s4, h2.offset_s4, h2.parent_s8, h2.offset_s8),
        strict=True,
    ):
        assert torch.equal(a, b)
    # The parent coordinate really is the floor to stride 8.
    assert torch.equal(c8[h.parent_s4, 1:], torch.div(c4[:, 1:], 8, rounding_mode="floor") * 8)
    with pytest.raises(ValueError, match="no parent"):
        VoxelHierarchy.from_coords(c4, c8[1:], c16)


def test_prompt_encoder_2d_shapes_and_labels() -> None:
    enc = PromptEncoder2D(
        C, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=8
    )
    b, n = 3, 4
    pe = torch.randn(b, n, C)
    labels = torch.tensor([[1, 0, 2, 3], [1, -1, PAD_LABEL, PAD_LABEL], [1, 1, 0, PAD_LABEL]])
    out = enc(labels, pe)
    assert out.sparse.shape == (b, n + 1, C) and out.sparse.dtype == torch.float32
    assert out.dense.shape == (b, C, 4, 4)
    assert out.valid.dtype == torch.bool
    assert out.valid.tolist() == [
        [True] * 5,
        [True, True, False, False, True],
        [True] * 3 + [False, True],
    ]
    pt = [e.weight[0] for e in enc.point_embeddings]
    nap = enc.not_a_point_embed.weight[0]
    torch.testing.assert_close(out.sparse[0, 0], pe[0, 0] + pt[1])
    torch.testing.assert_close(out.sparse[0, 1], pe[0, 1] + pt[0])
    torch.testing.assert_close(out.sparse[0, 2], pe[0, 2] + pt[2])
    torch.testing.assert_close(out.sparse[0, 3], pe[0, 3] + pt[3])
    torch.testing.assert_close(out.sparse[1, 1], nap)  # PE dropped for "not a point"
    torch.testing.assert_close(out.sparse[:, -1], nap.expand(b, C))  # SAM2's appended pad token
    assert torch.all(out.sparse[1, 2:4] == 0)
    # No-mask dense embedding everywhere; a mask of any size is resized to stride 4 and encoded.
    torch.testing.assert_close(out.dense[0, :, 2, 1], enc.no_mask_embed.weight[0])
    masked = enc(labels, pe, masks=torch.rand(b, 1, 50, 70))
    assert masked.dense.shape == (b, C, 4, 4)
    assert enc(None, masks=torch.rand(2, 1, 16, 16)).sparse.shape == (2, 0, C)
    assert enc(batch_size=5).dense.shape == (5, C, 4, 4)


def test_prompt_encoder_2d_pe_callable_and_nonfinite_pe() -> None:
    enc = PromptEncoder2D(
        C, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=8
    )
    seen = {}

    def pe_fn(xy: torch.Tensor) -> torch.Tensor:
        seen["xy"] = xy
        return xy.sum(-1, keepdim=True).expand(*xy.shape[:2], C)

    coords = torch.tensor([[[10.0, 20.0]]])
    out = enc(torch.tensor([[1]]), coords=coords, pe_fn=pe_fn)
    torch.testing.assert_close(seen["xy"], coords + 0.5)  # pixel centres
    torch.testing.assert_close(
        out.sparse[0, 0], torch.full((C,), 31.0) + enc.point_embeddings[1].weight[0]
    )
    # A padding / not-a-point label never lets its PE through, even a non-finite one.
    pe = torch.full((1, 2, C), float("nan"))
    out = enc(torch.tensor([[NOT_A_POINT_LABEL, PAD_LABEL]]), pe)
    assert torch.isfinite(out.sparse).all()


def test_prompt_encoder_3d_shapes_masks_and_dtype() -> None:
    c4, c8, c16 = voxel_levels(300)
    h = VoxelHierarchy.from_coords(c4, c8, c16)
    enc = PromptEncoder3D(C, mask_in_chans=8).eval()
    b = 2
    pe = torch.randn(b, 2, C)
    labels = torch.tensor([[1, 0], [1, PAD_LABEL]])
    out = enc(labels, pe, hierarchy=h)
    assert out.sparse.shape == (b, 3, C)
    assert out.dense.shape == (b, h.num_s16, C)
    torch.testing.assert_close(out.dense[1, 3], enc.no_mask_embed.weight[0])
    mask = torch.randn(b, h.num_s4)
    dense = enc(labels, pe, mask, hierarchy=h).dense
    assert dense.shape == (b, h.num_s16, C) and dense.dtype == torch.float32
    # Released layout (B, 1, N4, 1) is accepted too; objects are independent in eval.
    torch.testing.assert_close(enc(labels, pe, mask[:, None, :, None], hierarchy=h).dense, dense)
    torch.testing.assert_close(enc(labels[1:], pe[1:], mask[1:], hierarchy=h).dense, dense[1:])
    # Training: BatchNorm statistics per object, so batching still does not mix objects.
    enc.train()
    both = enc.embed_masks(mask, h)
    torch.testing.assert_close(enc.embed_masks(mask[:1], h), both[:1], rtol=1e-5, atol=1e-5)
    # float64 end to end.
    enc64 = PromptEncoder3D(C, mask_in_chans=8).double().eval()
    out64 = enc64(labels, pe.double(), mask.double(), hierarchy=h)
    assert out64.sparse.dtype == out64.dense.dtype == torch.float64
    with pytest.raises(ValueError):
        enc(labels, pe, mask)  # a mask needs the hierarchy
    with pytest.raises(ValueError):
        enc(labels, pe)  # and the no-mask embedding the token count
    assert enc(labels, pe, num_tokens=7).dense.shape == (b, 7, C)


def test_point_mask_to_voxels() -> None:
    point_to_voxel = torch.tensor([0, 0, 2, 2, 2])
    values = torch.tensor([[1.0, 0.0, 1.0, 1.0, 0.0]])
    torch.testing.assert_close(
        scatter_mean(values, point_to_voxel, 4), torch.tensor([[0.5, 0.0, 2 / 3, 0.0]])
    )


def test_cross_modal_prompts() -> None:
    enc2 = PromptEncoder2D(
        C, image_embedding_size=(4, 4), input_image_size=(64, 64), mask_in_chans=8
    )
    enc3 = PromptEncoder3D(C, mask_in_chans=8)
    img = enc2(torch.tensor([[1, PAD_LABEL]]), torch.randn(1, 2, C))  # 3 tokens
    pts = enc3(torch.tensor([[1, 0, 0, 1]]), torch.randn(1, 4, C), num_tokens=5)  # 5 tokens
    img_x, pts_x = cross_modal_prompts(img, pts)
    assert pts_x.sparse.shape == (1, 8, C)
    torch.testing.assert_close(pts_x.sparse, torch.cat([pts.sparse, img.sparse], 1))
    # As released, the camera decoder sees [camera, lidar, camera].
    torch.testing.assert_close(img_x.sparse, torch.cat([img.sparse, pts.sparse, img.sparse], 1))
    assert img_x.valid.tolist() == [
        img.valid[0].tolist() + pts.valid[0].tolist() + img.valid[0].tolist()
    ]
    img_y, _ = cross_modal_prompts(img, pts, released_order=False)
    torch.testing.assert_close(img_y.sparse, torch.cat([img.sparse, pts.sparse], 1))
    assert img_x.dense is img.dense and pts_x.dense is pts.dense


def test_box_helpers() -> None:
    coords, labels = boxes_to_points_2d(torch.tensor([[1.0, 2.0, 30.0, 40.0]]))
    assert coords.tolist() == [[[1.0, 2.0], [30.0, 40.0]]] and labels.tolist() == [[2, 3]]
    coords, labels = boxes3d_to_points(torch.tensor([[0.0, 1.0, -1.0, 2.0, 3.0, 1.5]]))
    assert coords.tolist() == [[[0.0, 1.0, -1.0], [2.0, 3.0, 1.5]]] and labels.tolist() == [[2, 3]]
    bev = torch.tensor([[0.0, 0.0, 2.0, 2.0], [10.0, 10.0, 11.0, 11.0]])
    points = torch.tensor([[1.0, 1.0, -1.5], [1.5, 0.5, 0.7], [5.0, 5.0, 9.0]])
    coords, labels = bev_boxes_to_points_3d(bev, points)
    assert coords.shape == (2, 2, 3) and labels.tolist() == [[2, 3], [2, 3]]
    torch.testing.assert_close(coords[0], torch.tensor([[0.0, 0.0, -1.5], [2.0, 2.0, 0.7]]))
    torch.testing.assert_close(coords[1], torch.tensor([[10.0, 10.0, 0.0], [11.0, 11.0, 0.0]]))
    coords, _ = bev_boxes_to_points_3d(bev, z_range=(-2.0, 3.0))
    assert coords[:, :, 2].tolist() == [[-2.0, 3.0], [-2.0, 3.0]]
    coords, _ = bev_boxes_to_points_3d(bev)
    assert coords[:, :, 2].abs().sum() == 0
