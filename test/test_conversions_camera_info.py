"""CameraInfo adapter with real sensor_msgs/CameraInfo messages."""

from __future__ import annotations

import numpy as np
import pytest
from sensor_msgs.msg import CameraInfo

from sam4d_core.codecs.errors import CameraInfoError
from sam4d_ros.conversions.camera_info import CameraModelCache, camera_info_to_model

K = [1266.4, 0.0, 816.3, 0.0, 1266.4, 491.5, 0.0, 0.0, 1.0]  # nuScenes CAM_FRONT-like


def info(d=(-0.3, 0.1, 0.001, 0.0, 0.0), model="plumb_bob") -> CameraInfo:
    msg = CameraInfo()
    msg.width, msg.height = 1600, 900
    msg.distortion_model = model
    msg.k = K
    msg.d = list(d)
    msg.r = [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0]
    msg.p = [1200.0, 0, 800.0, 0, 0, 1200.0, 450.0, 0, 0, 0, 1.0, 0]
    return msg


def test_camera_info_to_model():
    cam = camera_info_to_model(info())
    np.testing.assert_allclose(cam.K, np.reshape(K, (3, 3)))
    assert cam.distortion_model == "plumb_bob" and cam.D.tolist() == [-0.3, 0.1, 0.001, 0.0, 0.0]
    assert cam.size == (1600, 900) and cam.needs_undistortion
    np.testing.assert_allclose(cam.rectified_K, [[1200, 0, 800], [0, 1200, 450], [0, 0, 1]])
    m1, m2 = cam.undistortion_maps()
    assert m1.shape == (900, 1600, 2)
    # The rectified principal point maps to the raw principal point (no tangential term there).
    fx, fy = cam.undistortion_maps(fixed_point=False)
    assert abs(fx[450, 800] - 816.3) < 0.05 and abs(fy[450, 800] - 491.5) < 0.05
    rectified = camera_info_to_model(info(d=(0.0,) * 5))
    assert not rectified.needs_undistortion


def test_binning_and_roi_from_message():
    msg = info(d=())
    msg.binning_x = msg.binning_y = 2
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 16, 0, 1584, 900
    cam = camera_info_to_model(msg)
    assert cam.size == (792, 450)
    np.testing.assert_allclose(cam.K[0], [633.2, 0.0, (816.3 - 16) / 2])


def test_cache_reuses_model_until_calibration_changes():
    cache = CameraModelCache()
    a = cache.get("front", info())
    assert cache.get("front", info()) is a
    assert cache.get("front", info(d=(0.0,) * 5)) is not a


def test_invalid_camera_info_raises():
    msg = info()
    msg.k = [0.0] * 9
    with pytest.raises(CameraInfoError, match="non-positive focal length fx=0.0"):
        camera_info_to_model(msg)
    with pytest.raises(CameraInfoError, match="'plumb_bob' needs 5 coefficients in D, got 4"):
        camera_info_to_model(info(d=(0.1, 0.1, 0, 0)))
    msg = info()
    msg.k = [float("nan")] + K[1:]
    with pytest.raises(CameraInfoError, match="K has non-finite values"):
        camera_info_to_model(msg)
