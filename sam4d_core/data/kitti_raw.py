"""Reader for a KITTI raw drive in the layout of ``shared/data/kitti_raw_2011_09_26``.

Layout (frame ``i`` is line ``i`` of the text files and ``%010d`` in the data folders)::

    calib_cam_to_cam.txt  calib_velo_to_cam.txt  [calib_imu_to_velo.txt]
    image_02/data/%010d.png          rectified left colour camera, RGB
    velodyne_points/data/%010d.bin   float32 (N, 4) x, y, z, reflectance (Velodyne frame)
    poses_lidar.txt                  12 numbers per line: rows 0-2 of T_0_i (LiDAR i -> LiDAR 0)
    timestamps.txt                   one float (s) per line

Projection into camera 2, as KITTI defines it::

    x_img = P_rect_02 @ R_rect_00 @ T_velo_to_cam @ [x, y, z, 1]

``P_rect_02 = K @ [I | t]`` has a translation column (camera 2's offset from the rectified
camera 0). We keep K (its left 3x3) as the intrinsics and fold ``[I | t]`` into the extrinsics, so
that ``K @ (cam_from_lidar @ p)[:3] == P_rect_02 @ R_rect_00 @ T_velo_to_cam @ p`` exactly as
the rest of the project expects (a pinhole K and a rigid camera <- LiDAR transform).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from sam4d_core.data.errors import DatasetError
from sam4d_core.data.sequence import CameraFrame, Frame, Sequence

__all__ = ["KittiCalibration", "load_kitti_calibration", "read_kitti_raw"]

CAMERA_NAME = "image_02"


def _read_calib_file(path: Path) -> dict[str, np.ndarray]:
    """``key: v1 v2 ...`` lines -> arrays; non-numeric values (calib_time) are skipped."""
    if not path.is_file():
        raise DatasetError("calibration file does not exist", path)
    out: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        if ":" not in line:
            raise DatasetError(f"line {lineno} is not 'key: values'", path)
        key, values = line.split(":", 1)
        try:
            out[key.strip()] = np.array([float(v) for v in values.split()], dtype=np.float64)
        except ValueError:
            continue  # e.g. "calib_time: 09-Jan-2012 13:57:47"
    return out


def _take(calib: dict[str, np.ndarray], key: str, n: int, path: Path) -> np.ndarray:
    if key not in calib:
        raise DatasetError(f"missing key {key!r}", path)
    v = calib[key]
    if v.size != n:
        raise DatasetError(f"{key!r} must have {n} numbers, got {v.size}", path)
    return v


@dataclass
class KittiCalibration:
    """KITTI calibration of one camera, plus the folded pinhole form we use.

    Attributes:
        p_rect: (3, 4) P_rect_xx.
        r_rect_00: (4, 4) R_rect_00 padded with 1.
        velo_to_cam: (4, 4) Velodyne -> unrectified camera 0.
        intrinsics: (3, 3) K = P_rect[:, :3].
        cam_from_lidar: (4, 4) ``[I | K^-1 P_rect[:, 3]] @ R_rect_00 @ velo_to_cam``.
        size_wh: rectified image size (S_rect_xx).
    """

    p_rect: np.ndarray
    r_rect_00: np.ndarray
    velo_to_cam: np.ndarray
    intrinsics: np.ndarray
    cam_from_lidar: np.ndarray
    size_wh: tuple[int, int]

    def projection(self) -> np.ndarray:
        """(3, 4) LiDAR -> pixel projection in KITTI's own form."""
        return self.p_rect @ self.r_rect_00 @ self.velo_to_cam


def load_kitti_calibration(root: str | os.PathLike[str], camera: int = 2) -> KittiCalibration:
    """Read ``calib_cam_to_cam.txt`` and ``calib_velo_to_cam.txt`` for camera ``camera``."""
    root = Path(root)
    c2c_path = root / "calib_cam_to_cam.txt"
    v2c_path = root / "calib_velo_to_cam.txt"
    c2c = _read_calib_file(c2c_path)
    v2c = _read_calib_file(v2c_path)
    p_rect = _take(c2c, f"P_rect_{camera:02d}", 12, c2c_path).reshape(3, 4)
    r_rect = np.eye(4)
    r_rect[:3, :3] = _take(c2c, "R_rect_00", 9, c2c_path).reshape(3, 3)
    size = _take(c2c, f"S_rect_{camera:02d}", 2, c2c_path)
    velo = np.eye(4)
    velo[:3, :3] = _take(v2c, "R", 9, v2c_path).reshape(3, 3)
    velo[:3, 3] = _take(v2c, "T", 3, v2c_path)
    k = p_rect[:, :3].copy()
    shift = np.eye(4)
    shift[:3, 3] = np.linalg.solve(k, p_rect[:, 3])
    return KittiCalibration(
        p_rect=p_rect,
        r_rect_00=r_rect,
        velo_to_cam=velo,
        intrinsics=k,
        cam_from_lidar=shift @ r_rect @ velo,
        size_wh=(int(round(size[0])), int(round(size[1]))),
    )


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError("file does not exist", path)
    return [ln for ln in path.read_text().splitlines() if ln.strip()]


