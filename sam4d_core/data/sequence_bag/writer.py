"""Writing rosbag2 recordings: :class:`SequenceBagWriter` (frame by frame),
:func:`write_frames_bag` (a stream of frames) and :func:`write_sequence_bag` (a whole sequence)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rosbags import interfaces as bag_qos
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

from sam4d_core.codecs.image import compressed_format_string, encode_compressed
from sam4d_core.codecs.transform import invert_transform
from sam4d_core.data.sequence import CameraFrame, Frame, Sequence
from sam4d_core.data.sequence_bag.messages import (
    camera_info_msg,
    cloud_msg,
    header_msg,
    image_msg,
    objects_msg,
    points_structured,
    static_qos,
    tf_message,
    transform_msg,
)
from sam4d_core.data.sequence_bag.schema import (
    FORMAT_TAG,
    METADATA_KEY,
    TYPESTORE,
    BagTopics,
    ProgressFn,
    T,
    stamp_ns,
)

TF_TYPE = "tf2_msgs/msg/TFMessage"
CLOUD_TYPE = "sensor_msgs/msg/PointCloud2"
IMAGE_TYPE = "sensor_msgs/msg/Image"


def _check_topic_name(name: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{what} {name!r} cannot be used in a ROS topic / frame name")


def _camera_stamp(frame: Frame, cam: CameraFrame) -> float:
    return frame.timestamp if cam.timestamp is None else cam.timestamp


class SequenceBagWriter:
    """Write frames into a rosbag2 recording one at a time (holds one frame in memory).

    Use as a context manager; on an exception nothing is left at ``path``::

        with SequenceBagWriter(path, name="drive", point_fields=fields,
                               static_cameras={"front": cam_from_lidar}) as w:
            for frame in frames:
                w.write_frame(frame)

    Args:
        name / point_fields / lidar_frame_id / world_frame_id: as in :class:`Sequence`.
        static_cameras: camera name -> (4, 4) cam_from_lidar of cameras with fixed extrinsics
            (written once on ``/tf_static``; a frame that disagrees raises ValueError). Other
            cameras get their extrinsics on ``/tf`` at every image stamp.
        Other arguments as in :func:`write_sequence_bag`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str,
        point_fields: Iterable[str] = ("x", "y", "z", "intensity"),
        lidar_frame_id: str = "lidar",
        world_frame_id: str = "odom",
        static_cameras: dict[str, np.ndarray] | None = None,
        compressed_images: bool = False,
        compression_format: Literal["jpeg", "png"] = "jpeg",
        jpeg_quality: int = 90,
        storage: Literal["mcap", "sqlite3"] = "mcap",
        chunk_compression: Literal["zstd", "none"] | None = None,
        topics: BagTopics = BagTopics(),  # noqa: B008 - frozen dataclass, safe as a default
        base_frame_id: str = "base_link",
        base_from_lidar: np.ndarray | None = None,
        camera_frame_template: str = "{name}_optical_frame",
        ground_truth: bool = True,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        if storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        if chunk_compression is None:
            chunk_compression = "zstd" if storage == "mcap" else "none"
        if chunk_compression not in ("zstd", "none"):
            raise ValueError(
                f"chunk_compression must be 'zstd' or 'none', got {chunk_compression!r}"
            )
        if chunk_compression == "zstd" and storage != "mcap":
            raise ValueError(
                "chunk_compression 'zstd' needs storage 'mcap' (sqlite3 has no chunks)"
            )
        self.chunk_compression = chunk_compression
        if compression_format not in ("jpeg", "png"):
            raise ValueError(
                f"compression_format must be 'jpeg' or 'png', got {compression_format!r}"
            )
        if self.path.exists() and not overwrite:
            raise FileExistsError(
                f"{self.path} exists (pass overwrite=True / --overwrite to replace it)"
            )
        if len({lidar_frame_id, world_frame_id, base_frame_id}) != 3:
            raise ValueError(
                f"world ({world_frame_id!r}), base ({base_frame_id!r}) and LiDAR "
                f"({lidar_frame_id!r}) frame ids must differ"
            )
        self.fields = tuple(point_fields)
        if self.fields[:3] != ("x", "y", "z") or len(set(self.fields)) != len(self.fields):
            raise ValueError(
                f"point_fields must start with x, y, z and be unique, got {self.fields}"
            )
        self.name = name
        self.lidar_frame = lidar_frame_id
        self.world_frame = world_frame_id
        self.base_frame = base_frame_id
        self.base_from_lidar = (
            np.eye(4) if base_from_lidar is None else np.asarray(base_from_lidar, dtype=np.float64)
        )
        self.lidar_from_base = invert_transform(self.base_from_lidar)
        self.static_cams = {
            k: np.asarray(v, dtype=np.float64) for k, v in (static_cameras or {}).items()
        }
        for c in self.static_cams:
            _check_topic_name(c, "camera name")
        self.camera_frame_template = camera_frame_template
        self.cam_frames: dict[str, str] = {}
        self.topics = topics
        self.compressed = compressed_images
        self.compression_format = compression_format
        self.jpeg_quality = jpeg_quality
        self.ground_truth = ground_truth
        self.num_frames = 0
        self._conns: dict[str, Any] = {}
        self._tmp_parent = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._tmp_parent.mkdir(parents=True)
        self._tmp_bag = self._tmp_parent / self.path.name
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._writer: Writer | None = Writer(self._tmp_bag, version=8, storage_plugin=plugin)
            if chunk_compression == "zstd":
                # STORAGE mode = MCAP chunk compression; metadata.yaml then says "no
                # compression", as rosbag2 does for it, so every rosbag2 reader opens the bag.
                self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
            self._writer.open()
        except Exception:
            shutil.rmtree(self._tmp_parent, ignore_errors=True)
            raise

    def __enter__(self) -> SequenceBagWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def _write(
        self, topic: str, msgtype: str, ns: int, msg: Any, qos: list[bag_qos.Qos] | None = None
    ) -> None:
        assert self._writer is not None, "writer is closed"
        if topic not in self._conns:
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, typestore=TYPESTORE, offered_qos_profiles=qos or []
            )
        self._writer.write(self._conns[topic], ns, TYPESTORE.serialize_cdr(msg, msgtype))

    def _cam_frame(self, name: str) -> str:
        if name not in self.cam_frames:
            _check_topic_name(name, "camera name")
            self.cam_frames[name] = self.camera_frame_template.format(name=name)
        return self.cam_frames[name]

    def write_frame(self, frame: Frame) -> None:
        """Append one frame (sweep, images, TF, ground truth) to the recording."""
        if self._writer is None:
            raise RuntimeError("the bag writer is closed")
        k = self.num_frames
        for c, cam in frame.cameras.items():
            self._cam_frame(c)
            if c in self.static_cams and not np.array_equal(
                cam.cam_from_lidar, self.static_cams[c]
            ):
                raise ValueError(
                    f"frame {k} camera {c!r}: cam_from_lidar differs from the static calibration"
                )
        if k == 0:
            # /tf_static once, at the earliest stamp of the first frame, so that it precedes
            # every message that needs it when the bag is played.
            first_ns = min(
                [stamp_ns(frame.timestamp)]
                + [stamp_ns(_camera_stamp(frame, cam)) for cam in frame.cameras.values()]
            )
            statics = [
                transform_msg(first_ns, self.base_frame, self.lidar_frame, self.base_from_lidar)
            ]
            statics += [
                transform_msg(first_ns, self.lidar_frame, self._cam_frame(c), invert_transform(m))
                for c, m in self.static_cams.items()
            ]
            self._write(self.topics.tf_static, TF_TYPE, first_ns, tf_message(statics), static_qos())
        msgs = self._frame_messages(frame, k)
        for ns, topic, msgtype, msg in sorted(msgs, key=lambda m: m[0]):
            self._write(topic, msgtype, ns, msg)
        self.num_frames += 1

    def _frame_messages(self, frame: Frame, k: int) -> list[tuple[int, str, str, Any]]:
        """All messages of frame ``k`` as (stamp_ns, topic, msgtype, message)."""
        out: list[tuple[int, str, str, Any]] = []
        topics, fields = self.topics, self.fields
        ns = stamp_ns(frame.timestamp)
        pts = np.asarray(frame.points)
        if pts.ndim != 2 or pts.shape[1] != len(fields):
            raise ValueError(
                f"frame {k}: points shape {pts.shape} does not match point_fields {fields}"
            )
        world_from_base = (
            np.asarray(frame.world_from_lidar, dtype=np.float64) @ self.lidar_from_base
        )
        pose = transform_msg(ns, self.world_frame, self.base_frame, world_from_base, f"frame {k}: ")
        # The caller sorts by stamp with a stable sort: transforms go first so that a player
        # feeding a tf2 buffer has the pose before the data stamped at the same time.
        out.append((ns, topics.tf, TF_TYPE, tf_message([pose])))
        cloud = cloud_msg(ns, self.lidar_frame, points_structured(pts, fields))
        out.append((ns, topics.lidar_points, CLOUD_TYPE, cloud))
        if self.ground_truth and frame.point_labels is not None:
            labels = np.asarray(frame.point_labels)
            if labels.shape != (pts.shape[0],):
                raise ValueError(
                    f"frame {k}: point_labels shape {labels.shape} != ({pts.shape[0]},)"
                )
            # Labels only: the coordinates are the sweep's (same stamp, same point order).
            lab = np.empty(pts.shape[0], dtype=[("label", "<i4")])
            lab["label"] = labels
            out.append(
                (ns, topics.gt_labeled_points, CLOUD_TYPE, cloud_msg(ns, self.lidar_frame, lab))
            )
        if self.ground_truth and (frame.has_ground_truth or frame.objects):
            out.append(
                (ns, topics.gt_objects, "std_msgs/msg/String", objects_msg(ns, k, frame.objects))
            )
        for name, cam in frame.cameras.items():
            out += self._camera_messages(k, name, cam, stamp_ns(_camera_stamp(frame, cam)))
        return out

    def _camera_messages(
        self, k: int, name: str, cam: CameraFrame, cns: int
    ) -> list[tuple[int, str, str, Any]]:
        """The messages of camera ``name`` in frame ``k`` (stamped ``cns``)."""
        out: list[tuple[int, str, str, Any]] = []
        topics, cframe = self.topics, self.cam_frames[name]
        where = f"frame {k} camera {name!r}: "
        img = np.asarray(cam.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(f"{where}image must be (H, W, 3) uint8, got {img.shape} {img.dtype}")
        if name not in self.static_cams:
            lidar_from_cam = invert_transform(np.asarray(cam.cam_from_lidar, dtype=np.float64))
            extrinsic = transform_msg(cns, self.lidar_frame, cframe, lidar_from_cam, where)
            out.append((cns, topics.tf, TF_TYPE, tf_message([extrinsic])))
        if self.compressed:
            data = encode_compressed(img, self.compression_format, self.jpeg_quality)
            msg = T["sensor_msgs/msg/CompressedImage"](
                header=header_msg(cns, cframe),
                format=compressed_format_string(self.compression_format, "rgb8"),
                data=np.frombuffer(data, dtype=np.uint8),
            )
            out.append((cns, topics.compressed(name), "sensor_msgs/msg/CompressedImage", msg))
        else:
            out.append((cns, topics.image(name), IMAGE_TYPE, image_msg(cns, cframe, img, "rgb8")))
        info = camera_info_msg(cns, cframe, np.asarray(cam.intrinsics), cam.size_wh)
        out.append((cns, topics.info(name), "sensor_msgs/msg/CameraInfo", info))
        if self.ground_truth and cam.instance_mask is not None:
            inst = np.asarray(cam.instance_mask)
            if inst.shape != img.shape[:2]:
                raise ValueError(f"{where}instance_mask {inst.shape} != image {img.shape[:2]}")
            if inst.size == 0 or (inst.min() >= 0 and inst.max() <= 0xFFFF):
                arr, enc = inst.astype(np.uint16), "mono16"
            else:
                arr, enc = inst.astype(np.int32), "32SC1"
            mask = image_msg(cns, cframe, arr, enc)
            out.append((cns, topics.instance_labels(name), IMAGE_TYPE, mask))
        return out

    def close(self) -> Path:
        """Finish the bag and move it to ``path`` (replacing what was there with overwrite)."""
        if self._writer is None:
            return self.path
        writer, self._writer = self._writer, None
        try:
            info = {
                "format": FORMAT_TAG,
                "name": self.name,
                "point_fields": list(self.fields),
                "lidar_frame_id": self.lidar_frame,
                "world_frame_id": self.world_frame,
                "base_frame_id": self.base_frame,
                "cameras": dict(self.cam_frames),
                "num_frames": self.num_frames,
            }
            writer.set_custom_data(METADATA_KEY, json.dumps(info))
            writer.close()
            if self.path.exists():
                os.replace(self.path, self._tmp_parent / ".replaced")
            os.replace(self._tmp_bag, self.path)
        finally:
            shutil.rmtree(self._tmp_parent, ignore_errors=True)
        return self.path

    def abort(self) -> None:
        """Drop everything written so far; nothing appears at ``path``."""
        writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()
        shutil.rmtree(self._tmp_parent, ignore_errors=True)


def static_calibrations(frames: Iterable[Frame]) -> dict[str, np.ndarray]:
    """Cameras whose cam_from_lidar is the same in every frame they appear in -> that matrix."""
    seen: dict[str, np.ndarray] = {}
    moving: set[str] = set()
    for f in frames:
        for c, cam in f.cameras.items():
            if c in seen and not np.array_equal(seen[c], cam.cam_from_lidar):
                moving.add(c)
            seen.setdefault(c, np.asarray(cam.cam_from_lidar, dtype=np.float64))
    return {c: m for c, m in seen.items() if c not in moving}


def write_frames_bag(
    path: str | os.PathLike[str],
    frames: Iterable[Frame],
    *,
    total: int | None = None,
    progress: ProgressFn | None = None,
    **writer_options: Any,
) -> Path:
    """Stream ``frames`` into a new bag at ``path`` (a :class:`SequenceBagWriter`, one frame at a
    time: frames can come from a generator and are not kept).

    ``writer_options`` are :class:`SequenceBagWriter`'s keyword arguments (``name`` is required);
    ``progress(frames_done, total)`` is called after each frame (``total`` None: frames done so
    far). Nothing is left at ``path`` when writing fails. Returns ``path`` as a Path.
    """
    with SequenceBagWriter(path, **writer_options) as writer:
        for k, frame in enumerate(frames):
            writer.write_frame(frame)
            if progress is not None:
                progress(k + 1, k + 1 if total is None else total)
    return Path(path)


def write_sequence_bag(
    sequence: Sequence,
    path: str | os.PathLike[str],
    *,
    progress: ProgressFn | None = None,
    **options: Any,
) -> Path:
    """Write a sequence as a rosbag2 directory at ``path``.

    The name, point fields, LiDAR / world frame ids and the static camera calibrations
    (:func:`static_calibrations`) come from the sequence; ``options`` are the other keyword
    arguments of :class:`SequenceBagWriter`:

    - ``compressed_images``: CompressedImage (``compression_format`` jpeg, lossy, or png,
      lossless; ``jpeg_quality``) instead of rgb8 Image;
    - ``storage``: ``"mcap"`` (default) or ``"sqlite3"``;
    - ``chunk_compression``: ``"zstd"`` (MCAP chunks compressed with zstd) or ``"none"``; default
      zstd for MCAP, none for sqlite3 (which has no chunks; zstd there is a ValueError);
    - ``base_frame_id`` / ``base_from_lidar``: the vehicle frame between the world and the LiDAR;
      the (4, 4) LiDAR mounting pose in it (default identity). ``/tf`` carries
      ``world_from_base = world_from_lidar @ inv(base_from_lidar)``;
    - ``topics`` (:class:`BagTopics`), ``camera_frame_template`` (TF frame of each camera's optical
      frame), ``ground_truth`` (also write the ground-truth topics), ``overwrite`` (replace an
      existing bag at ``path``).

    ``progress`` is called as ``progress(frames_done, frames_total)``. The bag is written under a
    temporary name next to ``path`` and renamed at the end: on failure nothing is left at ``path``.

    Returns:
        ``path`` as a Path.
    """
    return write_frames_bag(
        path,
        sequence.frames,
        total=len(sequence.frames),
        progress=progress,
        name=sequence.name,
        point_fields=sequence.point_fields,
        lidar_frame_id=sequence.lidar_frame_id,
        world_frame_id=sequence.world_frame_id,
        static_cameras=static_calibrations(sequence.frames),
        **options,
    )
