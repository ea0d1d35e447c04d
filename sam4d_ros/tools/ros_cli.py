"""The ``main()`` shared by the rclpy command-line tools (``play``, ``record``).

Arguments before ``--ros-args`` go to the tool's parser, the rest to rclpy. rclpy runs without its
own signal handlers: SIGINT / SIGTERM ask the job to stop, so Ctrl-C still finishes the bag and
prints the summary.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, Protocol

__all__ = ["Job", "parse_tool_args", "run_job", "stderr_log"]


class Job(Protocol):
    """A player or recorder: started, asked to stop from a signal, waited on for its summary."""

    def start(self) -> Any: ...

    def request_stop(self) -> None: ...

    def wait(self) -> Any: ...  # a summary with .format() -> str


def stderr_log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def parse_tool_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, list[str]]:
    """The tool's arguments and the ``--ros-args ...`` tail (empty when there is none)."""
    args = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if "--ros-args" in args:
        i = args.index("--ros-args")
        args, ros_args = args[:i], args[i:]
    return parser.parse_args(args), ros_args


def run_job(
    name: str,
    ros_args: list[str],
    open_job: Callable[[], Job],
    errors: tuple[type[BaseException], ...],
    started: Callable[[Job], None] | None = None,
    close: Callable[[Job], None] | None = None,
) -> int:
    """Init rclpy, ``open_job()``, start it (then ``started(job)``), wait for it and print its
    summary on stdout.

    Returns 0, or 1 after printing ``error: ...`` on stderr for one of ``errors``; ``close(job)``
    runs at the end when a job was opened, then rclpy shuts down.
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions

    rclpy.init(args=[name, *ros_args], signal_handler_options=SignalHandlerOptions.NO)
    job: Job | None = None
    try:
        job = open_job()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: job.request_stop())
        job.start()
        if started is not None:
            started(job)
        summary = job.wait()
        print(summary.format(), flush=True)
        return 0
    except errors as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if job is not None and close is not None:
            close(job)
        rclpy.try_shutdown()
