"""ROS-side command-line tools: the demo, and stand-ins for ``ros2 bag`` where rosbag2 is not
installed.

- ``python -m sam4d_ros.tools.demo ...`` (``make demo``): the main job, ``sam4d_node`` on a
  recording with a scripted prompt; writes a report, an overlay video and the recorded outputs
  (package :mod:`sam4d_ros.tools.demo`).
- ``python -m sam4d_ros.tools.play BAG ...``: play a rosbag2 bag (MCAP or sqlite3) into topics
  (:class:`~sam4d_ros.tools.play.BagPlayer`).
- ``python -m sam4d_ros.tools.record -o OUT ...``: record topics into a rosbag2 bag
  (:class:`~sam4d_ros.tools.record.BagRecorder`).

The classes are imported lazily: ``python -m sam4d_ros.tools.play`` must not import the module a
second time through this package (runpy warns about that), and importing the package should not
start rclpy.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["BagPlayer", "BagRecorder", "PlaybackSummary", "PlayOptions", "RecordingSummary"]

_WHERE = {
    "BagPlayer": "sam4d_ros.tools.play",
    "PlaybackSummary": "sam4d_ros.tools.play",
    "PlayOptions": "sam4d_ros.tools.play",
    "BagRecorder": "sam4d_ros.tools.record",
    "RecordingSummary": "sam4d_ros.tools.record",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
