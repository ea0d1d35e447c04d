"""Image and LiDAR memory encoders: official sizes and names, shapes, batching, sparse reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam4d_core.modeling.memory_encoder import (
    ImageMemoryEncoder,
    PointMemoryEncoder,
    add_no_object_embedding,
    mask_logits_for_memory,
    point_masks_to_voxels,
)
from sam4d_core.modeling.sparse import Conv3d, SparseTensor


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_official_sizes_and_names() -> None:
    with torch.device("meta"):
        image, point = ImageMemoryEncoder(), PointMemoryEncoder()
    assert n_params(image) == 1_368_160
    assert n_params(point) == 46_279_880
    assert n_params(image) + n_params(point) == 47_648_040  # DESIGN.md: 47.6 M
    sd = {k: tuple(v.shape) for k, v in point.state_dict().items()}
    assert sd["fuser.layers.0.conv.kernel"] == (343, 256, 256)
    assert sd["fuser.layers.1.pwconv1.kernel"] == (256, 1024)
    assert sd["mask_downsampler.encoder.0.kernel"] == (8, 1, 4)
    assert sd["mask_downsampler.encoder.9.kernel"] == (8, 64, 256)
    assert sd["mask_downsampler.encoder.12.bias"] == (256,)
    assert sd["pix_feat_proj.kernel"] == (256, 256) and "pix_feat_proj.bias" in sd
    assert "fuser.layers.0.conv.bias" not in sd and "fuser.layers.0.pwconv1.bias" not in sd
    assert len(sd) == 28
    sd = {k: tuple(v.shape) for k, v in image.state_dict().items()}
    assert sd["mask_downsampler.encoder.0.weight"] == (4, 1, 3, 3)
    assert sd["mask_downsampler.encoder.12.weight"] == (256, 256, 1, 1)
    assert sd["fuser.layers.1.dwconv.weight"] == (256, 1, 7, 7)
    assert sd["fuser.layers.0.pwconv2.weight"] == (256, 1024)
    assert not any(k.startswith("out_proj") for k in sd)
    assert len(sd) == 38


def test_mask_helpers() -> None:
    x = torch.tensor([-100.0, 0.0, 100.0])
    torch.testing.assert_close(mask_logits_for_memory(x), torch.tensor([-10.0, 0.0, 10.0]))
    torch.testing.assert_close(
        mask_logits_for_memory(torch.tensor([-0.1, 0.1]), binarize=True),
        torch.tensor([-10.0, 10.0]),
    )
    vals = torch.tensor([[1.0, 3.0, 5.0, 7.0], [0.0, 2.0, 4.0, 6.0]])
    p2v = torch.tensor([2, 2, 0, -1])
    torch.testing.assert_close(
        point_masks_to_voxels(vals, p2v, 3), torch.tensor([[5.0, 0.0, 2.0], [4.0, 0.0, 1.0]])
    )
    img = torch.zeros(2, 3, 2, 2)
    emb = torch.arange(3.0)[None]
    out = add_no_object_embedding(img, torch.tensor([[1.0], [-2.0]]), emb, channels_last=False)
    assert out[0].abs().sum() == 0 and torch.equal(out[1, :, 1, 1], emb[0])
    pts = torch.zeros(2, 5, 3)
    out = add_no_object_embedding(pts, torch.tensor([-1.0, 0.5]), emb, channels_last=True)
    assert torch.equal(out[0, 4], emb[0]) and out[1].abs().sum() == 0


def test_image_encoder_shapes_and_batching() -> None:
    torch.manual_seed(0)
    enc = ImageMemoryEncoder(in_dim=16, out_dim=8, num_fuser_layers=2).eval()
    feat = torch.randn(1, 16, 4, 5)
    masks = torch.randn(3, 1, 64, 80)
    out = enc(feat, mask_logits_for_memory(masks), skip_mask_sigmoid=True)
    assert out.shape == (3, 8, 4, 5)
    # Shared frame features (batch 1) == the features repeated per object == one at a time.
    rep = enc(feat.expand(3, -1, -1, -1), mask_logits_for_memory(masks), skip_mask_sigmoid=True)
    torch.testing.assert_close(out, rep)
    one = enc(feat, mask_logits_for_memory(masks[1:2]), skip_mask_sigmoid=True)
    torch.testing.assert_close(out[1:2], one, rtol=1e-5, atol=1e-5)
    # skip_mask_sigmoid=False squashes the given values itself.
    torch.testing.assert_close(enc(feat, masks), enc(feat, torch.sigmoid(masks), True))
    with pytest.raises(ValueError, match="mask downsampled"):
        enc(feat, torch.zeros(1, 1, 32, 32))


def stride16_features(channels: int, seed: int = 0) -> tuple[SparseTensor, SparseTensor]:
    """A sparse sweep at stride 1 and features at stride 16 derived from it through strided
    k2 convolutions (as the LiDAR encoder does), sharing one cache."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.cat(
        [
            torch.randint(0, 90, (1500, 2), generator=g),
            torch.randint(0, 12, (1500, 1), generator=g),
        ],
        1,
    )
    coords = torch.unique(torch.cat([torch.zeros(1500, 1, dtype=torch.long), pts], 1), dim=0)
    x = SparseTensor(torch.ones(coords.shape[0], 1), coords.int(), stride=1)
    stride1 = x
    c = 1
    for _ in range(4):
        x = Conv3d(c, channels, 2, stride=2)(x)
        c = channels
    return stride1, x.replace_feats(torch.randn(x.num_points, channels, generator=g))


