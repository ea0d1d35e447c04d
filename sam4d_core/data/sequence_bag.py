"""A :class:`~sam4d_core.data.sequence.Sequence` <-> a rosbag2 recording (MCAP or sqlite3).

Written and read with the ``rosbags`` library, so it needs no ROS install and imports no rclpy
(training code imports it too). Contents of a written bag (topic names from :class:`BagTopics`):

======================================================  =========================================
``/sensors/lidar/points``                               sensor_msgs/PointCloud2, x y z intensity
                                                        (+ extra fields) float32, frame = LiDAR
``/sensors/camera/<cam>/image_raw``                     sensor_msgs/Image rgb8, or
``/sensors/camera/<cam>/image_raw/compressed``          sensor_msgs/CompressedImage jpeg / png
``/sensors/camera/<cam>/camera_info``                   sensor_msgs/CameraInfo (K, P = [K|0],
                                                        plumb_bob with zero distortion)
``/tf``                                                 ``<world> -> base_link`` at each sweep
``/tf_static``                                          ``base_link -> <lidar>`` (mounting) and
                                                        ``<lidar> -> <cam>_optical_frame``
``/ground_truth/<cam>/instance_labels``                 sensor_msgs/Image mono16 (32SC1 when ids
                                                        exceed 65535), 0 = background
``/ground_truth/lidar/labeled_points``                  PointCloud2 with one field, label int32
                                                        (0 background, -1 ignore), point k of the
                                                        sweep with the same stamp
``/ground_truth/objects``                               std_msgs/String, JSON object table
======================================================  =========================================

The object table is ``{"stamp": {"sec", "nanosec"}, "frame_index", "objects": [{"object_id",
"semantic", "score", "volume"}]}``, stamped like the sweep it belongs to (String has no header).
The labeled cloud holds no coordinates: they would repeat the sweep's (and float coordinates are
what compresses worst); the reader also accepts one with x, y, z besides ``label``.
Bags are rosbag2 format version 8 with the message definitions of ROS 2 Humble (identical for
these types up to Kilted); ``/tf_static`` is offered as transient local, like a latched topic.
MCAP files are written with zstd chunk compression by default (what ``ros2 bag record
--storage-preset-profile zstd_fast`` does; every MCAP reader handles it). A bag's bytes depend only
on its content and the library versions (no wall-clock time, host or random id is stored), so
writing the same sequence twice gives identical files.

Stamps: a sweep's messages carry the frame timestamp, a camera's messages the camera timestamp
(the sweep's when the camera has none); the bag's log time equals the header stamp. A camera
whose ``cam_from_lidar`` changes between frames (nuScenes' lidar2cam includes ego motion) is
published on ``/tf`` at its image stamps instead of ``/tf_static``. The sequence name, point
fields and frame ids are also kept in the bag metadata (``custom_data``).

Reading rebuilds one frame per PointCloud2: per camera the image nearest to the sweep stamp
(within a tolerance), the ego pose from TF (interpolated between samples, with an error for gaps),
the extrinsics from TF at the image stamp and the intrinsics from CameraInfo. Ground truth is
matched by exact stamp. Bags from elsewhere work too as long as their topics are named in
``BagTopics`` and their TF tree connects the cloud's and the images' frames.

Round trips sequence -> bag -> sequence are exact for points, labels, images (rgb8 or png),
timestamps at nanosecond resolution, and poses / calibration up to float64 rounding (~1e-15).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from rosbags import interfaces as bag_qos
from rosbags.rosbag2 import CompressionFormat, CompressionMode, Reader, StoragePlugin, Writer
from rosbags.rosbag2.errors import ReaderError
from rosbags.typesys import Stores, get_typestore

from sam4d_core.codecs.errors import CodecError
from sam4d_core.codecs.image import (
    compressed_format_string,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image_array,
    to_rgb,
)
from sam4d_core.codecs.pointcloud import (
    INTENSITY_ALIASES,
    decode_points,
    encode_points,
    find_field,
)
from sam4d_core.codecs.transform import invert_transform, matrix_to_tq
from sam4d_core.data.errors import DatasetError
from sam4d_core.data.sequence import CameraFrame, Frame, ObjectInfo, Sequence
from sam4d_core.geometry.tf_buffer import ExtrapolationError, TfBuffer, TfGapError, TfLookupError

__all__ = [
    "BagError",
    "BagTfError",
    "BagTfExtrapolationError",
    "BagTfGapError",
    "BagTopics",
    "MissingTopicError",
    "SequenceBagReader",
    "SequenceBagWriter",
    "read_bag_metadata",
    "read_sequence_bag",
    "static_calibrations",
    "write_frames_bag",
    "write_sequence_bag",
]

# The format's names in the bag metadata (data, not module paths: existing bags carry them).
FORMAT_TAG = "sam4d_ros.sequence_bag/1"
METADATA_KEY = "sam4d_ros.sequence"
# Message definitions are identical for the types we use from Humble to Kilted; Humble's store is
# the oldest distro we support, so its definitions are the safe choice to embed.
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
T = TYPESTORE.types

ProgressFn = Callable[[int, int], None]


class BagError(DatasetError):
    """A recording that cannot be read as a sequence (names the bag or topic and the problem)."""


class MissingTopicError(BagError):
    """A topic that the reader needs is not in the bag; the message lists the bag's topics."""


