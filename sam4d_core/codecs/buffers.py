"""Message payloads (``uint8[] data``) as numpy byte arrays, whatever container carries them.

rclpy hands over ``array.array('B')``, rosbags a uint8 ndarray, hand-made messages ``bytes`` or a
list of ints; every codec needs the same flat uint8 view, without a copy where one can be avoided.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam4d_core.codecs.errors import CodecError


def byte_view(data: Any, error: type[CodecError] = CodecError) -> np.ndarray:
    """View ``data`` as a 1-D uint8 array, zero-copy for buffers and uint8 arrays.

    Accepts bytes, bytearray, memoryview, array.array('B'), a uint8 ndarray or, as a slow
    fallback, a sequence of ints in [0, 255]. Anything else raises ``error`` (the caller's
    CodecError subclass, so the message says which kind of message was malformed).
    """
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise error(f"data must be uint8, got dtype {data.dtype}")
        return np.ascontiguousarray(data).reshape(-1)
    try:
        return np.frombuffer(data, dtype=np.uint8)
    except TypeError:
        pass
    try:
        arr = np.asarray(data)
    except (TypeError, ValueError) as exc:
        raise error(f"data of type {type(data).__name__} is not bytes") from exc
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise error(f"data of type {type(data).__name__} is not a byte sequence")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise error("data contains values outside [0, 255]")
    return arr.astype(np.uint8)
