"""MCMA's distance bias: token places, their distances (hand-computed), and locality in MCMA."""

from __future__ import annotations

import math

import pytest
import torch

from sam4d_core.modeling.configs import get_config
from sam4d_core.modeling.memory_attention import AttentionPlaces, MemoryAttention
from sam4d_core.modeling.token_places import (
    DistanceScales,
    PlaceSegment,
    image_token_places,
    lidar_token_places,
    segment_distance,
    unplaced,
)
from sam4d_core.modeling.umpe import FrustumRayEmbedding

SCALES = DistanceScales(sigma_m=0.5, sigma_rad=0.1, unplaced=7.0, maximum=40.0)


def rays(origin, dirs) -> PlaceSegment:
    d = torch.nn.functional.normalize(torch.tensor(dirs, dtype=torch.float32), dim=-1)
    return PlaceSegment(
        "rays", d.shape[0], xyz=torch.tensor(origin, dtype=torch.float32), directions=d
    )


def points(xyz) -> PlaceSegment:
    p = torch.tensor(xyz, dtype=torch.float32)
    return PlaceSegment("points", p.shape[0], xyz=p)


def test_distances_by_hand() -> None:
    # Point to point: |p - q|^2 / sigma_m^2, clamped.
    d = segment_distance(points([[0, 0, 0], [1, 1, 1]]), points([[1, 0, 0], [0, 0, 0]]), SCALES)
    torch.testing.assert_close(d, torch.tensor([[4.0, 0.0], [8.0, 12.0]]))
    far = segment_distance(points([[0, 0, 0]]), points([[10, 0, 0]]), SCALES)
    assert far.item() == 40.0

    # Ray from (1, 0, 0) along x to the point (11, 1, 0): the angle's cosine is 10 / sqrt(101).
    ray = rays([1, 0, 0], [[1, 0, 0]])
    pt = points([[11, 1, 0]])
    want = 2 * (1 - 10 / math.sqrt(101)) / 0.1**2
    assert segment_distance(ray, pt, SCALES).item() == pytest.approx(want, rel=1e-5)
    # Symmetric: LiDAR query, image key.
    assert segment_distance(pt, ray, SCALES).item() == pytest.approx(want, rel=1e-5)
    # On the ray: 0; behind the camera: the clamp.
    assert segment_distance(ray, points([[5, 0, 0], [-5, 0, 0]]), SCALES).tolist() == [[0.0, 40.0]]

    # Ray to ray: the angle between directions (origins do not matter).
    a = rays([0, 0, 0], [[1, 0, 0]])
    b = rays([0, 3, 0], [[math.cos(0.05), math.sin(0.05), 0]])
    want = 2 * (1 - math.cos(0.05)) / 0.1**2  # ~ (0.05 / 0.1)^2
    assert segment_distance(a, b, SCALES).item() == pytest.approx(want, rel=1e-4)
    assert want == pytest.approx(0.25, rel=1e-3)

    # Object pointers have no place.
    assert segment_distance(unplaced(2), ray, SCALES).tolist() == [[7.0], [7.0]]
    assert segment_distance(pt, unplaced(3), SCALES).tolist() == [[7.0, 7.0, 7.0]]


def test_scales_and_segments_are_validated() -> None:
    with pytest.raises(ValueError, match="> 0"):
        DistanceScales(sigma_m=0.0)
    with pytest.raises(ValueError, match="unplaced"):
        DistanceScales(unplaced=60.0, maximum=50.0)
    with pytest.raises(ValueError, match="kind"):
        PlaceSegment("voxels", 1)
    with pytest.raises(ValueError, match="origin"):
        PlaceSegment("rays", 2, xyz=torch.zeros(3), directions=torch.zeros(3, 3))
    cfg = get_config("sam4d_tiny")
    cfg.memory_attention.distance_bias = True
    cfg.memory_attention.distance_sigma_rad = -1.0
    with pytest.raises(ValueError, match="distance bias"):
        cfg.validate()


