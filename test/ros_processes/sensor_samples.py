"""Deterministic sensor data shared by a publisher process and the test that checks what arrives.

Both sides rebuild the same arrays from the same seed, so the test compares the received
messages, converted back to numpy, with arrays it never received over DDS.
"""

from __future__ import annotations

import numpy as np

SEED = 20261121
BASE_STAMP_NS = 1_000 * 1_000_000_000  # sensor stamps start at t = 1000 s
TF_PERIOD_NS = 50_000_000
CAMERA_K = np.array([[410.5, 0.0, 31.25], [0.0, 405.0, 23.75], [0.0, 0.0, 1.0]])
CAMERA_D = np.array([-0.21, 0.043, 0.0012, -0.0007, 0.0])


def cloud() -> np.ndarray:
    """Organized (16, 64) cloud, padded driver-like layout, NaN returns (is_dense false)."""
    rng = np.random.default_rng(SEED)
    dtype = np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "ring", "time"],
            "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
            "offsets": [0, 4, 8, 16, 20, 24],
            "itemsize": 32,
        }
    )
    arr = np.zeros((16, 64), dtype=dtype)
    for name in ("x", "y", "z"):
        arr[name] = rng.normal(0.0, 20.0, (16, 64)).astype(np.float32)
    arr["intensity"] = rng.uniform(0, 255, (16, 64)).astype(np.float32)
    arr["ring"] = np.arange(16, dtype=np.uint16)[:, None]
    arr["time"] = np.linspace(0.0, 0.1, 64, dtype=np.float32)[None, :]
    dropped = rng.uniform(size=(16, 64)) < 0.1
    for name in ("x", "y", "z"):
        arr[name][dropped] = np.nan
    return arr


def rgb_image() -> np.ndarray:
    """(48, 64, 3) uint8 RGB noise (incompressible: catches any byte shuffling)."""
    return np.random.default_rng(SEED + 1).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def smooth_image() -> np.ndarray:
    """(48, 64, 3) uint8 RGB gradients: what JPEG is made for, so a lossy round trip stays close."""
    v, u = np.mgrid[0:48, 0:64].astype(np.float64)
    return np.stack([u * 4.0, v * 5.0, 128 + 60 * np.sin(u / 9.0)], axis=-1).astype(np.uint8)


def depth_image() -> np.ndarray:
    """(48, 64) uint16 (mono16 / 16UC1 path)."""
    return np.random.default_rng(SEED + 2).integers(0, 65536, (48, 64), dtype=np.uint16)


def moving_pose(stamp_ns: int) -> np.ndarray:
    """odom <- base_link at ``stamp_ns``: 2 m/s along x and a yaw rate of 0.3 rad/s.

    Both are linear in time, so an interpolated lookup between two samples must equal this
    function at the looked-up time exactly (up to float rounding).
    """
    t = (stamp_ns - BASE_STAMP_NS) * 1e-9
    yaw = 0.3 * t
    m = np.eye(4)
    m[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    m[:3, 3] = [2.0 * t, 0.0, 0.5]
    return m


def lidar_mount() -> np.ndarray:
    """base_link <- lidar (static): 1.8 m up, 0.3 m forward, rolled 2 degrees."""
    a = np.deg2rad(2.0)
    m = np.eye(4)
    m[1:3, 1:3] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    m[:3, 3] = [0.3, 0.0, 1.8]
    return m
