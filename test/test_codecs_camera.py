"""Camera model codec: undistortion maps checked against the distortion formulas written out by
hand (plumb_bob, rational_polynomial, equidistant), ROI/binning, and validation errors."""

from __future__ import annotations

import numpy as np
import pytest

from sam4d_core.codecs.camera import camera_model_from_values
from sam4d_core.codecs.errors import CameraInfoError

K = [500.0, 0.0, 320.0, 0.0, 510.0, 240.0, 0.0, 0.0, 1.0]


def distort(model: str, d: np.ndarray, x: float, y: float) -> tuple[float, float]:
    """Normalized undistorted -> normalized distorted coordinates (ROS / OpenCV models)."""
    if model == "equidistant":
        r = np.hypot(x, y)
        theta = np.arctan(r)
        k1, k2, k3, k4 = d
        theta_d = theta * (1 + k1 * theta**2 + k2 * theta**4 + k3 * theta**6 + k4 * theta**8)
        scale = theta_d / r if r > 0 else 1.0
        return x * scale, y * scale
    k1, k2, p1, p2, k3 = d[:5]
    k4, k5, k6 = d[5:8] if len(d) == 8 else (0.0, 0.0, 0.0)
    r2 = x * x + y * y
    radial = (1 + k1 * r2 + k2 * r2**2 + k3 * r2**3) / (1 + k4 * r2 + k5 * r2**2 + k6 * r2**3)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


@pytest.mark.parametrize(
    ("model", "d"),
    [
        ("plumb_bob", [-0.28, 0.07, 0.001, -0.0005, 0.01]),
        ("rational_polynomial", [0.5, -0.1, 0.0007, 0.0003, 0.02, 0.8, -0.05, 0.03]),
        ("equidistant", [-0.01, 0.02, -0.005, 0.001]),
    ],
)
def test_maps_follow_distortion_formula(model, d):
    p = [450.0, 0.0, 330.0, 0.0, 0.0, 455.0, 235.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    cam = camera_model_from_values(640, 480, K, d, model, None, p)
    assert cam.needs_undistortion
    mx, my = cam.undistortion_maps(fixed_point=False)
    assert mx.shape == (480, 640)
    d = np.asarray(d)
    for u, v in [(0, 0), (100, 400), (320, 240), (600, 50), (639, 479)]:
        # Rectified pixel -> normalized ray via P, distorted with the model, projected with K.
        x, y = (u - 330.0) / 450.0, (v - 235.0) / 455.0
        xd, yd = distort(model, d, x, y)
        assert abs(mx[v, u] - (500.0 * xd + 320.0)) < 0.05
        assert abs(my[v, u] - (510.0 * yd + 240.0)) < 0.05
    assert cam.undistortion_maps() is cam.undistortion_maps()  # cached
    image = np.random.default_rng(0).integers(0, 255, (480, 640, 3), dtype=np.uint8)
    assert cam.undistort(image).shape == image.shape


def test_no_distortion_needs_nothing():
    cam = camera_model_from_values(640, 480, K, [0.0] * 5, "plumb_bob")
    assert not cam.needs_undistortion
    image = np.zeros((480, 640), np.uint8)
    assert cam.undistort(image) is image
    assert np.array_equal(cam.rectified_K, cam.K)  # P unset -> K
    empty = camera_model_from_values(640, 480, K, [], "")
    assert not empty.needs_undistortion
    with pytest.raises(
        CameraInfoError, match="image size 10x480 does not match CameraInfo 640x480"
    ):
        cam.undistort(np.zeros((480, 10), np.uint8))


def test_roi_and_binning_adjust_intrinsics():
    p = [500.0, 0.0, 320.0, 0.0, 0.0, 510.0, 240.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    cam = camera_model_from_values(640, 480, K, [], "", None, p, 2, 2, (100, 40, 400, 300))
    assert cam.size == (200, 150)
    np.testing.assert_allclose(cam.K, [[250.0, 0, 110.0], [0, 255.0, 100.0], [0, 0, 1]])
    np.testing.assert_allclose(cam.P[:, :3], cam.K)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(K=[0.0] * 9), r"K has non-positive focal length fx=0.0, fy=0.0"),
        (dict(K=[np.nan, 0, 1, 0, 1, 1, 0, 0, 1]), "K has non-finite values"),
        (dict(K=[1.0] * 8), "K has 8 values, expected 9"),
        (dict(K=[1, 0, 1, 0, 1, 1, 0, 0, 2.0]), "K is not an upper-triangular camera matrix"),
        (dict(D=[0.1] * 4), "distortion_model 'plumb_bob' needs 5 coefficients in D, got 4"),
        (
            dict(distortion_model="rational_polynomial", D=[0.1] * 5),
            "'rational_polynomial' needs 8 coefficients in D, got 5",
        ),
        (dict(distortion_model="equidistant", D=[0.1] * 5), "'equidistant' needs 4 coefficients"),
        (dict(distortion_model="kb8", D=[0.1] * 8), "unknown distortion_model 'kb8' with non-zero"),
        (dict(D=[0.1, np.inf, 0, 0, 0]), "D has non-finite values"),
        (dict(R=[2.0, 0, 0, 0, 1, 0, 0, 0, 1]), "R is not a rotation matrix"),
        (dict(P=[0.0] * 11 + [1.0]), "P has non-positive focal length"),
        (dict(width=-1), "width -1 is out of range"),
        (dict(roi=(600, 0, 100, 10)), r"roi \(x_offset 600, .*\) exceeds the 640x480 image"),
    ],
)
def test_invalid_camera_info_raises(kwargs, message):
    args = dict(width=640, height=480, K=K, D=[0.0] * 5, distortion_model="plumb_bob")
    args.update(kwargs)
    with pytest.raises(CameraInfoError, match=message):
        camera_model_from_values(**args)
