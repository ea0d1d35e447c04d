"""Reader and writer for the Waymo-4DSeg layout used by the official SAM4D release.

Layout under a data set root (all paths inside the pkl are relative to the root)::

    meta_infos/<seq>.pkl                   one per sequence (a sequence "exists" iff this does)
    pcds/<seq>/<ts>.npz                    key 'data': (N, C) points, xyz in the first 3 columns
    undistort_images/<seq>/<ts>/<cam>.jpg  undistorted images (.png allowed: lossless)
    sam4d_labels/<seq>/<ts>.json           optional labels, COCO RLE masks

``<ts>`` is the sweep time in integer microseconds (as in Waymo). The pkl holds
``{'seq_name', 'frames': [{'cams_info': {cam: {'data_path', 'camera_intrinsics' 3x3,
'camera2lidar' 4x4 (lidar <- camera)}}, 'path': {'pcd', 'sam4d_label'}, 'lidar2world' 4x4}]}``.
We add keys the official loader ignores so that our round trip is exact: per frame ``timestamp``
(int us) and ``timestamp_s`` (float s), per camera ``timestamp_s``, and at the top level
``point_fields``, ``lidar_frame_id``, ``world_frame_id`` and ``format``.

Label JSON: ``{"sensors": {<sensor>: {"objects": [{"object_id", "semantic", "score", "volume",
"image_mask" | "lidar_mask"}]}}}``; the LiDAR sensor is ``LiDAR_TOP``; its object ``-1`` is the
ignore mask. Our LiDAR entry lists every object of the frame (with an empty mask when it has no
points) so that the object table survives a round trip. Where masks overlap (possible in official
data) the later object in the file wins, and the ignore mask wins over every object.

Pickles can run code when loaded; the reader uses a restricted unpickler that only accepts plain
Python data and numpy arrays (``trusted_pickle=True`` lifts that for pkls you made yourself).
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import shutil
import uuid
import zipfile
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from sam4d_core.data.errors import DatasetError, RLEError
from sam4d_core.data.rle import decode_mask, decode_point_mask, encode_mask, encode_point_mask
from sam4d_core.data.sequence import (
    IGNORE_ID,
    CameraFrame,
    Frame,
    ObjectInfo,
    Sequence,
)

__all__ = [
    "DEFAULT_LIDAR_SENSOR",
    "FORMAT_TAG",
    "Waymo4DSegDataset",
    "Waymo4DSegFrameInfo",
    "read_waymo4dseg",
    "write_waymo4dseg",
]

DEFAULT_LIDAR_SENSOR = "LiDAR_TOP"
FORMAT_TAG = "sam4d_ros.waymo4dseg/1"
META_DIR = "meta_infos"
PCD_DIR = "pcds"
IMAGE_DIR = "undistort_images"
LABEL_DIR = "sam4d_labels"

ProgressFn = Callable[[int, int], None]


# ----------------------------------------------------------------------------------------------
# small helpers


def _matrix(value: Any, shape: tuple[int, int], what: str, source: str) -> np.ndarray:
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise DatasetError(f"{what} is not a numeric matrix", source) from None
    if m.shape != shape:
        raise DatasetError(f"{what} must be {shape[0]}x{shape[1]}, got shape {m.shape}", source)
    if not np.isfinite(m).all():
        raise DatasetError(f"{what} contains non-finite values", source)
    return m


def _rigid_inverse(t: np.ndarray) -> np.ndarray:
    """Inverse of a 4x4 rigid transform as (R^T, -R^T t): more accurate than a general inv."""
    out = np.eye(4)
    r = t[:3, :3]
    out[:3, :3] = r.T
    out[:3, 3] = -r.T @ t[:3, 3]
    return out


def _invert(t: np.ndarray) -> np.ndarray:
    # Calibration matrices in the wild are not always exactly rigid (scaled or sheared exports);
    # fall back to a general inverse for those so that we never silently change them.
    r = t[:3, :3]
    if np.allclose(r @ r.T, np.eye(3), atol=1e-9) and np.allclose(t[3], [0, 0, 0, 1]):
        return _rigid_inverse(t)
    return np.linalg.inv(t)


def timestamp_us(t: float) -> int:
    """Seconds -> integer microseconds, the Waymo file-name timestamp."""
    return int(round(t * 1e6))


class _SafeUnpickler(pickle.Unpickler):
    """Accept plain data and numpy arrays/scalars only; anything else is refused, not executed."""

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "tuple"),
        ("builtins", "complex"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name} (only plain data and numpy arrays are accepted; "
            "pass trusted_pickle=True for a file you trust)"
        )


def _load_pickle(path: Path, trusted: bool) -> Any:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError("meta info file does not exist", path) from None
    except OSError as e:
        raise DatasetError(f"cannot read meta info file ({e})", path) from None
    try:
        if trusted:
            return pickle.loads(data)  # noqa: S301 - the caller vouched for the file
        return _SafeUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # pickle raises many unrelated types on corrupt input
        raise DatasetError(
            f"not a valid meta info pickle ({type(e).__name__}: {e})", path
        ) from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_name(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"{what} {name!r} cannot be used as a file name")


# ----------------------------------------------------------------------------------------------
# reading


@dataclass
class Waymo4DSegCameraInfo:
    """Calibration and file of one camera in one frame (from the pkl)."""

    name: str
    data_path: str
    intrinsics: np.ndarray  # (3, 3)
    cam_from_lidar: np.ndarray  # (4, 4), inverse of the pkl's camera2lidar
    timestamp: float | None


@dataclass
class Waymo4DSegFrameInfo:
    """Everything the pkl says about one frame; files are loaded on demand."""

    index: int
    timestamp: float
    pcd_path: str
    label_path: str | None
    world_from_lidar: np.ndarray  # (4, 4)
    cameras: dict[str, Waymo4DSegCameraInfo] = field(default_factory=dict)


@dataclass
class _SequenceMeta:
    name: str
    frames: list[Waymo4DSegFrameInfo]
    point_fields: tuple[str, ...] | None
    lidar_frame_id: str
    world_frame_id: str


def _frame_timestamp(raw: Mapping[str, Any], pcd_path: str, source: str, i: int) -> float:
    if raw.get("timestamp_s") is not None:
        return float(raw["timestamp_s"])
    for key in ("timestamp", "log_time_stamp"):
        if raw.get(key) is not None:
            return float(raw[key]) * 1e-6
    stem = Path(pcd_path).stem
    try:
        return int(stem) * 1e-6
    except ValueError:
        raise DatasetError(
            f"frames[{i}] has no 'timestamp' and its pcd name {stem!r} is not a microsecond time",
            source,
        ) from None


def _parse_meta(raw: Any, path: Path, root: Path) -> _SequenceMeta:
    src = str(path)
    if not isinstance(raw, Mapping):
        raise DatasetError(f"meta info must be a dict, got {type(raw).__name__}", src)
    if "frames" not in raw:
        raise DatasetError(f"meta info lacks the required key 'frames' (keys: {sorted(raw)})", src)
    frames_raw = raw["frames"]
    if not isinstance(frames_raw, SequenceABC) or isinstance(frames_raw, str | bytes):
        raise DatasetError("'frames' must be a list", src)
    name = str(raw.get("seq_name") or path.stem)
    frames: list[Waymo4DSegFrameInfo] = []
    for i, fr in enumerate(frames_raw):
        where = f"frames[{i}]"
        if not isinstance(fr, Mapping):
            raise DatasetError(f"{where} must be a dict", src)
        for key in ("path", "lidar2world", "cams_info"):
            if key not in fr:
                raise DatasetError(
                    f"{where} lacks the required key {key!r} (keys: {sorted(fr)})", src
                )
        paths = fr["path"]
        if not isinstance(paths, Mapping) or not isinstance(paths.get("pcd"), str):
            raise DatasetError(f"{where}['path'] must be a dict with a 'pcd' path", src)
        pcd = paths["pcd"]
        label = paths.get("sam4d_label")
        if label is None:
            # The official README marks sam4d_labels as optional; look where they would be.
            guess = f"{LABEL_DIR}/{name}/{Path(pcd).stem}.json"
            label = guess if (root / guess).is_file() else None
        pose = _matrix(fr["lidar2world"], (4, 4), f"{where}['lidar2world']", src)
        cams_raw = fr["cams_info"]
        if not isinstance(cams_raw, Mapping):
            raise DatasetError(f"{where}['cams_info'] must be a dict", src)
        cams: dict[str, Waymo4DSegCameraInfo] = {}
        for cam, ci in cams_raw.items():
            cw = f"{where}['cams_info'][{cam!r}]"
            if not isinstance(ci, Mapping):
                raise DatasetError(f"{cw} must be a dict", src)
            for key in ("data_path", "camera_intrinsics", "camera2lidar"):
                if key not in ci:
                    raise DatasetError(f"{cw} lacks the required key {key!r}", src)
            k = _matrix(ci["camera_intrinsics"], (3, 3), f"{cw}['camera_intrinsics']", src)
            c2l = _matrix(ci["camera2lidar"], (4, 4), f"{cw}['camera2lidar']", src)
            ts = ci.get("timestamp_s")
            cams[str(cam)] = Waymo4DSegCameraInfo(
                name=str(cam),
                data_path=str(ci["data_path"]),
                intrinsics=k,
                cam_from_lidar=_invert(c2l),
                timestamp=None if ts is None else float(ts),
            )
        frames.append(
            Waymo4DSegFrameInfo(
                index=i,
                timestamp=_frame_timestamp(fr, pcd, src, i),
                pcd_path=pcd,
                label_path=label,
                world_from_lidar=pose,
                cameras=cams,
            )
        )
    fields = raw.get("point_fields")
    return _SequenceMeta(
        name=name,
        frames=frames,
        point_fields=None if fields is None else tuple(str(f) for f in fields),
        lidar_frame_id=str(raw.get("lidar_frame_id", "lidar")),
        world_frame_id=str(raw.get("world_frame_id", "odom")),
    )


def _load_points(path: Path) -> np.ndarray:
    """(N, C) float32 from ``pcds/.../<ts>.npz`` with clear errors for missing/corrupt files."""
    if not path.is_file():
        raise DatasetError("point cloud file does not exist", path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "data" not in npz.files:
                raise DatasetError(f"npz has no key 'data' (keys: {npz.files})", path)
            data = npz["data"]
    except DatasetError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise DatasetError(f"corrupt or truncated npz ({type(e).__name__}: {e})", path) from None
    if data.ndim != 2 or data.shape[1] < 3:
        raise DatasetError(f"'data' must be (N, C>=3) with xyz first, got shape {data.shape}", path)
    if data.dtype.kind not in "fiu":
        raise DatasetError(f"'data' must be numeric, got dtype {data.dtype}", path)
    return np.ascontiguousarray(data, dtype=np.float32)


def _load_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError("image file does not exist", path) from None
    except OSError as e:
        raise DatasetError(f"cannot read image ({e})", path) from None
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR) if buf.size else None
    if img is None:
        raise DatasetError("not a decodable image (corrupt or truncated file?)", path)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _load_labels(path: Path) -> dict[str, Any]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError("label file does not exist", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"not a valid label JSON ({e})", path) from None
    if not isinstance(raw, Mapping) or not isinstance(raw.get("sensors"), Mapping):
        raise DatasetError("label JSON must be a dict with a 'sensors' dict", path)
    return dict(raw)


def _objects_of(sensors: Mapping[str, Any], sensor: str, path: Path) -> list[Mapping[str, Any]]:
    entry = sensors[sensor]
    objs = entry.get("objects") if isinstance(entry, Mapping) else None
    if not isinstance(objs, list):
        raise DatasetError(f"sensors[{sensor!r}] must be a dict with an 'objects' list", path)
    for j, o in enumerate(objs):
        if not isinstance(o, Mapping) or "object_id" not in o:
            raise DatasetError(f"sensors[{sensor!r}]['objects'][{j}] lacks 'object_id'", path)
    return objs


def _object_info(o: Mapping[str, Any]) -> ObjectInfo:
    vol = o.get("volume")
    sem = o.get("semantic")
    return ObjectInfo(
        object_id=int(o["object_id"]),
        semantic="unknown" if sem is None else str(sem),
        score=float(o.get("score", 1.0)),
        volume=None if vol is None else float(vol),
    )


class Waymo4DSegDataset:
    """A Waymo-4DSeg directory: lists sequences and loads frames lazily.

    Example::

        ds = Waymo4DSegDataset("/data/waymo4dseg")
        for name in ds.sequence_names():
            seq = ds.load_sequence(name)            # everything
            frame = ds.load_frame(name, 3)          # or one frame at a time

    Args:
        root: the data set root (holds ``meta_infos/``).
        lidar_sensor: LiDAR sensor name in the label JSONs.
        trusted_pickle: load pkls with the unrestricted unpickler.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        lidar_sensor: str = DEFAULT_LIDAR_SENSOR,
        trusted_pickle: bool = False,
    ) -> None:
        self.root = Path(root)
        self.lidar_sensor = lidar_sensor
        self.trusted_pickle = trusted_pickle
        if not self.root.is_dir():
            raise DatasetError("Waymo-4DSeg root directory does not exist", self.root)
        if not (self.root / META_DIR).is_dir():
            raise DatasetError(f"not a Waymo-4DSeg root: no '{META_DIR}/' directory", self.root)
        self._meta: dict[str, _SequenceMeta] = {}

    def sequence_names(self) -> list[str]:
        """Names of the sequences (one per ``meta_infos/*.pkl``), sorted."""
        return sorted(p.stem for p in (self.root / META_DIR).glob("*.pkl"))

    def meta(self, name: str) -> _SequenceMeta:
        """Parsed and validated meta info of a sequence (cached)."""
        if name not in self._meta:
            path = self.root / META_DIR / f"{name}.pkl"
            if not path.is_file():
                raise DatasetError(f"no sequence {name!r} (have: {self.sequence_names()})", path)
            self._meta[name] = _parse_meta(_load_pickle(path, self.trusted_pickle), path, self.root)
        return self._meta[name]

    def num_frames(self, name: str) -> int:
        return len(self.meta(name).frames)

    def frame_infos(self, name: str) -> list[Waymo4DSegFrameInfo]:
        return self.meta(name).frames

    def point_fields(self, name: str) -> tuple[str, ...]:
        """Column names of the points; derived from the first npz when the pkl does not say."""
        meta = self.meta(name)
        if meta.point_fields is not None:
            return meta.point_fields
        if not meta.frames:
            return ("x", "y", "z", "intensity")
        cols = _load_points(self.root / meta.frames[0].pcd_path).shape[1]
        return _default_fields(cols)

    def load_frame(
        self,
        name: str,
        index: int,
        *,
        load_images: bool = True,
        load_labels: bool = True,
        cameras: SequenceABC[str] | None = None,
    ) -> Frame:
        """Load one frame: points, images (optional), calibration, pose and labels (optional).

        Args:
            cameras: only these cameras (default all in the pkl).
            load_images: when False, images are (0, 0, 3) placeholders (calibration only).
        """
        meta = self.meta(name)
        if not -len(meta.frames) <= index < len(meta.frames):
            raise IndexError(
                f"frame {index} out of range for sequence {name!r} ({len(meta.frames)})"
            )
        info = meta.frames[index]
        fields = meta.point_fields
        pts = _load_points(self.root / info.pcd_path)
        if fields is not None and pts.shape[1] != len(fields):
            raise DatasetError(
                f"points have {pts.shape[1]} columns but the meta info names {len(fields)} "
                f"fields {list(fields)}",
                self.root / info.pcd_path,
            )
        if pts.shape[1] == 3:
            # Downstream always expects an intensity column; xyz-only files get zeros.
            pts = np.concatenate([pts, np.zeros((pts.shape[0], 1), np.float32)], axis=1)
        cams: dict[str, CameraFrame] = {}
        for cname, ci in info.cameras.items():
            if cameras is not None and cname not in cameras:
                continue
            img = (
                _load_image(self.root / ci.data_path)
                if load_images
                else np.zeros((0, 0, 3), np.uint8)
            )
            cams[cname] = CameraFrame(
                name=cname,
                image=img,
                intrinsics=ci.intrinsics.copy(),
                cam_from_lidar=ci.cam_from_lidar.copy(),
                timestamp=ci.timestamp,
            )
        frame = Frame(
            timestamp=info.timestamp,
            points=pts,
            cameras=cams,
            world_from_lidar=info.world_from_lidar.copy(),
            index=index if index >= 0 else len(meta.frames) + index,
        )
        if load_labels and info.label_path is not None:
            self._apply_labels(frame, self.root / info.label_path, load_images)
        return frame

    def _apply_labels(self, frame: Frame, path: Path, check_image_size: bool) -> None:
        sensors = _load_labels(path)["sensors"]
        objects: dict[int, ObjectInfo] = {}
        if self.lidar_sensor in sensors:
            n = frame.points.shape[0]
            labels = np.zeros(n, dtype=np.int32)
            ignore = None
            for o in _objects_of(sensors, self.lidar_sensor, path):
                oid = int(o["object_id"])
                if "lidar_mask" not in o:
                    raise DatasetError(f"LiDAR object {oid} lacks 'lidar_mask'", path)
                src = f"{path} (sensor {self.lidar_sensor!r}, object {oid})"
                m = decode_point_mask(o["lidar_mask"], num_points=n, source=src)
                if oid == IGNORE_ID:
                    ignore = m
                    continue
                labels[m] = oid
                objects.setdefault(oid, _object_info(o))
            if ignore is not None:
                labels[ignore] = IGNORE_ID
            frame.point_labels = labels
        for cname, cam in frame.cameras.items():
            if cname not in sensors:
                continue
            inst: np.ndarray | None = None
            for o in _objects_of(sensors, cname, path):
                oid = int(o["object_id"])
                if oid == IGNORE_ID:
                    continue
                if "image_mask" not in o:
                    raise DatasetError(f"camera {cname!r} object {oid} lacks 'image_mask'", path)
                src = f"{path} (sensor {cname!r}, object {oid})"
                shape = cam.image.shape[:2] if check_image_size else None
                m = decode_mask(o["image_mask"], shape=shape, source=src)
                if inst is None:
                    inst = np.zeros(m.shape, dtype=np.int32)
                elif inst.shape != m.shape:
                    raise RLEError(f"mask size {list(m.shape)} differs from earlier masks", src)
                inst[m] = oid
                objects.setdefault(oid, _object_info(o))
            if inst is None:
                h, w = cam.image.shape[:2]
                inst = np.zeros((h, w), dtype=np.int32)
            cam.instance_mask = inst
        frame.objects = dict(sorted(objects.items()))

    def iter_frames(self, name: str, **kwargs: Any) -> Iterator[Frame]:
        """Yield the frames of a sequence one at a time (keyword args as :meth:`load_frame`)."""
        for i in range(self.num_frames(name)):
            yield self.load_frame(name, i, **kwargs)

    def load_sequence(
        self,
        name: str,
        *,
        frames: SequenceABC[int] | slice | None = None,
        progress: ProgressFn | None = None,
        **kwargs: Any,
    ) -> Sequence:
        """Load a sequence (or the frames selected by ``frames``) into memory."""
        meta = self.meta(name)
        indices = list(range(len(meta.frames)))
        if isinstance(frames, slice):
            indices = indices[frames]
        elif frames is not None:
            indices = [int(i) for i in frames]
        out: list[Frame] = []
        for k, i in enumerate(indices):
            out.append(self.load_frame(name, i, **kwargs))
            if progress is not None:
                progress(k + 1, len(indices))
        return Sequence(
            name=meta.name,
            frames=out,
            point_fields=self.point_fields(name),
            lidar_frame_id=meta.lidar_frame_id,
            world_frame_id=meta.world_frame_id,
        )


