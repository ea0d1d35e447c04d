"""A node spun by its own executor in a background thread (the demo's and the benchmark's
sessions talk to the node under test from the main thread while their subscriptions are served)."""

from __future__ import annotations

import contextlib
import threading
from typing import Any


class NodeSpinner:
    """Spins ``node`` with a single-threaded executor of ``context`` in a daemon thread named
    ``name`` until :meth:`close`, which also destroys the node."""

    def __init__(self, node: Any, context: Any, name: str) -> None:
        from rclpy.executors import SingleThreadedExecutor

        self.node = node
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name=name, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shutting down
                if self._stop.is_set() or not self.node.context.ok():
                    return
                raise

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5.0)
        with contextlib.suppress(Exception):
            self.executor.shutdown(timeout_sec=1.0)
        with contextlib.suppress(Exception):
            self.node.destroy_node()
