"""A TF buffer of our own: tf2_ros is not always installed (not on PyPI), the node needs TF anyway.

``TfBuffer`` stores, per child frame, the transform to its parent: a time-sorted history for
dynamic edges (``/tf``) or one transform valid at all times for static edges (``/tf_static``).
``lookup(target, source, stamp_ns)`` walks both frames up to their lowest common ancestor and
composes the edges at that time, interpolating between the two samples around it (linear
translation, slerp rotation), like tf2's ``lookupTransform``. Going through the common ancestor
(not the root) means that a camera <- LiDAR lookup never touches the odometry edge.

One class serves both users:
- the live node (fed by ``sam4d_ros.tf_buffer.TfListener``): bounded history (``cache_time_s``,
  ``max_samples_per_edge``), fed from subscription callbacks and read from the worker thread, so
  every public method takes one lock;
- the recording reader (:mod:`sam4d_core.data.sequence_bag`): unbounded history
  (``cache_time_s=None, max_samples_per_edge=None``) and a largest gap between the two samples an
  interpolation may bridge (``max_interpolation_gap_s``, beyond it ``TfGapError``).

Messages are duck-typed (``add_message`` takes anything shaped like tf2_msgs/TFMessage), so this
module imports no ROS package.

Times are integer nanoseconds. Every stamp, 0 included, is a real time (KITTI and synthetic
sequences start at t = 0 s); ``stamp_ns=None`` asks for the latest time all edges of the chain share
(what tf2 spells ``Time(0)``).
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sam4d_core.codecs.errors import TransformError
from sam4d_core.codecs.transform import (
    interpolate_tq,
    invert_transform,
    matrix_to_tq,
    tq_to_matrix,
    validate_quaternion,
    validate_translation,
)

__all__ = [
    "DisconnectedFramesError",
    "ExtrapolationError",
    "TfBuffer",
    "TfGapError",
    "TfLookupError",
    "UnknownFrameError",
]

_NS = 1_000_000_000


class TfLookupError(LookupError):
    """Base class of lookup failures (a transform that the buffer cannot provide)."""


class UnknownFrameError(TfLookupError):
    """A frame was never seen as the parent or child of any transform."""

    def __init__(self, frame: str) -> None:
        super().__init__(f"frame '{frame}' does not exist in the TF buffer")
        self.frame = frame


class DisconnectedFramesError(TfLookupError):
    """Both frames exist but belong to different trees (no common ancestor)."""

    def __init__(self, target: str, source: str, target_root: str, source_root: str) -> None:
        super().__init__(
            f"frames '{target}' and '{source}' are not connected: '{target}' belongs to the tree "
            f"rooted at '{target_root}', '{source}' to the tree rooted at '{source_root}'"
        )
        self.target, self.source = target, source
        self.target_root, self.source_root = target_root, source_root


class ExtrapolationError(TfLookupError):
    """The requested time is outside an edge's history by more than the allowed extrapolation."""

    def __init__(
        self, parent: str, child: str, stamp_ns: int, oldest_ns: int, newest_ns: int, limit_s: float
    ) -> None:
        super().__init__(
            f"lookup of edge '{parent}' -> '{child}' at t={_fmt(stamp_ns)} s would extrapolate: "
            f"data covers [{_fmt(oldest_ns)}, {_fmt(newest_ns)}] s "
            f"(allowed extrapolation {limit_s} s)"
        )
        self.parent, self.child = parent, child
        self.stamp_ns, self.oldest_ns, self.newest_ns = stamp_ns, oldest_ns, newest_ns
        self.limit_s = limit_s


