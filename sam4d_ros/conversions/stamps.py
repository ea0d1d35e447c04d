"""Message time stamps and headers <-> integer nanoseconds (what the core and the TF buffer use).

Duck-typed: works with rclpy messages and rosbags message objects (both have ``sec``/``nanosec``
and ``stamp``/``frame_id``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["copy_header", "format_stamp", "make_header", "ns_to_time_msg", "stamp_to_ns"]

_NS = 1_000_000_000


def stamp_to_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (``.sec``, ``.nanosec``) -> integer nanoseconds."""
    return int(stamp.sec) * _NS + int(stamp.nanosec)


def ns_to_time_msg(ns: int) -> Any:
    """Integer nanoseconds (>= 0) -> builtin_interfaces.msg.Time."""
    from builtin_interfaces.msg import Time

    ns = int(ns)
    if ns < 0:
        raise ValueError(f"time {ns} ns is negative; builtin_interfaces/Time cannot hold it")
    return Time(sec=ns // _NS, nanosec=ns % _NS)


def make_header(stamp_ns: int, frame_id: str) -> Any:
    """std_msgs.msg.Header from nanoseconds and a frame id."""
    from std_msgs.msg import Header

    return Header(stamp=ns_to_time_msg(stamp_ns), frame_id=str(frame_id))


def copy_header(header: Any) -> Any:
    """A new std_msgs.msg.Header with the same stamp and frame_id (accepts rosbags headers too);
    outputs must not alias their input's header object."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    if header is None:
        return Header()
    stamp = header.stamp
    return Header(
        stamp=Time(sec=int(stamp.sec), nanosec=int(stamp.nanosec)), frame_id=str(header.frame_id)
    )


def format_stamp(ns: int | None) -> str:
    """Integer nanoseconds -> "sec.nanosec" for log lines and /diagnostics ("n/a" for None)."""
    if ns is None:
        return "n/a"
    return f"{ns // _NS}.{ns % _NS:09d}"
