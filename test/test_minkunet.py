"""MinkUNet LiDAR encoder: official sizes and key names, tiny-config forward/backward, batching."""

from __future__ import annotations

import torch

from sam4d_core.modeling.backbones.minkunet import (
    MinkUNetBackbone,
    build_minkunet,
    minkunet34_w32_config,
    minkunet_tiny_config,
)
from sam4d_core.modeling.sparse.hashing import hash_coords


def synthetic_sweep(n: int = 3000, seed: int = 0) -> torch.Tensor:
    """Ground plane plus a few boxes, within +-12 m (xyz in metres)."""
    g = torch.Generator().manual_seed(seed)
    n_ground = n // 2
    ground = torch.cat(
        [(torch.rand(n_ground, 2, generator=g) - 0.5) * 24, torch.full((n_ground, 1), -1.7)], 1
    )
    boxes = []
    per_box = (n - n_ground) // 4
    for _ in range(4):
        centre = (torch.rand(3, generator=g) - 0.5) * torch.tensor([20.0, 20.0, 0.0])
        size = torch.tensor([4.0, 1.8, 1.5])
        boxes.append(centre + (torch.rand(per_box, 3, generator=g) - 0.5) * size)
    return torch.cat([ground, *boxes], dim=0)


def test_official_parameter_count_and_key_layout() -> None:
    model = build_minkunet(minkunet34_w32_config())
    assert sum(p.numel() for p in model.parameters()) == 26_942_688  # DESIGN.md: 26.9 M
    sd = model.state_dict()
    expected_shapes = {
        "conv_input.0.kernel": (27, 1, 32),
        "conv_input.3.kernel": (27, 32, 32),
        "conv_input.4.running_var": (32,),
        "encoder.0.0.net.0.kernel": (8, 32, 32),
        "encoder.0.3.net.3.kernel": (27, 32, 32),
        "encoder.1.1.downsample.0.kernel": (32, 64),
        "encoder.2.6.net.0.kernel": (27, 128, 128),
        "encoder.3.0.net.0.kernel": (8, 128, 128),
        "encoder.3.1.net.0.kernel": (27, 128, 256),
        "encoder.3.3.net.4.weight": (256,),
        "decoder.0.0.net.0.kernel": (8, 256, 256),
        "decoder.0.1.0.net.0.kernel": (27, 384, 256),
        "decoder.0.1.0.downsample.0.kernel": (384, 256),
        "decoder.0.1.1.net.3.kernel": (27, 256, 256),
        "decoder.1.0.net.0.kernel": (8, 256, 128),
        "decoder.1.1.0.net.0.kernel": (27, 192, 128),
        "decoder.1.1.1.net.4.num_batches_tracked": (),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # Blocks per encoder stage (3, 4, 6, 3) after the stride-2 conv block; 2 per decoder stage.
    assert [len(stage) - 1 for stage in model.encoder] == [3, 4, 6, 3]
    assert [len(stage[1]) for stage in model.decoder] == [2, 2]
    assert not any(k.endswith(".bias") and "net.0" in k for k in sd)  # convs have no bias
    assert "encoder.0.1.downsample.0.kernel" not in sd  # 32 -> 32: identity shortcut
    # A state dict loads strictly into a fresh model.
    build_minkunet(minkunet34_w32_config()).load_state_dict(sd, strict=True)


def test_tiny_forward_shapes_and_positions() -> None:
    torch.manual_seed(0)
    model = build_minkunet(minkunet_tiny_config())
    pts = synthetic_sweep()
    batch = (torch.arange(pts.shape[0]) % 2).long()
    out = model(pts, batch)
    assert model.out_strides == [4, 8, 16]
    assert [f.stride for f in out.features] == [(4, 4, 4), (8, 8, 8), (16, 16, 16)]
    assert [f.feats.shape[1] for f in out.features] == [64, 128, 128]
    for f in out.features:
        s = f.stride[0]
        assert bool((f.coords[:, 1:] % s == 0).all())
        assert torch.isfinite(f.feats).all()
        # The stride-s voxels are exactly those holding points.
        cells = torch.floor(out.point_grid_coords / s).long() * s
        keys = torch.unique(hash_coords(torch.cat([batch[:, None], cells], dim=1)))
        assert torch.equal(torch.sort(hash_coords(f.coords)).values, keys)
    s16 = out.features[-1]
    assert out.token_xyz.shape == (s16.num_points, 3)
    assert bool((out.token_xyz.min(0).values >= pts.min(0).values - 1e-4).all())
    assert bool((out.token_xyz.max(0).values <= pts.max(0).values + 1e-4).all())


def test_tiny_backward() -> None:
    torch.manual_seed(1)
    model = build_minkunet(minkunet_tiny_config())
    out = model(synthetic_sweep(1500, seed=1))
    loss = sum(f.feats.square().mean() for f in out.features)
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None for g in grads)
    assert model.conv_input[0].kernel.grad.abs().sum() > 0


def test_batch_equals_single_sweeps_in_eval() -> None:
    torch.manual_seed(2)
    model: MinkUNetBackbone = build_minkunet(minkunet_tiny_config()).eval()
    a, b = synthetic_sweep(1200, seed=3), synthetic_sweep(1000, seed=4)
    with torch.no_grad():
        both = model(torch.cat([a, b]), torch.cat([torch.zeros(1200), torch.ones(1000)]).long())
        only_b = model(b)
    s16 = both.features[-1]
    sel = s16.coords[:, 0] == 1
    # Same voxels in the same order (sorted by key), same features and token positions.
    assert torch.equal(s16.coords[sel][:, 1:], only_b.features[-1].coords[:, 1:])
    torch.testing.assert_close(s16.feats[sel], only_b.features[-1].feats, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(both.token_xyz[sel], only_b.token_xyz)
