"""What /diagnostics reports about the node: written by the worker (and the LiDAR callback), read
by the diagnostics timer. ``NodeStatus`` keeps it under its own lock; the timer reads a
``snapshot()`` and never waits for the tracker."""

from __future__ import annotations

import collections
import copy
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NodeStatus", "StatusSnapshot", "StreamState"]


@dataclass
class StreamState:
    """What /diagnostics says about one input stream."""

    error: str | None = None
    warning: str | None = None
    errors: int = 0


@dataclass
class StatusSnapshot:
    """Everything /diagnostics reports (a copy, taken under the status lock)."""

    processed: int = 0
    failed: int = 0
    skipped: int = 0
    last_processing_ms: float | None = None
    last_latency_ms: float | None = None
    last_stamp_ns: int | None = None
    last_sweep_wall: float | None = None
    lidar: StreamState = field(default_factory=StreamState)
    cameras: dict[str, StreamState] = field(default_factory=dict)
    camera_missing: dict[str, str | None] = field(default_factory=dict)
    pose_source: str = ""
    time_jumps: int = 0
    last_jump: tuple[float, str] | None = None  # (wall time, message)
    tracker_resets: int = 0
    worker_error: tuple[float, str] | None = None
    # The tracker's sizes as of the worker's last change (the timer must not wait for its lock).
    tracker_ids: list[int] = field(default_factory=list)
    tracker_stats: dict[str, Any] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))


class NodeStatus:
    """The node's status, thread safe (one lock; every update is short)."""

    def __init__(self, cameras: Iterable[str]) -> None:
        self._lock = threading.Lock()
        cameras = list(cameras)
        self._s = StatusSnapshot(
            cameras={c: StreamState() for c in cameras},
            camera_missing={c: None for c in cameras},
        )

    def snapshot(self) -> StatusSnapshot:
        with self._lock:
            return copy.deepcopy(self._s)

    def sweep_received(self) -> None:
        with self._lock:
            self._s.last_sweep_wall = time.monotonic()

    def sweep_failed(self, stamp_ns: int, error: str) -> None:
        """A sweep could not be built (an error of the LiDAR stream)."""
        with self._lock:
            self._s.failed += 1
            self._s.lidar = StreamState(error=error, errors=self._s.lidar.errors + 1)
            self._s.last_stamp_ns = stamp_ns

    def sweep_skipped(self, warning: str) -> None:
        """The tracker skipped a sweep (reordered, repeated or empty)."""
        with self._lock:
            self._s.skipped += 1
            self._s.lidar = StreamState(warning=warning, errors=self._s.lidar.errors)

    def sweep_built(
        self,
        stamp_ns: int,
        pose_source: str,
        warnings: Iterable[str],
        camera_errors: Mapping[str, Any],
        missing: Mapping[str, str | None],
    ) -> None:
        with self._lock:
            s = self._s
            s.lidar = StreamState(warning="; ".join(warnings) or None, errors=s.lidar.errors)
            s.pose_source = pose_source
            s.last_stamp_ns = stamp_ns
            for cam, state in s.cameras.items():
                err = camera_errors.get(cam)
                errors = state.errors + (err is not None)
                s.cameras[cam] = StreamState(error=None if err is None else str(err), errors=errors)
                s.camera_missing[cam] = missing.get(cam)

    def published(
        self, counts: Mapping[str, int], processing_ms: float | None, latency_ms: float
    ) -> None:
        """Messages sent per topic; with a processing time, one sweep processed."""
        with self._lock:
            for name, n in counts.items():
                self._s.published[name] += n
            if processing_ms is not None:
                self._s.processed += 1
                self._s.last_processing_ms = processing_ms
                self._s.last_latency_ms = latency_ms

    def time_jumped(self, message: str) -> None:
        with self._lock:
            self._s.time_jumps += 1
            self._s.tracker_resets += 1
            self._s.last_jump = (time.monotonic(), message)

    def tracker_reset(self) -> None:
        with self._lock:
            self._s.tracker_resets += 1

    def worker_failed(self, text: str) -> None:
        with self._lock:
            self._s.worker_error = (time.monotonic(), text)

    def tracker_changed(self, object_ids: Iterable[int], stats: Mapping[str, Any]) -> None:
        with self._lock:
            self._s.tracker_ids = sorted(object_ids)
            self._s.tracker_stats = {
                k: stats[k] for k in ("buffer_frames", "pending_prompts", "objects")
            }
