"""Keeping the node's resident memory from creeping up: glibc malloc arenas and heap trimming.

What grows in a long run is not live data (the tracker's buffers are bounded) but memory the C
allocator keeps after it was freed: each sweep allocates and frees megabytes (decoded images,
clouds, output messages, tensors) from many threads (executor, DDS, worker), and glibc gives each
thread an arena of its own (up to 8 per core) and returns freed pages to the system only from the
top of a heap. Two measures, both no-ops where the C library is not glibc:

- ``limit_malloc_arenas(n)`` (``mallopt(M_ARENA_MAX)``) at start-up, before the threads exist; the
  environment variable ``MALLOC_ARENA_MAX``, when set, wins.
- ``HeapTrimmer``: ``malloc_trim(0)`` (returns every free page of every arena, not only the top)
  after the tracker forgot a lot (reset, time jump, removal) and at most every ``period_s``
  otherwise; it runs in the worker between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
import time
from collections.abc import Callable

__all__ = ["DEFAULT_ARENAS", "HeapTrimmer", "limit_malloc_arenas", "rss_mb", "trim_heap"]

# Arenas for the node's process: enough for the worker and the executor not to contend much.
DEFAULT_ARENAS = 2
_M_ARENA_MAX = -8  # from glibc's malloc.h

_libc: ctypes.CDLL | None = None
_libc_lock = threading.Lock()


def _glibc() -> ctypes.CDLL | None:
    global _libc
    with _libc_lock:
        if _libc is None:
            name = ctypes.util.find_library("c") or "libc.so.6"
            try:
                lib = ctypes.CDLL(name)
                lib.malloc_trim  # noqa: B018 - only glibc has it
                lib.mallopt  # noqa: B018
            except (OSError, AttributeError):
                return None
            lib.malloc_trim.argtypes = [ctypes.c_size_t]
            lib.malloc_trim.restype = ctypes.c_int
            lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            lib.mallopt.restype = ctypes.c_int
            _libc = lib
        return _libc


def limit_malloc_arenas(n: int = DEFAULT_ARENAS) -> bool:
    """Cap glibc's malloc arenas at ``n`` (call before threads start). Returns True when set;
    False without glibc or when ``MALLOC_ARENA_MAX`` is in the environment (the user's choice)."""
    lib = _glibc()
    if lib is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(lib.mallopt(_M_ARENA_MAX, int(n)))


def trim_heap() -> bool:
    """``malloc_trim(0)``: give free heap pages back to the system. True when some were."""
    lib = _glibc()
    return bool(lib.malloc_trim(0)) if lib is not None else False


def rss_mb() -> float | None:
    """This process's resident memory (VmRSS) in MB; None where /proc is not available."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class HeapTrimmer:
    """Decides when the worker trims the heap: at once after ``request()`` (the tracker forgot a
    lot), else at most every ``period_s`` (``clock`` seconds). ``trims`` counts the trims."""

    def __init__(
        self,
        period_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        trim: Callable[[], bool] = trim_heap,
    ) -> None:
        self.period_s = float(period_s)
        self._clock = clock
        self._trim = trim
        self._last = clock()
        self._requested = False
        self.trims = 0

    def request(self) -> None:
        """Trim at the next ``maybe_trim``."""
        self._requested = True

    def maybe_trim(self) -> bool:
        """Trim when requested or when the period is over; True when it trimmed."""
        now = self._clock()
        if not self._requested and now - self._last < self.period_s:
            return False
        self._requested = False
        self._last = now
        self._trim()
        self.trims += 1
        return True
