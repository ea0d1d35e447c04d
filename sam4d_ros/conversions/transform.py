"""geometry_msgs/TransformStamped (and Transform) <-> (4, 4) homogeneous matrices.

Reading is duck-typed (rclpy or rosbags). ``transform_stamped_to_matrix`` returns ``T_parent_child``
(maps points in ``child_frame_id`` into ``header.frame_id``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam4d_core.codecs.transform import matrix_to_tq, tq_to_matrix
from sam4d_ros.conversions.stamps import ns_to_time_msg, stamp_to_ns

__all__ = [
    "matrix_to_transform_stamped",
    "transform_stamped_to_matrix",
    "transform_stamped_to_tq",
    "transform_to_matrix",
    "transform_to_tq",
]


def transform_to_tq(transform: Any) -> tuple[np.ndarray, np.ndarray]:
    """geometry_msgs/Transform -> ((3,) translation, (4,) quaternion x, y, z, w), as given
    (not validated)."""
    t, q = transform.translation, transform.rotation
    return (
        np.array([t.x, t.y, t.z], dtype=np.float64),
        np.array([q.x, q.y, q.z, q.w], dtype=np.float64),
    )


def transform_to_matrix(transform: Any) -> np.ndarray:
    """geometry_msgs/Transform -> (4, 4) float64. Raises TransformError when non-finite or the
    quaternion is not unit (within tf2's tolerance)."""
    return tq_to_matrix(*transform_to_tq(transform))


def transform_stamped_to_tq(msg: Any) -> tuple[str, str, int, np.ndarray, np.ndarray]:
    """TransformStamped -> (parent frame, child frame, stamp ns, translation, quaternion)."""
    t, q = transform_to_tq(msg.transform)
    return str(msg.header.frame_id), str(msg.child_frame_id), stamp_to_ns(msg.header.stamp), t, q


def transform_stamped_to_matrix(msg: Any) -> np.ndarray:
    """TransformStamped -> (4, 4) float64 ``T_parent_child``; raises TransformError when invalid."""
    return transform_to_matrix(msg.transform)


def matrix_to_transform_stamped(
    matrix: np.ndarray, parent_frame: str, child_frame: str, stamp_ns: int = 0
) -> Any:
    """(4, 4) rigid ``T_parent_child`` -> geometry_msgs.msg.TransformStamped.

    Raises TransformError when the matrix is not a finite rigid transform.
    """
    from geometry_msgs.msg import TransformStamped

    t, q = matrix_to_tq(matrix)
    msg = TransformStamped()
    msg.header.stamp = ns_to_time_msg(stamp_ns)
    msg.header.frame_id = str(parent_frame)
    msg.child_frame_id = str(child_frame)
    tr, rot = msg.transform.translation, msg.transform.rotation
    tr.x, tr.y, tr.z = (float(v) for v in t)
    rot.x, rot.y, rot.z, rot.w = (float(v) for v in q)
    return msg
