"""Stopping child processes the way a user does: Ctrl-C first, kill only when that fails."""

from __future__ import annotations

import signal
import subprocess

__all__ = ["interrupt"]


def interrupt(proc: subprocess.Popen, timeout_s: float) -> int:
    """SIGINT (as Ctrl-C), wait up to ``timeout_s``, then SIGKILL; returns the exit status.

    A process that has already exited is only reaped.
    """
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)
