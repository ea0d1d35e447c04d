"""The node's ledger of prompt requests: every prompt that reaches the node is accounted for.

A prompt request (an AddPrompts call, a message on ``~/prompts``, an RViz click, an image click)
ends in exactly one of three ways: **applied**, **failed** (refused by validation or the tracker,
timed out, or the node shut down; the reason is kept) or **rejected busy** (the request queue or
the service waiting slots were full). Until then it is **pending** (queued or being applied), so
at any time ``received == applied + failed + rejected_busy + pending``; /diagnostics reports these
counters. Removals and resets are not prompts and are not counted here.

What the node cannot count: topic messages that DDS drops before a callback sees them. A
subscription keeps at most ``qos.prompt_depth`` unread messages (KEEP_LAST); a burst beyond that,
arriving faster than the executor takes them, loses the oldest without any event (Fast DDS raises
no message-lost event for it), so that depth is a parameter, deep by default.

Thread safety: every method takes one lock; callbacks, service threads and the worker call them.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PROMPT_KINDS", "PromptAccounting", "PromptCounts"]

# Request kinds that are prompts (the node's other requests, remove and reset, are not).
PROMPT_KINDS = frozenset({"add_prompts", "prompt", "clicked_point", "image_click"})


@dataclass(frozen=True)
class PromptCounts:
    """A snapshot of the ledger.

    received: prompt requests that reached the node. applied / failed / rejected_busy: how those
    ended. pending: received but not ended yet. recent_rejections: rejected_busy within the
    ledger's window. per_source: received per source (topic or service name). last_error: the
    newest failure or rejection, with its source ("" when none).
    """

    received: int = 0
    applied: int = 0
    failed: int = 0
    rejected_busy: int = 0
    recent_rejections: int = 0
    per_source: dict[str, int] = field(default_factory=dict)
    last_error: str = ""

    @property
    def pending(self) -> int:
        return self.received - self.applied - self.failed - self.rejected_busy


class PromptAccounting:
    """Counts prompt requests from arrival to their end (see the module docstring).

    Args:
        reject_window_s: rejections within this window (seconds, ``clock``) are "recent"
            (/diagnostics warns while there are any).
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(
        self, reject_window_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window = float(reject_window_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._received = self._applied = self._failed = self._rejected = 0
        self._per_source: dict[str, int] = collections.defaultdict(int)
        self._last_error = ""
        # Only the times within the window are kept: the deque cannot grow beyond the rejection
        # rate times the window, and is pruned on every rejection and snapshot.
        self._rejections: collections.deque[float] = collections.deque()

    @staticmethod
    def counts(kind: str) -> bool:
        """Whether a request of ``kind`` is a prompt (counted here)."""
        return kind in PROMPT_KINDS

    def received(self, kind: str, source: str) -> None:
        """A request of ``kind`` arrived from ``source`` (call once, before anything can end it)."""
        if not self.counts(kind):
            return
        with self._lock:
            self._received += 1
            self._per_source[source] += 1

    def applied(self, kind: str) -> None:
        if not self.counts(kind):
            return
        with self._lock:
            self._applied += 1

    def failed(self, kind: str, source: str, reason: str) -> None:
        if not self.counts(kind):
            return
        with self._lock:
            self._failed += 1
            self._last_error = f"{source}: {reason}"

    def rejected_busy(self, kind: str, source: str, reason: str) -> None:
        if not self.counts(kind):
            return
        now = self._clock()
        with self._lock:
            self._rejected += 1
            self._last_error = f"{source}: {reason}"
            self._rejections.append(now)
            self._prune(now)

    def snapshot(self) -> PromptCounts:
        now = self._clock()
        with self._lock:
            self._prune(now)
            return PromptCounts(
                received=self._received,
                applied=self._applied,
                failed=self._failed,
                rejected_busy=self._rejected,
                recent_rejections=len(self._rejections),
                per_source=dict(self._per_source),
                last_error=self._last_error,
            )

    def diagnostic_values(self) -> tuple[dict[str, Any], list[str]]:
        """(key -> value, warnings) for the node's "prompts" status."""
        c = self.snapshot()
        values: dict[str, Any] = {
            "received": c.received,
            "applied": c.applied,
            "failed": c.failed,
            "rejected_busy": c.rejected_busy,
            "pending": c.pending,
            **{f"received.{k}": v for k, v in sorted(c.per_source.items())},
            "last_error": c.last_error or "none",
        }
        warnings = []
        if c.recent_rejections:
            warnings.append(
                f"prompt queue full: {c.recent_rejections} request(s) rejected in the last "
                f"{self._window:g} s"
            )
        return values, warnings

    def _prune(self, now: float) -> None:
        while self._rejections and now - self._rejections[0] >= self._window:
            self._rejections.popleft()