class TfGapError(ExtrapolationError):
    """The two samples around the requested time are further apart than the buffer may bridge.

    A subclass of ExtrapolationError: both mean "no data for this edge at that time", so code that
    waits for TF on ExtrapolationError also handles a gap. ``before_ns`` / ``after_ns`` are the two
    samples around ``stamp_ns``, ``max_gap_s`` the buffer's ``max_interpolation_gap_s``; the
    attributes of ExtrapolationError (``oldest_ns``, ``newest_ns``: the edge's whole history,
    ``limit_s``) are set too.
    """

    def __init__(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        before_ns: int,
        after_ns: int,
        max_gap_s: float,
        *,
        oldest_ns: int,
        newest_ns: int,
        limit_s: float,
    ) -> None:
        TfLookupError.__init__(
            self,
            f"gap in edge '{parent}' -> '{child}': lookup at t={_fmt(stamp_ns)} s falls between "
            f"samples at {_fmt(before_ns)} s and {_fmt(after_ns)} s, "
            f"{(after_ns - before_ns) / _NS:.3f} s apart (max interpolation gap {max_gap_s} s)",
        )
        self.parent, self.child = parent, child
        self.stamp_ns, self.before_ns, self.after_ns = stamp_ns, before_ns, after_ns
        self.max_gap_s = max_gap_s
        self.oldest_ns, self.newest_ns, self.limit_s = oldest_ns, newest_ns, limit_s


def _fmt(ns: int) -> str:
    return f"{ns // _NS}.{ns % _NS:09d}"


@dataclass
class _Edge:
    """Transform ``T_parent_child`` history of one child frame (sorted by stamp)."""

    parent: str
    static: bool
    stamps: list[int] = field(default_factory=list)
    translations: list[np.ndarray] = field(default_factory=list)
    rotations: list[np.ndarray] = field(default_factory=list)

    def insert(self, stamp: int, t: np.ndarray, q: np.ndarray) -> None:
        if self.static:
            self.stamps, self.translations, self.rotations = [stamp], [t], [q]
            return
        if not self.stamps or stamp > self.stamps[-1]:  # the common, in-order case
            self.stamps.append(stamp)
            self.translations.append(t)
            self.rotations.append(q)
            return
        i = bisect.bisect_left(self.stamps, stamp)
        if i < len(self.stamps) and self.stamps[i] == stamp:  # same stamp again: newest wins
            self.translations[i], self.rotations[i] = t, q
            return
        self.stamps.insert(i, stamp)
        self.translations.insert(i, t)
        self.rotations.insert(i, q)

    def prune(self, oldest_kept: int | None, max_samples: int | None) -> None:
        i = 0 if oldest_kept is None else bisect.bisect_left(self.stamps, oldest_kept)
        if max_samples is not None:
            i = max(i, len(self.stamps) - max_samples)
        # Keep at least one sample so that a slow publisher's edge does not vanish.
        i = min(i, len(self.stamps) - 1)
        if i > 0:
            del self.stamps[:i], self.translations[:i], self.rotations[:i]


