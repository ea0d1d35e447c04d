"""Prompts from ROS (Prompt.msg, AddPrompts.srv, RViz and image-viewer clicks) -> tracker records.

Every source ends as a ``PromptBatch``: ``ObjectPrompt`` records for the tracker (one per object and
frame, the request's prompts of that object merged) and the object id of each input prompt in
request order (what AddPrompts returns). Validation is all-or-nothing: the whole request is
checked first and a ``PromptError`` says which prompt, which field and which value is wrong;
only then are new object ids allocated, so a rejected request changes nothing.

Rules:
- Object ids: 0 = a new object, which gets the next free id (ids grow, wrap below 65536, never
  collide with tracked ids or with explicit ids of the same request); a positive id refines that
  object or creates it. At most ``max_objects`` objects are tracked at once.
- IMAGE prompts: a configured camera whose image size is known; clicks and boxes inside the image
  ([0, W] x [0, H], pixels of the image as published); a mask is a mono8 image of the camera's
  size. When the node undistorts a camera (``CameraGeometry.rectify``), clicks, boxes and masks are
  mapped from the published (raw) image into the rectified image the tracker sees.
- LIDAR prompts: metres in ``header.frame_id`` (empty = the LiDAR frame), transformed through TF
  into the LiDAR frame at the prompt's stamp (the newest frame's for stamp 0). A box is bird's-eye
  [x_min, y_min, x_max, y_max]; in another frame its four corners are transformed and the
  axis-aligned bound of them is used (exact for frames related by a yaw and a translation).
- Labels: one per point, 0 (background) or 1 (foreground); a prompt needs points, a box or a mask.
- Stamps: 0 = the newest frame; otherwise the frame the prompt was made on, which must still be in
  the tracker's frame buffer (``frame_buffer_s`` behind the newest frame). Stamps newer than the
  newest frame are passed on as they are (the tracker matches them to their frame).
- RViz's Publish Point stamps clicks with the current time, not a sensor time: a clicked point is
  applied on the newest frame when its stamp is not older than it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from sam4d_core.codecs.camera import CameraModel
from sam4d_core.codecs.errors import CodecError
from sam4d_core.codecs.image import decode_image
from sam4d_core.geometry.tf_buffer import TfBuffer, TfLookupError
from sam4d_core.tracking.records import (
    MAX_OBJECT_ID,
    ImagePrompt,
    LidarPrompt,
    ObjectPrompt,
)
from sam4d_ros.conversions.stamps import stamp_to_ns

__all__ = [
    "IMAGE",
    "LIDAR",
    "CameraGeometry",
    "ObjectIdRegistry",
    "PromptBatch",
    "PromptContext",
    "PromptConverter",
    "PromptError",
    "PromptLimits",
    "validate_remove",
]

IMAGE = 0  # sam4d_ros/msg/Prompt IMAGE
LIDAR = 1  # sam4d_ros/msg/Prompt LIDAR
_NS = 1_000_000_000
_MASK_ENCODINGS = ("mono8", "8UC1")
# Clicks on the very border of a raw image may land a pixel or two outside the rectified one.
_RECTIFY_SLACK_PX = 2.0


class PromptError(ValueError):
    """A prompt request is invalid; the message says which prompt, field and value."""


def _fmt_s(ns: int) -> str:
    return f"{ns // _NS}.{ns % _NS:09d}"


@dataclass(frozen=True)
class CameraGeometry:
    """What validation needs to know of a camera.

    width, height: size of the image as published (pixels). rectify: the CameraModel of a camera
    whose images the node undistorts (pixels are then mapped into the rectified image), else None.
    """

    name: str
    width: int
    height: int
    rectify: CameraModel | None = None

    @classmethod
    def from_model(cls, name: str, model: CameraModel, rectified: bool = False) -> CameraGeometry:
        """Geometry of a camera as the frame builder treats it: images of a camera that is not
        ``rectified`` (its parameter) are undistorted when the CameraInfo has distortion, and
        then clicks are mapped the same way."""
        undistorted = not rectified and model.needs_undistortion
        return cls(name, int(model.width), int(model.height), model if undistorted else None)


@dataclass(frozen=True)
class PromptLimits:
    """Bounds against prompt storms and typos (a request beyond them is rejected)."""

    max_prompts_per_request: int = 64
    max_points_per_prompt: int = 256


@dataclass
class PromptContext:
    """The node's state that validation depends on (a snapshot taken per request).

    cameras: configured camera names -> geometry, or None while its size is unknown (no image yet).
    lidar_frame: TF frame of the sweeps (None before the first sweep).
    newest_stamp_ns: stamp of the newest frame in the tracker's buffer (None: no frame yet).
    frame_buffer_s: how far back the tracker's frame buffer reaches.
    tf: TF buffer for LIDAR prompts in other frames (None: only the LiDAR frame is accepted).
    """

    cameras: Mapping[str, CameraGeometry | None] = field(default_factory=dict)
    lidar_frame: str | None = None
    newest_stamp_ns: int | None = None
    frame_buffer_s: float = 2.0
    tf: TfBuffer | None = None


@dataclass
class PromptBatch:
    """Validated prompts ready for the tracker.

    prompts: one ObjectPrompt per (object, stamp), in order of first appearance in the request.
    object_ids: the object id of each input prompt, in request order.
    new_ids: ids that this batch created (release them if the tracker refuses the batch).
    """

    prompts: list[ObjectPrompt]
    object_ids: list[int]
    new_ids: list[int]


class ObjectIdRegistry:
    """The set of tracked object ids and the allocation of new ones (thread-safe).

    max_objects: most objects tracked at once.
    """

    def __init__(self, max_objects: int = 64) -> None:
        if not 1 <= int(max_objects) <= MAX_OBJECT_ID:
            raise ValueError(f"max_objects must be in [1, {MAX_OBJECT_ID}], got {max_objects}")
        self.max_objects = int(max_objects)
        self._lock = threading.Lock()
        self._tracked: set[int] = set()
        self._next = 1
        self._last_batch: tuple[int, int, frozenset[int]] | None = None

    def tracked(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._tracked)

    def reserve(self, requested: Sequence[int]) -> tuple[list[int], list[int]]:
        """Ids for a validated request: 0 -> a new id; a positive id as is.

        Returns (the id of each entry, the ids that are new). Raises PromptError when the new
        objects would exceed ``max_objects`` (then nothing is reserved).
        """
        with self._lock:
            explicit = {int(i) for i in requested if int(i) != 0}
            new_explicit = sorted(explicit - self._tracked)
            n_new = len(new_explicit) + sum(1 for i in requested if int(i) == 0)
            if len(self._tracked) + n_new > self.max_objects:
                raise PromptError(
                    f"the request would create {n_new} new object(s) but {len(self._tracked)} "
                    f"of at most {self.max_objects} (max_objects) are tracked; remove objects first"
                )
            taken = self._tracked | explicit
            out: list[int] = []
            new: list[int] = list(new_explicit)
            candidate = self._next
            for i in requested:
                if int(i) != 0:
                    out.append(int(i))
                    continue
                # Ids keep growing rather than reusing a freed one at once, so that a removed
                # object's id does not reappear on another object in RViz right away.
                while candidate in taken:
                    candidate = candidate % MAX_OBJECT_ID + 1
                out.append(candidate)
                new.append(candidate)
                taken.add(candidate)
                candidate = candidate % MAX_OBJECT_ID + 1
            # Remembered so that a batch the tracker refuses gives its new ids back (cancel):
            # the first object of a session is 1 even when its first attempt was refused.
            self._last_batch = (self._next, candidate, frozenset(new))
            self._next = candidate
            self._tracked.update(new)
            return out, new

    def cancel(self, new_ids: Iterable[int]) -> None:
        """Give back the new ids of a batch that was refused: forget them and, when that batch was
        the last one reserved, allocate from where it started again (no id is skipped)."""
        ids = frozenset(int(i) for i in new_ids)
        with self._lock:
            self._tracked.difference_update(ids)
            last = self._last_batch
            if last is not None and last[2] == ids and self._next == last[1]:
                self._next = last[0]
            self._last_batch = None

    def release(self, ids: Iterable[int]) -> None:
        """Forget ids (removed objects, or a batch the tracker refused)."""
        with self._lock:
            self._tracked.difference_update(int(i) for i in ids)

    def clear(self) -> None:
        """Forget every object and start allocating at 1 again (tracker reset)."""
        with self._lock:
            self._tracked.clear()
            self._next = 1
            self._last_batch = None


def validate_remove(object_ids: Sequence[int], tracked: Iterable[int]) -> list[int]:
    """The ids of a RemoveObject request, sorted and without duplicates; PromptError when empty,
    0, or not tracked (then nothing is to be removed)."""
    ids = [int(i) for i in object_ids]
    if not ids:
        raise PromptError("object_ids is empty: nothing to remove")
    if 0 in ids:
        raise PromptError("object id 0 is the background, not an object")
    known = set(int(i) for i in tracked)
    unknown = sorted(set(ids) - known)
    if unknown:
        raise PromptError(
            f"object(s) {unknown} are not tracked (tracked: {sorted(known) or 'none'}); "
            f"nothing was removed"
        )
    return sorted(set(ids))


# ---------------------------------------------------------------------------------- internals


@dataclass
class _Checked:
    """One validated prompt in tracker units (before grouping)."""

    index: int
    requested_id: int
    modality: int
    camera: str
    stamp_ns: int | None
    points: np.ndarray  # (P, 2) pixels or (P, 3) metres in the LiDAR frame
    labels: np.ndarray  # (P,) int64
    box: np.ndarray | None  # (4,)
    mask: np.ndarray | None  # (H, W) bool


def _describe(i: int, msg: Any) -> str:
    obj = "new object" if int(msg.object_id) == 0 else f"object {int(msg.object_id)}"
    modality = int(msg.modality)
    if modality == IMAGE:
        what = f"IMAGE on camera '{msg.camera_name}'"
    elif modality == LIDAR:
        what = "LIDAR"
    else:
        what = f"modality {modality}"
    return f"prompt {i} ({obj}, {what})"


def _check_stamp(where: str, stamp_ns: int | None, ctx: PromptContext) -> None:
    if stamp_ns is None or ctx.newest_stamp_ns is None:
        return
    oldest = ctx.newest_stamp_ns - int(round(ctx.frame_buffer_s * _NS))
    if stamp_ns < oldest:
        raise PromptError(
            f"{where}: stamp {_fmt_s(stamp_ns)} s is "
            f"{(ctx.newest_stamp_ns - stamp_ns) / _NS:.3f} s older than the newest frame "
            f"({_fmt_s(ctx.newest_stamp_ns)} s) but the frame buffer keeps only "
            f"{ctx.frame_buffer_s} s (frame_buffer_s)"
        )


def _points_array(where: str, msg: Any, dims: int) -> np.ndarray:
    pts = np.array([[p.x, p.y, p.z] for p in msg.points], dtype=np.float64).reshape(-1, 3)
    bad = np.flatnonzero(~np.isfinite(pts[:, :dims]).all(axis=1))
    if bad.size:
        k = int(bad[0])
        raise PromptError(f"{where}: point {k} {pts[k, :dims].tolist()} is not finite")
    return pts[:, :dims]


def _labels_array(where: str, msg: Any, n_points: int) -> np.ndarray:
    labels = np.frombuffer(bytes(msg.labels), dtype=np.uint8).astype(np.int64)
    if labels.size != n_points:
        raise PromptError(
            f"{where}: {labels.size} label(s) for {n_points} point(s); give one label per point "
            f"(1 = foreground, 0 = background)"
        )
    bad = np.flatnonzero((labels != 0) & (labels != 1))
    if bad.size:
        k = int(bad[0])
        raise PromptError(
            f"{where}: label {k} is {int(labels[k])}; labels must be 1 (foreground) or "
            f"0 (background)"
        )
    return labels


def _box_array(where: str, msg: Any, names: tuple[str, str, str, str]) -> np.ndarray | None:
    if not msg.has_box:
        return None
    box = np.asarray(msg.box, dtype=np.float64).reshape(4)
    if not np.isfinite(box).all():
        raise PromptError(f"{where}: box {box.tolist()} has non-finite values")
    for lo, hi in ((0, 2), (1, 3)):
        if not box[lo] < box[hi]:
            raise PromptError(
                f"{where}: box {names[lo]} {box[lo]:g} must be less than {names[hi]} {box[hi]:g} "
                f"(box = [{', '.join(names)}])"
            )
    return box


def _mask_array(where: str, msg: Any, geometry: CameraGeometry) -> np.ndarray | None:
    m = msg.mask
    if int(m.width) == 0 and int(m.height) == 0:
        return None
    if m.encoding not in _MASK_ENCODINGS:
        raise PromptError(
            f"{where}: mask encoding '{m.encoding}' is not supported; use mono8 (non-zero = object)"
        )
    try:
        arr = decode_image(m.data, m.encoding, m.height, m.width, m.step, m.is_bigendian)
    except CodecError as e:
        raise PromptError(f"{where}: mask is malformed: {e}") from None
    if arr.shape != (geometry.height, geometry.width):
        raise PromptError(
            f"{where}: mask is {arr.shape[1]}x{arr.shape[0]} but camera '{geometry.name}' "
            f"images are {geometry.width}x{geometry.height}"
        )
    mask = arr != 0
    if not mask.any():
        raise PromptError(f"{where}: mask has no non-zero pixel")
    return mask


def _inside(pts: np.ndarray, w: float, h: float, slack: float = 0.0) -> np.ndarray:
    return (
        (pts[:, 0] >= -slack) & (pts[:, 0] <= w + slack) & (pts[:, 1] >= -slack)
        & (pts[:, 1] <= h + slack)
    )  # fmt: skip


def _undistort_pixels(model: CameraModel, pts: np.ndarray) -> np.ndarray:
    """(P, 2) raw pixels -> (P, 2) pixels of the rectified image (cached maps' inverse)."""
    if pts.size == 0:
        return pts.copy()
    src = pts.reshape(-1, 1, 2).astype(np.float64)
    new_k = model.rectified_K
    if model.distortion_model == "equidistant":
        d = model.D if model.D.size else np.zeros(4)
        out = cv2.fisheye.undistortPoints(src, model.K, d.reshape(4, 1), R=model.R, P=new_k)
    else:
        out = cv2.undistortPoints(
            src, model.K, model.D if model.D.size else None, R=model.R, P=new_k
        )
    return out.reshape(-1, 2)


def _rectify_image_prompt(
    where: str, geometry: CameraGeometry, points: np.ndarray, box: np.ndarray | None,
    mask: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:  # fmt: skip
    model = geometry.rectify
    if model is None or not model.needs_undistortion:
        return points, box, mask
    w, h = geometry.width, geometry.height
    if points.size:
        rect = _undistort_pixels(model, points)
        bad = np.flatnonzero(~_inside(rect, w, h, _RECTIFY_SLACK_PX))
        if bad.size:
            k = int(bad[0])
            raise PromptError(
                f"{where}: point {k} ({points[k, 0]:g}, {points[k, 1]:g}) lies outside the "
                f"undistorted image (it maps to ({rect[k, 0]:.1f}, {rect[k, 1]:.1f})); click "
                f"closer to the image centre"
            )
        points = np.clip(rect, 0.0, [w, h])
    if box is not None:
        # A straight box edge is curved after undistortion: sample the edges, take their bound.
        t = np.linspace(0.0, 1.0, 16)
        u0, v0, u1, v1 = box
        edge = np.concatenate(
            [
                np.stack([u0 + (u1 - u0) * t, np.full_like(t, v0)], 1),
                np.stack([u0 + (u1 - u0) * t, np.full_like(t, v1)], 1),
                np.stack([np.full_like(t, u0), v0 + (v1 - v0) * t], 1),
                np.stack([np.full_like(t, u1), v0 + (v1 - v0) * t], 1),
            ]
        )
        rect = np.clip(_undistort_pixels(model, edge), 0.0, [w, h])
        box = np.array([rect[:, 0].min(), rect[:, 1].min(), rect[:, 0].max(), rect[:, 1].max()])
        if not (box[0] < box[2] and box[1] < box[3]):
            raise PromptError(f"{where}: box lies outside the undistorted image")
    if mask is not None:
        mask = model.undistort(mask.view(np.uint8), interpolation=cv2.INTER_NEAREST) != 0
        if not mask.any():
            raise PromptError(f"{where}: mask lies outside the undistorted image")
    return points, box, mask


def _lidar_transform(
    where: str, frame_id: str, stamp_ns: int | None, ctx: PromptContext
) -> np.ndarray | None:
    """T_lidar_frame for a LIDAR prompt in ``frame_id``; None when it already is the LiDAR frame."""
    frame = frame_id[1:] if frame_id.startswith("/") else frame_id
    if not frame:
        return None
    if ctx.lidar_frame is None:
        raise PromptError(
            f"{where}: cannot transform from frame '{frame}': the LiDAR frame is not known yet "
            f"(no sweep received)"
        )
    lidar = ctx.lidar_frame[1:] if ctx.lidar_frame.startswith("/") else ctx.lidar_frame
    if frame == lidar:
        return None
    if ctx.tf is None:
        raise PromptError(f"{where}: frame '{frame}' given but the node has no TF buffer")
    at = stamp_ns if stamp_ns is not None else ctx.newest_stamp_ns
    try:
        return ctx.tf.lookup(lidar, frame, at)
    except TfLookupError as e:
        when = "the latest time" if at is None else f"t={_fmt_s(at)} s"
        raise PromptError(
            f"{where}: no transform from frame '{frame}' into the LiDAR frame '{lidar}' at "
            f"{when}: {e}"
        ) from None


def _transform_lidar(
    t: np.ndarray, points: np.ndarray, box: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    points = points @ t[:3, :3].T + t[:3, 3]
    if box is not None:
        x0, y0, x1, y1 = box
        corners = np.array([[x0, y0, 0.0], [x1, y0, 0.0], [x1, y1, 0.0], [x0, y1, 0.0]])
        c = corners @ t[:3, :3].T + t[:3, 3]
        box = np.array([c[:, 0].min(), c[:, 1].min(), c[:, 0].max(), c[:, 1].max()])
    return points, box


class PromptConverter:
    """Turns prompt messages into ``PromptBatch``es against an ``ObjectIdRegistry``.

    Thread-safe as far as the registry is (validation itself holds no state).
    """

    def __init__(self, ids: ObjectIdRegistry, limits: PromptLimits | None = None) -> None:
        self.ids = ids
        self.limits = limits or PromptLimits()

    # ------------------------------------------------------------------ Prompt.msg / AddPrompts

    def check_prompt(self, i: int, msg: Any, ctx: PromptContext) -> _Checked:
        """Validate one Prompt message (index ``i`` of its request) and convert its geometry."""
        where = _describe(i, msg)
        modality = int(msg.modality)
        if modality not in (IMAGE, LIDAR):
            raise PromptError(f"{where}: unknown modality {modality} (IMAGE = 0, LIDAR = 1)")
        obj = int(msg.object_id)
        if obj > MAX_OBJECT_ID:
            raise PromptError(
                f"{where}: object_id {obj} exceeds {MAX_OBJECT_ID} (ids must fit a mono16 label "
                f"image; 0 = new object)"
            )
        n_points = len(msg.points)
        if n_points > self.limits.max_points_per_prompt:
            raise PromptError(
                f"{where}: {n_points} points; at most {self.limits.max_points_per_prompt} "
                f"per prompt"
            )
        stamp = stamp_to_ns(msg.header.stamp)
        stamp_ns = None if stamp == 0 else stamp
        if modality == IMAGE:
            return self._check_image(i, where, msg, obj, stamp_ns, ctx)
        return self._check_lidar(i, where, msg, obj, stamp_ns, ctx)

    def _check_image(
        self, i: int, where: str, msg: Any, obj: int, stamp_ns: int | None, ctx: PromptContext
    ) -> _Checked:
        name = str(msg.camera_name)
        if name not in ctx.cameras:
            known = ", ".join(f"'{c}'" for c in ctx.cameras) or "none configured"
            raise PromptError(f"{where}: unknown camera '{name}' (cameras: {known})")
        geometry = ctx.cameras[name]
        points = _points_array(where, msg, 2)
        labels = _labels_array(where, msg, points.shape[0])
        box = _box_array(where, msg, ("u_min", "v_min", "u_max", "v_max"))
        has_mask = not (int(msg.mask.width) == 0 and int(msg.mask.height) == 0)
        if points.shape[0] == 0 and box is None and not has_mask:
            raise PromptError(f"{where}: nothing to prompt with: no points, no box, no mask")
        if geometry is None:
            raise PromptError(
                f"{where}: the size of camera '{name}' is not known yet (no image received); "
                f"try again once its images arrive"
            )
        w, h = geometry.width, geometry.height
        bad = np.flatnonzero(~_inside(points, w, h))
        if bad.size:
            k = int(bad[0])
            raise PromptError(
                f"{where}: point {k} ({points[k, 0]:g}, {points[k, 1]:g}) is outside the {w}x{h} "
                f"image (pixels: 0 <= x <= {w}, 0 <= y <= {h})"
            )
        if box is not None and not _inside(box.reshape(2, 2), w, h).all():
            raise PromptError(
                f"{where}: box {box.tolist()} is not inside the {w}x{h} image of camera '{name}'"
            )
        mask = _mask_array(where, msg, geometry)
        _check_stamp(where, stamp_ns, ctx)
        points, box, mask = _rectify_image_prompt(where, geometry, points, box, mask)
        return _Checked(i, obj, IMAGE, name, stamp_ns, points, labels, box, mask)

    def _check_lidar(
        self, i: int, where: str, msg: Any, obj: int, stamp_ns: int | None, ctx: PromptContext
    ) -> _Checked:
        if not (int(msg.mask.width) == 0 and int(msg.mask.height) == 0):
            raise PromptError(
                f"{where}: masks are for IMAGE prompts only; a LIDAR prompt takes points or a box"
            )
        points = _points_array(where, msg, 3)
        labels = _labels_array(where, msg, points.shape[0])
        box = _box_array(where, msg, ("x_min", "y_min", "x_max", "y_max"))
        if points.shape[0] == 0 and box is None:
            raise PromptError(f"{where}: nothing to prompt with: no points and no box")
        _check_stamp(where, stamp_ns, ctx)
        t = _lidar_transform(where, str(msg.header.frame_id), stamp_ns, ctx)
        if t is not None:
            points, box = _transform_lidar(t, points, box)
        return _Checked(i, obj, LIDAR, "", stamp_ns, points, labels, box, None)

    def convert_prompts(
        self, msgs: Sequence[Any], clear_previous: bool, ctx: PromptContext
    ) -> PromptBatch:
        """An AddPrompts request (or one Prompt from the topic: a list of one) -> PromptBatch.

        Raises PromptError, with nothing allocated, when any prompt is invalid.
        """
        if len(msgs) == 0:
            raise PromptError("the request has no prompts")
        if len(msgs) > self.limits.max_prompts_per_request:
            raise PromptError(
                f"the request has {len(msgs)} prompts; at most "
                f"{self.limits.max_prompts_per_request} per request"
            )
        checked = [self.check_prompt(i, m, ctx) for i, m in enumerate(msgs)]
        # Merge before reserving ids: a conflict (two boxes for one object) must change nothing.
        # New objects (id 0) get provisional negative keys, one per prompt.
        keys = [c.requested_id if c.requested_id else -(c.index + 1) for c in checked]
        groups = _group(checked, keys, clear_previous)
        ids, new = self.ids.reserve([c.requested_id for c in checked])
        key_to_id = {k: i for k, i in zip(keys, ids, strict=True)}
        prompts = []
        for (key, _stamp), prompt in groups.items():
            prompt.object_id = key_to_id[key]
            prompts.append(prompt)
        return PromptBatch(prompts=prompts, object_ids=ids, new_ids=new)

    # ------------------------------------------------------------------ clicks

    def clicked_point(self, msg: Any, ctx: PromptContext) -> PromptBatch:
        """RViz Publish Point (geometry_msgs/PointStamped, any TF frame) -> a new object from a
        foreground LiDAR click, in the LiDAR frame."""
        stamp = stamp_to_ns(msg.header.stamp)
        where = f"clicked point in frame '{msg.header.frame_id}'"
        p = np.array([[msg.point.x, msg.point.y, msg.point.z]], dtype=np.float64)
        if not np.isfinite(p).all():
            raise PromptError(f"{where}: point {p[0].tolist()} is not finite")
        # RViz stamps with "now": a stamp at or after the newest frame means that frame.
        if stamp == 0 or (ctx.newest_stamp_ns is not None and stamp >= ctx.newest_stamp_ns):
            stamp_ns = ctx.newest_stamp_ns
        else:
            stamp_ns = stamp
        _check_stamp(where, stamp_ns, ctx)
        t = _lidar_transform(where, str(msg.header.frame_id), stamp_ns, ctx)
        if t is not None:
            p, _ = _transform_lidar(t, p, None)
        ids, new = self.ids.reserve([0])
        prompt = ObjectPrompt(
            object_id=ids[0],
            stamp=None if stamp_ns is None else stamp_ns / _NS,
            lidar=LidarPrompt(points=p, labels=np.ones(1, np.int64)),
        )
        return PromptBatch(prompts=[prompt], object_ids=ids, new_ids=new)

    def image_click(
        self, camera: str, msg: Any, ctx: PromptContext, stamp_ns: int | None = None
    ) -> PromptBatch:
        """An image viewer's click (geometry_msgs/Point in pixels, x = column, y = row) on
        ``camera`` -> a new object from a foreground click. stamp_ns: the stamp of the image
        shown (the camera's newest), None = the newest frame."""
        where = f"click on camera '{camera}'"
        if camera not in ctx.cameras:
            known = ", ".join(f"'{c}'" for c in ctx.cameras) or "none configured"
            raise PromptError(f"{where}: unknown camera (cameras: {known})")
        geometry = ctx.cameras[camera]
        if geometry is None:
            raise PromptError(f"{where}: the image size is not known yet (no image received)")
        p = np.array([[msg.x, msg.y]], dtype=np.float64)
        if not np.isfinite(p).all():
            raise PromptError(f"{where}: pixel {p[0].tolist()} is not finite")
        w, h = geometry.width, geometry.height
        if not _inside(p, w, h).all():
            raise PromptError(
                f"{where}: pixel ({p[0, 0]:g}, {p[0, 1]:g}) is outside the {w}x{h} image"
            )
        _check_stamp(where, stamp_ns, ctx)
        p, _, _ = _rectify_image_prompt(where, geometry, p, None, None)
        ids, new = self.ids.reserve([0])
        prompt = ObjectPrompt(
            object_id=ids[0],
            stamp=None if stamp_ns is None else stamp_ns / _NS,
            image=[ImagePrompt(camera=camera, points=p, labels=np.ones(1, np.int64))],
        )
        return PromptBatch(prompts=[prompt], object_ids=ids, new_ids=new)


def _merge_points(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.concatenate([a, b], axis=0) if a.size else b


def _group(
    checked: list[_Checked], keys: list[int], clear_previous: bool
) -> dict[tuple[int, int | None], ObjectPrompt]:
    """Merge prompts per (object key, stamp); raises PromptError on conflicting boxes / masks."""
    groups: dict[tuple[int, int | None], ObjectPrompt] = {}
    origin: dict[tuple, int] = {}  # (group key, camera or "lidar", "box"/"mask") -> prompt index
    cleared: set[int] = set()
    for c, key in zip(checked, keys, strict=True):
        gkey = (key, c.stamp_ns)
        prompt = groups.get(gkey)
        if prompt is None:
            prompt = ObjectPrompt(
                object_id=0,  # set once ids are reserved
                stamp=None if c.stamp_ns is None else c.stamp_ns / _NS,
                clear_previous=bool(clear_previous) and key not in cleared,
            )
            cleared.add(key)
            groups[gkey] = prompt
        if c.modality == IMAGE:
            target = next((p for p in prompt.image if p.camera == c.camera), None)
            if target is None:
                target = ImagePrompt(camera=c.camera)
                prompt.image.append(target)
            slot = c.camera
        else:
            if prompt.lidar is None:
                prompt.lidar = LidarPrompt()
            target = prompt.lidar
            slot = "lidar"
        target.points = _merge_points(target.points, c.points)
        target.labels = np.concatenate([target.labels, c.labels])
        for part, value in (("box", c.box), ("mask", c.mask)):
            if value is None:
                continue
            first = origin.get((gkey, slot, part))
            if first is not None:
                obj = f"object {key}" if key > 0 else f"the new object of prompt {c.index}"
                on = f"camera '{slot}'" if c.modality == IMAGE else "the LiDAR"
                raise PromptError(
                    f"prompts {first} and {c.index} both give a {part} for {obj} on {on} and the "
                    f"same frame; send one {part} per object, camera and frame"
                )
            origin[(gkey, slot, part)] = c.index
            setattr(target, part, value)
    return groups
