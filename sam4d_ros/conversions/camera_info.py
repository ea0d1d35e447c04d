"""sensor_msgs/CameraInfo -> ``CameraModel`` (intrinsics, distortion, cached undistortion maps).

Duck-typed: rclpy and rosbags CameraInfo objects both work. Since a camera publishes the same
CameraInfo with every frame, ``CameraModelCache`` keeps the model (and its undistortion maps)
until the calibration actually changes.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from sam4d_core.codecs.camera import CameraModel, camera_model_from_values

__all__ = ["CameraModelCache", "camera_info_to_model"]


def _roi(msg: Any) -> tuple[int, int, int, int] | None:
    roi = getattr(msg, "roi", None)
    if roi is None:
        return None
    return (int(roi.x_offset), int(roi.y_offset), int(roi.width), int(roi.height))


def camera_info_to_model(msg: Any) -> CameraModel:
    """Validated ``CameraModel`` of the image described by a CameraInfo (ROI and binning applied).

    Raises CameraInfoError for non-finite values, a zero focal length (uncalibrated camera) or a
    wrong number of distortion coefficients.
    """
    return camera_model_from_values(
        width=msg.width,
        height=msg.height,
        K=np.asarray(msg.k, dtype=np.float64),
        D=np.asarray(msg.d, dtype=np.float64),
        distortion_model=msg.distortion_model,
        R=np.asarray(msg.r, dtype=np.float64),
        P=np.asarray(msg.p, dtype=np.float64),
        binning_x=int(msg.binning_x),
        binning_y=int(msg.binning_y),
        roi=_roi(msg),
    )


def _key(msg: Any) -> tuple:
    roi = _roi(msg)
    return (
        int(msg.width),
        int(msg.height),
        str(msg.distortion_model),
        tuple(np.asarray(msg.k, dtype=np.float64).tolist()),
        tuple(np.asarray(msg.d, dtype=np.float64).tolist()),
        tuple(np.asarray(msg.r, dtype=np.float64).tolist()),
        tuple(np.asarray(msg.p, dtype=np.float64).tolist()),
        int(msg.binning_x),
        int(msg.binning_y),
        roi,
    )


class CameraModelCache:
    """Per-camera cache: returns the same ``CameraModel`` object (with its undistortion maps) while
    the CameraInfo content is unchanged. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[str, tuple[tuple, CameraModel]] = {}

    def get(self, camera: str, msg: Any) -> CameraModel:
        key = _key(msg)
        with self._lock:
            hit = self._models.get(camera)
            if hit is not None and hit[0] == key:
                return hit[1]
        model = camera_info_to_model(msg)
        with self._lock:
            self._models[camera] = (key, model)
        return model
