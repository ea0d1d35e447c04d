"""Boxes fitted to segmentation results: oriented 3D boxes around LiDAR points, 2D boxes of masks.

The 3D box is what a tracked object's ``TrackedObject.box_pose`` / ``box_size`` and its RViz marker
show: yaw from the bird's-eye minimum-area rectangle of the points (rotating calipers over the
convex hull, ``cv2.minAreaRect``), the vertical extent from the points' z range. No roll or pitch:
LiDAR frames are near level, and a tilted box fitted to a partial view of an object (one side of a
car) is less stable than an upright one.

Conventions: points are metres in the frame they are given in (the LiDAR frame for the node);
``size`` is (length, width, height) with length along the box's x axis, which points at ``yaw``
from the frame's x axis; length >= width, yaw in (-pi/2, pi/2] (a box is symmetric under a half
turn, so this is a unique representation). 2D boxes use pixel edges: a mask whose only pixel is
(row 5, column 7) has the box [7, 5, 8, 6] (u_min, v_min, u_max, v_max), so
``(u_max - u_min) * (v_max - v_min)`` is the box's area in pixels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

__all__ = [
    "BOX_EDGES",
    "Box2D",
    "Box3D",
    "fit_box_3d",
    "mask_box_2d",
    "yaw_to_quaternion",
]

# Corner index pairs of the 12 edges of ``Box3D.corners()`` (bottom face, top face, verticals).
BOX_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
)  # fmt: skip


def yaw_to_quaternion(yaw: float) -> np.ndarray:
    """(4,) float64 quaternion (x, y, z, w) of a rotation by ``yaw`` radians about z."""
    half = 0.5 * float(yaw)
    return np.array([0.0, 0.0, math.sin(half), math.cos(half)])


@dataclass(frozen=True)
class Box3D:
    """Upright box oriented in yaw.

    center: (3,) float64 metres. size: (3,) float64 (length, width, height) metres, >= 0.
    yaw: rotation about z in radians, in (-pi/2, pi/2].
    """

    center: np.ndarray
    size: np.ndarray
    yaw: float

    def quaternion(self) -> np.ndarray:
        """(4,) float64 (x, y, z, w) orientation of the box."""
        return yaw_to_quaternion(self.yaw)

    def corners(self) -> np.ndarray:
        """(8, 3) float64 corners: 0-3 bottom face counter-clockwise from (-l/2, -w/2), 4-7 the
        top face above them (``BOX_EDGES`` connects them)."""
        l, w, h = (0.5 * float(v) for v in self.size)
        local = np.array(
            [[-l, -w, -h], [l, -w, -h], [l, w, -h], [-l, w, -h],
             [-l, -w, h], [l, -w, h], [l, w, h], [-l, w, h]],
        )  # fmt: skip
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        return local @ rot.T + np.asarray(self.center, dtype=np.float64)


def _normalize_yaw(yaw: float) -> float:
    """Map an angle to (-pi/2, pi/2] (boxes are symmetric under a half turn)."""
    yaw = math.fmod(yaw, math.pi)
    if yaw <= -math.pi / 2:
        yaw += math.pi
    elif yaw > math.pi / 2:
        yaw -= math.pi
    return yaw


def fit_box_3d(points: np.ndarray) -> Box3D | None:
    """Upright box around points: bird's-eye minimum-area rectangle, z extent from the points.

    points: (N, 3) (or (N, >=3), extra columns ignored) finite coordinates in metres.
    Returns None for N == 0. One point gives a zero-size box at that point; collinear points a
    box of zero width along their line.
    """
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise ValueError(f"points must have shape (N, 3), got {pts.shape}")
    if pts.shape[0] == 0:
        return None
    xyz = pts[:, :3]
    if not np.isfinite(xyz).all():
        raise ValueError("points contain non-finite coordinates")
    z_lo, z_hi = float(xyz[:, 2].min()), float(xyz[:, 2].max())
    # cv2 works in float32: centre first so that points 1 km from the origin keep mm precision.
    origin = xyz[:, :2].mean(axis=0)
    xy = (xyz[:, :2] - origin).astype(np.float32)
    rect = cv2.minAreaRect(xy.reshape(-1, 1, 2))
    # Read the rectangle from its corners rather than its (w, h, angle): OpenCV changed the angle
    # convention in 4.5.1 and the corners are the same in every version.
    corners = cv2.boxPoints(rect).astype(np.float64)
    e1 = corners[1] - corners[0]
    e2 = corners[2] - corners[1]
    n1, n2 = float(np.hypot(*e1)), float(np.hypot(*e2))
    if n1 >= n2:
        length, width, direction = n1, n2, e1
    else:
        length, width, direction = n2, n1, e2
    yaw = _normalize_yaw(math.atan2(direction[1], direction[0])) if length > 0 else 0.0
    center_xy = corners.mean(axis=0) + origin
    return Box3D(
        center=np.array([center_xy[0], center_xy[1], 0.5 * (z_lo + z_hi)]),
        size=np.array([length, width, z_hi - z_lo]),
        yaw=yaw,
    )


@dataclass(frozen=True)
class Box2D:
    """Axis-aligned box of a mask in pixel edges (see the module docstring) and its pixel count.

    u_min, v_min, u_max, v_max: ints, u = column, v = row, max exclusive. area: mask pixels.
    """

    u_min: int
    v_min: int
    u_max: int
    v_max: int
    area: int


def mask_box_2d(mask: np.ndarray) -> Box2D | None:
    """Box of the non-zero pixels of an (H, W) mask; None when the mask is empty."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {m.shape}")
    if m.dtype != np.bool_:
        m = m != 0
    # Row/column projections: two reductions over the image instead of an argwhere of every pixel.
    rows = np.flatnonzero(m.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(m.any(axis=0))
    return Box2D(
        u_min=int(cols[0]),
        v_min=int(rows[0]),
        u_max=int(cols[-1]) + 1,
        v_max=int(rows[-1]) + 1,
        area=int(np.count_nonzero(m)),
    )
