"""Throttled logging: a stream that keeps failing (a broken camera, a storm of bad prompts) logs
one line per period, with the count of the lines held back, instead of flooding the log."""

from __future__ import annotations

import collections
import threading
import time
from typing import Any

__all__ = ["LOG_PERIOD_S", "LogThrottle"]

# Repeated problems of one stream are logged once per this period (the rest are counted).
LOG_PERIOD_S = 5.0


class LogThrottle:
    """At most one log line per key and period; the lines in between are counted and the count is
    added to the next line ("... (12 more since)"). Thread safe; ``logger`` is an rclpy logger
    (or anything with debug / info / warning / error methods)."""

    def __init__(self, logger: Any, period_s: float = LOG_PERIOD_S) -> None:
        self._logger = logger
        self._period = period_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = collections.defaultdict(int)

    def log(self, key: str, level: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._skipped[key] += 1
                return
            self._last[key] = now
            skipped = self._skipped.pop(key, 0)
        if skipped:
            message += f" ({skipped} more since the last report)"
        getattr(self._logger, level)(message)
