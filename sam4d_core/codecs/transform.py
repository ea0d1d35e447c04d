"""Rigid transforms as ROS carries them (translation + quaternion x, y, z, w) <-> 4x4 matrices.

Also slerp and interpolation of rigid transforms (linear translation, slerp rotation: what tf2
does between two stamped samples) and validation. A transform ``T_a_b`` maps points expressed in
frame ``b`` into frame ``a`` (``p_a = T_a_b @ p_b``), the meaning of a TransformStamped with
``header.frame_id = a`` and ``child_frame_id = b``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from sam4d_core.codecs.errors import TransformError

__all__ = [
    "QUATERNION_TOLERANCE",
    "interpolate_tq",
    "interpolate_transform",
    "invert_transform",
    "matrix_to_quaternion",
    "matrix_to_tq",
    "quaternion_to_matrix",
    "slerp",
    "tq_to_matrix",
    "validate_quaternion",
    "validate_transform",
    "validate_translation",
]

# tf2 rejects a quaternion whose squared norm differs from 1 by more than 0.01 and we follow it:
# tighter breaks on messages that round-tripped through float32; looser hides real bugs.
QUATERNION_TOLERANCE = 1e-2


def _vector(values: Any, n: int, name: str) -> np.ndarray:
    try:
        v = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise TransformError(f"{name} is not numeric: {values!r}") from exc
    if v.size != n:
        raise TransformError(f"{name} must have {n} values, got {v.size}")
    if not np.all(np.isfinite(v)):
        raise TransformError(f"{name} has non-finite values: {v.tolist()}")
    return v


def validate_translation(t: Sequence[float] | np.ndarray) -> np.ndarray:
    """(3,) float64 translation; raises TransformError when non-finite or of the wrong size."""
    return _vector(t, 3, "translation")


def validate_quaternion(
    q: Sequence[float] | np.ndarray, tolerance: float = QUATERNION_TOLERANCE
) -> np.ndarray:
    """(4,) float64 unit quaternion (x, y, z, w), renormalized.

    Raises TransformError when non-finite or when | |q|^2 - 1 | > tolerance.
    """
    v = _vector(q, 4, "quaternion (x, y, z, w)")
    n2 = float(v @ v)
    if abs(n2 - 1.0) > tolerance:
        raise TransformError(
            f"quaternion (x, y, z, w) = {v.tolist()} has squared norm {n2:.6g}, not 1 "
            f"(tolerance {tolerance})"
        )
    return v / math.sqrt(n2)


def quaternion_to_matrix(q: Sequence[float] | np.ndarray) -> np.ndarray:
    """(4,) quaternion x, y, z, w -> (3, 3) float64 rotation matrix."""
    x, y, z, w = validate_quaternion(q)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    return np.array(
        [
            [1.0 - 2.0 * (yy + zz), 2.0 * (xy - wz), 2.0 * (xz + wy)],
            [2.0 * (xy + wz), 1.0 - 2.0 * (xx + zz), 2.0 * (yz - wx)],
            [2.0 * (xz - wy), 2.0 * (yz + wx), 1.0 - 2.0 * (xx + yy)],
        ]
    )


def _check_rotation(r: np.ndarray, tolerance: float) -> None:
    if not np.all(np.isfinite(r)):
        raise TransformError(f"rotation has non-finite values: {r.tolist()}")
    err = float(np.abs(r @ r.T - np.eye(3)).max())
    det = float(np.linalg.det(r))
    if err > tolerance or abs(det - 1.0) > tolerance:
        raise TransformError(
            f"matrix is not a rotation: max |R R^T - I| = {err:.3g}, det = {det:.6g} "
            f"(tolerance {tolerance})"
        )


def matrix_to_quaternion(r: np.ndarray, tolerance: float = 1e-4) -> np.ndarray:
    """(3, 3) rotation (or (4, 4) transform) -> (4,) unit quaternion x, y, z, w with w >= 0."""
    r = np.asarray(r, dtype=np.float64)
    if r.shape == (4, 4):
        r = r[:3, :3]
    if r.shape != (3, 3):
        raise TransformError(f"rotation must be (3, 3), got {r.shape}")
    _check_rotation(r, tolerance)
    # Shepperd's method: pick the largest of the four diagonal combinations for stability.
    tr = r[0, 0] + r[1, 1] + r[2, 2]
    if tr > max(r[0, 0], r[1, 1], r[2, 2]):
        s = math.sqrt(tr + 1.0) * 2.0
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    elif r[0, 0] >= r[1, 1] and r[0, 0] >= r[2, 2]:
        s = math.sqrt(1.0 + r[0, 0] - r[1, 1] - r[2, 2]) * 2.0
        q = [0.25 * s, (r[0, 1] + r[1, 0]) / s, (r[0, 2] + r[2, 0]) / s, (r[2, 1] - r[1, 2]) / s]
    elif r[1, 1] >= r[2, 2]:
        s = math.sqrt(1.0 + r[1, 1] - r[0, 0] - r[2, 2]) * 2.0
        q = [(r[0, 1] + r[1, 0]) / s, 0.25 * s, (r[1, 2] + r[2, 1]) / s, (r[0, 2] - r[2, 0]) / s]
    else:
        s = math.sqrt(1.0 + r[2, 2] - r[0, 0] - r[1, 1]) * 2.0
        q = [(r[0, 2] + r[2, 0]) / s, (r[1, 2] + r[2, 1]) / s, 0.25 * s, (r[1, 0] - r[0, 1]) / s]
    qv = np.array(q)
    qv /= np.linalg.norm(qv)
    return -qv if qv[3] < 0 else qv


def tq_to_matrix(
    translation: Sequence[float] | np.ndarray, quaternion: Sequence[float] | np.ndarray
) -> np.ndarray:
    """(3,) translation + (4,) quaternion x, y, z, w -> (4, 4) float64 homogeneous transform."""
    m = np.eye(4)
    m[:3, :3] = quaternion_to_matrix(quaternion)
    m[:3, 3] = validate_translation(translation)
    return m


def validate_transform(m: Any, tolerance: float = 1e-4) -> np.ndarray:
    """(4, 4) float64 copy of a rigid transform; raises TransformError when it is non-finite,
    its rotation part is not a rotation, or its last row is not (0, 0, 0, 1)."""
    try:
        arr = np.array(m, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TransformError(f"transform is not numeric: {m!r}") from exc
    if arr.shape != (4, 4):
        raise TransformError(f"transform must be (4, 4), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise TransformError(f"transform has non-finite values: {arr.tolist()}")
    if np.abs(arr[3] - np.array([0.0, 0.0, 0.0, 1.0])).max() > 1e-9:
        raise TransformError(f"transform's last row is {arr[3].tolist()}, not [0, 0, 0, 1]")
    _check_rotation(arr[:3, :3], tolerance)
    return arr


def matrix_to_tq(m: Any) -> tuple[np.ndarray, np.ndarray]:
    """(4, 4) rigid transform -> ((3,) translation, (4,) quaternion x, y, z, w)."""
    arr = validate_transform(m)
    return arr[:3, 3].copy(), matrix_to_quaternion(arr[:3, :3])


def invert_transform(m: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid transform (R^T, -R^T t) without a general matrix inverse."""
    m = np.asarray(m, dtype=np.float64)
    out = np.eye(4)
    rt = m[:3, :3].T
    out[:3, :3] = rt
    out[:3, 3] = -rt @ m[:3, 3]
    return out


