"""Pinhole camera intrinsics and distortion as ROS CameraInfo describes them, plus undistortion.

``CameraModel`` holds K, the distortion model and its coefficients, R and P, validated, and builds
(and caches) OpenCV rectification maps for the three ROS distortion models: ``plumb_bob``
(k1, k2, t1, t2, k3), ``rational_polynomial`` (k1, k2, t1, t2, k3, k4, k5, k6) and ``equidistant``
(fisheye k1..k4). Following image_proc, the rectified image uses the projection ``P[:, :3]`` (the
camera matrix chosen at calibration) and the rectification rotation ``R``; a CameraInfo whose P is
all zeros falls back to K. ROI and binning are applied to the intrinsics, so the model describes
the image actually received.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from sam4d_core.codecs.errors import CameraInfoError

__all__ = [
    "DISTORTION_COEFFICIENTS",
    "CameraModel",
    "camera_model_from_values",
]

# Number of coefficients each ROS distortion model takes (sensor_msgs/distortion_models.hpp).
DISTORTION_COEFFICIENTS: dict[str, int] = {
    "plumb_bob": 5,
    "rational_polynomial": 8,
    "equidistant": 4,
}
_MAX_SIZE = 1 << 15


@dataclass(eq=False)  # field-wise == on numpy arrays is ambiguous; compare K, D, ... explicitly
class CameraModel:
    """Intrinsics of the received image (after ROI and binning).

    width, height: image size in pixels.
    K: (3, 3) float64 camera matrix. D: (n,) float64 distortion coefficients.
    distortion_model: "plumb_bob", "rational_polynomial", "equidistant" or "" (none).
    R: (3, 3) float64 rectification rotation. P: (3, 4) float64 projection of the rectified image.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray
    distortion_model: str
    R: np.ndarray
    P: np.ndarray
    _maps: dict[Any, tuple[np.ndarray, np.ndarray]] = field(
        default_factory=dict, repr=False, compare=False
    )
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), OpenCV's order."""
        return self.width, self.height

    @property
    def rectified_K(self) -> np.ndarray:
        """(3, 3) camera matrix of the rectified image: P[:, :3], or K when P is unset."""
        if not np.any(self.P[:, :3]):
            return self.K
        return self.P[:, :3]

    @property
    def needs_undistortion(self) -> bool:
        """True when the image is distorted (any non-zero coefficient) or R is not identity."""
        return bool(np.any(self.D != 0.0)) or not np.allclose(self.R, np.eye(3), atol=1e-12)

    def undistortion_maps(self, fixed_point: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """OpenCV remap tables (cached) from the raw image to the rectified one.

        fixed_point: CV_16SC2 maps (faster remap, what image_proc uses) instead of two CV_32FC1.
        Raises CameraInfoError when the distortion model is unknown.
        """
        key = bool(fixed_point)
        with self._lock:
            cached = self._maps.get(key)
            if cached is not None:
                return cached
        m1type = cv2.CV_16SC2 if fixed_point else cv2.CV_32FC1
        new_k = self.rectified_K
        d = self.D
        model = self.distortion_model
        if model == "equidistant":
            coeffs = d if d.size else np.zeros(4)
            maps = cv2.fisheye.initUndistortRectifyMap(
                self.K, coeffs.reshape(4, 1), self.R, new_k, self.size, m1type
            )
        elif model in ("plumb_bob", "rational_polynomial") or not np.any(d):
            maps = cv2.initUndistortRectifyMap(
                self.K, d if d.size else None, self.R, new_k, self.size, m1type
            )
        else:
            raise CameraInfoError(
                f"distortion_model {model!r} is not supported for undistortion "
                f"(supported: {', '.join(DISTORTION_COEFFICIENTS)})"
            )
        maps = (maps[0], maps[1])
        with self._lock:
            self._maps[key] = maps
        return maps

    def undistort(self, image: np.ndarray, interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
        """Rectify an (H, W) or (H, W, C) image; returns it unchanged when no undistortion is
        needed."""
        image = np.asarray(image)
        if image.shape[:2] != (self.height, self.width):
            raise CameraInfoError(
                f"image size {image.shape[1]}x{image.shape[0]} does not match CameraInfo "
                f"{self.width}x{self.height}"
            )
        if not self.needs_undistortion:
            return image
        m1, m2 = self.undistortion_maps()
        return cv2.remap(np.ascontiguousarray(image), m1, m2, interpolation)


def _matrix(values: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CameraInfoError(f"{name} is not numeric: {values!r}") from exc
    if arr.size != shape[0] * shape[1]:
        raise CameraInfoError(f"{name} has {arr.size} values, expected {shape[0] * shape[1]}")
    arr = arr.reshape(shape)
    if not np.all(np.isfinite(arr)):
        raise CameraInfoError(f"{name} has non-finite values: {arr.reshape(-1).tolist()}")
    return arr


def _as_int(value: Any, name: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CameraInfoError(f"{name} must be an integer, got {value!r}")
    if not lo <= int(value) <= hi:
        raise CameraInfoError(f"{name} {int(value)} is out of range [{lo}, {hi}]")
    return int(value)


def camera_model_from_values(
    width: int,
    height: int,
    K: Sequence[float] | np.ndarray,
    D: Sequence[float] | np.ndarray,
    distortion_model: str,
    R: Sequence[float] | np.ndarray | None = None,
    P: Sequence[float] | np.ndarray | None = None,
    binning_x: int = 0,
    binning_y: int = 0,
    roi: tuple[int, int, int, int] | None = None,
) -> CameraModel:
    """Validate CameraInfo values and build the model of the received image.

    K: 9 values row-major; D: coefficients; R: 9 values (None = identity); P: 12 values (None or
    all zeros = derived from K). binning_x/y: 0 or 1 = none. roi: (x_offset, y_offset, width,
    height) in full-resolution pixels, or None / all zeros = full image.
    Raises CameraInfoError for non-finite values, non-positive focal lengths, a malformed K or a
    coefficient count that does not match the distortion model.
    """
    width = _as_int(width, "width", 0, _MAX_SIZE)
    height = _as_int(height, "height", 0, _MAX_SIZE)
    k = _matrix(K, (3, 3), "K")
    if k[0, 0] <= 0.0 or k[1, 1] <= 0.0:
        raise CameraInfoError(
            f"K has non-positive focal length fx={k[0, 0]}, fy={k[1, 1]} (uncalibrated camera?)"
        )
    if k[1, 0] != 0.0 or k[2, 0] != 0.0 or k[2, 1] != 0.0 or abs(k[2, 2] - 1.0) > 1e-9:
        raise CameraInfoError(f"K is not an upper-triangular camera matrix: {k.tolist()}")
    try:
        d = np.asarray(D, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise CameraInfoError(f"D is not numeric: {D!r}") from exc
    if not np.all(np.isfinite(d)):
        raise CameraInfoError(f"D has non-finite values: {d.tolist()}")
    if not isinstance(distortion_model, str):
        raise CameraInfoError(f"distortion_model must be a string, got {distortion_model!r}")
    model = distortion_model.strip()
    expected = DISTORTION_COEFFICIENTS.get(model)
    # An empty D is how uncalibrated-distortion / already rectified cameras are published.
    if expected is not None and d.size not in (0, expected):
        raise CameraInfoError(
            f"distortion_model {model!r} needs {expected} coefficients in D, got {d.size}"
        )
    if expected is None and np.any(d):
        raise CameraInfoError(
            f"unknown distortion_model {model!r} with non-zero D {d.tolist()} "
            f"(supported: {', '.join(DISTORTION_COEFFICIENTS)})"
        )
    r = np.eye(3) if R is None else _matrix(R, (3, 3), "R")
    if not np.any(r):
        r = np.eye(3)  # all-zero R: unset, as some drivers publish it
    elif not np.allclose(r @ r.T, np.eye(3), atol=1e-5) or np.linalg.det(r) < 0:
        raise CameraInfoError(f"R is not a rotation matrix: {r.tolist()}")
    p = np.zeros((3, 4)) if P is None else _matrix(P, (3, 4), "P")
    if np.any(p) and (p[0, 0] <= 0.0 or p[1, 1] <= 0.0):
        raise CameraInfoError(f"P has non-positive focal length fx={p[0, 0]}, fy={p[1, 1]}")

    # ROI, then binning, act on pixel coordinates only: shift, then scale the principal point and
    # focal lengths of both K and P. Distortion acts on normalized coordinates and is unchanged.
    bx = _as_int(binning_x, "binning_x", 0, 1 << 10) or 1
    by = _as_int(binning_y, "binning_y", 0, 1 << 10) or 1
    k = k.copy()
    p = p.copy()
    if roi is not None and any(roi):
        x_off = _as_int(roi[0], "roi.x_offset", 0, _MAX_SIZE)
        y_off = _as_int(roi[1], "roi.y_offset", 0, _MAX_SIZE)
        roi_w = _as_int(roi[2], "roi.width", 0, _MAX_SIZE) or width - x_off
        roi_h = _as_int(roi[3], "roi.height", 0, _MAX_SIZE) or height - y_off
        if x_off + roi_w > width or y_off + roi_h > height:
            raise CameraInfoError(
                f"roi (x_offset {x_off}, y_offset {y_off}, width {roi_w}, height {roi_h}) "
                f"exceeds the {width}x{height} image"
            )
        width, height = roi_w, roi_h
        k[0, 2] -= x_off
        k[1, 2] -= y_off
        if np.any(p):
            p[0, 2] -= x_off
            p[1, 2] -= y_off
    if bx != 1 or by != 1:
        scale = np.diag([1.0 / bx, 1.0 / by, 1.0])
        k = scale @ k
        p = scale @ p
        width, height = width // bx, height // by
    return CameraModel(
        width=width,
        height=height,
        K=k,
        D=d,
        distortion_model=model,
        R=r,
        P=p,
    )