class BagTfError(BagError, TfLookupError):
    """A pose or extrinsic that the bag's TF cannot provide.

    Both a :class:`BagError` (a ``DatasetError``: names the topic or bag) and a
    ``sam4d_core.geometry.tf_buffer.TfLookupError``. ``lookup_error`` is the buffer's own error
    (None when the reader found the problem itself); its attributes (``parent``, ``child``,
    ``stamp_ns``, ...) are copied onto this error.
    """

    def __init__(
        self,
        reason: str,
        path: str | os.PathLike[str] | None = None,
        lookup_error: TfLookupError | None = None,
    ) -> None:
        if lookup_error is not None:
            vars(self).update(vars(lookup_error))
        self.lookup_error = lookup_error
        BagError.__init__(self, reason, path)


class BagTfExtrapolationError(BagTfError, ExtrapolationError):
    """The lookup time is outside an edge's recorded TF (a ``tf_buffer.ExtrapolationError``)."""


class BagTfGapError(BagTfExtrapolationError, TfGapError):
    """The TF samples around the lookup time are further apart than ``max_tf_gap`` (a
    ``tf_buffer.TfGapError``)."""


@dataclass(frozen=True)
class BagTopics:
    """Topic names; ``{name}`` in a template is replaced by the camera name."""

    lidar_points: str = "/sensors/lidar/points"
    camera_image: str = "/sensors/camera/{name}/image_raw"
    camera_compressed: str = "/sensors/camera/{name}/image_raw/compressed"
    camera_info: str = "/sensors/camera/{name}/camera_info"
    tf: str = "/tf"
    tf_static: str = "/tf_static"
    gt_instance_labels: str = "/ground_truth/{name}/instance_labels"
    gt_labeled_points: str = "/ground_truth/lidar/labeled_points"
    gt_objects: str = "/ground_truth/objects"

    def image(self, name: str) -> str:
        return self.camera_image.format(name=name)

    def compressed(self, name: str) -> str:
        return self.camera_compressed.format(name=name)

    def info(self, name: str) -> str:
        return self.camera_info.format(name=name)

    def instance_labels(self, name: str) -> str:
        return self.gt_instance_labels.format(name=name)

    def camera_names_in(self, topics: Iterable[str]) -> list[str]:
        """Camera names found in ``topics`` through the camera_info / image templates."""
        names: list[str] = []
        for template in (self.camera_info, self.camera_image, self.camera_compressed):
            pre, _, post = template.partition("{name}")
            pat = re.compile("^" + re.escape(pre) + r"([A-Za-z0-9_]+)" + re.escape(post) + "$")
            for t in sorted(topics):
                m = pat.match(t)
                if m and m.group(1) not in names:
                    names.append(m.group(1))
        return names


# ------------------------------------------------------------------------------------ helpers


def _stamp_ns(t: float) -> int:
    """Seconds -> integer ns without going through t * 1e9 (which loses ~100 ns at epoch times)."""
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"timestamp {t} must be finite and >= 0 for a ROS stamp")
    sec = math.floor(t)
    return sec * 1_000_000_000 + int(round((t - sec) * 1e9))


def _ns_to_s(ns: int) -> float:
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return sec + nsec / 1e9


def _header(ns: int, frame_id: str) -> Any:
    sec, nsec = divmod(ns, 1_000_000_000)
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id
    )


def _msg_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _transform_msg(
    ns: int, parent: str, child: str, parent_from_child: np.ndarray, where: str = ""
) -> Any:
    try:
        t, q = matrix_to_tq(parent_from_child)
    except CodecError as e:
        raise ValueError(f"{where}transform {parent!r} -> {child!r}: {e}") from None
    return T["geometry_msgs/msg/TransformStamped"](
        header=_header(ns, parent),
        child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
        ),
    )


def _tf_name(frame: str) -> str:
    """A frame id as the TF buffer stores it (one leading slash dropped, as tf2 does)."""
    return frame[1:] if frame.startswith("/") else frame