def slerp(q0: Any, q1: Any, fraction: float) -> np.ndarray:
    """Spherical linear interpolation between unit quaternions (x, y, z, w), shortest path.

    fraction 0 gives q0, 1 gives q1 (up to sign); values outside [0, 1] extrapolate.
    """
    a = validate_quaternion(q0)
    b = validate_quaternion(q1)
    dot = float(a @ b)
    if dot < 0.0:  # q and -q are the same rotation; take the short way round
        b = -b
        dot = -dot
    # atan2 of (sin, cos) keeps theta accurate for tiny angles, where acos(dot) loses half the
    # digits; a normalized lerp there would be off by ~theta^3 (1e-8 for a 10 ms yaw step).
    sin_theta = float(np.linalg.norm(b - dot * a))
    theta = math.atan2(sin_theta, dot)
    if sin_theta < 1e-12:
        q = a + fraction * (b - a)
        return q / np.linalg.norm(q)
    q = (math.sin((1.0 - fraction) * theta) / sin_theta) * a + (
        math.sin(fraction * theta) / sin_theta
    ) * b
    return q / np.linalg.norm(q)


def interpolate_tq(
    t0: Any, q0: Any, t1: Any, q1: Any, fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Interpolate (translation, quaternion) pairs: linear translation, slerp rotation."""
    a = validate_translation(t0)
    b = validate_translation(t1)
    return a + fraction * (b - a), slerp(q0, q1, fraction)


def interpolate_transform(m0: Any, m1: Any, fraction: float) -> np.ndarray:
    """Interpolate two (4, 4) rigid transforms: linear translation, slerp rotation."""
    t0, q0 = matrix_to_tq(m0)
    t1, q1 = matrix_to_tq(m1)
    t, q = interpolate_tq(t0, q0, t1, q1, fraction)
    return tq_to_matrix(t, q)
