"""Per-sweep synchronization of camera images to LiDAR sweeps (the LiDAR is the master clock).

For each sweep, each camera contributes the image whose stamp is nearest to ``sweep stamp +
time_offset_s`` (the camera's offset), if that image is within ``tolerance_s`` of it. Images come
from a small ring buffer per camera, so an image that arrived *before* its sweep is found; for one
that arrives *after*, the sweep waits at most ``max_wait_s`` (wall clock, from the sweep's arrival).
When the wait is over the sweep goes on without the cameras still undecided: a late or dead camera
never drops a sweep (Autoware's ApproximateTime sync dropped whole sets, DESIGN.md).

A camera is *decided* for a pending sweep, before the deadline, when no image still to come can be
nearer to the target than what is buffered:
- an image at or after the target has arrived (images of one camera arrive in stamp order), or
- an image lies within the tolerance and the camera's next frame, expected one period (estimated
  from the buffered stamps) after its newest, would be farther from the target, or
- the camera's next expected frame is already beyond the tolerance window (no match possible).
So with cameras that are on time a sweep leaves as soon as its images are in, without waiting.

Thread-safety: ``add_*`` are called from subscription callbacks, ``poll`` / ``wait_ready`` from the
worker; every method takes one lock (a ``threading.Condition``). Sweeps leave in arrival order.

Time going backwards (a looped bag, a restarted driver): a sweep stamped more than
``time_jump_threshold_s`` before the previous one is flagged ``time_jump`` (the node resets the
tracker on it), sweeps still pending from the old timeline leave first (without waiting), and
images of the old timeline are dropped from the buffers. A camera whose own stamps jump back has
its buffer cleared.

Times: stamps are integer nanoseconds (``header.stamp``); waiting uses a monotonic clock
(``clock``, injectable for tests) in seconds.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sam4d_ros.conversions.stamps import stamp_to_ns

__all__ = [
    "CameraMatch",
    "CameraSyncCounters",
    "SweepSynchronizer",
    "SyncConfig",
    "SyncCounters",
    "SyncedSweep",
]

_NS = 1_000_000_000
# Margin on the estimated camera period for early decisions: a frame may come up to 25 % early
# (jitter) without changing which image is nearest.
_PERIOD_MARGIN = 0.25


def _ns(seconds: float) -> int:
    return int(round(float(seconds) * _NS))


@dataclass(frozen=True)
class SyncConfig:
    """Synchronization settings.

    cameras: camera names (unique, non-empty).
    time_offsets_s: per camera, the expected ``image stamp - sweep stamp`` (e.g. a camera that
        fires 30 ms after the LiDAR passes its field of view: 0.03); missing names = 0.
    tolerance_s: largest |image stamp - (sweep stamp + offset)| accepted.
    max_wait_s: longest wall-clock wait for a camera that is late, from the sweep's arrival.
    buffer_size: images kept per camera (covering more than ``max_wait_s`` plus the transport
        delay at the camera's rate).
    max_pending_sweeps: sweeps waiting for cameras at once; beyond it the oldest leaves at once.
    time_jump_threshold_s: a sweep stamped this much before the previous one is a time jump.
    """

    cameras: tuple[str, ...] = ()
    time_offsets_s: Mapping[str, float] = field(default_factory=dict)
    tolerance_s: float = 0.05
    max_wait_s: float = 0.05
    buffer_size: int = 8
    max_pending_sweeps: int = 4
    time_jump_threshold_s: float = 1.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cameras", tuple(self.cameras))
        object.__setattr__(self, "time_offsets_s", dict(self.time_offsets_s))
        problems = []
        if any(not isinstance(c, str) or not c for c in self.cameras):
            problems.append(f"camera names must be non-empty strings, got {list(self.cameras)}")
        if len(set(self.cameras)) != len(self.cameras):
            problems.append(f"camera names must be unique, got {list(self.cameras)}")
        unknown = sorted(set(self.time_offsets_s) - set(self.cameras))
        if unknown:
            problems.append(f"time_offsets_s names unknown cameras {unknown}")
        for name, value in (
            ("tolerance_s", self.tolerance_s),
            ("max_wait_s", self.max_wait_s),
        ):
            if not 0.0 <= float(value) < float("inf"):
                problems.append(f"{name} must be finite and >= 0, got {value}")
        if not float(self.time_jump_threshold_s) > 0.0:
            problems.append(f"time_jump_threshold_s must be > 0, got {self.time_jump_threshold_s}")
        if int(self.buffer_size) < 1:
            problems.append(f"buffer_size must be >= 1, got {self.buffer_size}")
        if int(self.max_pending_sweeps) < 1:
            problems.append(f"max_pending_sweeps must be >= 1, got {self.max_pending_sweeps}")
        for cam, off in self.time_offsets_s.items():
            if not abs(float(off)) < float("inf"):
                problems.append(f"time offset of camera '{cam}' must be finite, got {off}")
        if problems:
            raise ValueError("invalid sync configuration: " + "; ".join(problems))


@dataclass
class CameraSyncCounters:
    """Per-camera statistics since start (or ``reset_counters``).

    received: images accepted into the buffer. camera_info: CameraInfo messages received.
    matched: sweeps that left with an image of this camera.
    missing: sweeps that left without one; split into ``no_image`` (buffer empty), ``too_old``
        (the buffered images were all older than the tolerance window: camera stopped, lagging or
        between two frames) and ``too_new`` (only images newer than the window).
    late: images that arrived after their sweep had left without this camera (raise
        ``max_wait_s`` when this grows). time_jumps: times the camera's stamps went backwards.
    """

    received: int = 0
    camera_info: int = 0
    matched: int = 0
    missing: int = 0
    no_image: int = 0
    too_old: int = 0
    too_new: int = 0
    late: int = 0
    time_jumps: int = 0


@dataclass
class SyncCounters:
    """Synchronizer statistics (a snapshot: changing it changes nothing).

    sweeps_received / sweeps_emitted: sweeps in / out. superseded: ready sweeps skipped by
    ``newest_only`` consumers (the node's latest-wins queue). time_jumps: backward jumps of the
    sweep stamps. pending: sweeps waiting for cameras now. cameras: per-camera counters.
    """

    sweeps_received: int = 0
    sweeps_emitted: int = 0
    superseded: int = 0
    time_jumps: int = 0
    pending: int = 0
    cameras: dict[str, CameraSyncCounters] = field(default_factory=dict)


@dataclass
class CameraMatch:
    """The image chosen for one camera of one sweep.

    image: the Image or CompressedImage message. info: the newest CameraInfo received at that time
        (None when none has arrived yet; the frame builder reports it). stamp_ns: the image stamp.
    delta_ns: image stamp - (sweep stamp + camera offset).
    """

    camera: str
    image: Any
    info: Any | None
    stamp_ns: int
    delta_ns: int


@dataclass
class SyncedSweep:
    """One sweep with the images matched to it.

    cloud: the PointCloud2 message. stamp_ns: its stamp.
    cameras: camera name -> match, for the cameras that made it (configuration order).
    missing: camera name -> why it is absent (for logs and diagnostics).
    time_jump: time went backwards at (or, for a ``newest_only`` consumer, before) this sweep:
        reset the tracker before stepping it. jump_s: by how much (seconds, > 0).
    waited_s: wall-clock time from the sweep's arrival to its release.
    """

    cloud: Any
    stamp_ns: int
    cameras: dict[str, CameraMatch]
    missing: dict[str, str]
    time_jump: bool = False
    jump_s: float = 0.0
    waited_s: float = 0.0

    @property
    def stamp_s(self) -> float:
        return self.stamp_ns / _NS


@dataclass
class _Camera:
    name: str
    offset_ns: int
    stamps: list[int] = field(default_factory=list)  # sorted
    images: list[Any] = field(default_factory=list)  # same order as stamps
    info: Any = None
    counters: CameraSyncCounters = field(default_factory=CameraSyncCounters)
    # (target_ns) of recently released sweeps that left without this camera: spotting late images.
    missed_targets: deque = field(default_factory=lambda: deque(maxlen=16))

    def clear(self) -> None:
        self.stamps.clear()
        self.images.clear()

    def period_ns(self) -> int | None:
        """Median spacing of the buffered stamps (None with fewer than 3 images). The lower
        median: right after a pause or a forward jump of the camera's clock, one huge gap must
        not pass for the period (the camera would be given up at once for the next sweeps)."""
        if len(self.stamps) < 3:
            return None
        pairs = zip(self.stamps[:-1], self.stamps[1:], strict=True)
        gaps = sorted(b - a for a, b in pairs if b > a)
        if not gaps:
            return None
        return gaps[(len(gaps) - 1) // 2]

    def best(self, target: int, tol: int) -> int | None:
        """Index of the buffered image nearest to target within tol (ties: the earlier one)."""
        i = bisect.bisect_left(self.stamps, target)
        best, best_d = None, None
        for j in (i - 1, i):
            if 0 <= j < len(self.stamps):
                d = abs(self.stamps[j] - target)
                if d <= tol and (best_d is None or d < best_d):
                    best, best_d = j, d
        return best


@dataclass
class _Pending:
    cloud: Any
    stamp_ns: int
    arrived: float
    time_jump: bool
    jump_s: float


class SweepSynchronizer:
    """Matches camera images to LiDAR sweeps; see the module docstring.

    clock: monotonic time in seconds (``time.monotonic``; tests pass a fake one).
    """

    def __init__(self, config: SyncConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._cond = threading.Condition()
        self._cams: dict[str, _Camera] = {
            name: _Camera(name, _ns(config.time_offsets_s.get(name, 0.0)))
            for name in config.cameras
        }
        self._pending: deque[_Pending] = deque()
        self._ready: deque[SyncedSweep] = deque()
        self._last_sweep_ns: int | None = None
        self._counters = SyncCounters()

    # ------------------------------------------------------------------ configuration

    @property
    def config(self) -> SyncConfig:
        return self._config

    @property
    def cameras(self) -> tuple[str, ...]:
        return self._config.cameras

    def update(
        self,
        *,
        tolerance_s: float | None = None,
        max_wait_s: float | None = None,
        time_offsets_s: Mapping[str, float] | None = None,
    ) -> None:
        """Change settings at run time (parameter callbacks); raises ValueError when invalid,
        leaving the settings unchanged."""
        changes: dict[str, Any] = {}
        if tolerance_s is not None:
            changes["tolerance_s"] = float(tolerance_s)
        if max_wait_s is not None:
            changes["max_wait_s"] = float(max_wait_s)
        if time_offsets_s is not None:
            merged = dict(self._config.time_offsets_s)
            merged.update({k: float(v) for k, v in time_offsets_s.items()})
            changes["time_offsets_s"] = merged
        with self._cond:
            config = replace(self._config, **changes)  # validates
            self._config = config
            for cam in self._cams.values():
                cam.offset_ns = _ns(config.time_offsets_s.get(cam.name, 0.0))
            self._cond.notify_all()

    # ------------------------------------------------------------------ inputs (callbacks)

    def _camera(self, name: str) -> _Camera:
        cam = self._cams.get(name)
        if cam is None:
            raise KeyError(f"unknown camera '{name}' (configured: {list(self._cams)})")
        return cam

    def add_image(self, camera: str, msg: Any, stamp_ns: int | None = None) -> None:
        """Buffer an Image / CompressedImage of ``camera`` (stamp from its header by default)."""
        stamp = stamp_to_ns(msg.header.stamp) if stamp_ns is None else int(stamp_ns)
        threshold = _ns(self._config.time_jump_threshold_s)
        with self._cond:
            cam = self._camera(camera)
            if cam.stamps and stamp < cam.stamps[-1] - threshold:
                # The camera's clock went back (looped bag): its old images match nothing now.
                cam.clear()
                cam.counters.time_jumps += 1
            i = bisect.bisect_right(cam.stamps, stamp)
            if i > 0 and cam.stamps[i - 1] == stamp:  # the same stamp again: newest message wins
                cam.images[i - 1] = msg
            else:
                cam.stamps.insert(i, stamp)
                cam.images.insert(i, msg)
                while len(cam.stamps) > self._config.buffer_size:
                    del cam.stamps[0], cam.images[0]
            cam.counters.received += 1
            tol = _ns(self._config.tolerance_s)
            for target in cam.missed_targets:
                if abs(stamp - target) <= tol:
                    cam.counters.late += 1
                    cam.missed_targets.remove(target)  # one late image per missed sweep
                    break
            self._update_locked()

    def add_camera_info(self, camera: str, msg: Any) -> None:
        """Keep the newest CameraInfo of ``camera`` (calibration rarely changes; it is paired
        with whichever image is chosen)."""
        with self._cond:
            cam = self._camera(camera)
            cam.info = msg
            cam.counters.camera_info += 1

    def add_sweep(self, cloud: Any, stamp_ns: int | None = None) -> bool:
        """Queue a PointCloud2 for matching; returns True when its stamp is a backward time jump
        (the sweep is flagged, old sweeps and images are flushed)."""
        stamp = stamp_to_ns(cloud.header.stamp) if stamp_ns is None else int(stamp_ns)
        now = self._clock()
        cfg = self._config
        with self._cond:
            self._counters.sweeps_received += 1
            jump = self._last_sweep_ns is not None and stamp < self._last_sweep_ns - _ns(
                cfg.time_jump_threshold_s
            )
            jump_s = (self._last_sweep_ns - stamp) / _NS if jump else 0.0
            if jump:
                self._counters.time_jumps += 1
                # Sweeps of the old timeline leave now, with what they have.
                while self._pending:
                    self._release_locked(self._pending.popleft(), now, force=True)
                # Drop images of the old timeline; keep those that already belong to the new one
                # (a looped bag may deliver the first images before the first sweep).
                limit = stamp + _ns(cfg.time_jump_threshold_s)
                for cam in self._cams.values():
                    keep = [i for i, s in enumerate(cam.stamps) if s <= limit]
                    cam.stamps[:] = [cam.stamps[i] for i in keep]
                    cam.images[:] = [cam.images[i] for i in keep]
                    cam.missed_targets.clear()
            self._last_sweep_ns = stamp
            self._pending.append(_Pending(cloud, stamp, now, jump, jump_s))
            while len(self._pending) > cfg.max_pending_sweeps:
                self._release_locked(self._pending.popleft(), now, force=True)
            self._update_locked()
            return jump

    # ------------------------------------------------------------------ outputs (worker)

    def poll(self, newest_only: bool = False) -> list[SyncedSweep]:
        """Release every sweep that is ready now (in arrival order), without blocking.

        newest_only: return only the newest ready sweep and count the others as ``superseded``
            (a time-jump flag of a skipped sweep is carried onto the returned one).
        """
        with self._cond:
            self._update_locked()
            return self._take_locked(newest_only)

    def wait_ready(
        self, timeout_s: float | None = None, newest_only: bool = False
    ) -> list[SyncedSweep]:
        """Block until at least one sweep is ready (or ``timeout_s`` passes), then release as
        ``poll`` does. Wakes up by itself at the next sweep's deadline."""
        end = None if timeout_s is None else self._clock() + max(0.0, float(timeout_s))
        with self._cond:
            while True:
                self._update_locked()
                if self._ready:
                    return self._take_locked(newest_only)
                now = self._clock()
                if end is not None and now >= end:
                    return []
                wait = None if end is None else end - now
                deadline = self._next_deadline_locked()
                if deadline is not None:
                    wait = max(0.0, deadline - now) if wait is None else min(wait, deadline - now)
                # A small floor avoids a busy loop when the deadline is a hair away.
                self._cond.wait(None if wait is None else max(wait, 1e-4))

    def flush(self) -> list[SyncedSweep]:
        """Release every pending sweep now with what it has (e.g. at shutdown)."""
        with self._cond:
            now = self._clock()
            while self._pending:
                self._release_locked(self._pending.popleft(), now, force=True)
            return self._take_locked(False)

    def reset(self) -> None:
        """Forget buffered images, CameraInfo, pending sweeps and the time reference (counters
        are kept)."""
        with self._cond:
            for cam in self._cams.values():
                cam.clear()
                cam.info = None
                cam.missed_targets.clear()
            self._pending.clear()
            self._ready.clear()
            self._last_sweep_ns = None

    def counters(self) -> SyncCounters:
        """A snapshot of the statistics."""
        with self._cond:
            c = self._counters
            return SyncCounters(
                sweeps_received=c.sweeps_received,
                sweeps_emitted=c.sweeps_emitted,
                superseded=c.superseded,
                time_jumps=c.time_jumps,
                pending=len(self._pending),
                cameras={n: replace(cam.counters) for n, cam in self._cams.items()},
            )

    def reset_counters(self) -> None:
        with self._cond:
            self._counters = SyncCounters()
            for cam in self._cams.values():
                cam.counters = CameraSyncCounters()

    def latest_image_stamp_ns(self, camera: str) -> int | None:
        """Stamp of the newest buffered image of ``camera`` (what a user clicking in an image
        viewer sees), or None."""
        with self._cond:
            cam = self._camera(camera)
            return cam.stamps[-1] if cam.stamps else None

    def latest_camera_info(self, camera: str) -> Any | None:
        with self._cond:
            return self._camera(camera).info

    # ------------------------------------------------------------------ internals (lock held)

    def _decided(self, cam: _Camera, target: int, tol: int) -> bool:
        if not cam.stamps:
            return False
        newest = cam.stamps[-1]
        if newest >= target + tol:
            return True  # everything still to come is beyond the window
        best = cam.best(target, tol)
        if best is not None and newest >= target:
            return True  # what comes later is farther than the image at/after the target
        period = cam.period_ns()
        if period is None:
            return False
        next_earliest = newest + int(period * (1.0 - _PERIOD_MARGIN))
        if next_earliest > target + tol:
            return True  # the next frame will already be outside the window
        if best is not None:
            return abs(next_earliest - target) >= abs(cam.stamps[best] - target)
        return False

    def _ready_locked(self, p: _Pending, now: float) -> bool:
        if now >= p.arrived + self._config.max_wait_s:  # the form _next_deadline_locked uses
            return True
        tol = _ns(self._config.tolerance_s)
        return all(self._decided(c, p.stamp_ns + c.offset_ns, tol) for c in self._cams.values())

    def _update_locked(self) -> None:
        now = self._clock()
        released = False
        # In order: a sweep never overtakes an older one that still waits.
        while self._pending and self._ready_locked(self._pending[0], now):
            self._release_locked(self._pending.popleft(), now, force=False)
            released = True
        if released:
            self._cond.notify_all()

    def _next_deadline_locked(self) -> float | None:
        if not self._pending:
            return None
        return self._pending[0].arrived + self._config.max_wait_s

    def _release_locked(self, p: _Pending, now: float, force: bool) -> None:
        tol = _ns(self._config.tolerance_s)
        matches: dict[str, CameraMatch] = {}
        missing: dict[str, str] = {}
        for cam in self._cams.values():
            target = p.stamp_ns + cam.offset_ns
            best = cam.best(target, tol)
            if best is not None:
                stamp = cam.stamps[best]
                matches[cam.name] = CameraMatch(
                    cam.name, cam.images[best], cam.info, stamp, stamp - target
                )
                cam.counters.matched += 1
                continue
            cam.counters.missing += 1
            cam.missed_targets.append(target)
            tol_s = self._config.tolerance_s
            if not cam.stamps:
                cam.counters.no_image += 1
                missing[cam.name] = "no image received" + (
                    "" if cam.counters.received == 0 else " recently (buffer empty)"
                )
            elif cam.stamps[-1] < target:
                cam.counters.too_old += 1
                missing[cam.name] = (
                    f"newest image is {(target - cam.stamps[-1]) / _NS:.3f} s older than the "
                    f"sweep (+ offset); tolerance {tol_s} s"
                )
            else:
                cam.counters.too_new += 1
                nearest = min(cam.stamps, key=lambda s: abs(s - target))
                missing[cam.name] = (
                    f"nearest image is {(nearest - target) / _NS:+.3f} s from the sweep "
                    f"(+ offset); tolerance {tol_s} s"
                )
        self._ready.append(
            SyncedSweep(
                cloud=p.cloud,
                stamp_ns=p.stamp_ns,
                cameras=matches,
                missing=missing,
                time_jump=p.time_jump,
                jump_s=p.jump_s,
                waited_s=max(0.0, now - p.arrived),
            )
        )
        self._counters.sweeps_emitted += 1
        if force:
            self._cond.notify_all()

    def _take_locked(self, newest_only: bool) -> list[SyncedSweep]:
        if not self._ready:
            return []
        out = list(self._ready)
        self._ready.clear()
        if not newest_only:
            return out
        newest = out[-1]
        skipped = out[:-1]
        self._counters.superseded += len(skipped)
        jump = any(s.time_jump for s in skipped)
        if jump and not newest.time_jump:
            newest.time_jump = True
            newest.jump_s = max(s.jump_s for s in skipped if s.time_jump)
        return [newest]
