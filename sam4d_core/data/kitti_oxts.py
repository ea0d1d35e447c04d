"""KITTI raw OXTS (GPS/IMU) packets and the poses the KITTI devkit computes from them.

A synced KITTI raw drive holds one packet per frame in ``oxts/data/%010d.txt``: one line of 30
numbers whose names ``oxts/dataformat.txt`` lists (``lat``, ``lon``, ``alt``, ``roll``, ``pitch``,
``yaw``, velocities, accelerations, ...). The devkit (``convertOxtsToPose.m``, pykitti's
``pose_from_oxts_packet``) turns them into IMU poses:

- a Mercator projection with the scale ``cos(lat_0)`` of the first packet's latitude:
  ``x = s * lon * pi * R / 180``, ``y = s * R * ln(tan((90 + lat) * pi / 360))``, ``z = alt``,
  with the earth radius ``R = 6378137 m``;
- the rotation ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``;
- every pose relative to the first one: ``T_imu0_imui = inv(M_0) @ M_i``.

The LiDAR poses follow with the IMU -> Velodyne calibration ``T_velo_imu``
(``calib_imu_to_velo.txt``): ``T_velo0_veloi = T_velo_imu @ T_imu0_imui @ inv(T_velo_imu)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam4d_core.data.errors import DatasetError

__all__ = [
    "EARTH_RADIUS_M",
    "OXTS_FIELDS",
    "imu_poses_from_oxts",
    "lidar_poses_from_oxts",
    "mercator_from_latlon",
    "oxts_packet_from_pose",
    "read_oxts_fields",
    "read_oxts_packets",
]

EARTH_RADIUS_M = 6378137.0

# The 30 fields of a packet, in the order of KITTI's dataformat.txt.
OXTS_FIELDS: tuple[str, ...] = (
    "lat", "lon", "alt", "roll", "pitch", "yaw", "vn", "ve", "vf", "vl", "vu",
    "ax", "ay", "az", "af", "al", "au", "wx", "wy", "wz", "wf", "wl", "wu",
    "pos_accuracy", "vel_accuracy", "navstat", "numsats", "posmode", "velmode", "orimode",
)  # fmt: skip
_POSE_FIELDS = ("lat", "lon", "alt", "roll", "pitch", "yaw")


def read_oxts_fields(path: Path) -> tuple[str, ...]:
    """Field names from ``dataformat.txt`` (lines ``name: description``), in packet order."""
    if not path.is_file():
        raise DatasetError("OXTS data format file does not exist", path)
    names = []
    for line in path.read_text().splitlines():
        if ":" in line:
            names.append(line.split(":", 1)[0].strip())
    missing = [f for f in _POSE_FIELDS if f not in names]
    if missing:
        raise DatasetError(f"no field(s) {missing} (expected KITTI's OXTS format)", path)
    return tuple(names)


def read_oxts_packets(
    folder: Path, indices: Sequence[int], fields: Sequence[str] = OXTS_FIELDS
) -> np.ndarray:
    """(F, 6) lat (deg), lon (deg), alt (m), roll, pitch, yaw (rad) of the packets
    ``folder/%010d.txt`` of ``indices``."""
    col = [list(fields).index(f) for f in _POSE_FIELDS]
    out = np.zeros((len(indices), 6), dtype=np.float64)
    for k, i in enumerate(indices):
        path = folder / f"{i:010d}.txt"
        if not path.is_file():
            raise DatasetError("OXTS packet does not exist", path)
        try:
            v = np.array([float(x) for x in path.read_text().split()], dtype=np.float64)
        except ValueError:
            raise DatasetError("OXTS packet is not numbers", path) from None
        if v.size != len(fields):
            raise DatasetError(f"{v.size} numbers, dataformat.txt names {len(fields)}", path)
        out[k] = v[col]
    return out


def mercator_from_latlon(lat: np.ndarray, lon: np.ndarray, scale: float) -> np.ndarray:
    """(F, 2) Mercator x, y in metres (the devkit's ``latlonToMercator``)."""
    x = scale * np.asarray(lon) * np.pi * EARTH_RADIUS_M / 180.0
    y = scale * EARTH_RADIUS_M * np.log(np.tan((90.0 + np.asarray(lat)) * np.pi / 360.0))
    return np.stack([x, y], axis=-1)


def _rotation(roll: float, pitch: float, yaw: float) -> np.ndarray:
    cx, sx = np.cos(roll), np.sin(roll)
    cy, sy = np.cos(pitch), np.sin(pitch)
    cz, sz = np.cos(yaw), np.sin(yaw)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def imu_poses_from_oxts(packets: np.ndarray) -> np.ndarray:
    """(F, 4, 4) ``T_imu0_imui`` from (F, 6) packets (lat, lon, alt, roll, pitch, yaw): the
    devkit's ``convertOxtsToPose`` (scale from the first packet's latitude)."""
    packets = np.asarray(packets, dtype=np.float64)
    if len(packets) == 0:
        return np.zeros((0, 4, 4))
    scale = float(np.cos(packets[0, 0] * np.pi / 180.0))
    xy = mercator_from_latlon(packets[:, 0], packets[:, 1], scale)
    poses = np.tile(np.eye(4), (len(packets), 1, 1))
    for k, p in enumerate(packets):
        poses[k, :3, :3] = _rotation(p[3], p[4], p[5])
        poses[k, :3, 3] = (xy[k, 0], xy[k, 1], p[2])
    return np.linalg.inv(poses[0]) @ poses


def lidar_poses_from_oxts(packets: np.ndarray, velo_from_imu: np.ndarray) -> np.ndarray:
    """(F, 4, 4) ``T_velo0_veloi`` (LiDAR i -> LiDAR 0) from the packets and ``T_velo_imu``."""
    imu = imu_poses_from_oxts(packets)
    return velo_from_imu @ imu @ np.linalg.inv(velo_from_imu)


def oxts_packet_from_pose(world_from_imu: np.ndarray, scale: float) -> np.ndarray:
    """(6,) lat, lon, alt, roll, pitch, yaw of an absolute IMU pose in the Mercator frame of
    ``scale``: the inverse of the devkit's conversion (for writing test drives)."""
    r = world_from_imu[:3, :3]
    pitch = float(np.arcsin(-np.clip(r[2, 0], -1.0, 1.0)))
    roll = float(np.arctan2(r[2, 1], r[2, 2]))
    yaw = float(np.arctan2(r[1, 0], r[0, 0]))
    x, y, alt = world_from_imu[:3, 3]
    lon = x * 180.0 / (scale * np.pi * EARTH_RADIUS_M)
    lat = 360.0 / np.pi * np.arctan(np.exp(y / (scale * EARTH_RADIUS_M))) - 90.0
    return np.array([lat, lon, alt, roll, pitch, yaw])
