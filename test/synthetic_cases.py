"""Shared synthetic-generator cases for the test_synthetic_* files (rendered once per run)."""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np

from sam4d_core.data.synthetic import (
    CameraConfig,
    FrameRender,
    LidarConfig,
    SyntheticGenerator,
    make_config,
)


def geometry_config():
    """A short sequence with images large enough for pixel-exact checks (6 frames, 320x192)."""
    tiny = make_config("tiny")
    return dataclasses.replace(
        tiny,
        seed=3,
        num_frames=6,
        cameras=(
            CameraConfig("front", 320, 192, 90.0),
            CameraConfig("front_left", 320, 192, 90.0, position=(0.2, 0.3, -0.35), yaw_deg=55.0),
        ),
        lidar=LidarConfig(
            beams=32, columns=512, fov_up_deg=5.0, fov_down_deg=-25.0, max_range=60.0
        ),
    )


@cache
def generator(name: str) -> SyntheticGenerator:
    if name == "geometry":
        return SyntheticGenerator(geometry_config())
    return SyntheticGenerator(make_config(name))


@cache
def renders(name: str) -> tuple[FrameRender, ...]:
    gen = generator(name)
    return tuple(gen.render(i) for i in range(len(gen)))


def project(points_lidar: np.ndarray, k: np.ndarray, cam_from_lidar: np.ndarray):
    """Pixel (u, v) (rounded, int64) and optical-axis depth z of (N, 3) LiDAR-frame points."""
    pc = points_lidar.astype(np.float64) @ cam_from_lidar[:3, :3].T + cam_from_lidar[:3, 3]
    z = pc[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u = k[0, 0] * pc[:, 0] / z + k[0, 2]
        v = k[1, 1] * pc[:, 1] / z + k[1, 2]
    u = np.rint(np.where(z > 0, u, -1)).astype(np.int64)
    v = np.rint(np.where(z > 0, v, -1)).astype(np.int64)
    return u, v, z


def mask_agreement(
    render: FrameRender, cam_from_lidar: dict[str, np.ndarray] | None = None
) -> tuple[int, int]:
    """(points inside their own object's mask, points checked) over all cameras of a frame.

    A point is checked when it belongs to an object, projects in front of the camera inside the
    image, and is visible and unoccluded there: the camera's rendered depth at its pixel is not
    smaller than the point's depth minus a tolerance (nothing nearer covers it). The depth map
    comes from the renderer, the projection only from the recorded calibration (K, cam_from_lidar),
    optionally replaced per camera to test the test.
    """
    frame = render.frame
    xyz = frame.points[:, :3]
    labels = frame.point_labels
    inside = checked = 0
    for name, cam in frame.cameras.items():
        extr = cam.cam_from_lidar if cam_from_lidar is None else cam_from_lidar[name]
        u, v, z = project(xyz, cam.intrinsics, extr)
        h, w = cam.instance_mask.shape
        ok = (labels > 0) & (z > 0.3) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        idx = np.flatnonzero(ok)
        depth = render.cameras[name].depth[v[idx], u[idx]]
        # Tolerance: LiDAR range noise (5 sigma) plus the depth slope of a slanted surface.
        unoccluded = depth >= z[idx] - (0.1 + 0.01 * z[idx])
        idx = idx[unoccluded]
        checked += len(idx)
        inside += int((cam.instance_mask[v[idx], u[idx]] == labels[idx]).sum())
    return inside, checked


def camera_seen(points: np.ndarray, cameras) -> np.ndarray:
    """(N,) bool: which of (N, 3+) LiDAR-frame points a camera sees (``cameras``: the tracker's
    :class:`~sam4d_core.tracking.reprompt.CameraGeometry` of the frame): a click there lets the
    clicked part's segment guide that camera."""
    from sam4d_core.tracking.reprompt import project_points

    xyz = np.asarray(points, np.float64)[:, :3]
    seen = np.zeros(len(xyz), bool)
    for cam in cameras:
        uv, front = project_points(xyz, cam)
        h, w = cam.size
        inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= -0.5)
        seen |= front & inside & (uv[:, 1] < h - 0.5)
    return seen
