"""Reader for the one-key-frame nuScenes sample in ``shared/data/nuscenes_sample``.

The folder holds six 1600x900 JPEG images, one ``*.pcd.bin`` LiDAR sweep (float32 (N, 5):
x, y, z, intensity, ring index) and ``calib.json`` (row-major matrices; ``a2b`` maps points from a
to b). We use, per camera, ``intrinsics`` and ``lidar2cam`` (which already includes the ego motion
between the LiDAR and the camera timestamps, so it projects LiDAR points correctly), and as the
ego pose ``world_from_lidar = ego2global @ lidar2ego``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sam4d_core.data.errors import DatasetError
from sam4d_core.data.sequence import CameraFrame, Frame, Sequence

__all__ = ["CAMERA_NAMES", "SAMPLE_LAYOUT", "load_nuscenes_calib", "read_nuscenes_sample"]

CAMERA_NAMES = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
POINT_FIELDS = ("x", "y", "z", "intensity", "ring")
SAMPLE_LAYOUT = (
    "calib.json with per-camera image, intrinsics, lidar2cam, timestamp_s, the lidar file and "
    "lidar2ego, ego2global and timestamp_s; the images and the LIDAR_TOP *.pcd.bin it names, "
    "as in shared/data/nuscenes_sample"
)


def load_nuscenes_calib(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed ``calib.json`` (plain dict, matrices still nested lists)."""
    path = Path(root) / "calib.json"
    try:
        calib = json.loads(path.read_text())
    except FileNotFoundError:
        root = Path(root)
        if (root / "samples").is_dir() or any(root.glob("v1.0-*")):
            raise DatasetError(
                "calib.json does not exist: this looks like the nuScenes release layout "
                "(samples/, sweeps/, v1.0-*/ tables), which is not read here; the reader takes "
                f"one key frame in the sample layout ({SAMPLE_LAYOUT})",
                path,
            ) from None
        raise DatasetError(f"calib.json does not exist (expected {SAMPLE_LAYOUT})", path) from None
    except (OSError, json.JSONDecodeError) as e:
        raise DatasetError(f"not a valid JSON file ({e})", path) from None
    for key in ("cameras", "lidar", "ego2global", "timestamp_s"):
        if key not in calib:
            raise DatasetError(f"lacks the required key {key!r}", path)
    return calib


def _mat(value: Any, shape: tuple[int, int], what: str, path: Path) -> np.ndarray:
    m = np.asarray(value, dtype=np.float64)
    if m.shape != shape or not np.isfinite(m).all():
        raise DatasetError(f"{what} must be a finite {shape[0]}x{shape[1]} matrix", path)
    return m


def read_nuscenes_sample(
    root: str | os.PathLike[str],
    *,
    cameras: tuple[str, ...] | None = None,
    load_images: bool = True,
) -> Sequence:
    """Read the sample into a one-frame :class:`Sequence` with six cameras.

    Points are (N, 5) x, y, z, intensity (0-255), ring (0-31) in the LIDAR_TOP frame.
    """
    root = Path(root)
    calib = load_nuscenes_calib(root)
    cpath = root / "calib.json"
    lidar = calib["lidar"]
    bin_path = root / lidar["file"]
    if not bin_path.is_file():
        raise DatasetError("LiDAR file does not exist", bin_path)
    nfeat = int(lidar.get("num_features", 5))
    raw = np.fromfile(bin_path, dtype="<f4")
    if raw.size % nfeat:
        raise DatasetError(f"{raw.size} floats is not a multiple of {nfeat} features", bin_path)
    points = raw.reshape(-1, nfeat).astype(np.float32)
    if nfeat != len(POINT_FIELDS):
        raise DatasetError(
            f"expected {len(POINT_FIELDS)} features per point, got {nfeat}", bin_path
        )
    lidar2ego = _mat(lidar["lidar2ego"], (4, 4), "lidar.lidar2ego", cpath)
    ego2global = _mat(calib["ego2global"], (4, 4), "ego2global", cpath)
    cams: dict[str, CameraFrame] = {}
    for name in cameras or tuple(calib["cameras"]):
        if name not in calib["cameras"]:
            raise DatasetError(f"no camera {name!r} (have {list(calib['cameras'])})", cpath)
        c = calib["cameras"][name]
        img_path = root / c["image"]
        if load_images:
            img = cv2.imread(str(img_path), cv2.IMREAD_COLOR)
            if img is None:
                raise DatasetError("image does not exist or cannot be decoded", img_path)
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        else:
            img = np.zeros((0, 0, 3), np.uint8)
        cams[name] = CameraFrame(
            name=name,
            image=img,
            intrinsics=_mat(c["intrinsics"], (3, 3), f"cameras.{name}.intrinsics", cpath),
            cam_from_lidar=_mat(c["lidar2cam"], (4, 4), f"cameras.{name}.lidar2cam", cpath),
            timestamp=float(c["timestamp_s"]),
        )
    frame = Frame(
        timestamp=float(calib["timestamp_s"]),
        points=points,
        cameras=cams,
        world_from_lidar=ego2global @ lidar2ego,
        index=0,
    )
    return Sequence(
        name=str(calib.get("scene_log", root.name)),
        frames=[frame],
        point_fields=POINT_FIELDS,
        lidar_frame_id="LIDAR_TOP",
        world_frame_id="map",
    )
