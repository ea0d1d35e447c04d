"""Shared pytest set-up: keep DDS on loopback with a domain of this run's own, and helpers for tests
that run real rclpy nodes, in this process or in child processes.

Run the tests through ``make test`` (or ``test/env/ros_env.sh python -m pytest``) so that the colcon
install space (generated interfaces, tf2_msgs) is on the path.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

# Before anything imports rclpy: DDS only talks over loopback, and concurrent test runs on one
# machine do not see each other's topics.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))

TEST_DIR = Path(__file__).resolve().parent
REPO_ROOT = TEST_DIR.parent
ROS_PROCESSES = TEST_DIR / "ros_processes"
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def rclpy_context() -> Iterator[object]:
    """A fresh rclpy context for one test, shut down afterwards (no global state between tests)."""
    import rclpy
    from rclpy.context import Context

    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


def spin_until(
    executor, predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.05
) -> bool:
    """Spin ``executor`` until ``predicate()`` holds or ``timeout_s`` passes; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        executor.spin_once(timeout_sec=step_s)
    return predicate()


class RosProcess:
    """A child Python process running one of the scripts in ``test/ros_processes``."""

    def __init__(self, script: str, *args: str) -> None:
        self.args = [sys.executable, str(ROS_PROCESSES / script), *args]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ),
        )

    def stop(self, timeout_s: float = 10.0) -> str:
        """Interrupt the process (as Ctrl-C would), wait for it and return its output."""
        from sam4d_ros.tools.processes import interrupt

        interrupt(self.proc, timeout_s)
        if self.proc.stdout is None or self.proc.stdout.closed:  # already read by wait()
            return ""
        return self.proc.stdout.read()

    def wait(self, timeout_s: float) -> tuple[int, str]:
        try:
            out, _ = self.proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
            raise AssertionError(f"{self.args} did not finish in {timeout_s} s:\n{out}") from None
        return self.proc.returncode, out


@pytest.fixture
def ros_process() -> Iterator[Callable[..., RosProcess]]:
    """Start scripts of ``test/ros_processes`` in child processes; all stopped at teardown."""
    started: list[RosProcess] = []

    def start(script: str, *args: str) -> RosProcess:
        p = RosProcess(script, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()