def test_image_rays_follow_umpe_frustum_and_ego_motion() -> None:
    """A cell's ray passes through UMPE's ray samples of that cell, before and after T_rel."""
    K = torch.tensor([[[100.0, 0, 64], [0, 90.0, 32], [0, 0, 1]]])
    yaw = 0.3
    lidar_from_cam = torch.tensor(
        [[[0.0, 0, 1, 1.5], [-1, 0, 0, 0.2], [0, -1, 0, 1.7], [0, 0, 0, 1]]]
    )
    T_rel = torch.eye(4)
    T_rel[:2, :2] = torch.tensor([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    T_rel[:3, 3] = torch.tensor([2.0, -1.0, 0.1])
    emb = FrustumRayEmbedding(
        num_pos_feats=16, image_size=(64, 128), backbone_stride=16, num_depths=4
    )
    for t in (None, T_rel):
        (seg,) = image_token_places(K, lidar_from_cam, (4, 8), 16, t)
        samples = emb.frustum_points(K, lidar_from_cam, t)[0].reshape(32, -1, 3)  # (cells, D, 3)
        along = samples - seg.xyz  # from the camera centre to every sample
        torch.testing.assert_close(
            torch.nn.functional.normalize(along, dim=-1),
            seg.directions[:, None].expand_as(along),
            atol=1e-5,
            rtol=0,
        )
    # LiDAR centroids move like UMPE's memory centroids.
    xyz = torch.tensor([[10.0, 0, 0], [0, 5, 1]])
    moved = lidar_token_places(xyz, T_rel).xyz
    torch.testing.assert_close(moved, xyz @ T_rel[:3, :3].T + T_rel[:3, 3])


def _mcma(distance: bool, num_layers: int = 1) -> MemoryAttention:
    torch.manual_seed(0)
    return MemoryAttention(
        d_model=32,
        num_layers=num_layers,
        dim_feedforward=64,
        num_heads=2,
        dropout=0.0,
        distance_scales=DistanceScales(sigma_m=0.3) if distance else None,
    ).eval()


def test_distance_bias_makes_mcma_read_the_memory_at_its_own_place() -> None:
    """A static scene: memory token i sits at LiDAR query i's place. With the bias a memory token
    far from a query no longer reaches it, and the one at its place does; without the bias both
    do. One layer: with more, self-attention (unbiased, as released) spreads what a far query
    read."""
    g = torch.Generator().manual_seed(3)
    n_pts, n_img = 6, 4
    xyz = torch.arange(n_pts, dtype=torch.float32)[:, None] * torch.tensor([3.0, 0, 0])
    xyz[:, 2] = 1.0
    cam = rays([0, 0, 0], [[1, 0, 0.1 * k] for k in range(n_img)])
    pts = torch.randn(1, n_pts, 32, generator=g)
    pts_pos = torch.randn(1, n_pts, 32, generator=g)
    img = torch.randn(1, n_img, 32, generator=g)
    img_pos = torch.randn(1, n_img, 32, generator=g)
    memory = torch.randn(1, n_pts + 1, 32, generator=g)  # LiDAR memory + one pointer
    memory_pos = torch.randn(1, n_pts + 1, 32, generator=g)
    lidar = lidar_token_places(xyz)
    places = AttentionPlaces(image=[cam], points=[lidar], memory=[[lidar, unplaced(1)]])

    def run(model, mem):
        return model(img, img_pos, pts, pts_pos, mem, memory_pos, places=places)[1][0]

    far_change = memory.clone()
    far_change[0, 5] += 3.0  # memory at x = 15 m; query 0 is at x = 0
    own_change = memory.clone()
    own_change[0, 0] += 3.0
    for distance in (False, True):
        model = _mcma(distance)
        if distance:
            with torch.no_grad():
                for layer in model.layers:
                    layer.place_gain.fill_(5.0)
        with torch.no_grad():
            base = run(model, memory)
            far = (run(model, far_change) - base)[0].abs().max().item()
            own = (run(model, own_change) - base)[0].abs().max().item()
        if distance:
            assert far < 1e-4 and own > 1e-2, (far, own)
        else:
            assert far > 1e-2, far

    # The gains train; a module with the bias refuses to run without places.
    model = _mcma(True, num_layers=2).train()
    out = model(img, img_pos, pts, pts_pos, memory, memory_pos, places=places)
    (out[0].square().mean() + out[1].square().mean()).backward()
    assert all(layer.place_gain.grad is not None for layer in model.layers)
    assert model.layers[0].place_gain.ndim == 1  # 1-D: no weight decay (param_groups)
    with pytest.raises(ValueError, match="places"):
        model(img, img_pos, pts, pts_pos, memory, memory_pos)
    wrong = AttentionPlaces(image=[cam], points=[lidar], memory=[[lidar]] * 2)
    with pytest.raises(ValueError, match="2 memories for 1 objects"):
        model(img, img_pos, pts, pts_pos, memory, memory_pos, places=wrong)
    # reset_parameters draws the layers anew and puts the gains back to 1.
    with torch.no_grad():
        model.layers[1].place_gain.fill_(3.0)
    model.reset_parameters()
    assert torch.equal(model.layers[1].place_gain, torch.ones(2))


def test_inference_buffers_and_padding_give_the_training_path_result() -> None:
    """Without autograd MCMA writes the bias into one buffer per modality (reused by every layer)
    and masks padded keys in place; the result must equal the autograd path's, object by object
    equal to running each object alone."""
    g = torch.Generator().manual_seed(5)
    xyz = torch.randn(9, 3, generator=g) * 5
    cam = rays([0.5, 0, 0], [[1, 0.1 * k, 0] for k in range(5)])
    here = lidar_token_places(xyz)
    past = lidar_token_places(xyz + 0.3)
    long_mem = [past, unplaced(2)]
    short_mem = [unplaced(1)]
    places = AttentionPlaces(image=[cam], points=[here], memory=[long_mem, short_mem])
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    img, img_pos, pts, pts_pos = r(1, 5, 32), r(1, 5, 32), r(1, 9, 32), r(1, 9, 32)
    memory, memory_pos = r(2, 11, 32), r(2, 11, 32)
    valid = torch.zeros(2, 11, dtype=torch.bool)
    valid[0], valid[1, :1] = True, True
    model = _mcma(True, num_layers=2)
    with torch.no_grad():
        for i, layer in enumerate(model.layers):
            layer.place_gain.copy_(torch.tensor([0.5, 2.0]) * (i + 1))
        fast = model(img, img_pos, pts, pts_pos, memory, memory_pos, valid, places=places)
    slow = model(img, img_pos, pts, pts_pos, memory, memory_pos, valid, places=places)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b.detach())
    with torch.no_grad():
        for i, mem in enumerate((long_mem, short_mem)):
            n = int(valid[i].sum())
            alone = AttentionPlaces(image=[cam], points=[here], memory=[mem])
            one = model(
                img,
                img_pos,
                pts,
                pts_pos,
                memory[i : i + 1, :n],
                memory_pos[i : i + 1, :n],
                places=alone,
            )
            for a, b in zip(fast, one, strict=True):
                torch.testing.assert_close(a[i : i + 1], b, atol=1e-5, rtol=1e-4)
