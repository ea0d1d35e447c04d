"""The bag as the demo sees it: its LiDAR, cameras, frames and sweep stamps
(:func:`inspect_bag`), and its ground truth per sweep (:class:`GroundTruth`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam4d_ros.tools.demo.errors import DemoError

__all__ = ["NS_PER_S", "STAMP_MATCH_NS", "BagInfo", "CameraTopics", "GroundTruth", "inspect_bag"]


NS_PER_S = 1_000_000_000
# Image stamps of a sweep's cameras are matched to ground truth within this.
STAMP_MATCH_NS = 1_000_000


@dataclass
class CameraTopics:
    """A camera of the bag as the node subscribes to it (after remapping)."""

    name: str
    image_topic: str  # the base topic (without /compressed when compressed)
    compressed: bool
    info_topic: str
    width: int
    height: int
    first_info: bytes | None = None  # the first CameraInfo, serialized (published before play)

    @property
    def subscribed_topic(self) -> str:
        """The image topic the node subscribes to (``/compressed`` appended when compressed)."""
        return self.image_topic + ("/compressed" if self.compressed else "")


@dataclass
class BagInfo:
    """What the demo needs to know of a bag (topic names after ``--remap``)."""

    path: Path
    lidar_topic: str
    lidar_frame: str
    fixed_frame: str
    cameras: dict[str, CameraTopics]
    sweep_stamps_ns: list[int]
    start_ns: int
    duration_ns: int
    played_topics: list[str]  # bag topics the player publishes (before remapping)
    remap: dict[str, str]
    ground_truth: bool
    # /tf_static: child frame -> (parent frame, (4, 4) parent_from_child), for projections.
    static_tf: dict[str, tuple[str, np.ndarray]] = field(default_factory=dict)
    # /tf and /tf_static when played: a sweep that reaches the node before its /tf_static
    # subscription is matched finds no LiDAR frame and is skipped, with a prompt made on it.
    tf_topics: list[str] = field(default_factory=list)

    def frame_at(self, time_s: float) -> int:
        """Index of the sweep nearest to ``time_s`` seconds into the bag."""
        t = self.start_ns + int(round(time_s * NS_PER_S))
        return int(np.argmin(np.abs(np.asarray(self.sweep_stamps_ns, dtype=np.int64) - t)))

    @property
    def sensor_topics(self) -> list[str]:
        """The node's sensor input topics (the player waits until it has subscribed to them and
        to ``tf_topics``)."""
        out = [self.lidar_topic]
        for c in self.cameras.values():
            out += [c.subscribed_topic, c.info_topic]
        return out


def inspect_bag(path: str | os.PathLike[str], remap: Mapping[str, str] | None = None) -> BagInfo:
    """Topics, cameras, frames and sweep stamps of a bag laid out as ``BagTopics`` names them
    (after ``remap``: bag topic -> topic name); raises DemoError saying what is missing."""
    from sam4d_core.codecs.errors import TransformError
    from sam4d_core.data.sequence_bag import TYPESTORE, BagError, BagTopics, open_bag
    from sam4d_ros.conversions.transform import transform_to_matrix
    from sam4d_ros.tools.bag_interop import absolute_topic, header_stamp_ns

    path = Path(path)
    if not path.exists():
        raise DemoError(f"bag {path} does not exist")
    remap = {absolute_topic(k): absolute_topic(v) for k, v in (remap or {}).items()}
    t = BagTopics()
    try:
        reader = open_bag(path)
    except (BagError, OSError) as e:
        raise DemoError(f"cannot open the bag {path}: {e}") from None
    try:
        conns = list(reader.connections)
        by_name = {remap.get(c.topic, c.topic): c for c in conns}
        original = {remap.get(c.topic, c.topic): c.topic for c in conns}
        if t.lidar_points not in by_name:
            raise DemoError(
                f"{path} has no {t.lidar_points} (PointCloud2, the LiDAR); its topics: "
                f"{', '.join(sorted(by_name))}. Rename yours with --remap FROM:={t.lidar_points}"
            )
        cameras: dict[str, CameraTopics] = {}
        for name in t.camera_names_in(by_name):
            if t.info(name) not in by_name:
                continue
            if t.compressed(name) in by_name:
                compressed = True
            elif t.image(name) in by_name:
                compressed = False
            else:
                continue
            cameras[name] = CameraTopics(name, t.image(name), compressed, t.info(name), 0, 0)
        stamps: list[int] = []
        static: dict[str, tuple[str, np.ndarray]] = {}
        lidar_frame = ""
        parents: dict[str, str] = {}
        names = {t.lidar_points, t.tf, t.tf_static, *(c.info_topic for c in cameras.values())}
        wanted = [c for c in conns if remap.get(c.topic, c.topic) in names]
        for conn, _log, raw in reader.messages(connections=wanted):
            topic = remap.get(conn.topic, conn.topic)
            if topic == t.lidar_points:
                ns = header_stamp_ns(bytes(raw))
                if ns is not None:
                    stamps.append(ns)
                if not lidar_frame:
                    lidar_frame = TYPESTORE.deserialize_cdr(raw, conn.msgtype).header.frame_id
            elif topic in (t.tf, t.tf_static):
                for tr in TYPESTORE.deserialize_cdr(raw, conn.msgtype).transforms:
                    child, parent = tr.child_frame_id.lstrip("/"), tr.header.frame_id.lstrip("/")
                    parents[child] = parent
                    if topic == t.tf_static:
                        with contextlib.suppress(TransformError):
                            static[child] = (parent, transform_to_matrix(tr.transform))
            else:
                cam = next(c for c in cameras.values() if c.info_topic == topic)
                if cam.first_info is None:
                    msg = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
                    cam.width, cam.height = int(msg.width), int(msg.height)
                    cam.first_info = bytes(raw)
        start_ns = int(reader.start_time) if reader.message_count else 0
        duration_ns = int(reader.duration) if reader.message_count else 0
    finally:
        reader.close()
    if not stamps:
        raise DemoError(f"{path}: {t.lidar_points} has no messages")
    lidar_frame = lidar_frame.lstrip("/")
    fixed = ""  # the root of the LiDAR's TF tree ("" without TF: the node assumes no motion)
    frame, seen = lidar_frame, {lidar_frame}
    while parents.get(frame, frame) not in seen:
        frame = parents[frame]
        seen.add(frame)
        fixed = frame
    played = [
        original[n]
        for n in [t.lidar_points, t.tf, t.tf_static]
        + [x for c in cameras.values() for x in (c.info_topic, c.subscribed_topic)]
        if n in original
    ]
    gt = t.gt_labeled_points in by_name or any(t.instance_labels(c) in by_name for c in cameras)
    return BagInfo(
        path=path,
        lidar_topic=t.lidar_points,
        lidar_frame=lidar_frame,
        fixed_frame=fixed,
        cameras=cameras,
        sweep_stamps_ns=sorted(stamps),
        start_ns=start_ns,
        duration_ns=duration_ns,
        played_topics=played,
        remap=remap,
        # Ground truth is read with the bag's own names: only for a bag that needs no remapping.
        ground_truth=gt and not remap,
        static_tf=static,
        tf_topics=[n for n in (t.tf, t.tf_static) if n in original],
    )


class GroundTruth:
    """The bag's ground truth per sweep (instance masks per camera, point labels), read lazily
    frame by frame (``SequenceBagReader``)."""

    def __init__(self, bag: Path, info: BagInfo) -> None:
        from sam4d_core.data.sequence_bag import SequenceBagReader

        self.reader = SequenceBagReader(bag, cameras=list(info.cameras), ground_truth=True)
        if len(self.reader) != len(info.sweep_stamps_ns):
            raise DemoError(
                f"ground truth: {len(self.reader)} frames for {len(info.sweep_stamps_ns)} sweeps"
            )
        self._cache: dict[int, Any] = {}
        self._sequence: Any = None

    def frame(self, i: int) -> Any:
        if self._sequence is not None:
            return self._sequence.frames[i]
        if i not in self._cache:
            self._cache = {i: self.reader[i]}  # one frame at a time: bounded memory
        return self._cache[i]

    def sequence(self) -> Any:
        """Every frame decoded (kept: the automatic prompt needs them, the scoring reuses them)."""
        if self._sequence is None:
            self._sequence = self.reader.read_sequence()
        return self._sequence

    def object_at_pixel(self, i: int, camera: str, u: float, v: float) -> int | None:
        cam = self.frame(i).cameras.get(camera)
        if cam is None or cam.instance_mask is None:
            return None
        h, w = cam.instance_mask.shape
        x, y = min(max(round(u), 0), w - 1), min(max(round(v), 0), h - 1)  # centres at integers
        oid = int(cam.instance_mask[y, x])
        return oid if oid > 0 else None

    def object_at_point(self, i: int, xyz: Sequence[float], radius: float = 0.5) -> int | None:
        f = self.frame(i)
        if f.point_labels is None:
            return None
        d = np.linalg.norm(f.points[:, :3] - np.asarray(xyz, dtype=np.float32), axis=1)
        k = int(np.argmin(d))
        oid = int(f.point_labels[k])
        return oid if d[k] <= radius and oid > 0 else None
