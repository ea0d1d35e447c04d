"""sensor_msgs/PointCloud2 <-> numpy at the node's edge.

Reading is duck-typed (any object with the PointCloud2 attributes: rclpy messages, rosbags
messages); building returns rclpy ``sensor_msgs.msg.PointCloud2``. The layout work is done by
``sam4d_core.codecs.pointcloud``; this module adds the message plumbing. ``uint8[] data`` is
filled the fast way (``sam4d_ros.conversions.uint8_data``), and the labeled output is written
straight into its ``array.array('B')`` (no intermediate bytes).
"""

from __future__ import annotations

import array
from typing import Any

import numpy as np

from sam4d_core.codecs.pointcloud import (
    FieldSpec,
    LidarPoints,
    append_fields,
    decode_points,
    dtype_to_fields,
    encode_points,
    extract_points,
    labeled_dtype,
    valid_mask,
)
from sam4d_ros.conversions.stamps import copy_header
from sam4d_ros.conversions.uint8_data import byte_array, set_uint8_data

__all__ = [
    "array_to_pointcloud2",
    "fields_to_msgs",
    "make_labeled_pointcloud2",
    "pointcloud2_to_array",
    "pointcloud2_to_points",
]


def fields_to_msgs(fields: list[FieldSpec]) -> list[Any]:
    """FieldSpec list -> sensor_msgs.msg.PointField list."""
    from sensor_msgs.msg import PointField

    return [
        PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields
    ]


def pointcloud2_to_array(msg: Any) -> np.ndarray:
    """Structured (height, width) view of a PointCloud2's data (no copy; aliases the message).

    Raises PointCloudLayoutError when the message's layout is inconsistent.
    """
    return decode_points(
        msg.data,
        msg.fields,
        msg.height,
        msg.width,
        msg.point_step,
        msg.row_step,
        msg.is_bigendian,
    )


def pointcloud2_to_points(msg: Any, check_finite: bool = True) -> LidarPoints:
    """xyz (N, 3) float32, intensity / ring / time when present, and a validity mask (N,) bool.

    ``check_finite=False`` trusts ``is_dense`` (skips the NaN scan for dense clouds).
    Raises PointCloudLayoutError for a malformed layout or when x, y or z is missing.
    """
    arr = pointcloud2_to_array(msg)
    return extract_points(arr, is_dense=bool(msg.is_dense), check_finite=check_finite)


def make_labeled_pointcloud2(input_msg: Any, labels: Any, scores: Any) -> Any:
    """The input cloud with every field kept and ``label`` (uint32) / ``score`` (float32) appended.

    labels: (N,) or (height, width) integers >= 0 (0 = background), N = height * width.
    scores: (N,) or (height, width) floats.
    The header (stamp, frame_id), organization, byte order and is_dense are copied from the input;
    ``row_step`` has no padding. Raises PointCloudLayoutError on a malformed input or sizes.
    """
    from sensor_msgs.msg import PointCloud2

    points = pointcloud2_to_array(input_msg)
    dtype = labeled_dtype(points.dtype)
    # array('B', [0]) * n allocates by doubling memcpy: 0.07 ms for 6.7 MB against 0.24 ms for
    # array('B', bytes(n)); append_fields then overwrites every byte in place.
    data = array.array("B", [0]) * (points.size * dtype.itemsize)
    append_fields(points, labels, scores, out=data)
    fields, point_step, big = dtype_to_fields(dtype)
    msg = PointCloud2()
    msg.header = copy_header(input_msg.header)
    msg.height = int(points.shape[0])
    msg.width = int(points.shape[1])
    msg.fields = fields_to_msgs(fields)
    msg.is_bigendian = bool(big)
    msg.point_step = point_step
    msg.row_step = point_step * msg.width
    set_uint8_data(msg, data)
    msg.is_dense = bool(input_msg.is_dense)
    return msg


def array_to_pointcloud2(
    structured: np.ndarray, header: Any = None, is_dense: bool | None = None
) -> Any:
    """Build a PointCloud2 from a structured array.

    structured: (N,) -> height 1, width N; (height, width) -> organized cloud.
    header: std_msgs Header to copy (None = empty header).
    is_dense: None = computed (True when x, y, z exist and are all finite, or when there is no xyz).
    """
    from sensor_msgs.msg import PointCloud2

    structured = np.asarray(structured)
    fields, point_step, data = encode_points(structured)
    if structured.ndim == 2:
        height, width = int(structured.shape[0]), int(structured.shape[1])
    else:
        height, width = 1, int(structured.size)
    if is_dense is None:
        names = structured.dtype.names
        xyz_names = ("x", "y", "z")
        if (
            structured.size
            and all(c in names for c in xyz_names)
            and all(structured.dtype.fields[c][0].shape == () for c in xyz_names)
        ):
            xyz = np.stack([np.asarray(structured[c], np.float64).reshape(-1) for c in "xyz"], 1)
            is_dense = bool(valid_mask(xyz).all())
        else:
            is_dense = True
    msg = PointCloud2()
    msg.header = copy_header(header)
    msg.height = height
    msg.width = width
    msg.fields = fields_to_msgs(fields)
    msg.is_bigendian = False
    msg.point_step = point_step
    msg.row_step = point_step * width
    set_uint8_data(msg, byte_array(data))
    msg.is_dense = bool(is_dense)
    return msg
