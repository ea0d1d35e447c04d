"""Image encoder: Hiera trunk, FPN neck, official sizes and key names, preprocessing."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sam4d_core.modeling.backbones.hieradet import (
    Hiera,
    MultiScaleBlock,
    window_partition,
    window_unpartition,
)
from sam4d_core.modeling.backbones.image_encoder import (
    IMAGENET_MEAN,
    FpnNeck,
    ImageEncoderConfig,
    build_image_encoder,
    preprocess_images,
    scale_intrinsics,
)


def tiny_config(image_size: int = 64) -> ImageEncoderConfig:
    return ImageEncoderConfig(
        image_size=(image_size, image_size),
        embed_dim=16,
        num_heads=1,
        stages=(1, 1, 2, 1),
        global_att_blocks=(3,),
        window_spec=(8, 4, 4, 2),
        window_pos_embed_bkg_spatial_size=(4, 4),
        d_model=32,
    )


def test_official_hiera_s_fpn_size_and_keys() -> None:
    with torch.device("meta"):
        enc = build_image_encoder()
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(enc.trunk) == 33_947_328
    assert count(enc.neck) == 369_664
    assert count(enc) == 34_316_992  # DESIGN.md: image backbone 34.3 M
    sd = enc.state_dict()
    assert len(sd) == 210  # 204 trunk + 8 neck entries - no buffers; mean/std not persistent
    assert all(k.startswith(("0.", "1.")) for k in sd)
    expected = {
        "0.patch_embed.proj.weight": (96, 3, 7, 7),
        "0.pos_embed": (1, 96, 7, 7),
        "0.pos_embed_window": (1, 96, 8, 8),
        "0.blocks.0.attn.qkv.weight": (288, 96),
        "0.blocks.1.proj.weight": (192, 96),
        "0.blocks.1.attn.qkv.weight": (576, 96),
        "0.blocks.1.mlp.layers.0.weight": (768, 192),
        "0.blocks.1.mlp.layers.1.weight": (192, 768),
        "0.blocks.3.proj.weight": (384, 192),
        "0.blocks.14.proj.weight": (768, 384),
        "0.blocks.15.norm2.bias": (768,),
        "1.convs.0.conv.weight": (256, 768, 1, 1),
        "1.convs.3.conv.weight": (256, 96, 1, 1),
        "1.convs.3.conv.bias": (256,),
    }
    for k, shape in expected.items():
        assert tuple(sd[k].shape) == shape, k
    assert "0.blocks.16.norm1.weight" not in sd and "0.blocks.2.proj.weight" not in sd
    trunk = enc.trunk
    assert trunk.channel_list == [768, 384, 192, 96]
    assert trunk.q_pool_blocks == [1, 3, 14]
    # The window size lags one block at stage changes; blocks 7, 10, 13 are global (0).
    windows = [8, 8, 4, 4, 14, 14, 14, 0, 14, 14, 0, 14, 14, 0, 14, 7]
    assert [b.window_size for b in trunk.blocks] == windows


def test_window_partition_round_trip_with_padding() -> None:
    x = torch.randn(2, 10, 7, 3)
    windows, pad_hw = window_partition(x, 4)
    assert pad_hw == (12, 8) and windows.shape == (2 * 3 * 2, 4, 4, 3)
    torch.testing.assert_close(window_unpartition(windows, 4, pad_hw, (10, 7)), x)


def test_window_covering_the_grid_equals_global_attention() -> None:
    torch.manual_seed(0)
    windowed = MultiScaleBlock(16, 16, num_heads=2, window_size=8).eval()
    global_ = MultiScaleBlock(16, 16, num_heads=2, window_size=0).eval()
    global_.load_state_dict(windowed.state_dict())
    x = torch.randn(1, 8, 8, 16)
    torch.testing.assert_close(windowed(x), global_(x))
    # Smaller windows do change the result (attention is local).
    local = MultiScaleBlock(16, 16, num_heads=2, window_size=4).eval()
    local.load_state_dict(windowed.state_dict())
    assert (local(x) - global_(x)).abs().max() > 1e-3


def test_hiera_tiny_forward_shapes_and_padding() -> None:
    torch.manual_seed(0)
    trunk = Hiera(
        embed_dim=16,
        num_heads=1,
        stages=(1, 1, 2, 1),
        global_att_blocks=(3,),
        window_spec=(8, 4, 4, 2),
        window_pos_embed_bkg_spatial_size=(4, 4),
    ).eval()
    # 96 x 96: token grids 24, 12, 6, 3 -> stage-3 windows (4) and stage-4 windows (2) need padding.
    with torch.no_grad():
        outs = trunk(torch.randn(2, 3, 96, 96))
    assert [tuple(o.shape) for o in outs] == [
        (2, 16, 24, 24),
        (2, 32, 12, 12),
        (2, 64, 6, 6),
        (2, 128, 3, 3),
    ]
    assert all(o.dtype == torch.float32 and torch.isfinite(o).all() for o in outs)
    assert trunk.channel_list == [128, 64, 32, 16]


def test_fpn_neck_top_down_only_on_listed_levels() -> None:
    torch.manual_seed(0)
    neck = FpnNeck(8, [32, 16, 8, 4], fpn_top_down_levels=[2, 3], scalp=1)
    xs = [torch.randn(1, c, s, s) for c, s in ((4, 16), (8, 8), (16, 4), (32, 2))]
    out = neck(xs)
    assert [tuple(o.shape) for o in out] == [(1, 8, 16, 16), (1, 8, 8, 8), (1, 8, 4, 4)]
    lateral = [neck.convs[3 - i](xs[i]) for i in range(4)]
    torch.testing.assert_close(out[0], lateral[0])  # no top-down into levels 0, 1
    torch.testing.assert_close(out[1], lateral[1])
    up = F.interpolate(lateral[3], scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(out[2], lateral[2] + up)


def test_image_encoder_tiny_forward_and_batching() -> None:
    torch.manual_seed(0)
    enc = build_image_encoder(tiny_config(64)).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        out = enc(x)
        single = enc(x[1:2])
    fpn = out["backbone_fpn"]
    assert [tuple(f.shape) for f in fpn] == [(3, 32, 16, 16), (3, 32, 8, 8), (3, 32, 4, 4)]
    assert out["vision_features"] is fpn[-1]
    for f, g in zip(fpn, single["backbone_fpn"], strict=True):
        torch.testing.assert_close(f[1:2], g, atol=1e-5, rtol=1e-4)


def test_preprocess_resizes_without_aspect_and_normalises() -> None:
    mean_rgb = np.round(np.array(IMAGENET_MEAN) * 255).astype(np.uint8)
    wide = np.broadcast_to(mean_rgb, (40, 100, 3)).copy()
    tall = np.random.default_rng(0).integers(0, 256, (90, 30, 3), dtype=np.uint8)
    batch = preprocess_images([wide, torch.from_numpy(tall)], image_size=(64, 48))
    assert batch.shape == (2, 3, 64, 48) and batch.dtype == torch.float32
    assert batch[0].abs().max() < 0.01  # the mean colour normalises to ~0
    # A stacked (B, H, W, 3) array works too, and a same-size image is not resampled.
    stacked = np.stack([tall, tall])
    out = preprocess_images(stacked)
    assert out.shape == (2, 3, 768, 768)
    torch.testing.assert_close(out[0], out[1])
    exact = preprocess_images(tall[None, :64, :24], image_size=(64, 24))
    expected = (torch.from_numpy(tall[:64, :24]).permute(2, 0, 1).float() / 255 - 0.456) / 0.224
    torch.testing.assert_close(exact[0, 1], expected[1])


def test_scale_intrinsics_maps_projections() -> None:
    K = torch.tensor([[1000.0, 0.0, 960.0], [0.0, 1000.0, 640.0], [0.0, 0.0, 1.0]])
    Ks = scale_intrinsics(K, (1280, 1920), (768, 768))
    assert Ks.shape == (1, 3, 3)
    p = torch.tensor([2.0, -1.0, 10.0])
    uv = (K @ p)[:2] / p[2]
    uv_s = (Ks[0] @ p)[:2] / p[2]
    torch.testing.assert_close(uv_s, uv * torch.tensor([768 / 1920, 768 / 1280]))
    both = scale_intrinsics(torch.stack([K, K]), [(1280, 1920), (640, 960)])
    torch.testing.assert_close(both[1, 0, 0], torch.tensor(1000.0 * 768 / 960))
