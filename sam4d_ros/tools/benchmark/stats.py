"""Bookkeeping of a benchmark: end-to-end latency from stamps in and stamps out
(:class:`LatencyBook`), summaries (:func:`summarize`), and the node process's resources read
from ``/proc/<pid>`` (:class:`ProcessSampler`) and from ``nvidia-smi`` (:func:`gpu_memory_mb`).

No ROS here: the monitor feeds :class:`LatencyBook` with (stamp, wall time) pairs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "LatencyBook",
    "ProcessSampler",
    "ResourceSample",
    "bag_clock_to_wall_ms",
    "gpu_memory_mb",
    "jitter_ms",
    "read_proc",
    "summarize",
]


def bag_clock_to_wall_ms(ms: float, rate: float) -> float:
    """A duration the node measured on the replayed clock (``/clock``, use_sim_time) in wall
    milliseconds: the bag's clock runs ``rate`` times as fast as the wall clock."""
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    return ms / rate


@dataclass
class LatencyBook:
    """End-to-end latency per sweep, as a separate monitor sees it: the wall time its LiDAR
    message reached the monitor (stamp in) to the wall time the node's output with the same
    header stamp reached it (stamp out).

    The first output per input counts (the node re-publishes a frame after a prompt applied on
    it); a stamp sent again (a looped bag) starts a new input. Wall times are seconds of one
    monotonic clock. ``latencies_ms[i]`` belongs to ``matched_stamps[i]`` received at
    ``out_wall_s[i]``.
    """

    pending: dict[int, float] = field(default_factory=dict)  # stamp -> wall time sent
    sent: int = 0
    matched_stamps: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    out_wall_s: list[float] = field(default_factory=list)
    unmatched_outputs: int = 0  # outputs of no pending input (re-publications, late duplicates)
    max_pending: int = 10_000  # a soak must not grow this: oldest inputs are given up

    def stamp_in(self, stamp_ns: int, wall_s: float) -> None:
        self.sent += 1
        self.pending[int(stamp_ns)] = float(wall_s)
        if len(self.pending) > self.max_pending:
            del self.pending[next(iter(self.pending))]

    def stamp_out(self, stamp_ns: int, wall_s: float) -> float | None:
        """Record an output; returns its latency (ms) or None when it matches no input."""
        t_in = self.pending.pop(int(stamp_ns), None)
        if t_in is None:
            self.unmatched_outputs += 1
            return None
        ms = (float(wall_s) - t_in) * 1e3
        self.matched_stamps.append(int(stamp_ns))
        self.latencies_ms.append(ms)
        self.out_wall_s.append(float(wall_s))
        return ms

    @property
    def processed(self) -> int:
        return len(self.latencies_ms)

    @property
    def dropped(self) -> int:
        """Inputs without an output (so far: call when the node is done)."""
        return self.sent - self.processed

    def drop_fraction(self) -> float:
        return self.dropped / self.sent if self.sent else 0.0

    def frame_rate_hz(self) -> float | None:
        """Outputs per second of wall time, first to last output."""
        if len(self.out_wall_s) < 2:
            return None
        span = max(self.out_wall_s) - min(self.out_wall_s)
        return (len(self.out_wall_s) - 1) / span if span > 0 else None


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    """count, mean, p50, p90, p99, max (None when empty)."""
    if not len(values):
        return {"count": 0, "mean": None, "p50": None, "p90": None, "p99": None, "max": None}
    a = np.asarray(values, dtype=np.float64)
    return {
        "count": int(a.size),
        "mean": float(a.mean()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "max": float(a.max()),
    }


def jitter_ms(out_wall_s: Sequence[float]) -> float | None:
    """Standard deviation of the intervals between consecutive outputs (ms), as ros2_benchmark
    reports jitter."""
    if len(out_wall_s) < 3:
        return None
    d = np.diff(np.sort(np.asarray(out_wall_s, dtype=np.float64))) * 1e3
    return float(d.std())


@dataclass
class ResourceSample:
    """One reading of a process: t_s (monotonic s), cpu_s (user + system CPU seconds so far),
    rss_mb, hwm_mb (peak RSS so far)."""

    t_s: float
    cpu_s: float
    rss_mb: float
    hwm_mb: float


def read_proc(pid: int) -> ResourceSample | None:
    """CPU time and memory of a process from /proc; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
    except OSError:
        return None
    # Fields after the command name (which may hold spaces) start after the last ')'.
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    mem = {}
    for line in status.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            mem[key] = int(value.split()[0]) / 1024.0
    return ResourceSample(time.monotonic(), cpu_s, mem.get("VmRSS", 0.0), mem.get("VmHWM", 0.0))


def gpu_memory_mb(pid: int) -> float | None:
    """GPU memory the process holds (nvidia-smi), None without nvidia-smi or when it has none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid):
            total = (total or 0.0) + float(parts[1])
    return total


class ProcessSampler:
    """Samples a process every ``period_s`` in a thread; keeps every sample (a soak of hours at
    1 s is a few MB) and answers CPU % and RSS over a time window."""

    def __init__(self, pid: int, period_s: float = 0.5, gpu: bool = False) -> None:
        self.pid = pid
        self.period_s = period_s
        self.gpu = gpu
        self.samples: list[ResourceSample] = []
        self.gpu_mb: list[tuple[float, float]] = []  # (t_s, MB)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="proc_sampler", daemon=True)

    def start(self) -> ProcessSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            s = read_proc(self.pid)
            if s is None:
                return
            with self._lock:
                self.samples.append(s)
            # nvidia-smi takes ~0.1 s: every 10th sample.
            if self.gpu and n % 10 == 0:
                g = gpu_memory_mb(self.pid)
                if g is not None:
                    with self._lock:
                        self.gpu_mb.append((s.t_s, g))
            n += 1
            self._stop.wait(self.period_s)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def window(self, t0: float, t1: float) -> dict[str, float | None]:
        """CPU % (100 = one core) and RSS (MB: mean, max) and peak RSS (VmHWM) in [t0, t1]."""
        with self._lock:
            s = [x for x in self.samples if t0 <= x.t_s <= t1]
            g = [m for t, m in self.gpu_mb if t0 <= t <= t1]
        if len(s) < 2:
            return {
                "cpu_percent": None,
                "rss_mb_mean": None,
                "rss_mb_max": None,
                "hwm_mb": None,
                "gpu_mb_max": max(g) if g else None,
            }
        dt = s[-1].t_s - s[0].t_s
        return {
            "cpu_percent": 100.0 * (s[-1].cpu_s - s[0].cpu_s) / dt if dt > 0 else None,
            "rss_mb_mean": float(np.mean([x.rss_mb for x in s])),
            "rss_mb_max": float(max(x.rss_mb for x in s)),
            "hwm_mb": float(s[-1].hwm_mb),
            "gpu_mb_max": max(g) if g else None,
        }

    def series(self) -> list[ResourceSample]:
        with self._lock:
            return list(self.samples)
