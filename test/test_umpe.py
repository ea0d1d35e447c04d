"""UMPE: frustum geometry, encodings of tokens and prompts, batching, ego-motion warping."""

from __future__ import annotations

import math

import pytest
import torch

from sam4d_core.modeling.position_encoding import PositionEmbeddingSine
from sam4d_core.modeling.umpe import (
    UMPE,
    depth_bins,
    invert_intrinsics,
    invert_rigid,
    relative_ego_motion,
    transform_points,
)

# Camera axes (x right, y down, z forward) in a LiDAR frame (x forward, y left, z up).
CAM_AXES_IN_LIDAR = torch.tensor([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


def rotation(roll: float, pitch: float, yaw: float) -> torch.Tensor:
    cr, sr, cp, sp, cy, sy = (f(a) for a in (roll, pitch, yaw) for f in (math.cos, math.sin))
    rx = torch.tensor([[1.0, 0, 0], [0, cr, -sr], [0, sr, cr]])
    ry = torch.tensor([[cp, 0, sp], [0, 1.0, 0], [-sp, 0, cp]])
    rz = torch.tensor([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1.0]])
    return rz @ ry @ rx


def rigid(R: torch.Tensor, t: tuple[float, float, float]) -> torch.Tensor:
    T = torch.eye(4)
    T[:3, :3] = R
    T[:3, 3] = torch.tensor(t)
    return T


def cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """Two cameras at the 768 x 768 model input: K (2, 3, 3), lidar_from_cam (2, 4, 4)."""
    K = torch.tensor(
        [
            [[520.0, 0.0, 390.0], [0.0, 610.0, 370.0], [0.0, 0.0, 1.0]],
            [[300.0, 0.4, 384.0], [0.0, 280.0, 400.0], [0.0, 0.0, 1.0]],
        ]
    )
    front = rigid(rotation(0.01, -0.02, 0.03) @ CAM_AXES_IN_LIDAR, (1.5, 0.1, 1.8))
    left = rigid(rotation(0.0, 0.05, math.pi / 2) @ CAM_AXES_IN_LIDAR, (1.0, 0.9, 1.7))
    return K, torch.stack([front, left])


@pytest.fixture(scope="module")
def umpe() -> UMPE:
    torch.manual_seed(0)
    return UMPE(released_frequency_quirk=True).eval()


def test_official_sizes_and_state_dict(umpe: UMPE) -> None:
    sd = umpe.state_dict()
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    assert shapes == {
        "pts_pe_layer.positional_encoding_gaussian_matrix": (3, 128),
        "union_pe_layer.frustum": (48, 48, 128, 4),
        "union_pe_layer.mlp_embedding.0.weight": (1024, 384),
        "union_pe_layer.mlp_embedding.0.bias": (1024,),
        "union_pe_layer.mlp_embedding.2.weight": (256, 1024),
        "union_pe_layer.mlp_embedding.2.bias": (256,),
    }
    n_params = sum(p.numel() for p in umpe.parameters())
    assert n_params == 1_836_288  # + 384 RFF buffer = 1.84 M (DESIGN.md: UMPE 1.8 M)
    frustum = umpe.union_pe_layer.frustum
    assert isinstance(frustum, torch.nn.Parameter) and not frustum.requires_grad
    # (u, v, d, 1): cell centres in model-input pixels, depths 1.0, 1.6, ..., 77.2 m.
    d = depth_bins()
    assert d.shape == (128,) and d[0] == 1.0 and abs(float(d[-1]) - 77.2) < 1e-4
    torch.testing.assert_close(d[1:] - d[:-1], torch.full((127,), 0.6), atol=1e-5, rtol=0)
    torch.testing.assert_close(frustum[3, 5, :, 2], d)
    torch.testing.assert_close(frustum[3, 5, 0], torch.tensor([5.5 * 16, 3.5 * 16, 1.0, 1.0]))
    assert umpe.grid_size == (48, 48)


def test_matrix_helpers() -> None:
    K, L = cameras()
    torch.testing.assert_close(invert_intrinsics(K), torch.linalg.inv(K))
    torch.testing.assert_close(invert_rigid(L), torch.linalg.inv(L), atol=1e-6, rtol=0)
    p = torch.randn(2, 5, 3)
    ref = (L[:, None, :3, :3] @ p[..., None]).squeeze(-1) + L[:, None, :3, 3]
    torch.testing.assert_close(transform_points(L, p), ref)


def test_frustum_rays_project_back_to_cell_centres(umpe: UMPE) -> None:
    K, L = cameras()
    pts = umpe.union_pe_layer.frustum_points(K, L)
    assert pts.shape == (2, 48, 48, 128, 3) and pts.dtype == torch.float32
    # Back into each camera (float64) and through its intrinsics.
    cam = transform_points(torch.linalg.inv(L.double())[:, None, None], pts.double())
    depth = cam[..., 2]
    uv = (K.double()[:, None, None, None] @ cam[..., None]).squeeze(-1)
    uv = uv[..., :2] / uv[..., 2:]
    centres = (torch.arange(48, dtype=torch.float64) + 0.5) * 16
    # Float32 geometry: within 1e-3 px of the centres, at every depth.
    u_ref = centres.view(1, 1, 48, 1).expand_as(uv[..., 0])
    v_ref = centres.view(1, 48, 1, 1).expand_as(uv[..., 1])
    torch.testing.assert_close(uv[..., 0], u_ref, atol=1e-3, rtol=0)
    torch.testing.assert_close(uv[..., 1], v_ref, atol=1e-3, rtol=0)
    torch.testing.assert_close(depth, depth_bins().double().expand_as(depth), atol=1e-4, rtol=0)


def test_click_rays_and_encodings_match_the_token_grid(umpe: UMPE) -> None:
    K, L = cameras()
    # Clicks exactly at the centres of cells (i, j) = (0, 0), (10, 47), (30, 3).
    cells = torch.tensor([[0, 0], [10, 47], [30, 3]])
    uv = ((cells.flip(-1).float() + 0.5) * 16)[None].expand(2, -1, -1)  # (B, N, 2) as (u, v)
    rays = umpe.union_pe_layer.ray_points(uv, K, L)
    grid = umpe.union_pe_layer.frustum_points(K, L)
    torch.testing.assert_close(rays, grid[:, cells[:, 0], cells[:, 1]])
    with torch.no_grad():
        click_pe = umpe.image_prompt_pe(uv, K, L)
        token_pe = umpe.image_pe(K, L)
    assert click_pe.shape == (2, 3, 256) and click_pe.dtype == torch.float32
    expected = token_pe[:, :, cells[:, 0], cells[:, 1]].permute(0, 2, 1)
    torch.testing.assert_close(click_pe, expected, atol=1e-4, rtol=1e-4)


def test_token_and_prompt_encodings_compose_as_specified(umpe: UMPE) -> None:
    K, L = cameras()
    with torch.no_grad():
        pe = umpe.image_pe(K, L)
        sine_only = umpe.image_pe(K, L, multi_modal=False)
        ray = umpe.image_ray_pe(K, L)
    assert pe.shape == (2, 256, 48, 48) and pe.dtype == torch.float32
    sine = PositionEmbeddingSine(256, released_frequency_quirk=True).grid(48, 48)
    torch.testing.assert_close(sine_only, sine[None].expand(2, -1, -1, -1))
    torch.testing.assert_close(pe, sine_only + ray)
    # LiDAR tokens / 3D clicks: RFF + MLP of the point repeated 128 times.
    xyz = torch.tensor([[12.0, -3.0, 0.5], [40.0, 8.0, -1.2]])
    with torch.no_grad():
        out = umpe.point_pe(xyz)
        mlp = umpe.union_pe_layer.mlp_embedding(xyz.repeat(1, 128))
    rff = umpe.pts_pe_layer(xyz)
    torch.testing.assert_close(out, rff + mlp)
    torch.testing.assert_close(umpe.point_pe(xyz, multi_modal=False), rff)
    torch.testing.assert_close(umpe.point_prompt_pe(xyz), out)
    # The sine flag reaches the image encodings.
    default = UMPE(released_frequency_quirk=False)
    assert (default.image_sine_pe() - umpe.image_sine_pe()).abs().max() > 0.5


def test_batched_over_cameras_equals_one_at_a_time(umpe: UMPE) -> None:
    K, L = cameras()
    uv = torch.tensor([[[100.0, 200.0], [700.5, 3.0]], [[384.0, 384.0], [12.0, 760.0]]])
    T = torch.stack([rigid(rotation(0, 0, 0.1), (2.0, 0.5, 0)), torch.eye(4)])
    xyz = torch.randn(2, 7, 3) * 20
    with torch.no_grad():
        img = umpe.image_pe(K, L, T_rel=T)
        clicks = umpe.image_prompt_pe(uv, K, L)
        pts = umpe.point_pe(xyz, T_rel=T)
        for b in range(2):
            sl = slice(b, b + 1)
            torch.testing.assert_close(img[sl], umpe.image_pe(K[sl], L[sl], T_rel=T[b]))
            torch.testing.assert_close(clicks[sl], umpe.image_prompt_pe(uv[sl], K[sl], L[sl]))
            # Batched vs 2D matmul round differently; RFF phases of tens of radians amplify it.
            pts_b = umpe.point_pe(xyz[b], T_rel=T[b])
            torch.testing.assert_close(pts[b], pts_b, atol=1e-4, rtol=1e-4)


def test_memory_encodings_warped_by_ego_motion_equal_direct_encodings(umpe: UMPE) -> None:
    """Static scene: memory from t' warped by T_rel = P_t^-1 P_t' == encodings computed at t."""
    K, L = cameras()
    pose_past = rigid(rotation(0.01, 0.0, 0.2), (35.0, -12.0, 0.4))  # lidar -> world at t'
    pose_now = rigid(rotation(0.0, 0.015, 0.35), (42.0, -9.5, 0.45))  # lidar -> world at t
    T_rel = relative_ego_motion(pose_now, pose_past)
    torch.testing.assert_close(T_rel, torch.linalg.inv(pose_now) @ pose_past)

    # Image memory: the past cameras, expressed directly in the current LiDAR frame (via world).
    world_from_cam_past = pose_past.double() @ L.double()
    lidar_now_from_cam_past = (torch.linalg.inv(pose_now.double()) @ world_from_cam_past).float()
    with torch.no_grad():
        warped = umpe.memory_image_pe(K, L, T_rel)
        direct = umpe.image_pe(K, lidar_now_from_cam_past)
        stale = umpe.image_pe(K, L)  # not compensated
    torch.testing.assert_close(warped, direct, atol=2e-4, rtol=1e-4)
    assert (stale - direct).abs().max() > 0.1  # the motion matters: the test can fail

    # The warped frustum points are the same world points as the past ones.
    pts_past = umpe.union_pe_layer.frustum_points(K, L)
    pts_warped = umpe.union_pe_layer.frustum_points(K, L, T_rel)
    torch.testing.assert_close(
        transform_points(pose_now.double(), pts_warped.double().flatten(1, 3)),
        transform_points(pose_past.double(), pts_past.double().flatten(1, 3)),
        atol=1e-3,
        rtol=0,
    )

    # LiDAR memory: static world points observed at t' (stride-16 centroids) vs directly at t.
    g = torch.Generator().manual_seed(1)
    world = torch.rand(50, 3, generator=g, dtype=torch.float64) * torch.tensor(
        [80.0, 60.0, 4.0], dtype=torch.float64
    ) + torch.tensor([0.0, -40.0, -2.0], dtype=torch.float64)
    xyz_past = transform_points(torch.linalg.inv(pose_past.double()), world).float()
    xyz_now = transform_points(torch.linalg.inv(pose_now.double()), world).float()
    with torch.no_grad():
        warped_pts = umpe.memory_point_pe(xyz_past, T_rel)
        direct_pts = umpe.point_pe(xyz_now)
        wrong = umpe.memory_point_pe(xyz_past, torch.linalg.inv(T_rel))
    torch.testing.assert_close(warped_pts, direct_pts, atol=2e-4, rtol=1e-4)
    assert (wrong - direct_pts).abs().max() > 0.1


def test_gradients_train_the_mlp_not_the_frustum() -> None:
    torch.manual_seed(0)
    small = UMPE(num_pos_feats=32, image_size=(64, 96), num_depths=8)
    K, L = cameras()
    K = K.clone()
    K[:, :2] /= 10
    pe = small.image_pe(K, L)
    assert pe.shape == (2, 32, 4, 6)
    (pe.square().mean() + small.point_pe(torch.randn(4, 3)).mean()).backward()
    assert small.union_pe_layer.frustum.grad is None
    assert small.union_pe_layer.mlp_embedding[0].weight.grad is not None
    assert small.union_pe_layer.frustum.shape == (4, 6, 8, 4)


def test_coord_scale_scales_the_metres_entering_the_mlp() -> None:
    """``coord_scale`` s: the MLP of metres x equals the released MLP of s x (rays and points,
    folded and reference paths alike); the RFF and the sine parts are unchanged."""
    torch.manual_seed(3)
    released = UMPE(num_pos_feats=32, image_size=(64, 128), num_depths=8, depth_step=8.0).eval()
    scaled = UMPE(
        num_pos_feats=32, image_size=(64, 128), num_depths=8, depth_step=8.0, coord_scale=0.05
    ).eval()
    scaled.load_state_dict(released.state_dict())
    xyz = torch.randn(5, 3) * 20
    rays = torch.randn(4, 8, 3) * 30
    with torch.no_grad():
        torch.testing.assert_close(
            scaled.union_pe_layer.embed_points(xyz),
            released.union_pe_layer.embed_points(0.05 * xyz),
        )
        torch.testing.assert_close(
            scaled.union_pe_layer.embed_rays(rays), released.union_pe_layer.embed_rays(0.05 * rays)
        )
        assert not torch.allclose(scaled.point_pe(xyz), released.point_pe(xyz))
        torch.testing.assert_close(
            scaled.point_pe(xyz, multi_modal=False), released.point_pe(xyz, multi_modal=False)
        )
    with pytest.raises(ValueError, match="coord_scale"):
        UMPE(num_pos_feats=32, coord_scale=0.0)


def test_scaled_coordinates_keep_fresh_encodings_at_the_sine_scale() -> None:
    """Why our configs scale the metres: a freshly drawn MLP on raw metres (rays out to ~75 m, as
    sam4d_small's 32 bins) dwarfs the sine part, with one component common to every cell; scaled
    by 1/20 m it does not."""
    K, L = cameras()
    norms = {}
    for s in (1.0, 0.05):
        torch.manual_seed(0)
        u = UMPE(num_pos_feats=128, depth_step=2.4, num_depths=32, hidden_dim=256, coord_scale=s)
        with torch.no_grad():
            pe = u.image_pe(K[:1], L[:1])[0].flatten(1)  # (C, cells)
            sine = u.image_sine_pe(1)[0].flatten(1)
        norms[s] = float(pe.norm(dim=0).mean() / sine.norm(dim=0).mean())
    assert norms[1.0] > 5.0, norms
    assert norms[0.05] < 2.0, norms


def test_reset_parameters_redraws_the_mlp_only() -> None:
    """``reinit: [umpe]``: the ray / point MLP is drawn anew; the frustum and the RFF matrix
    (fixed geometry, not learned) are kept."""
    torch.manual_seed(0)
    u = UMPE(num_pos_feats=32, image_size=(64, 128), num_depths=8, depth_step=8.0)
    before = {k: v.clone() for k, v in u.state_dict().items()}
    u.reset_parameters()
    after = u.state_dict()
    for k, v in before.items():
        same = torch.equal(v, after[k])
        assert same == ("mlp_embedding" not in k), k