def _add_transform(
    buffer: TfBuffer, tf: Any, topic: str, static: bool, parents: dict[str, str]
) -> None:
    """Add one TransformStamped of the bag to ``buffer``; BagError names the topic when it is
    invalid or when a frame gets a second parent (a recording's TF must be one tree)."""
    parent, child = tf.header.frame_id, tf.child_frame_id
    what = f"{parent!r} -> {child!r}"
    known = parents.setdefault(_tf_name(child), _tf_name(parent))
    if known != _tf_name(parent):
        raise BagError(
            f"frame {child!r} has two parents, {known!r} and {parent!r} (TF must be a tree)", topic
        )
    r, t = tf.transform.rotation, tf.transform.translation
    try:
        buffer.set_transform(
            parent, child, _msg_ns(tf.header), ((t.x, t.y, t.z), (r.x, r.y, r.z, r.w)), static
        )
    except CodecError as e:
        raise BagError(f"bad transform {what}: {e}", topic) from None


def _cloud_msg(ns: int, frame_id: str, structured: np.ndarray) -> Any:
    fields, point_step, data = encode_points(structured)
    pf = T["sensor_msgs/msg/PointField"]
    n = int(structured.shape[0])
    finite = all(
        np.isfinite(structured[f.name]).all()
        for f in fields
        if structured.dtype[f.name].kind == "f"
    )
    return T["sensor_msgs/msg/PointCloud2"](
        header=_header(ns, frame_id),
        height=1,
        width=n,
        fields=[
            pf(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields
        ],
        is_bigendian=False,
        point_step=point_step,
        row_step=point_step * n,
        data=np.ascontiguousarray(data).reshape(-1),
        is_dense=bool(finite),
    )


def _points_structured(points: np.ndarray, fields: tuple[str, ...]) -> np.ndarray:
    pts = np.ascontiguousarray(points, dtype=np.float32)
    dt = np.dtype([(f, "<f4") for f in fields])
    return pts.view(dt).reshape(-1)


def _image_msg(ns: int, frame_id: str, array: np.ndarray, encoding: str) -> Any:
    buf, step = encode_image_array(array, encoding)
    return T["sensor_msgs/msg/Image"](
        header=_header(ns, frame_id),
        height=int(buf.shape[0]),
        width=int(array.shape[1]),
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=buf.reshape(-1),
    )


def _camera_info_msg(ns: int, frame_id: str, k: np.ndarray, size_wh: tuple[int, int]) -> Any:
    p = np.zeros((3, 4))
    p[:, :3] = k
    roi = T["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return T["sensor_msgs/msg/CameraInfo"](
        header=_header(ns, frame_id),
        height=int(size_wh[1]),
        width=int(size_wh[0]),
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.asarray(k, dtype=np.float64).reshape(9),
        r=np.eye(3).reshape(9),
        p=p.reshape(12),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def _static_qos() -> list[bag_qos.Qos]:
    # /tf_static is latched in ROS (transient local); recording it so makes `ros2 bag play`
    # deliver it to late subscribers too.
    zero = bag_qos.QosTime(sec=0, nsec=0)
    return [
        bag_qos.Qos(
            history=bag_qos.QosHistory.KEEP_LAST,
            depth=1,
            reliability=bag_qos.QosReliability.RELIABLE,
            durability=bag_qos.QosDurability.TRANSIENT_LOCAL,
            deadline=zero,
            lifespan=zero,
            liveliness=bag_qos.QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=zero,
            avoid_ros_namespace_conventions=False,
        )
    ]


def _check_topic_name(name: str, what: str) -> None:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"{what} {name!r} cannot be used in a ROS topic / frame name")


def _camera_stamp(frame: Frame, cam: CameraFrame) -> float:
    return frame.timestamp if cam.timestamp is None else cam.timestamp


# ------------------------------------------------------------------------------------ writing


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
                [_stamp_ns(frame.timestamp)]
                + [_stamp_ns(_camera_stamp(frame, cam)) for cam in frame.cameras.values()]
            )
            statics = [
                _transform_msg(first_ns, self.base_frame, self.lidar_frame, self.base_from_lidar)
            ]
            statics += [
                _transform_msg(first_ns, self.lidar_frame, self._cam_frame(c), invert_transform(m))
                for c, m in self.static_cams.items()
            ]
            self._write(
                self.topics.tf_static,
                "tf2_msgs/msg/TFMessage",
                first_ns,
                T["tf2_msgs/msg/TFMessage"](transforms=statics),
                _static_qos(),
            )
        msgs = _frame_messages(
            frame,
            k,
            self.fields,
            self.topics,
            self.lidar_frame,
            self.world_frame,
            self.base_frame,
            self.lidar_from_base,
            self.cam_frames,
            self.static_cams,
            self.compressed,
            self.compression_format,
            self.jpeg_quality,
            self.ground_truth,
        )
        for ns, topic, msgtype, msg in sorted(msgs, key=lambda m: m[0]):
            self._write(topic, msgtype, ns, msg)
        self.num_frames += 1

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


