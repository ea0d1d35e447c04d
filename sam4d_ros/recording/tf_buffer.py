"""A small offline TF buffer for reading recordings (no tf2, no rclpy).

The node's live buffer (``sam4d_ros.tf_buffer``) is built for streaming: bounded history, locks,
stamp 0 meaning "latest". Reading a whole recording wants the opposite: every sample kept, stamp 0
being a real time (KITTI starts at 0 s), and errors that name the bag topic. It needs only: a
tree of static and time-stamped transforms, lookups between two frames at one time with linear /
slerp interpolation between samples (``sam4d_core.codecs.transform``), and clear errors for gaps.

Conventions: a TF edge ``parent -> child`` stores ``parent_from_child`` (the pose of the child in
the parent, as in ``geometry_msgs/TransformStamped``); ``lookup(target, source, t)`` returns
``target_from_source`` (4, 4). Times are integer nanoseconds.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from sam4d_core.codecs.transform import interpolate_transform, invert_transform
from sam4d_core.data.errors import DatasetError

__all__ = ["TfBuffer", "TfGapError", "TfLookupError"]


class TfLookupError(DatasetError):
    """A transform cannot be looked up (unknown frame, unconnected trees, outside the data)."""


class TfGapError(TfLookupError):
    """The samples around the requested time are further apart than the allowed gap."""


@dataclass
class _Edge:
    parent: str
    topic: str
    static: np.ndarray | None = None  # (4, 4) parent_from_child
    stamps: list[int] = field(default_factory=list)
    mats: list[np.ndarray] = field(default_factory=list)
    sorted: bool = True


def _fmt(ns: int) -> str:
    return f"{ns * 1e-9:.6f} s"


class TfBuffer:
    """Static and dynamic transforms of a recording, queried after all are added.

    Args:
        max_gap: largest time (s) between the two samples an interpolation may bridge; a lookup
            needing a wider bridge raises :class:`TfGapError`.
        max_extrapolation: how far (s) before the first / after the last sample of a dynamic edge
            a lookup may hold the nearest sample (0: only inside the data).
    """

    def __init__(self, max_gap: float = 0.5, max_extrapolation: float = 0.0) -> None:
        self.max_gap_ns = int(round(max_gap * 1e9))
        self.max_extrapolation_ns = int(round(max_extrapolation * 1e9))
        self._edges: dict[str, _Edge] = {}

    # -- filling

    def _edge(self, parent: str, child: str, topic: str) -> _Edge:
        e = self._edges.get(child)
        if e is None:
            e = self._edges[child] = _Edge(parent=parent, topic=topic)
        elif e.parent != parent:
            raise TfLookupError(
                f"frame {child!r} has two parents, {e.parent!r} and {parent!r} (TF must be a tree)",
                topic,
            )
        return e

    def add_static(
        self, parent: str, child: str, parent_from_child: np.ndarray, topic: str
    ) -> None:
        self._edge(parent, child, topic).static = np.asarray(parent_from_child, dtype=np.float64)

    def add(
        self, parent: str, child: str, stamp_ns: int, parent_from_child: np.ndarray, topic: str
    ) -> None:
        e = self._edge(parent, child, topic)
        if e.stamps and stamp_ns < e.stamps[-1]:
            e.sorted = False
        e.stamps.append(int(stamp_ns))
        e.mats.append(np.asarray(parent_from_child, dtype=np.float64))

    @property
    def frames(self) -> set[str]:
        out = set(self._edges)
        out.update(e.parent for e in self._edges.values())
        return out

    def parent_of(self, frame: str) -> str | None:
        e = self._edges.get(frame)
        return None if e is None else e.parent

    def is_static_path(self, target: str, source: str) -> bool:
        """True when every edge between the two frames is static (no time dependence)."""
        lca = self._lca(target, source)
        return all(
            self._edges[f].static is not None
            for f in self._chain(target)[: self._chain(target).index(lca)]
            + self._chain(source)[: self._chain(source).index(lca)]
        )

    def root_of(self, frame: str) -> str:
        return self._chain(frame)[-1]

    # -- queries

    def _chain(self, frame: str) -> list[str]:
        chain = [frame]
        while chain[-1] in self._edges:
            nxt = self._edges[chain[-1]].parent
            if nxt in chain:
                raise TfLookupError(f"TF tree has a cycle through {nxt!r}")
            chain.append(nxt)
        return chain

    def _lca(self, target: str, source: str) -> str:
        known = self.frames
        for f in (target, source):
            if f not in known:
                raise TfLookupError(f"unknown TF frame {f!r} (known: {sorted(known)})")
        tchain = self._chain(target)
        for f in self._chain(source):
            if f in tchain:
                return f
        raise TfLookupError(
            f"TF frames {target!r} and {source!r} are not connected "
            f"(roots {tchain[-1]!r} and {self._chain(source)[-1]!r})"
        )

    def _edge_at(self, child: str, stamp_ns: int) -> np.ndarray:
        e = self._edges[child]
        if e.static is not None and not e.stamps:
            return e.static
        if not e.sorted:
            order = np.argsort(e.stamps, kind="stable")
            e.stamps = [e.stamps[i] for i in order]
            e.mats = [e.mats[i] for i in order]
            e.sorted = True
        stamps = e.stamps
        i = bisect.bisect_left(stamps, stamp_ns)
        if i < len(stamps) and stamps[i] == stamp_ns:
            return e.mats[i]  # exact sample: no interpolation, so round trips stay exact
        what = f"{e.parent!r} -> {child!r}"
        if i == 0 or i == len(stamps):
            near = stamps[0] if i == 0 else stamps[-1]
            if abs(near - stamp_ns) <= self.max_extrapolation_ns:
                return e.mats[0 if i == 0 else -1]
            raise TfGapError(
                f"no transform {what} at {_fmt(stamp_ns)}: the data covers "
                f"{_fmt(stamps[0])} .. {_fmt(stamps[-1])}",
                e.topic,
            )
        t0, t1 = stamps[i - 1], stamps[i]
        if t1 - t0 > self.max_gap_ns:
            raise TfGapError(
                f"gap in transform {what}: no sample between {_fmt(t0)} and {_fmt(t1)} "
                f"({(t1 - t0) * 1e-9:.3f} s > max gap {self.max_gap_ns * 1e-9:.3f} s), "
                f"needed at {_fmt(stamp_ns)}",
                e.topic,
            )
        return interpolate_transform(e.mats[i - 1], e.mats[i], (stamp_ns - t0) / (t1 - t0))

    def _up_to(self, frame: str, ancestor: str, stamp_ns: int) -> np.ndarray:
        """ancestor_from_frame, composing the edges on the way up."""
        out = np.eye(4)
        f = frame
        while f != ancestor:
            out = self._edge_at(f, stamp_ns) @ out
            f = self._edges[f].parent
        return out

    def lookup(self, target: str, source: str, stamp_ns: int) -> np.ndarray:
        """``target_from_source`` (4, 4) at ``stamp_ns``, through their lowest common ancestor.

        Going through the common ancestor (not the root) means a camera <- LiDAR lookup never
        touches the odometry edge, so it works at camera stamps where no ego pose was recorded.
        """
        if target == source:
            return np.eye(4)
        lca = self._lca(target, source)
        lca_from_source = self._up_to(source, lca, stamp_ns)
        if lca == target:
            return lca_from_source
        return invert_transform(self._up_to(target, lca, stamp_ns)) @ lca_from_source
