"""The bounded request queue between the node's callbacks and the worker that owns the tracker.

Prompts, removals and resets (services, the ~/prompts topic, RViz and image clicks) become
``Request`` objects in a ``RequestQueue``; the worker applies them between tracker steps and
answers each one. ``RequestGate`` is the callbacks' side: topic messages are queued (fire and
forget), service calls are queued and wait for the worker's answer, at most
``prompts.service_timeout_s``, and at most ``MAX_WAITING_CALLS`` of them at once: further calls are
answered "busy" at once, so that a storm of calls cannot take every executor thread. Every request
is counted (``sam4d_ros.prompt_accounting``): applied, failed or rejected busy.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sam4d_ros.prompt_accounting import PromptAccounting
from sam4d_ros.throttled_log import LogThrottle

__all__ = ["MAX_WAITING_CALLS", "SHUTTING_DOWN", "Request", "RequestGate", "RequestQueue"]

# Service calls that may wait for the worker at once; further calls are answered "busy" at once.
MAX_WAITING_CALLS = 4
SHUTTING_DOWN = "the node is shutting down; nothing was changed"


@dataclass(eq=False)
class Request:
    """One prompt / removal / reset for the worker; ``done`` is set with the answer."""

    kind: str  # add_prompts, prompt, clicked_point, image_click, remove, reset
    payload: Any
    source: str
    done: threading.Event = field(default_factory=threading.Event)
    success: bool = False
    message: str = ""
    object_ids: list[int] = field(default_factory=list)

    def answer(self, success: bool, message: str, object_ids: Sequence[int] = ()) -> None:
        self.success, self.message, self.object_ids = success, message, list(object_ids)
        self.done.set()


class RequestQueue:
    """Bounded FIFO of requests (thread safe). Removals and resets are never refused for a full
    queue: they are how a user gets out of a storm, and at most MAX_WAITING_CALLS exist."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._lock = threading.Lock()
        self._items: collections.deque[Request] = collections.deque()

    def put(self, req: Request) -> bool:
        with self._lock:
            if req.kind not in ("remove", "reset") and len(self._items) >= self.capacity:
                return False
            self._items.append(req)
            return True

    def take_all(self) -> list[Request]:
        with self._lock:
            out = list(self._items)
            self._items.clear()
            return out

    def withdraw(self, req: Request) -> bool:
        """Remove a request that the worker has not taken yet; False when it has."""
        with self._lock:
            try:
                self._items.remove(req)
            except ValueError:
                return False
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


@dataclass
class RequestGate:
    """The callbacks' way into the queue (see the module docstring).

    queue: the worker's request queue. prompts: the accounting of every request. throttle: logs
    a full queue (throttled). stopping: True once the node shuts down.
    """

    queue: RequestQueue
    _prompts: PromptAccounting
    _throttle: LogThrottle
    _stopping: Callable[[], bool]
    _waiting_calls: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_WAITING_CALLS)
    )

    def enqueue(self, req: Request) -> None:
        """Queue a topic's request (nobody waits for its answer; the worker logs it)."""
        self._prompts.received(req.kind, req.source)
        if not self.queue.put(req):
            self._rejected_full(req)

    def _rejected_full(self, req: Request) -> str:
        message = (
            f"prompt queue full ({self.queue.capacity} requests waiting for the tracker, "
            f"prompts.queue_size): {req.source} rejected, try again later"
        )
        self._prompts.rejected_busy(req.kind, req.source, message)
        self._throttle.log("queue_full", "warning", message)
        return message

    def _fail(self, req: Request, message: str) -> Request:
        req.answer(False, message)
        self._prompts.failed(req.kind, req.source, message)
        return req

    def call(self, req: Request, timeout_s: float) -> Request:
        """Queue a service's request and wait for the worker's answer (bounded); the request
        comes back answered."""
        self._prompts.received(req.kind, req.source)
        if not self._waiting_calls.acquire(blocking=False):
            req.answer(
                False,
                f"busy: {MAX_WAITING_CALLS} service calls are already waiting for the tracker; "
                f"{req.source} rejected, try again later",
            )
            self._prompts.rejected_busy(req.kind, req.source, req.message)
            return req
        try:
            if self._stopping():
                return self._fail(req, SHUTTING_DOWN)
            if not self.queue.put(req):
                req.answer(False, self._rejected_full(req))
                return req
            if req.done.wait(timeout_s):
                return req
            if self.queue.withdraw(req):
                return self._fail(
                    req,
                    f"timed out after {timeout_s:g} s waiting for the tracker "
                    "(prompts.service_timeout_s); nothing was changed",
                )
            # The worker is applying it right now: its answer is moments away.
            if not req.done.wait(timeout_s):
                req.answer(
                    False, f"timed out after {2 * timeout_s:g} s; the request may still apply"
                )
            return req
        finally:
            self._waiting_calls.release()

    def close(self) -> None:
        """Answer every request still queued (the worker has stopped)."""
        for req in self.queue.take_all():
            self._fail(req, SHUTTING_DOWN)
