"""The node's per-stage timing debug topic, ``~/debug/stage_times_ms``: a
diagnostic_msgs/DiagnosticArray stamped with the sweep's stamp, one status whose values are the
tracker's stage timings (stage name -> milliseconds as text), so that a benchmark or
``ros2 topic echo`` sees where a sweep's processing time went."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["STAGE_TIMES_TOPIC", "stage_times_msg"]

STAGE_TIMES_TOPIC = "~/debug/stage_times_ms"


def stage_times_msg(stamp_ns: int, timings_ms: Mapping[str, float], name: str) -> Any:
    """The DiagnosticArray of one sweep's stage timings (``timings_ms``: stage -> ms)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    from sam4d_ros.conversions.stamps import make_header

    status = DiagnosticStatus(name=f"{name}: stage_times_ms", message="stage timings (ms)")
    status.values = [KeyValue(key=str(k), value=f"{float(v):.3f}") for k, v in timings_ms.items()]
    return DiagnosticArray(header=make_header(int(stamp_ns), ""), status=[status])
