"""A one-line progress bar on stderr (redrawn in place on a terminal; on a pipe or a log file
only a line per finished step, so logs stay readable)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    """``update(done, total, text)`` redraws the bar (not when disabled); ``line(text)`` prints
    a finished line (always)."""

    def __init__(self, stream: TextIO | None = None, enabled: bool = True, width: int = 30) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.width = width
        self._last = 0.0
        self._drawn = False

    def update(self, done: int, total: int, text: str = "") -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if now - self._last < 0.1 and done < total:
            return
        self._last = now
        frac = 0.0 if total <= 0 else min(1.0, done / total)
        n = int(round(frac * self.width))
        bar = "#" * n + "-" * (self.width - n)
        self.stream.write(f"\r[{bar}] {done}/{total} {text}"[:160].ljust(80))
        self.stream.flush()
        self._drawn = True

    def line(self, text: str) -> None:
        if self._drawn:
            self.stream.write("\r" + " " * 100 + "\r")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()
