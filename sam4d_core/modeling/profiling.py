"""The clock of the per-stage timings (image encoder, LiDAR encoder, memory attention, ...).

A :class:`StageClock` belongs to a model (``SAM4D.clock``); the model times its stages with it and
the trackers built on the model read it for their own stages, so that one choice of clock (wall
time, or the process's CPU time on a shared machine) holds for every timing of that model without
a process-wide setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class StageClock:
    """A clock in seconds and the timer of stages measured with it.

    Attributes:
        now: the clock (s): ``time.perf_counter`` (wall time, the default) or e.g.
            ``time.process_time`` (the CPU time of the process, steadier on a shared machine).
    """

    now: Callable[[], float] = time.perf_counter

    @classmethod
    def named(cls, name: str) -> StageClock:
        """``"wall"``: wall time; ``"cpu"``: the process's CPU time."""
        clocks = {"wall": time.perf_counter, "cpu": time.process_time}
        if name not in clocks:
            raise ValueError(f"unknown stage clock {name!r} (one of {sorted(clocks)})")
        return cls(clocks[name])

    @contextmanager
    def timer(
        self,
        timings: dict[str, float] | None,
        key: str,
        device: torch.device | str | None = None,
    ) -> Iterator[None]:
        """Adds the time (ms) of the ``with`` block to ``timings[key]`` (no-op without a dict).

        On CUDA the device is synchronized before and after so that the time is the stage's own
        (asynchronous kernels would otherwise be billed to whichever stage waits first).
        """
        if timings is None:
            yield
            return
        dev = torch.device(device) if device is not None else None
        sync = dev is not None and dev.type == "cuda" and torch.cuda.is_available()
        if sync:
            torch.cuda.synchronize(dev)
        t0 = self.now()
        try:
            yield
        finally:
            if sync:
                torch.cuda.synchronize(dev)
            timings[key] = timings.get(key, 0.0) + (self.now() - t0) * 1e3


__all__ = ["StageClock"]
