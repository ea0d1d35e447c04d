"""TransformStamped <-> 4x4 with real geometry_msgs messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
from geometry_msgs.msg import TransformStamped

from sam4d_core.codecs.errors import TransformError
from sam4d_ros.conversions.stamps import ns_to_time_msg, stamp_to_ns
from sam4d_ros.conversions.transform import (
    matrix_to_transform_stamped,
    transform_stamped_to_matrix,
    transform_stamped_to_tq,
)


def test_transform_stamped_to_matrix_by_hand():
    msg = TransformStamped()
    msg.header.frame_id, msg.child_frame_id = "base_link", "lidar"
    msg.transform.translation.x, msg.transform.translation.y = 1.0, -2.0
    msg.transform.translation.z = 0.5
    msg.transform.rotation.z = msg.transform.rotation.w = math.sqrt(0.5)  # yaw +90 deg
    expected = np.array([[0.0, -1, 0, 1], [1, 0, 0, -2], [0, 0, 1, 0.5], [0, 0, 0, 1]])
    np.testing.assert_allclose(transform_stamped_to_matrix(msg), expected, atol=1e-12)


def test_matrix_round_trip_and_stamp():
    m = np.eye(4)
    m[:3, :3] = [[0.0, 0, 1], [0, 1, 0], [-1, 0, 0]]
    m[:3, 3] = [4, 5, 6]
    msg = matrix_to_transform_stamped(m, "map", "odom", 1_700_000_000_123_456_789)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_700_000_000, 123_456_789)
    parent, child, stamp, t, q = transform_stamped_to_tq(msg)
    assert (parent, child, stamp) == ("map", "odom", 1_700_000_000_123_456_789)
    np.testing.assert_allclose(transform_stamped_to_matrix(msg), m, atol=1e-12)
    assert stamp_to_ns(ns_to_time_msg(5)) == 5


def test_invalid_transforms_raise():
    msg = TransformStamped()
    msg.transform.rotation.w = 0.0  # all-zero quaternion: a common publisher bug
    with pytest.raises(TransformError, match="squared norm 0"):
        transform_stamped_to_matrix(msg)
    msg.transform.rotation.w = 1.0
    msg.transform.translation.x = float("inf")
    with pytest.raises(TransformError, match="translation has non-finite values"):
        transform_stamped_to_matrix(msg)
    with pytest.raises(TransformError, match="not a rotation"):
        matrix_to_transform_stamped(np.diag([1.0, 2.0, 1.0, 1.0]), "a", "b")
