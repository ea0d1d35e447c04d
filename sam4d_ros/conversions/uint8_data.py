"""Filling a message's ``uint8[] data`` (Image, CompressedImage, PointCloud2) fast.

rclpy's generated setter iterates in Python over anything that is not an ``array.array('B')``
(seconds for a LiDAR sweep), so data is always handed over as one, assigned without a copy.
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

__all__ = ["byte_array", "set_uint8_data"]


def byte_array(data: Any) -> array.array:
    """Copy any buffer (bytes, uint8 ndarray, memoryview) into an ``array.array('B')``, the one
    type rclpy's ``uint8[]`` setters take without a per-element Python loop."""
    out = array.array("B")
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
    out.frombytes(memoryview(data).cast("B"))
    return out


def set_uint8_data(msg: Any, data: array.array) -> None:
    """Assign an ``array.array('B')`` to ``msg.data`` without a copy.

    rclpy's generated setter keeps an ``array.array('B')`` as is only when it checks fields
    (always on Humble/Jazzy with ``__debug__``; on Kilted only with ``check_fields``, off by
    default); otherwise it runs ``array.array('B', value)``, a full copy (3-27 ms for a 5 MB cloud
    here, page faults included). Checking is switched on just for this one assignment.
    """
    if not isinstance(data, array.array) or data.typecode != "B":
        data = byte_array(data)
    if getattr(msg, "_check_fields", True) is False:
        msg._check_fields = True
        try:
            msg.data = data
        finally:
            msg._check_fields = False
    else:
        msg.data = data
