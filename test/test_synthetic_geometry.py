"""Geometry of the synthetic generator: LiDAR vs camera masks, ego poses, object trajectories."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_cases import generator, mask_agreement, renders

from sam4d_core.data.synthetic.materials import SEMANTIC_INDEX
from sam4d_core.data.synthetic.scene import rot_zyx

NOISE_TOL = 0.1  # 5 sigma of the 2 cm range noise


def _world_points(render) -> np.ndarray:
    f = render.frame
    xyz = f.points[:, :3].astype(np.float64)
    pose = f.world_from_lidar
    return xyz @ pose[:3, :3].T + pose[:3, 3]


def _surface_distance(obj, pts_world: np.ndarray, t_rel: float) -> np.ndarray:
    rot, pos = obj.pose_at(t_rel)
    local = (pts_world - pos) @ rot
    return np.min([p.surface_distance(local) for p in obj.model.primitives], axis=0)


def test_lidar_points_fall_inside_their_object_masks():
    total_in = total = 0
    for r in renders("geometry"):
        inside, checked = mask_agreement(r)
        assert checked > 300, f"frame {r.frame.index}: only {checked} object points checked"
        assert inside / checked >= 0.95, f"frame {r.frame.index}: {inside}/{checked}"
        total_in += inside
        total += checked
    assert total_in / total >= 0.97


@pytest.mark.parametrize("kind", ["yaw", "shift"])
def test_mask_check_detects_a_wrong_calibration(kind):
    # The check must fail when the calibration is off: 2 deg of yaw or 0.3 m of translation.
    r = renders("geometry")[0]
    bad = {}
    for name, cam in r.frame.cameras.items():
        t = cam.cam_from_lidar.copy()
        if kind == "yaw":
            t[:3, :3] = rot_zyx(0.0, np.deg2rad(2.0)) @ t[:3, :3]  # about the camera's y (down)
        else:
            t[:3, 3] += [0.3, 0.0, 0.0]
        bad[name] = t
    inside, checked = mask_agreement(r, bad)
    assert inside / checked < 0.9


def test_static_object_points_stay_on_their_surfaces_in_world():
    gen = generator("geometry")
    frames = renders("geometry")
    near = total = 0
    wrong_pose_near = 0
    for r in frames:
        world = _world_points(r)
        labels = r.frame.point_labels
        # Negative control: the same points mapped with a pose whose yaw is off by 1 degree.
        wrong = r.frame.world_from_lidar.copy()
        wrong[:3, :3] = rot_zyx(np.deg2rad(1.0)) @ wrong[:3, :3]
        xyz = r.frame.points[:, :3].astype(np.float64)
        world_wrong = xyz @ wrong[:3, :3].T + wrong[:3, 3]
        for oid in np.unique(labels[labels > 0]):
            obj = gen.scene.object_by_id(int(oid))
            if not obj.is_static:
                continue
            sel = labels == oid
            d = _surface_distance(obj, world[sel], 0.0)
            near += int((d <= NOISE_TOL).sum())
            total += len(d)
            wrong_pose_near += int(
                (_surface_distance(obj, world_wrong[sel], 0.0) <= NOISE_TOL).sum()
            )
    assert total > 2000
    assert near / total >= 0.99
    assert wrong_pose_near / total < 0.5


def test_pole_points_do_not_drift_across_frames():
    gen = generator("geometry")
    frames = renders("geometry")

    def pole_centroids(pose_of) -> dict[int, np.ndarray]:
        centroids: dict[int, list[np.ndarray]] = {}
        for i, r in enumerate(frames):
            pose = pose_of(i)
            world = r.frame.points[:, :3].astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]
            labels = r.frame.point_labels
            for oid in np.unique(labels[labels > 0]):
                if gen.scene.object_by_id(int(oid)).semantic != "pole":
                    continue
                # The shaft only (below the arm): the centroid must not depend on what is visible.
                sel = (labels == oid) & (world[:, 2] < 5.0)
                if sel.sum() >= 5:
                    centroids.setdefault(int(oid), []).append(world[sel, :2].mean(axis=0))
        return {k: np.array(v) for k, v in centroids.items() if len(v) >= 3}

    def spread(c: np.ndarray) -> float:
        return float(np.linalg.norm(c - c.mean(axis=0), axis=1).max())

    tracked = pole_centroids(lambda i: frames[i].frame.world_from_lidar)
    assert tracked, "no pole seen in 3 frames"
    for oid, c in tracked.items():
        assert spread(c) < 0.15, f"pole {oid} centroid moves by {spread(c):.3f} m"
        _, pos = gen.scene.object_by_id(oid).pose_at(0.0)
        assert np.linalg.norm(c.mean(axis=0) - pos[:2]) < 0.2
    # Negative control: with every pose taken from the first frame the poles drift with the ego.
    frozen = pole_centroids(lambda i: frames[0].frame.world_from_lidar)
    assert max(spread(c) for c in frozen.values()) > 1.0


def test_moving_object_points_follow_their_trajectories():
    gen = generator("geometry")
    near = total = 0
    for r in renders("geometry"):
        world = _world_points(r)
        labels = r.frame.point_labels
        t_rel = gen.relative_time(r.frame.index)
        for oid in np.unique(labels[labels > 0]):
            obj = gen.scene.object_by_id(int(oid))
            if obj.is_static:
                continue
            d = _surface_distance(obj, world[labels == oid], t_rel)
            near += int((d <= NOISE_TOL).sum())
            total += len(d)
    assert total > 100
    assert near / total >= 0.99


def test_ground_points_lie_on_the_ground_plane():
    gen = generator("geometry")
    curb = gen.config.scene.curb_height
    for r in renders("geometry"):
        z = _world_points(r)[:, 2]
        sem = r.lidar.semantic
        road = np.isin(sem, [SEMANTIC_INDEX["road"], SEMANTIC_INDEX["lane_marking"]])
        raised = np.isin(sem, [SEMANTIC_INDEX["sidewalk"], SEMANTIC_INDEX["terrain"]])
        assert road.sum() > 100 and raised.sum() > 10
        assert np.quantile(np.abs(z[road]), 0.99) < NOISE_TOL
        assert np.quantile(np.abs(z[raised] - curb), 0.99) < NOISE_TOL
        assert (r.frame.point_labels[road | raised] == 0).all()


def test_ego_motion_is_a_plausible_drive():
    gen = generator("geometry")
    poses = np.stack([r.frame.world_from_lidar for r in renders("geometry")])
    dt = 1.0 / gen.config.rate_hz
    speed = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1) / dt
    assert ((speed > 4.5) & (speed < 12.5)).all(), speed
    for p in poses:
        assert np.allclose(p[:3, :3] @ p[:3, :3].T, np.eye(3), atol=1e-12)
        assert np.isclose(np.linalg.det(p[:3, :3]), 1.0)
        assert p[2, 2] > np.cos(np.deg2rad(2.0))  # nearly level
    yaw = np.unwrap(np.arctan2(poses[:, 1, 0], poses[:, 0, 0]))
    assert np.abs(np.diff(yaw) / dt).max() < 0.3  # gentle turns (rad/s)
    assert np.allclose(poses[:, 2, 3], gen.config.lidar.mount_height)