def _default_fields(cols: int) -> tuple[str, ...]:
    base = ("x", "y", "z", "intensity")
    return base + tuple(f"f{i}" for i in range(4, max(cols, 4)))


def read_waymo4dseg(
    root: str | os.PathLike[str],
    name: str | None = None,
    **kwargs: Any,
) -> Sequence:
    """Load one whole sequence; ``name`` may be omitted when the root holds exactly one."""
    ds = Waymo4DSegDataset(root)
    if name is None:
        names = ds.sequence_names()
        if len(names) != 1:
            raise DatasetError(
                f"give a sequence name: the root holds {len(names)} sequences {names}", ds.root
            )
        name = names[0]
    return ds.load_sequence(name, **kwargs)


# ----------------------------------------------------------------------------------------------
# writing


def _encode_image(image: np.ndarray, fmt: str, jpeg_quality: int, what: str) -> bytes:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"{what}: image must be (H, W, 3) uint8 RGB, got {image.shape} {image.dtype}"
        )
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == "jpg" else []
    ok, buf = cv2.imencode("." + fmt, bgr, params)
    if not ok:
        raise ValueError(f"{what}: OpenCV could not encode the image as {fmt}")
    return buf.tobytes()


def _object_entry(info: ObjectInfo | None, oid: int) -> dict[str, Any]:
    info = info or ObjectInfo(object_id=oid)
    entry: dict[str, Any] = {
        "object_id": int(oid),
        "semantic": info.semantic,
        "score": float(info.score),
    }
    if info.volume is not None:
        entry["volume"] = float(info.volume)
    return entry