def _frame_messages(
    frame: Frame,
    k: int,
    fields: tuple[str, ...],
    topics: BagTopics,
    lidar_frame: str,
    world_frame: str,
    base_frame: str,
    lidar_from_base: np.ndarray,
    cam_frames: dict[str, str],
    static_cams: dict[str, np.ndarray],
    compressed: bool,
    compression_format: str,
    jpeg_quality: int,
    ground_truth: bool,
) -> list[tuple[int, str, str, Any]]:
    """All messages of one frame as (stamp_ns, topic, msgtype, message)."""
    out: list[tuple[int, str, str, Any]] = []
    ns = _stamp_ns(frame.timestamp)
    pts = np.asarray(frame.points)
    if pts.ndim != 2 or pts.shape[1] != len(fields):
        raise ValueError(
            f"frame {k}: points shape {pts.shape} does not match point_fields {fields}"
        )
    world_from_base = np.asarray(frame.world_from_lidar, dtype=np.float64) @ lidar_from_base
    tf_msg = T["tf2_msgs/msg/TFMessage"](
        transforms=[_transform_msg(ns, world_frame, base_frame, world_from_base, f"frame {k}: ")]
    )
    # The caller sorts by stamp with a stable sort: transforms go first so that a player feeding
    # a tf2 buffer has the pose before the data stamped at the same time.
    out.append((ns, topics.tf, "tf2_msgs/msg/TFMessage", tf_msg))
    out.append(
        (
            ns,
            topics.lidar_points,
            "sensor_msgs/msg/PointCloud2",
            _cloud_msg(ns, lidar_frame, _points_structured(pts, fields)),
        )
    )
    if ground_truth and frame.point_labels is not None:
        labels = np.asarray(frame.point_labels)
        if labels.shape != (pts.shape[0],):
            raise ValueError(f"frame {k}: point_labels shape {labels.shape} != ({pts.shape[0]},)")
        # Labels only: the coordinates are the sweep's (same stamp, same point order).
        lab = np.empty(pts.shape[0], dtype=[("label", "<i4")])
        lab["label"] = labels
        out.append(
            (
                ns,
                topics.gt_labeled_points,
                "sensor_msgs/msg/PointCloud2",
                _cloud_msg(ns, lidar_frame, lab),
            )
        )
    if ground_truth and (frame.has_ground_truth or frame.objects):
        sec, nsec = divmod(ns, 1_000_000_000)
        table = {
            "stamp": {"sec": sec, "nanosec": nsec},
            "frame_index": k,
            "objects": [
                {
                    "object_id": int(o.object_id),
                    "semantic": o.semantic,
                    "score": float(o.score),
                    "volume": None if o.volume is None else float(o.volume),
                }
                for _, o in sorted(frame.objects.items())
            ],
        }
        out.append(
            (
                ns,
                topics.gt_objects,
                "std_msgs/msg/String",
                T["std_msgs/msg/String"](data=json.dumps(table)),
            )
        )
    for name, cam in frame.cameras.items():
        cns = _stamp_ns(_camera_stamp(frame, cam))
        cframe = cam_frames[name]
        img = np.asarray(cam.image)
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise ValueError(
                f"frame {k} camera {name!r}: image must be (H, W, 3) uint8, got "
                f"{img.shape} {img.dtype}"
            )
        if name not in static_cams:
            lidar_from_cam = invert_transform(np.asarray(cam.cam_from_lidar, dtype=np.float64))
            out.append(
                (
                    cns,
                    topics.tf,
                    "tf2_msgs/msg/TFMessage",
                    T["tf2_msgs/msg/TFMessage"](
                        transforms=[
                            _transform_msg(
                                cns,
                                lidar_frame,
                                cframe,
                                lidar_from_cam,
                                f"frame {k} camera {name!r}: ",
                            )
                        ]
                    ),
                )
            )
        if compressed:
            data = encode_compressed(img, compression_format, jpeg_quality)
            msg = T["sensor_msgs/msg/CompressedImage"](
                header=_header(cns, cframe),
                format=compressed_format_string(compression_format, "rgb8"),
                data=np.frombuffer(data, dtype=np.uint8),
            )
            out.append((cns, topics.compressed(name), "sensor_msgs/msg/CompressedImage", msg))
        else:
            out.append(
                (
                    cns,
                    topics.image(name),
                    "sensor_msgs/msg/Image",
                    _image_msg(cns, cframe, img, "rgb8"),
                )
            )
        out.append(
            (
                cns,
                topics.info(name),
                "sensor_msgs/msg/CameraInfo",
                _camera_info_msg(cns, cframe, np.asarray(cam.intrinsics), cam.size_wh),
            )
        )
        if ground_truth and cam.instance_mask is not None:
            inst = np.asarray(cam.instance_mask)
            if inst.shape != img.shape[:2]:
                raise ValueError(
                    f"frame {k} camera {name!r}: instance_mask {inst.shape} != image "
                    f"{img.shape[:2]}"
                )
            if inst.size == 0 or (inst.min() >= 0 and inst.max() <= 0xFFFF):
                arr, enc = inst.astype(np.uint16), "mono16"
            else:
                arr, enc = inst.astype(np.int32), "32SC1"
            out.append(
                (
                    cns,
                    topics.instance_labels(name),
                    "sensor_msgs/msg/Image",
                    _image_msg(cns, cframe, arr, enc),
                )
            )
    return out


