"""LiDAR poses estimated from the scans alone with KISS-ICP (the ``kiss-icp`` package), for drives
without GPS/IMU poses.

The configuration is KISS-ICP's default as its Python API gives it (max range 100 m, voxel size
max range / 100 = 1 m, adaptive threshold), xyz only, without deskewing (a KITTI scan carries no
per-point times): the settings ``shared/data/kitti_raw_2011_09_26/poses_lidar.txt`` was made with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

__all__ = ["KISS_ICP_SETTINGS", "kiss_icp_poses"]

KISS_ICP_SETTINGS = "KISS-ICP default config (max range 100 m, voxel 1 m), no deskew"


def kiss_icp_poses(
    scans: Iterable[np.ndarray],
    total: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """(F, 4, 4) ``T_0_i`` (LiDAR i -> LiDAR 0) of consecutive (N, >=3) scans, KISS-ICP online.

    Raises ImportError with what to install when kiss-icp is missing.
    """
    try:
        from kiss_icp.config import load_config
        from kiss_icp.kiss_icp import KissICP
    except ImportError as e:
        raise ImportError(
            f"estimating poses needs the kiss-icp package (pip install kiss-icp==1.3.0): {e}"
        ) from e
    config = load_config(None)
    config.data.deskew = False
    odometry = KissICP(config)
    poses = []
    for k, scan in enumerate(scans):
        xyz = np.ascontiguousarray(np.asarray(scan)[:, :3], dtype=np.float64)
        odometry.register_frame(xyz, np.zeros(0))
        poses.append(np.array(odometry.last_pose, dtype=np.float64))
        if progress is not None:
            progress(k + 1, total or k + 1)
    return np.stack(poses) if poses else np.zeros((0, 4, 4))