def _label_json(frame: Frame, lidar_sensor: str, compressed: bool) -> dict[str, Any] | None:
    sensors: dict[str, Any] = {}
    if frame.point_labels is not None:
        labels = np.asarray(frame.point_labels)
        if labels.shape != (frame.points.shape[0],):
            raise ValueError(
                f"frame {frame.index}: point_labels shape {labels.shape} != "
                f"({frame.points.shape[0]},)"
            )
        ids = [int(i) for i in np.unique(labels) if i > 0]
        all_ids = sorted(set(ids) | {int(i) for i in frame.objects if int(i) > 0})
        objs = []
        for oid in all_ids:
            e = _object_entry(frame.objects.get(oid), oid)
            e["lidar_mask"] = encode_point_mask(labels == oid, compressed=compressed)
            objs.append(e)
        objs.append(
            {
                "object_id": IGNORE_ID,
                "lidar_mask": encode_point_mask(labels == IGNORE_ID, compressed=compressed),
            }
        )
        sensors[lidar_sensor] = {"objects": objs}
    for cname, cam in frame.cameras.items():
        if cam.instance_mask is None:
            continue
        inst = np.asarray(cam.instance_mask)
        if inst.shape != cam.image.shape[:2]:
            raise ValueError(
                f"frame {frame.index} camera {cname!r}: instance_mask {inst.shape} != image "
                f"{cam.image.shape[:2]}"
            )
        objs = []
        for oid in (int(i) for i in np.unique(inst) if i > 0):
            e = _object_entry(frame.objects.get(oid), oid)
            e["image_mask"] = encode_mask(inst == oid, compressed=compressed)
            objs.append(e)
        sensors[cname] = {"objects": objs}
    return {"sensors": sensors} if sensors else None