# ------------------------------------------------------------------------------------ reading


@dataclass
class _Raw:
    """One message kept serialized until needed (images and clouds are most of a bag)."""

    ns: int
    frame_id: str
    msgtype: str
    raw: bytes


@dataclass
class _BagIndex:
    clouds: list[_Raw] = field(default_factory=list)
    images: dict[str, list[_Raw]] = field(default_factory=lambda: defaultdict(list))
    infos: dict[str, list[tuple[int, str, np.ndarray, tuple[int, int]]]] = field(
        default_factory=lambda: defaultdict(list)
    )
    gt_points: dict[int, bytes] = field(default_factory=dict)
    gt_masks: dict[tuple[str, int], bytes] = field(default_factory=dict)
    gt_objects: dict[int, dict[int, ObjectInfo]] = field(default_factory=dict)


def _decode_cloud(raw: bytes, where: str) -> np.ndarray:
    msg = TYPESTORE.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2")
    try:
        layout = (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_bigendian)
        return decode_points(msg.data, msg.fields, *layout).reshape(-1)
    except CodecError as e:
        raise BagError(f"bad PointCloud2: {e}", where) from None


def _cloud_layout(s: np.ndarray, where: str) -> tuple[str | None, list[str]]:
    """(intensity field or None, the other scalar fields in message order)."""
    names = list(s.dtype.names or ())
    for c in ("x", "y", "z"):
        if c not in names:
            raise BagError(f"PointCloud2 has no field {c!r} (fields: {names})", where)
    inten = find_field(s.dtype, INTENSITY_ALIASES)
    rest = [n for n in names if n not in ("x", "y", "z", inten) and not s.dtype[n].shape]
    return inten, rest


def _cloud_to_array(s: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, C) float32 with x, y, z, intensity first (zeros if absent), then the other scalar
    fields in message order (cast to float32)."""
    inten, rest = _cloud_layout(s, where)
    out = np.empty((s.shape[0], 4 + len(rest)), dtype=np.float32)
    for i, c in enumerate(("x", "y", "z")):
        out[:, i] = s[c]
    out[:, 3] = s[inten] if inten is not None else 0.0
    for i, n in enumerate(rest):
        out[:, 4 + i] = s[n]
    return out, ("x", "y", "z", "intensity", *rest)


def _labels_from_cloud(raw: bytes, num_points: int, where: str) -> np.ndarray:
    """(N,) int32 ``label`` field of a ground-truth cloud, checked against the sweep's size."""
    s = _decode_cloud(raw, where)
    if "label" not in (s.dtype.names or ()):
        raise BagError(f"labeled points have no 'label' field (fields: {s.dtype.names})", where)
    if s.shape[0] != num_points:
        raise BagError(f"{s.shape[0]} labeled points but the sweep has {num_points}", where)
    return np.asarray(s["label"], dtype=np.int32).copy()


def _decode_image_msg(msgtype: str, raw: bytes, where: str) -> tuple[np.ndarray, str]:
    """(array, encoding): RGB for CompressedImage, the decoded raw layout for Image."""
    msg = TYPESTORE.deserialize_cdr(raw, msgtype)
    try:
        if msgtype == "sensor_msgs/msg/CompressedImage":
            return decode_compressed(msg.data, msg.format), "rgb8"
        arr = decode_image(
            msg.data, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian
        )
        return arr, msg.encoding
    except CodecError as e:
        raise BagError(f"bad image: {e}", where) from None


def _missing(topic: str, bag: Path, available: Iterable[str], why: str = "") -> MissingTopicError:
    listing = ", ".join(sorted(available)) or "(none)"
    return MissingTopicError(f"topic {topic!r} is not in the bag{why}; the bag has: {listing}", bag)


def _custom_info(reader: Reader) -> dict[str, Any]:
    meta = getattr(reader.storage, "metadata", None)
    custom = getattr(meta, "custom", None) or {}
    try:
        return json.loads(custom[METADATA_KEY]) if METADATA_KEY in custom else {}
    except json.JSONDecodeError:
        return {}


def open_bag(path: Path) -> Reader:
    """An opened rosbags Reader for a bag directory, .mcap or .db3; BagError when unreadable."""
    try:
        reader = Reader(path)
        reader.open()
    except (FileNotFoundError, ReaderError, OSError, ValueError) as e:
        raise BagError(f"cannot open bag ({e})", path) from None
    return reader


def read_bag_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The sequence info this module stores in the bag's metadata (empty for other bags)."""
    reader = open_bag(Path(path))
    try:
        return _custom_info(reader)
    finally:
        reader.close()


def _where(topic: str, ns: int) -> str:
    return f"{topic} @ {_ns_to_s(ns):.6f} s"


