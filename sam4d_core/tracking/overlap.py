"""A prompted camera's mask carried into a camera that overlaps it.

Camera rigs overlap (the synthetic rig's ``front`` and ``front_left`` share 35 degrees): an object
a user prompts near the edge of one camera is often in the next one too, where neither the
decoder (through the shared 3D features) nor the LiDAR segment (for objects the LiDAR barely
sees: a building above its field of view, a distant tree) may give it a mask. The prompted
camera's mask, placed at the object's depth, is where the object is in the other camera: each
of its pixels' rays at that depth, projected into the other camera. With cameras a fraction of a
metre apart, a wrong depth moves it little at range (0.3 m at 50 m: 1.5 pixels at 240 px focal
length).
"""

from __future__ import annotations

import cv2
import numpy as np

from sam4d_core.tracking.reprompt import (
    CameraGeometry,
    project_points,
    rigid_inverse,
    transform_points,
)


def carry_mask(
    mask: np.ndarray, source: CameraGeometry, target: CameraGeometry, depth: float
) -> np.ndarray:
    """(H', W') bool: the (H, W) bool ``mask`` of camera ``source`` on a fronto-parallel plane
    ``depth`` metres ahead of it, seen by camera ``target`` (its size); gaps of a pixel closed."""
    h, w = target.size
    out = np.zeros((h, w), np.uint8)
    vs, us = np.nonzero(mask)
    if not len(us) or depth <= 0:
        return out.astype(bool)
    rays = (
        np.stack([us, vs, np.ones_like(us)], 1).astype(np.float64)
        @ np.linalg.inv(np.asarray(source.intrinsics, np.float64)).T
    )
    lidar = transform_points(rigid_inverse(np.asarray(source.cam_from_lidar)), rays * depth)
    uv, front = project_points(lidar, target)
    uv = np.round(uv[front]).astype(np.int64)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    out[uv[ok, 1], uv[ok, 0]] = 1
    return cv2.morphologyEx(out, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8)) > 0


def points_in_image(points: np.ndarray, camera: CameraGeometry) -> int:
    """How many of the (M, 3) LiDAR-frame ``points`` land in front of ``camera``, in its image."""
    if not len(points):
        return 0
    uv, front = project_points(points, camera)
    h, w = camera.size
    ok = front & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    return int(ok.sum())


def mask_depth(
    mask: np.ndarray, camera: CameraGeometry, points: np.ndarray, default: float
) -> float:
    """Median depth in ``camera`` of the (M, 3) LiDAR-frame ``points`` that land in its (H, W)
    bool ``mask``; ``default`` when fewer than 3 do."""
    if len(points):
        uv, front = project_points(points, camera)
        h, w = camera.size
        ok = front & (uv[:, 0] >= 0) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= 0) & (uv[:, 1] < h - 0.5)
        rows = np.flatnonzero(ok)
        inside = rows[mask[np.round(uv[rows, 1]).astype(int), np.round(uv[rows, 0]).astype(int)]]
        if len(inside) >= 3:
            z = transform_points(np.asarray(camera.cam_from_lidar), points[inside])[:, 2]
            return float(np.median(z))
    return default


__all__ = ["carry_mask", "mask_depth", "points_in_image"]
