"""Reading rosbag2 recordings: :class:`SequenceBagReader` (indexed once, frames decoded on
demand), :func:`read_sequence_bag`, :func:`open_bag` and :func:`read_bag_metadata`."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rosbags.rosbag2 import Reader
from rosbags.rosbag2.errors import ReaderError

from sam4d_core.codecs.errors import CodecError
from sam4d_core.codecs.image import to_rgb
from sam4d_core.data.sequence import CameraFrame, Frame, ObjectInfo, Sequence
from sam4d_core.data.sequence_bag.errors import (
    BagError,
    BagTfError,
    bag_tf_error,
    missing_topic,
)
from sam4d_core.data.sequence_bag.messages import (
    add_transform,
    cloud_layout,
    cloud_to_array,
    decode_cloud,
    decode_image_msg,
    labels_from_cloud,
    msg_ns,
    parse_objects,
    tf_name,
)
from sam4d_core.data.sequence_bag.schema import (
    METADATA_KEY,
    TYPESTORE,
    BagTopics,
    ProgressFn,
    ns_to_s,
    place,
)
from sam4d_core.geometry.tf_buffer import TfBuffer, TfLookupError


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
        _, rest = cloud_layout(
            decode_cloud(first.raw, place(topics.lidar_points, first.ns)),
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
            raise missing_topic(t.lidar_points, self.path, available, " (LiDAR points)")
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
                raise missing_topic(
                    t.image(c), self.path, available, f" (nor {t.compressed(c)!r}) for camera {c!r}"
                )
            if t.info(c) not in available:
                raise missing_topic(t.info(c), self.path, available, f" for camera {c!r}")

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
                raise missing_topic(t.tf, self.path, self.available, " (needed for the ego poses)")
            raise BagTfError(
                f"no transform mentions the LiDAR frame {lidar!r} (TF frames: {frames})", t.tf
            )
        return self.tf.root_of(lidar)

    def _lookup(self, target: str, source: str, ns: int, context: str = "") -> np.ndarray:
        try:
            return self.tf.lookup(target, source, ns)
        except TfLookupError as e:
            raise bag_tf_error(e, self._tf_topics, self.path, context) from None

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
                    add_transform(tf, tr, topic, topic == t.tf_static, parents)
                    edge_topics[tf_name(tr.child_frame_id)] = topic
            elif topic == t.gt_objects:
                ns, objs = parse_objects(msg.data, topic)
                out.gt_objects[ns] = objs
            elif topic in info_topics:
                k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
                size = (int(msg.width), int(msg.height))
                out.infos[info_topics[topic]].append(
                    (msg_ns(msg.header), msg.header.frame_id, k, size)
                )
            else:
                item = _Raw(msg_ns(msg.header), msg.header.frame_id, mt, bytes(raw))
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
        return [ns_to_s(c.ns) for c in self._index.clouds]

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
        where = place(t.lidar_points, ns)
        if cloud.frame_id != self.lidar_frame_id:
            raise BagError(
                f"cloud frame_id {cloud.frame_id!r} differs from the first cloud's "
                f"{self.lidar_frame_id!r}",
                where,
            )
        s = decode_cloud(cloud.raw, where)
        pts, fields = cloud_to_array(s, where)
        if fields != self.point_fields:
            raise BagError(f"cloud fields {fields} differ from the first cloud's", where)
        pose = self._lookup(self.world_frame_id, self.lidar_frame_id, ns)
        frame = Frame(timestamp=ns_to_s(ns), points=pts, cameras={}, world_from_lidar=pose, index=i)
        for c in self.camera_names:
            cam = self._camera(c, ns)
            if cam is not None:
                frame.cameras[c] = cam
        if self.ground_truth and ns in self._index.gt_points:
            frame.point_labels = labels_from_cloud(
                self._index.gt_points[ns], pts.shape[0], place(t.gt_labeled_points, ns)
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
        where = place(self._image_topic[c], im.ns)
        arr, enc = decode_image_msg(im.msgtype, im.raw, where)
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
            timestamp=ns_to_s(im.ns),
        )
        key = (c, im.ns)
        if self.ground_truth and key in self._index.gt_masks:
            mwhere = place(self.topics.instance_labels(c), im.ns)
            marr, _ = decode_image_msg("sensor_msgs/msg/Image", self._index.gt_masks[key], mwhere)
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