def _fmt_s(ns: int) -> str:
    return f"{_ns_to_s(ns):.6f} s"


def _bag_tf_error(
    e: TfLookupError, edge_topics: dict[str, str], fallback: Path, context: str = ""
) -> BagTfError:
    """The buffer's lookup error as a BagTfError naming the topic of the failing edge."""
    if isinstance(e, TfGapError):
        what = f"{e.parent!r} -> {e.child!r}"
        gap = (e.after_ns - e.before_ns) * 1e-9
        reason = (
            f"gap in transform {what}: no sample between {_fmt_s(e.before_ns)} and "
            f"{_fmt_s(e.after_ns)} ({gap:.3f} s > max gap {e.max_gap_s:.3f} s), "
            f"needed at {_fmt_s(e.stamp_ns)}"
        )
        return BagTfGapError(context + reason, edge_topics.get(e.child, fallback), e)
    if isinstance(e, ExtrapolationError):
        reason = (
            f"no transform {e.parent!r} -> {e.child!r} at {_fmt_s(e.stamp_ns)}: the data covers "
            f"{_fmt_s(e.oldest_ns)} .. {_fmt_s(e.newest_ns)}"
        )
        return BagTfExtrapolationError(context + reason, edge_topics.get(e.child, fallback), e)
    return BagTfError(context + str(e), fallback, e)