def sparse_reference(enc: PointMemoryEncoder, feat16: SparseTensor, mask: torch.Tensor, coords1):
    """One object through the encoder's layers with sparse tensors only (fresh cache)."""
    m = SparseTensor(mask[:, None], coords1, stride=1)
    for layer in enc.mask_downsampler.encoder:
        m = layer(m) if isinstance(layer, Conv3d) else m.replace_feats(layer(m.feats))
    assert torch.equal(m.coords.long(), feat16.coords.long())
    x = enc.pix_feat_proj(feat16.replace_feats(feat16.feats)).feats + m.feats
    for blk in enc.fuser.layers:
        y = blk.conv(feat16.replace_feats(x)).feats
        y = blk.pwconv1(feat16.replace_feats(blk.norm(y))).feats
        y = blk.pwconv2(feat16.replace_feats(F.gelu(y))).feats
        x = x + blk.gamma * y
    return x


def test_point_encoder_matches_sparse_reference_and_batches() -> None:
    torch.manual_seed(0)
    stride1, feat16 = stride16_features(16)
    enc = PointMemoryEncoder(in_dim=16, out_dim=16, fuser_kernel_size=3, layer_scale_init_value=0.5)
    masks = mask_logits_for_memory(torch.randn(3, stride1.num_points))
    n_maps = len(feat16.cache.kmaps)
    out = enc(feat16, masks, skip_mask_sigmoid=True)
    assert out.shape == (3, feat16.num_points, 16)
    # The downsampling reused the encoder's kernel maps; only the fuser's k3 map is new.
    assert len(feat16.cache.kmaps) == n_maps + 1
    for b in range(3):
        ref = sparse_reference(enc, feat16, masks[b], stride1.coords)
        torch.testing.assert_close(out[b], ref, rtol=1e-4, atol=1e-4)
    one = enc(feat16, masks[2:3], skip_mask_sigmoid=True)
    torch.testing.assert_close(out[2:3], one)
    assert enc(feat16, masks[:0], skip_mask_sigmoid=True).shape == (0, feat16.num_points, 16)


def test_point_encoder_full_k7_out_proj_and_backward() -> None:
    torch.manual_seed(1)
    stride1, feat16 = stride16_features(8, seed=1)
    enc = PointMemoryEncoder(in_dim=8, out_dim=4, num_fuser_layers=1)
    assert enc.fuser.layers[0].conv.kernel.shape == (343, 8, 8)
    logits = torch.randn(2, stride1.num_points, requires_grad=True)
    out = enc(feat16, mask_logits_for_memory(logits), skip_mask_sigmoid=True)
    assert out.shape == (2, feat16.num_points, 4)
    out.square().mean().backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    # Explicit stride-1 coordinates (a fresh cache) give the same result.
    same = enc(feat16, mask_logits_for_memory(logits), True, voxel_coords=stride1.coords.clone())
    torch.testing.assert_close(same, out)
    with pytest.raises(ValueError, match="stride-1 voxels"):
        enc(feat16, torch.zeros(1, stride1.num_points + 1))