def _read_poses(path: Path) -> np.ndarray:
    """(F, 4, 4) from KITTI-odometry style lines of 12 numbers."""
    poses = []
    for i, line in enumerate(_read_lines(path)):
        try:
            v = np.array([float(x) for x in line.split()], dtype=np.float64)
        except ValueError:
            raise DatasetError(f"line {i + 1} is not numeric", path) from None
        if v.size != 12:
            raise DatasetError(f"line {i + 1} has {v.size} numbers, expected 12", path)
        t = np.eye(4)
        t[:3, :] = v.reshape(3, 4)
        poses.append(t)
    return np.stack(poses) if poses else np.zeros((0, 4, 4))


def _read_timestamps(path: Path) -> np.ndarray:
    try:
        return np.array([float(x) for x in _read_lines(path)], dtype=np.float64)
    except ValueError:
        raise DatasetError("timestamps must be one float per line", path) from None


def _read_velodyne(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError("LiDAR scan does not exist", path)
    raw = np.fromfile(path, dtype="<f4")
    if raw.size % 4:
        raise DatasetError(
            f"size {raw.size * 4} bytes is not a multiple of 16 (x,y,z,r float32)", path
        )
    return raw.reshape(-1, 4).astype(np.float32)


def _read_png(path: Path) -> np.ndarray:
    if not path.is_file():
        raise DatasetError("image does not exist", path)
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError("image cannot be decoded", path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_kitti_raw(
    root: str | os.PathLike[str],
    *,
    frames: SequenceABC[int] | slice | None = None,
    load_images: bool = True,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Sequence:
    """Read the drive into a :class:`Sequence` with one camera ``image_02``.

    ``world_from_lidar`` is ``T_0_i`` from ``poses_lidar.txt`` (the world frame is the LiDAR frame
    of frame 0). Points are (N, 4) x, y, z, reflectance. No ground truth.

    Args:
        frames: indices (or a slice) of the frames to load; default all.
        load_images: when False, images are (0, 0, 3) placeholders (calibration only).
        name: sequence name (default: the directory name).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("KITTI raw directory does not exist", root)
    calib = load_kitti_calibration(root, camera=2)
    poses = _read_poses(root / "poses_lidar.txt")
    stamps = _read_timestamps(root / "timestamps.txt")
    if len(poses) != len(stamps):
        raise DatasetError(
            f"poses_lidar.txt has {len(poses)} lines but timestamps.txt has {len(stamps)}", root
        )
    indices = list(range(len(stamps)))
    if isinstance(frames, slice):
        indices = indices[frames]
    elif frames is not None:
        indices = [int(i) for i in frames]
        bad = [i for i in indices if not 0 <= i < len(stamps)]
        if bad:
            raise IndexError(f"frames {bad} out of range (the drive has {len(stamps)})")
    out: list[Frame] = []
    for k, i in enumerate(indices):
        pts = _read_velodyne(root / "velodyne_points" / "data" / f"{i:010d}.bin")
        if load_images:
            img = _read_png(root / CAMERA_NAME / "data" / f"{i:010d}.png")
            w, h = calib.size_wh
            if img.shape[:2] != (h, w):
                raise DatasetError(
                    f"image is {img.shape[1]}x{img.shape[0]} but S_rect_02 says {w}x{h}",
                    root / CAMERA_NAME / "data" / f"{i:010d}.png",
                )
        else:
            img = np.zeros((0, 0, 3), np.uint8)
        cam = CameraFrame(
            name=CAMERA_NAME,
            image=img,
            intrinsics=calib.intrinsics.copy(),
            cam_from_lidar=calib.cam_from_lidar.copy(),
            timestamp=float(stamps[i]),
        )
        out.append(
            Frame(
                timestamp=float(stamps[i]),
                points=pts,
                cameras={CAMERA_NAME: cam},
                world_from_lidar=poses[i].copy(),
                index=k,
            )
        )
        if progress is not None:
            progress(k + 1, len(indices))
    return Sequence(
        name=name or root.name,
        frames=out,
        point_fields=("x", "y", "z", "intensity"),
        lidar_frame_id="velodyne",
        world_frame_id="odom",
    )