class SequenceBagReader:
    """A recording indexed in one pass; frames are decoded when asked for.

    The pass decodes TF, CameraInfo and the object tables and keeps clouds and images serialized,
    so memory is about the size of the selected topics in the bag, and each frame costs its
    decoding only when read (``bag[i]``, iteration, :meth:`read_sequence`).

    Arguments are those of :func:`read_sequence_bag`.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        topics: BagTopics = BagTopics(),  # noqa: B008 - frozen dataclass, safe as a default
        *,
        cameras: Iterable[str] | None = None,
        camera_tolerance: float = 0.05,
        max_tf_gap: float = 0.5,
        world_frame_id: str | None = None,
        ground_truth: bool = True,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.topics = topics
        self.ground_truth = ground_truth
        self.camera_tolerance = camera_tolerance
        if not max_tf_gap > 0:
            raise ValueError(f"max_tf_gap must be > 0 s, got {max_tf_gap}")
        reader = open_bag(self.path)
        try:
            self.metadata = _custom_info(reader)
            self.available = sorted({c.topic for c in reader.connections})
            self._select_topics(cameras)
            self._index, self.tf, self._tf_topics = self._read_index(reader, max_tf_gap)
        finally:
            reader.close()
        if not self._index.clouds:
            raise BagError("the LiDAR topic has no messages", self.topics.lidar_points)
        first = self._index.clouds[0]
        self.lidar_frame_id = first.frame_id
        _, rest = _cloud_layout(
            _decode_cloud(first.raw, _where(topics.lidar_points, first.ns)),
            topics.lidar_points,
        )
        self.point_fields: tuple[str, ...] = ("x", "y", "z", "intensity", *rest)
        self.world_frame_id = self._world_frame(world_frame_id)
        self.name = name or self.metadata.get("name") or self.path.stem
        self._stamps = {
            c: np.array([im.ns for im in self._index.images[c]], dtype=np.int64)
            for c in self.camera_names
        }

    # -- set-up

    def _select_topics(self, cameras: Iterable[str] | None) -> None:
        t, available = self.topics, set(self.available)
        if t.lidar_points not in available:
            raise _missing(t.lidar_points, self.path, available, " (LiDAR points)")
        if cameras is None:
            names = [c for c in t.camera_names_in(available) if t.info(c) in available]
            # Keep the writer's camera order when the bag says it (topic order is alphabetical).
            order = list(self.metadata.get("cameras") or [])
            names.sort(key=lambda c: (order.index(c) if c in order else len(order), c))
        else:
            names = list(cameras)
        self.camera_names: list[str] = names
        self._image_topic: dict[str, str] = {}
        for c in names:
            if t.image(c) in available:
                self._image_topic[c] = t.image(c)
            elif t.compressed(c) in available:
                self._image_topic[c] = t.compressed(c)
            else:
                raise _missing(
                    t.image(c), self.path, available, f" (nor {t.compressed(c)!r}) for camera {c!r}"
                )
            if t.info(c) not in available:
                raise _missing(t.info(c), self.path, available, f" for camera {c!r}")

    def _world_frame(self, requested: str | None) -> str:
        if requested is not None:
            return requested
        frames = self.tf.frames()
        meta_world = self.metadata.get("world_frame_id")
        if meta_world and meta_world in frames:
            return str(meta_world)
        lidar = self.lidar_frame_id
        if lidar not in frames:
            t = self.topics
            if t.tf not in self.available and t.tf_static not in self.available:
                raise _missing(t.tf, self.path, self.available, " (needed for the ego poses)")
            raise BagTfError(
                f"no transform mentions the LiDAR frame {lidar!r} (TF frames: {frames})", t.tf
            )
        return self.tf.root_of(lidar)

    def _lookup(self, target: str, source: str, ns: int, context: str = "") -> np.ndarray:
        try:
            return self.tf.lookup(target, source, ns)
        except TfLookupError as e:
            raise _bag_tf_error(e, self._tf_topics, self.path, context) from None

    def _read_index(
        self, reader: Reader, max_tf_gap: float
    ) -> tuple[_BagIndex, TfBuffer, dict[str, str]]:
        t = self.topics
        out = _BagIndex()
        # The whole recording is read up front: keep every sample (no cache window).
        tf = TfBuffer(
            cache_time_s=None, max_samples_per_edge=None, max_interpolation_gap_s=max_tf_gap
        )
        edge_topics: dict[str, str] = {}  # child frame -> topic that carried its edge
        parents: dict[str, str] = {}
        image_topics = {topic: c for c, topic in self._image_topic.items()}
        info_topics = {t.info(c): c for c in self.camera_names}
        mask_topics = {t.instance_labels(c): c for c in self.camera_names}
        wanted = {t.lidar_points, t.tf, t.tf_static, *image_topics, *info_topics}
        if self.ground_truth:
            wanted |= {t.gt_labeled_points, t.gt_objects, *mask_topics}
        conns = [c for c in reader.connections if c.topic in wanted]
        if not conns:  # an empty selection would mean "all connections" to rosbags
            return out, tf, edge_topics
        for conn, _log_ns, raw in reader.messages(connections=conns):
            topic, mt = conn.topic, conn.msgtype
            try:
                msg = TYPESTORE.deserialize_cdr(raw, mt)
            except Exception as e:  # rosbags raises several types for corrupt CDR
                raise BagError(
                    f"cannot deserialize a {mt} message ({type(e).__name__}: {e})", topic
                ) from None
            if topic in (t.tf, t.tf_static):
                for tr in msg.transforms:
                    _add_transform(tf, tr, topic, topic == t.tf_static, parents)
                    edge_topics[_tf_name(tr.child_frame_id)] = topic
            elif topic == t.gt_objects:
                ns, objs = _parse_objects(msg.data, topic)
                out.gt_objects[ns] = objs
            elif topic in info_topics:
                k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
                size = (int(msg.width), int(msg.height))
                out.infos[info_topics[topic]].append(
                    (_msg_ns(msg.header), msg.header.frame_id, k, size)
                )
            else:
                item = _Raw(_msg_ns(msg.header), msg.header.frame_id, mt, bytes(raw))
                if topic == t.lidar_points:
                    out.clouds.append(item)
                elif topic in image_topics:
                    out.images[image_topics[topic]].append(item)
                elif topic == t.gt_labeled_points:
                    out.gt_points[item.ns] = item.raw
                elif topic in mask_topics:
                    out.gt_masks[(mask_topics[topic], item.ns)] = item.raw
        out.clouds.sort(key=lambda c: c.ns)
        for c in self.camera_names:
            out.images[c].sort(key=lambda im: im.ns)
        return out, tf, edge_topics

    # -- frames

    def __len__(self) -> int:
        return len(self._index.clouds)

    @property
    def stamps(self) -> list[float]:
        """Sweep times (s) in order."""
        return [_ns_to_s(c.ns) for c in self._index.clouds]

    def __iter__(self) -> Iterator[Frame]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, i: int) -> Frame:
        if not -len(self) <= i < len(self):
            raise IndexError(f"frame {i} out of range ({len(self)} sweeps)")
        i %= len(self)
        t = self.topics
        cloud = self._index.clouds[i]
        ns = cloud.ns
        where = _where(t.lidar_points, ns)
        if cloud.frame_id != self.lidar_frame_id:
            raise BagError(
                f"cloud frame_id {cloud.frame_id!r} differs from the first cloud's "
                f"{self.lidar_frame_id!r}",
                where,
            )
        s = _decode_cloud(cloud.raw, where)
        pts, fields = _cloud_to_array(s, where)
        if fields != self.point_fields:
            raise BagError(f"cloud fields {fields} differ from the first cloud's", where)
        pose = self._lookup(self.world_frame_id, self.lidar_frame_id, ns)
        frame = Frame(
            timestamp=_ns_to_s(ns), points=pts, cameras={}, world_from_lidar=pose, index=i
        )
        for c in self.camera_names:
            cam = self._camera(c, ns)
            if cam is not None:
                frame.cameras[c] = cam
        if self.ground_truth and ns in self._index.gt_points:
            frame.point_labels = _labels_from_cloud(
                self._index.gt_points[ns], pts.shape[0], _where(t.gt_labeled_points, ns)
            )
        if self.ground_truth and ns in self._index.gt_objects:
            frame.objects = dict(self._index.gt_objects[ns])
        return frame

    def _camera(self, c: str, sweep_ns: int) -> CameraFrame | None:
        stamps = self._stamps[c]
        if stamps.size == 0:
            return None
        j = int(np.argmin(np.abs(stamps - sweep_ns)))
        if abs(int(stamps[j]) - sweep_ns) > int(round(self.camera_tolerance * 1e9)):
            return None  # a late or missing camera does not drop the sweep
        im = self._index.images[c][j]
        where = _where(self._image_topic[c], im.ns)
        arr, enc = _decode_image_msg(im.msgtype, im.raw, where)
        if im.msgtype == "sensor_msgs/msg/Image":
            try:
                arr = to_rgb(arr, enc)
            except CodecError as e:
                raise BagError(f"bad image: {e}", where) from None
        rgb = np.array(arr, dtype=np.uint8, copy=True)  # own the memory, writable
        infos = self._index.infos[c]
        if not infos:
            raise BagError(f"no CameraInfo for camera {c!r}", self.topics.info(c))
        info_ns, info_frame, k, _size = min(infos, key=lambda x: abs(x[0] - im.ns))
        cam_frame = im.frame_id or info_frame
        cam_from_lidar = self._lookup(cam_frame, self.lidar_frame_id, im.ns, f"camera {c!r}: ")
        cam = CameraFrame(
            name=c,
            image=rgb,
            intrinsics=k.copy(),
            cam_from_lidar=cam_from_lidar,
            timestamp=_ns_to_s(im.ns),
        )
        key = (c, im.ns)
        if self.ground_truth and key in self._index.gt_masks:
            mwhere = _where(self.topics.instance_labels(c), im.ns)
            marr, _ = _decode_image_msg("sensor_msgs/msg/Image", self._index.gt_masks[key], mwhere)
            if marr.shape[:2] != rgb.shape[:2]:
                raise BagError(
                    f"instance labels {marr.shape[:2]} do not match the image {rgb.shape[:2]}",
                    mwhere,
                )
            cam.instance_mask = np.asarray(marr, dtype=np.int32).reshape(rgb.shape[:2]).copy()
        return cam

    def read_sequence(self, progress: ProgressFn | None = None) -> Sequence:
        """Decode every frame into a :class:`Sequence`."""
        frames = []
        for i in range(len(self)):
            frames.append(self[i])
            if progress is not None:
                progress(i + 1, len(self))
        return Sequence(
            name=self.name,
            frames=frames,
            point_fields=self.point_fields,
            lidar_frame_id=self.lidar_frame_id,
            world_frame_id=self.world_frame_id,
        )


def _parse_objects(data: str, topic: str) -> tuple[int, dict[int, ObjectInfo]]:
    try:
        table = json.loads(data)
        st = table["stamp"]
        ns = int(st["sec"]) * 1_000_000_000 + int(st["nanosec"])
        objs = {
            int(o["object_id"]): ObjectInfo(
                object_id=int(o["object_id"]),
                semantic=str(o.get("semantic", "unknown")),
                score=float(o.get("score", 1.0)),
                volume=None if o.get("volume") is None else float(o["volume"]),
            )
            for o in table["objects"]
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BagError(f"object table is not the expected JSON ({e})", topic) from None
    return ns, objs


def read_sequence_bag(
    path: str | os.PathLike[str],
    topics: BagTopics = BagTopics(),  # noqa: B008 - frozen dataclass, safe as a default
    *,
    progress: ProgressFn | None = None,
    **options: Any,
) -> Sequence:
    """Read a rosbag2 recording (directory, or a single .mcap / .db3 file) into a Sequence.

    ``options`` are the keyword arguments of :class:`SequenceBagReader`:

    Args:
        topics: topic names (the defaults match :func:`write_sequence_bag`).
        cameras: camera names to read (their topics must exist); default: every camera found
            through the ``camera_info`` / image topic templates.
        camera_tolerance: largest |image stamp - sweep stamp| (s) for an image to join a sweep;
            a camera with no image that close is absent from that frame.
        max_tf_gap: largest gap (s) between TF samples that a pose interpolation may bridge.
        world_frame_id: fixed frame of the poses (default: from the bag metadata, else the root
            of the LiDAR frame's TF tree).
        ground_truth: read the ground-truth topics when present.
        name: sequence name (default: from the metadata, else the bag's file name).
        progress: called as ``progress(frames_done, frames_total)``.

    Raises:
        MissingTopicError: a needed topic is absent (the message lists the bag's topics).
        BagTfGapError / BagTfError: poses or extrinsics cannot be looked up (a TF gap wider
            than ``max_tf_gap``, a time outside the recorded TF, unknown or unconnected frames);
            they are also ``sam4d_core.geometry.tf_buffer.TfGapError`` / ``TfLookupError``.
        BagError: anything else wrong with the recording.
    """
    return SequenceBagReader(path, topics, **options).read_sequence(progress)