class TfBuffer:
    """Thread-safe transform tree with (optionally bounded) history and interpolated lookups.

    cache_time_s: history kept per dynamic edge, relative to that edge's newest sample; None keeps
        everything (reading a whole recording).
    max_extrapolation_s: how far beyond an edge's first/last sample a lookup may go; within it the
        nearest sample is held (no extrapolation of motion), beyond it ExtrapolationError. 0 is
        tf2's behaviour (exact coverage required).
    max_samples_per_edge: hard bound per edge against publishers flooding distinct stamps; None
        for no bound.
    max_interpolation_gap_s: largest time between the two samples an interpolation may bridge;
        a lookup between samples further apart raises TfGapError. None (tf2's behaviour) bridges
        any gap.
    """

    def __init__(
        self,
        cache_time_s: float | None = 10.0,
        max_extrapolation_s: float = 0.0,
        max_samples_per_edge: int | None = 10_000,
        max_interpolation_gap_s: float | None = None,
    ) -> None:
        if cache_time_s is not None and not cache_time_s > 0:
            raise ValueError(f"cache_time_s must be > 0 or None, got {cache_time_s}")
        if not max_extrapolation_s >= 0:
            raise ValueError(f"max_extrapolation_s must be >= 0, got {max_extrapolation_s}")
        if max_samples_per_edge is not None and max_samples_per_edge < 2:
            raise ValueError(
                f"max_samples_per_edge must be >= 2 or None, got {max_samples_per_edge}"
            )
        if max_interpolation_gap_s is not None and not max_interpolation_gap_s > 0:
            raise ValueError(
                f"max_interpolation_gap_s must be > 0 or None, got {max_interpolation_gap_s}"
            )
        self.cache_time_s = cache_time_s
        self.cache_time_ns = None if cache_time_s is None else int(round(cache_time_s * _NS))
        self.max_extrapolation_s = float(max_extrapolation_s)
        self._max_extrapolation_ns = int(round(max_extrapolation_s * _NS))
        self._max_samples = None if max_samples_per_edge is None else int(max_samples_per_edge)
        self.max_interpolation_gap_s = max_interpolation_gap_s
        self._max_gap_ns = (
            None if max_interpolation_gap_s is None else int(round(max_interpolation_gap_s * _NS))
        )
        self._edges: dict[str, _Edge] = {}
        self._frames: set[str] = set()
        self._lock = threading.RLock()
        # Signalled on every new transform, for lookups that wait for late odometry.
        self._changed = threading.Condition(self._lock)

    # ------------------------------------------------------------------ writing

    def set_transform(
        self,
        parent: str,
        child: str,
        stamp_ns: int,
        transform: np.ndarray | tuple[Sequence[float], Sequence[float]],
        static: bool = False,
    ) -> None:
        """Add ``T_parent_child`` at ``stamp_ns``.

        transform: (4, 4) matrix or (translation (3,), quaternion x, y, z, w (4,)).
        A child that gets a different parent, or switches between static and dynamic, starts a
        new history (tf2 keeps one tree; the newest parent wins). Raises TransformError for
        invalid values, empty or equal frame ids, negative stamps or a transform that would close
        a loop in the tree.
        """
        parent = _frame(parent, "parent frame")
        child = _frame(child, "child frame")
        if parent == child:
            raise TransformError(f"transform from frame '{child}' to itself")
        if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)):
            raise TransformError(f"stamp_ns must be an integer, got {stamp_ns!r}")
        stamp_ns = int(stamp_ns)
        if stamp_ns < 0:
            raise TransformError(f"stamp {stamp_ns} ns of '{parent}' -> '{child}' is negative")
        if isinstance(transform, tuple) and len(transform) == 2:
            t = validate_translation(transform[0])
            q = validate_quaternion(transform[1])
        else:
            t, q = matrix_to_tq(transform)
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent or edge.static != bool(static):
                ancestor = parent
                while ancestor in self._edges:  # refuse loops: child must not be above parent
                    if ancestor == child:
                        raise TransformError(
                            f"transform '{parent}' -> '{child}' would create a loop: "
                            f"'{child}' is an ancestor of '{parent}'"
                        )
                    ancestor = self._edges[ancestor].parent
                if ancestor == child:
                    raise TransformError(
                        f"transform '{parent}' -> '{child}' would create a loop: "
                        f"'{child}' is an ancestor of '{parent}'"
                    )
                edge = _Edge(parent=parent, static=bool(static))
                self._edges[child] = edge
            edge.insert(stamp_ns, t, q)
            if not edge.static and (self.cache_time_ns, self._max_samples) != (None, None):
                oldest = (
                    None if self.cache_time_ns is None else edge.stamps[-1] - self.cache_time_ns
                )
                edge.prune(oldest, self._max_samples)
            self._frames.add(parent)
            self._frames.add(child)
            self._changed.notify_all()

    def add_message(self, tf_message: Any, static: bool = False) -> int:
        """Add every TransformStamped of a tf2_msgs/TFMessage (anything with ``.transforms``).

        Invalid transforms are skipped so that one bad entry does not drop the rest; returns the
        number added. Use ``add_transform_stamped`` to get the error for a single transform.
        """
        added = 0
        for ts in tf_message.transforms:
            try:
                self.add_transform_stamped(ts, static)
            except TransformError:
                continue
            added += 1
        return added

    def add_transform_stamped(self, msg: Any, static: bool = False) -> None:
        """Add one geometry_msgs/TransformStamped (duck-typed); raises TransformError."""
        tr, rot = msg.transform.translation, msg.transform.rotation
        stamp = msg.header.stamp
        self.set_transform(
            msg.header.frame_id,
            msg.child_frame_id,
            int(stamp.sec) * _NS + int(stamp.nanosec),
            ((tr.x, tr.y, tr.z), (rot.x, rot.y, rot.z, rot.w)),
            static,
        )

    def clear(self, keep_static: bool = False) -> None:
        """Forget everything, or only the dynamic history with ``keep_static``.

        A bag that loops back in time invalidates /tf's history but not /tf_static, which is
        latched and will not be sent again.
        """
        with self._lock:
            if keep_static:
                self._edges = {c: e for c, e in self._edges.items() if e.static}
                self._frames = {f for c, e in self._edges.items() for f in (c, e.parent)}
            else:
                self._edges.clear()
                self._frames.clear()

    # ------------------------------------------------------------------ reading

    def frames(self) -> list[str]:
        """All known frame ids, sorted."""
        with self._lock:
            return sorted(self._frames)

    def parent_of(self, frame: str) -> str | None:
        """Parent frame id of ``frame`` (None for a root); raises UnknownFrameError."""
        frame = _frame_lookup(frame)
        with self._lock:
            if frame not in self._frames:
                raise UnknownFrameError(frame)
            edge = self._edges.get(frame)
            return None if edge is None else edge.parent

    def time_range(self, parent: str, child: str) -> tuple[int, int] | None:
        """(oldest, newest) stamps of the edge ``parent -> child``; None for a static edge.

        Raises UnknownFrameError when ``child`` has no edge to ``parent``.
        """
        parent, child = _frame_lookup(parent), _frame_lookup(child)
        with self._lock:
            edge = self._edges.get(child)
            if edge is None or edge.parent != parent:
                raise UnknownFrameError(f"{parent} -> {child}")
            return None if edge.static else (edge.stamps[0], edge.stamps[-1])

    def root_of(self, frame: str) -> str:
        """Root of the tree ``frame`` belongs to (``frame`` itself for a root); raises
        UnknownFrameError."""
        frame = _frame_lookup(frame)
        with self._lock:
            if frame not in self._frames:
                raise UnknownFrameError(frame)
            return self._root_path(frame)[-1]

    def lookup(
        self, target_frame: str, source_frame: str, stamp_ns: int | None = None
    ) -> np.ndarray:
        """(4, 4) float64 ``T_target_source`` at ``stamp_ns`` (maps source points into target).

        stamp_ns None = the latest time at which every dynamic edge of the chain has data; any
        integer (0 included) is a time. Raises UnknownFrameError, DisconnectedFramesError,
        ExtrapolationError or TfGapError (all TfLookupError).
        """
        target_frame = _frame_lookup(target_frame)
        source_frame = _frame_lookup(source_frame)
        stamp_ns = _stamp_arg(stamp_ns)
        with self._lock:
            up_t, up_s = self._chains(target_frame, source_frame)
            if stamp_ns is None:
                stamp_ns = self._latest_common(up_t + up_s)
            # T_common_source = T_common_a1 ... T_an_source; same for the target side.
            t_common_source = self._compose(up_s, stamp_ns)
            t_common_target = self._compose(up_t, stamp_ns)
        return invert_transform(t_common_target) @ t_common_source

    def can_transform(
        self, target_frame: str, source_frame: str, stamp_ns: int | None = None
    ) -> bool:
        """True when ``lookup`` with the same arguments would succeed."""
        try:
            self.lookup(target_frame, source_frame, stamp_ns)
        except TfLookupError:
            return False
        return True

    def wait_for_transform(
        self, target_frame: str, source_frame: str, stamp_ns: int | None, timeout_s: float
    ) -> np.ndarray:
        """``lookup``, waiting up to ``timeout_s`` for transforms that have not arrived yet.

        Odometry often arrives a little after the sweep it belongs to; waiting here beats
        dropping the sweep. Raises the last lookup error when the time runs out.
        """
        deadline = time.monotonic() + max(0.0, timeout_s)
        with self._changed:
            while True:
                try:
                    return self.lookup(target_frame, source_frame, stamp_ns)
                except TfLookupError:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    self._changed.wait(remaining)

    def latest_common_time(self, target_frame: str, source_frame: str) -> int | None:
        """Newest stamp (ns) at which the chain between the two frames is fully known; None when
        the chain is static (valid at all times)."""
        target_frame = _frame_lookup(target_frame)
        source_frame = _frame_lookup(source_frame)
        with self._lock:
            up_t, up_s = self._chains(target_frame, source_frame)
            return self._latest_common(up_t + up_s)

    # ------------------------------------------------------------------ internals (lock held)

    def _root_path(self, frame: str) -> list[str]:
        path = [frame]
        while frame in self._edges:
            frame = self._edges[frame].parent
            path.append(frame)
        return path

    def _chains(self, target: str, source: str) -> tuple[list[str], list[str]]:
        """Child frames on the way from target / source up to their common ancestor."""
        for frame in (target, source):
            if frame not in self._frames:
                raise UnknownFrameError(frame)
        path_t = self._root_path(target)
        path_s = self._root_path(source)
        if path_t[-1] != path_s[-1]:
            raise DisconnectedFramesError(target, source, path_t[-1], path_s[-1])
        on_target = {f: i for i, f in enumerate(path_t)}
        for j, frame in enumerate(path_s):
            if frame in on_target:
                return path_t[: on_target[frame]], path_s[:j]
        raise AssertionError("paths with one root always meet")  # pragma: no cover

    def _latest_common(self, children: list[str]) -> int | None:
        latest: int | None = None
        for child in children:
            edge = self._edges[child]
            if edge.static:
                continue
            newest = edge.stamps[-1]
            latest = newest if latest is None else min(latest, newest)
        return latest

    def _compose(self, children: list[str], stamp_ns: int | None) -> np.ndarray:
        result = np.eye(4)
        for child in reversed(children):  # from the common ancestor down to the frame
            result = result @ self._edge_at(child, stamp_ns)
        return result

    def _edge_at(self, child: str, stamp_ns: int | None) -> np.ndarray:
        edge = self._edges[child]
        stamps = edge.stamps
        if edge.static or stamp_ns is None:  # None only reaches here for all-static chains
            return tq_to_matrix(edge.translations[-1], edge.rotations[-1])
        oldest, newest = stamps[0], stamps[-1]
        if stamp_ns <= oldest or stamp_ns >= newest:
            gap = oldest - stamp_ns if stamp_ns <= oldest else stamp_ns - newest
            if gap > self._max_extrapolation_ns:
                raise ExtrapolationError(
                    edge.parent, child, stamp_ns, oldest, newest, self.max_extrapolation_s
                )
            i = 0 if stamp_ns <= oldest else len(stamps) - 1
            return tq_to_matrix(edge.translations[i], edge.rotations[i])
        i = bisect.bisect_left(stamps, stamp_ns)
        if stamps[i] == stamp_ns:
            return tq_to_matrix(edge.translations[i], edge.rotations[i])
        t0, t1 = stamps[i - 1], stamps[i]
        if self._max_gap_ns is not None and t1 - t0 > self._max_gap_ns:
            raise TfGapError(
                edge.parent, child, stamp_ns, t0, t1, float(self.max_interpolation_gap_s or 0.0),
                oldest_ns=oldest, newest_ns=newest, limit_s=self.max_extrapolation_s,
            )  # fmt: skip
        fraction = (stamp_ns - t0) / (t1 - t0)
        t, q = interpolate_tq(
            edge.translations[i - 1], edge.rotations[i - 1], edge.translations[i],
            edge.rotations[i], fraction,
        )  # fmt: skip
        return tq_to_matrix(t, q)


def _frame(frame: Any, what: str) -> str:
    if not isinstance(frame, str):
        raise TransformError(f"{what} must be a string, got {frame!r}")
    # tf2 strips a leading slash (ROS 1 style names) rather than treating it as a new frame.
    name = frame[1:] if frame.startswith("/") else frame
    if not name:
        raise TransformError(f"{what} is empty")
    return name


def _stamp_arg(stamp_ns: Any) -> int | None:
    if stamp_ns is None:
        return None
    if isinstance(stamp_ns, bool) or not isinstance(stamp_ns, (int, np.integer)):
        raise TypeError(f"stamp_ns must be an integer (ns) or None (latest), got {stamp_ns!r}")
    return int(stamp_ns)


def _frame_lookup(frame: Any) -> str:
    if not isinstance(frame, str):
        raise UnknownFrameError(repr(frame))
    name = frame[1:] if frame.startswith("/") else frame
    if not name:
        raise UnknownFrameError(frame)
    return name