def write_waymo4dseg(
    sequence: Sequence,
    root: str | os.PathLike[str],
    *,
    image_format: Literal["jpg", "png"] = "jpg",
    jpeg_quality: int = 95,
    lidar_sensor: str = DEFAULT_LIDAR_SENSOR,
    compressed_rle: bool = True,
    compress_points: bool = True,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
) -> Path:
    """Write a sequence into a Waymo-4DSeg root (created if needed).

    Everything is written into a temporary directory under ``root`` first and renamed into place
    at the end, the pkl last: a failure leaves no partial sequence behind (the sequence only
    becomes visible when its pkl appears).

    Args:
        image_format: ``"jpg"`` like the official data, or ``"png"`` for a lossless round trip.
        compressed_rle: string RLE counts (as pycocotools writes) rather than int lists.
        compress_points: ``np.savez_compressed`` rather than ``np.savez``.
        overwrite: replace an existing sequence of the same name (otherwise an error).
        progress: called as ``progress(frames_done, frames_total)``.

    Returns:
        path of the written ``meta_infos/<seq>.pkl``.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    name = sequence.name
    _check_name(name, "sequence name")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final_pkl = root / META_DIR / f"{name}.pkl"
    targets = [root / PCD_DIR / name, root / IMAGE_DIR / name, root / LABEL_DIR / name]
    if not overwrite and (final_pkl.exists() or any(t.exists() for t in targets)):
        raise FileExistsError(
            f"sequence {name!r} already exists under {root} (pass overwrite=True / --overwrite)"
        )

    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        meta_frames = []
        seen_ts: dict[int, int] = {}
        n = len(sequence.frames)
        for k, frame in enumerate(sequence.frames):
            meta_frames.append(
                _write_frame(
                    frame,
                    k,
                    tmp,
                    name,
                    seen_ts,
                    image_format,
                    jpeg_quality,
                    lidar_sensor,
                    compressed_rle,
                    compress_points,
                    sequence.point_fields,
                )
            )
            if progress is not None:
                progress(k + 1, n)
        meta = {
            "seq_name": name,
            "frames": meta_frames,
            "point_fields": list(sequence.point_fields),
            "lidar_frame_id": sequence.lidar_frame_id,
            "world_frame_id": sequence.world_frame_id,
            "format": FORMAT_TAG,
        }
        pkl_bytes = pickle.dumps(meta, protocol=4)
        # Commit: data directories first, the pkl (which makes the sequence visible) last.
        if overwrite and final_pkl.exists():
            final_pkl.unlink()
        for t in targets:
            src = tmp / t.relative_to(root)
            if t.exists():
                shutil.rmtree(t)
            if src.exists():
                t.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, t)
        final_pkl.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write_bytes(final_pkl, pkl_bytes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final_pkl


def _write_frame(
    frame: Frame,
    k: int,
    tmp: Path,
    name: str,
    seen_ts: dict[int, int],
    image_format: str,
    jpeg_quality: int,
    lidar_sensor: str,
    compressed_rle: bool,
    compress_points: bool,
    point_fields: tuple[str, ...],
) -> dict[str, Any]:
    if not math.isfinite(frame.timestamp):
        raise ValueError(f"frame {k}: timestamp {frame.timestamp} is not finite")
    ts = timestamp_us(frame.timestamp)
    if ts in seen_ts:
        raise ValueError(
            f"frames {seen_ts[ts]} and {k} share the microsecond timestamp {ts}; "
            "Waymo-4DSeg names files by it"
        )
    seen_ts[ts] = k
    pts = np.asarray(frame.points)
    if pts.ndim != 2 or pts.shape[1] != len(point_fields):
        raise ValueError(
            f"frame {k}: points shape {pts.shape} does not match point_fields {list(point_fields)}"
        )
    pcd_rel = f"{PCD_DIR}/{name}/{ts}.npz"
    (tmp / pcd_rel).parent.mkdir(parents=True, exist_ok=True)
    saver = np.savez_compressed if compress_points else np.savez
    saver(tmp / pcd_rel, data=pts.astype(np.float32, copy=False))
    cams_info: dict[str, Any] = {}
    for cname, cam in frame.cameras.items():
        _check_name(cname, "camera name")
        rel = f"{IMAGE_DIR}/{name}/{ts}/{cname}.{image_format}"
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(
            _encode_image(
                np.asarray(cam.image), image_format, jpeg_quality, f"frame {k} camera {cname!r}"
            )
        )
        cams_info[cname] = {
            "data_path": rel,
            "camera_intrinsics": np.asarray(cam.intrinsics, np.float64).tolist(),
            "camera2lidar": _invert(np.asarray(cam.cam_from_lidar, np.float64)).tolist(),
            "timestamp_s": None if cam.timestamp is None else float(cam.timestamp),
        }
    paths: dict[str, str] = {"pcd": pcd_rel}
    labels = _label_json(frame, lidar_sensor, compressed_rle)
    if labels is not None:
        label_rel = f"{LABEL_DIR}/{name}/{ts}.json"
        (tmp / label_rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / label_rel).write_text(json.dumps(labels, separators=(",", ":")))
        paths["sam4d_label"] = label_rel
    return {
        "timestamp": ts,
        "timestamp_s": float(frame.timestamp),
        "cams_info": cams_info,
        "path": paths,
        "lidar2world": np.asarray(frame.world_from_lidar, np.float64).tolist(),
    }
