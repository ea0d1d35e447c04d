"""Reader for KITTI raw drives: the synced+rectified download as KITTI ships it, and the
project's shared sample.

A drive as downloaded (``2011_09_26_drive_0005_sync.zip`` + ``2011_09_26_calib.zip`` unpacked in
one folder; frame ``i`` is ``%010d`` in every data folder and line ``i`` of every timestamps.txt)::

    2011_09_26/
      calib_cam_to_cam.txt  calib_velo_to_cam.txt  calib_imu_to_velo.txt
      2011_09_26_drive_0005_sync/                  <- the folder to pass
        image_00/ image_01/   timestamps.txt, data/%010d.png  grey (left, right), rectified
        image_02/ image_03/   timestamps.txt, data/%010d.png  colour (left, right), rectified
        oxts/                 dataformat.txt, timestamps.txt, data/%010d.txt (30 numbers)
        velodyne_points/      timestamps.txt (+ _start, _end), data/%010d.bin float32 (N, 4)

Timestamps are date-times (``2011-09-26 13:02:25.964389445``), read as UTC seconds. The sweep
stamp is ``velodyne_points/timestamps.txt`` (when the scanner faced forward), each image's is its
camera's timestamps.txt. Poses (``--poses`` of the converter): from OXTS as the KITTI devkit
computes them (:mod:`sam4d_core.data.kitti_oxts`), or, without OXTS, estimated from the scans
with KISS-ICP (:mod:`sam4d_core.data.lidar_odometry`).

The shared sample (``shared/data/kitti_raw_2011_09_26``) is not laid out as downloaded: calib files
inside the drive folder, ``poses_lidar.txt`` (12 numbers per line: rows 0-2 of T_0_i) and a
``timestamps.txt`` of one float per line in the folder itself, no OXTS. Both are read.

Cameras keep their KITTI folder names (``image_02`` is the left colour camera, the one SAM4D's
single-camera setting corresponds to); the converter can rename them (``--camera-name``).

Projection into camera ``x``, as KITTI defines it::

    x_img = P_rect_0x @ R_rect_00 @ T_velo_to_cam @ [x, y, z, 1]

``P_rect_0x = K @ [I | t]`` has a translation column (camera x's offset from the rectified
camera 0). We keep K (its left 3x3) as the intrinsics and fold ``[I | t]`` into the extrinsics, so
that ``K @ (cam_from_lidar @ p)[:3] == P_rect_0x @ R_rect_00 @ T_velo_to_cam @ p`` exactly as
the rest of the project expects (a pinhole K and a rigid camera <- LiDAR transform).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np

from sam4d_core.data.errors import DatasetError
from sam4d_core.data.sequence import CameraFrame, Frame, Sequence

__all__ = [
    "CAMERA_NAME",
    "POSE_METHODS",
    "KittiCalibration",
    "KittiDrive",
    "load_kitti_calibration",
    "open_kitti_drive",
    "parse_kitti_time",
    "read_kitti_raw",
]

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


def parse_kitti_time(text: str) -> float:
    """``2011-09-26 13:02:25.964389445`` (KITTI raw timestamps.txt) -> seconds since the epoch,
    read as UTC (KITTI does not say which zone; only differences matter to the tracker)."""
    date, _, clock = text.strip().partition(" ")
    whole, _, frac = clock.partition(".")
    stamp = datetime.strptime(f"{date} {whole}", "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    if frac and not frac.isdigit():
        raise ValueError(text)
    return stamp.timestamp() + (int(frac) / 10 ** len(frac) if frac else 0.0)


def _read_kitti_times(path: Path) -> np.ndarray:
    """(F,) seconds from a KITTI raw timestamps.txt (one date-time per line)."""
    out = []
    for i, line in enumerate(_read_lines(path)):
        try:
            out.append(parse_kitti_time(line))
        except ValueError:
            raise DatasetError(
                f"line {i + 1} {line.strip()!r} is not a KITTI date-time "
                "(YYYY-MM-DD hh:mm:ss.fffffffff)",
                path,
            ) from None
    return np.asarray(out, dtype=np.float64)


def _read_float_times(path: Path) -> np.ndarray:
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
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)  # grayscale cameras 00/01 -> 3 equal channels
    if img is None:
        raise DatasetError("image cannot be decoded", path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


_LAYOUT_HINT = (
    "expected a KITTI raw drive folder as downloaded (synced+rectified), e.g. "
    "2011_09_26/2011_09_26_drive_0005_sync/ with velodyne_points/{timestamps.txt,data/*.bin}, "
    "image_02/{timestamps.txt,data/*.png}, oxts/{dataformat.txt,data/*.txt}, and "
    "calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt in the folder above"
)


@dataclass
class KittiDrive:
    """A KITTI raw drive folder as found on disk (:func:`open_kitti_drive`; nothing loaded yet).

    Attributes:
        root: the drive folder (``..._drive_XXXX_sync``).
        calib_dir: where the calib_*.txt files are (the drive folder or the one above).
        lidar_stamps: (F,) seconds per frame (the Velodyne's, the master clock).
        stamp_source: where ``lidar_stamps`` came from.
        cameras: the ``image_0X`` folders that hold images, sorted.
        oxts_dir: ``oxts/`` when it holds ``data/``, else None.
        poses_file: a ``poses_lidar.txt`` (not a KITTI file; the project's shared sample) or None.
    """

    root: Path
    calib_dir: Path
    lidar_stamps: np.ndarray
    stamp_source: str
    cameras: list[str]
    oxts_dir: Path | None
    poses_file: Path | None

    @property
    def num_frames(self) -> int:
        return len(self.lidar_stamps)

    def select(
        self, start: int = 0, end: int | None = None, step: int = 1, limit: int | None = None
    ) -> list[int]:
        """Frame indices ``start, start + step, ...`` before ``end`` (exclusive, default the
        last frame + 1), at most ``limit`` of them. Raises ValueError when out of range/empty."""
        n = self.num_frames
        end = n if end is None else end
        if step < 1:
            raise ValueError(f"--step must be >= 1, got {step}")
        if not 0 <= start < n:
            raise ValueError(f"--start {start} is outside the drive's frames 0..{n - 1}")
        if not start < end <= n:
            raise ValueError(f"--end {end} must be in {start + 1}..{n} (exclusive; {n} frames)")
        out = list(range(start, end, step))
        return out[:limit] if limit else out

    def camera_stamps(self, camera: str) -> tuple[np.ndarray, str]:
        """(F,) seconds of ``camera``'s images and where they came from."""
        path = self.root / camera / "timestamps.txt"
        if path.is_file():
            stamps = _read_kitti_times(path)
            if len(stamps) != self.num_frames:
                raise DatasetError(
                    f"{len(stamps)} lines but the drive has {self.num_frames} LiDAR frames "
                    "(an unsynced drive? use the synced+rectified download)",
                    path,
                )
            return stamps, f"{camera}/timestamps.txt"
        return self.lidar_stamps, "the LiDAR stamps (no camera timestamps.txt)"

    def pose_method(self, method: str = "auto") -> str:
        """``method`` resolved: auto -> oxts when oxts/data exists, else file when
        poses_lidar.txt exists, else kiss-icp."""
        if method not in POSE_METHODS:
            raise ValueError(f"poses must be one of {', '.join(POSE_METHODS)}, got {method!r}")
        if method == "auto":
            return "oxts" if self.oxts_dir else ("file" if self.poses_file else "kiss-icp")
        if method == "oxts" and self.oxts_dir is None:
            raise DatasetError("--poses oxts: no oxts/data folder", self.root)
        if method == "file" and self.poses_file is None:
            raise DatasetError("--poses file: no poses_lidar.txt", self.root)
        return method

    def poses(
        self,
        indices: SequenceABC[int],
        method: str = "auto",
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[np.ndarray, str]:
        """(len(indices), 4, 4) LiDAR i -> LiDAR of ``indices[0]`` and how they were obtained.

        The world frame is the LiDAR frame of the first selected frame. OXTS: the devkit's
        conversion of the selected packets (Mercator scale from the first one's latitude).
        kiss-icp: odometry over every frame from the first to the last selected one (ICP needs
        consecutive scans), then the selected ones picked.
        """
        from sam4d_core.data import kitti_oxts

        method = self.pose_method(method)
        idx = [int(i) for i in indices]
        if method == "oxts":
            assert self.oxts_dir is not None
            fmt = self.oxts_dir / "dataformat.txt"
            fields = kitti_oxts.read_oxts_fields(fmt) if fmt.is_file() else kitti_oxts.OXTS_FIELDS
            packets = kitti_oxts.read_oxts_packets(self.oxts_dir / "data", idx, fields)
            imu_path = self.calib_dir / "calib_imu_to_velo.txt"
            imu = _read_calib_file(imu_path)
            velo_from_imu = np.eye(4)
            velo_from_imu[:3, :3] = _take(imu, "R", 9, imu_path).reshape(3, 3)
            velo_from_imu[:3, 3] = _take(imu, "T", 3, imu_path)
            poses = kitti_oxts.lidar_poses_from_oxts(packets, velo_from_imu)
            how = (
                f"OXTS GPS/IMU, oxts/data ({len(idx)} packets"
                + ("" if fmt.is_file() else "; no dataformat.txt: KITTI's field order assumed")
                + f"), KITTI devkit conversion: Mercator scale cos({packets[0, 0]:.6f} deg) from "
                f"the first packet, IMU -> LiDAR from {imu_path.name}"
            )
            return poses, how
        if method == "file":
            assert self.poses_file is not None
            allp = _read_poses(self.poses_file)
            if len(allp) != self.num_frames:
                raise DatasetError(
                    f"{len(allp)} poses but the drive has {self.num_frames} frames", self.poses_file
                )
            sel = allp[idx]
            return np.linalg.inv(sel[0]) @ sel, f"{self.poses_file.name} (read from the file)"
        from sam4d_core.data.lidar_odometry import KISS_ICP_SETTINGS, kiss_icp_poses

        span = range(idx[0], idx[-1] + 1)
        scans = (
            _read_velodyne(self.root / "velodyne_points" / "data" / f"{i:010d}.bin") for i in span
        )
        est = kiss_icp_poses(scans, len(span), progress)
        sel = est[[i - idx[0] for i in idx]]
        how = (
            f"estimated from the scans with KISS-ICP ({KISS_ICP_SETTINGS}; "
            f"frames {span.start}..{span.stop - 1}); no OXTS data in the drive folder"
        )
        return np.linalg.inv(sel[0]) @ sel, how

    def read(
        self,
        indices: SequenceABC[int],
        *,
        poses: str = "auto",
        cameras: SequenceABC[str] = (CAMERA_NAME,),
        camera_names: dict[str, str] | None = None,
        load_images: bool = True,
        name: str | None = None,
        progress: Callable[[int, int], None] | None = None,
        pose_progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Sequence, dict[str, str]]:
        """The selected frames as a :class:`Sequence`, and where each thing came from
        (``{"timestamps": ..., "poses": ..., "calibration": ..., "camera <name>": ...}``).

        Args:
            cameras: KITTI camera folders to read (image_00/01 grey, image_02/03 colour).
            camera_names: KITTI folder -> name in the sequence (default: the folder name).
        """
        camera_names = dict(camera_names or {})
        unknown_cams = [c for c in cameras if c not in _CAMERA_KINDS]
        if unknown_cams:
            raise ValueError(f"KITTI cameras are {', '.join(_CAMERA_KINDS)}, not {unknown_cams}")
        missing = [c for c in cameras if c not in self.cameras]
        if missing and load_images:
            raise DatasetError(
                f"no camera folder(s) {missing} with images (found: {self.cameras or 'none'})",
                self.root,
            )
        unknown = sorted(set(camera_names) - set(cameras))
        if unknown:
            raise ValueError(f"camera names given for {unknown}, which are not converted")
        sources: dict[str, str] = {"timestamps": self.stamp_source, "poses": ""}
        calibs: dict[str, KittiCalibration] = {}
        stamps: dict[str, np.ndarray] = {}
        for cam in cameras:
            calibs[cam] = load_kitti_calibration(self.calib_dir, camera=int(cam[-2:]))
            stamps[cam], where = self.camera_stamps(cam)
            out_name = camera_names.get(cam, cam)
            sources[f"camera {out_name}"] = (
                f"{cam}/data ({_CAMERA_KINDS[cam]}), stamps from {where}, "
                f"P_rect_{cam[-2:]} of calib_cam_to_cam.txt"
            )
        # Poses after the calibration: a bad calib file fails before minutes of odometry.
        world, sources["poses"] = self.poses(indices, poses, pose_progress)
        sources["calibration"] = (
            f"{self.calib_dir / 'calib_cam_to_cam.txt'}, {self.calib_dir / 'calib_velo_to_cam.txt'}"
        )
        out: list[Frame] = []
        for k, i in enumerate(indices):
            pts = _read_velodyne(self.root / "velodyne_points" / "data" / f"{i:010d}.bin")
            cams: dict[str, CameraFrame] = {}
            for cam in cameras:
                calib = calibs[cam]
                path = self.root / cam / "data" / f"{i:010d}.png"
                if load_images:
                    img = _read_png(path)
                    w, h = calib.size_wh
                    if img.shape[:2] != (h, w):
                        raise DatasetError(
                            f"image is {img.shape[1]}x{img.shape[0]} but S_rect_{cam[-2:]} says "
                            f"{w}x{h} (an unrectified drive? use the synced+rectified download)",
                            path,
                        )
                else:
                    img = np.zeros((0, 0, 3), np.uint8)
                out_name = camera_names.get(cam, cam)
                cams[out_name] = CameraFrame(
                    name=out_name,
                    image=img,
                    intrinsics=calib.intrinsics.copy(),
                    cam_from_lidar=calib.cam_from_lidar.copy(),
                    timestamp=float(stamps[cam][i]),
                )
            out.append(
                Frame(
                    timestamp=float(self.lidar_stamps[i]),
                    points=pts,
                    cameras=cams,
                    world_from_lidar=world[k].copy(),
                    index=k,
                )
            )
            if progress is not None:
                progress(k + 1, len(indices))
        seq = Sequence(
            name=name or self.root.name,
            frames=out,
            point_fields=("x", "y", "z", "intensity"),
            lidar_frame_id="velodyne",
            world_frame_id="odom",
        )
        return seq, sources


POSE_METHODS = ("auto", "oxts", "file", "kiss-icp")
_CAMERA_KINDS = {
    "image_00": "left greyscale camera",
    "image_01": "right greyscale camera",
    "image_02": "left colour camera",
    "image_03": "right colour camera",
}


def open_kitti_drive(root: str | os.PathLike[str]) -> KittiDrive:
    """Find what a KITTI raw drive folder holds (see the module docstring for the layouts).

    Raises DatasetError naming what is missing and the expected layout.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError("KITTI raw directory does not exist", root)
    if not (root / "velodyne_points" / "data").is_dir():
        raise DatasetError(f"no velodyne_points/data folder: {_LAYOUT_HINT}", root)
    calib_dir = next(
        (d for d in (root, root.parent) if (d / "calib_cam_to_cam.txt").is_file()), None
    )
    if calib_dir is None:
        raise DatasetError(
            f"no calib_cam_to_cam.txt in the drive folder or the folder above ({root.parent}): "
            "unpack the date's calibration zip (e.g. 2011_09_26_calib.zip) next to the drive",
            root,
        )
    kitti_times = root / "velodyne_points" / "timestamps.txt"
    if kitti_times.is_file():
        stamps = _read_kitti_times(kitti_times)
        stamp_source = "velodyne_points/timestamps.txt (KITTI date-times, read as UTC)"
    elif (root / "timestamps.txt").is_file():
        stamps = _read_float_times(root / "timestamps.txt")
        stamp_source = "timestamps.txt (one float per line; not a KITTI raw file)"
    else:
        raise DatasetError(f"no velodyne_points/timestamps.txt: {_LAYOUT_HINT}", root)
    scans = sorted((root / "velodyne_points" / "data").glob("*.bin"))
    if not scans and any((root / "velodyne_points" / "data").glob("*.txt")):
        raise DatasetError(
            "the scans are text files (the unsynced 'extract' download): use the synced+rectified "
            "one, whose scans are float32 .bin",
            root / "velodyne_points" / "data",
        )
    if len(scans) != len(stamps):
        raise DatasetError(
            f"{len(scans)} scans in velodyne_points/data but {len(stamps)} timestamps", root
        )
    cameras = sorted(
        c
        for c in _CAMERA_KINDS
        if (root / c / "data").is_dir() and any((root / c / "data").iterdir())
    )
    oxts = root / "oxts"
    return KittiDrive(
        root=root,
        calib_dir=calib_dir,
        lidar_stamps=stamps,
        stamp_source=stamp_source,
        cameras=cameras,
        oxts_dir=oxts if (oxts / "data").is_dir() else None,
        poses_file=root / "poses_lidar.txt" if (root / "poses_lidar.txt").is_file() else None,
    )


def read_kitti_raw(
    root: str | os.PathLike[str],
    *,
    frames: SequenceABC[int] | slice | None = None,
    load_images: bool = True,
    name: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    poses: str = "auto",
    cameras: SequenceABC[str] = (CAMERA_NAME,),
    camera_names: dict[str, str] | None = None,
) -> Sequence:
    """Read a drive into a :class:`Sequence` (camera ``image_02`` by default).

    ``world_from_lidar`` maps LiDAR i to the LiDAR frame of the first frame read (``poses``: see
    :meth:`KittiDrive.poses`). Points are (N, 4) x, y, z, reflectance. No ground truth.

    Args:
        frames: indices (or a slice) of the frames to load; default all.
        load_images: when False, images are (0, 0, 3) placeholders (calibration only).
        name: sequence name (default: the directory name).
    """
    drive = open_kitti_drive(root)
    indices = list(range(drive.num_frames))
    if isinstance(frames, slice):
        indices = indices[frames]
    elif frames is not None:
        indices = [int(i) for i in frames]
        bad = [i for i in indices if not 0 <= i < drive.num_frames]
        if bad:
            raise IndexError(f"frames {bad} out of range (the drive has {drive.num_frames})")
    if not indices:
        raise IndexError("no frames selected")
    seq, _ = drive.read(
        indices,
        poses=poses,
        cameras=cameras,
        camera_names=camera_names,
        load_images=load_images,
        name=name,
        progress=progress,
    )
    return seq
