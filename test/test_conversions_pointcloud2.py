"""PointCloud2 adapters with real rclpy messages, including a serialize/deserialize round trip
through rclpy's wire format."""

from __future__ import annotations

import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from sam4d_core.codecs.errors import PointCloudLayoutError
from sam4d_ros.conversions.pointcloud2 import (
    array_to_pointcloud2,
    make_labeled_pointcloud2,
    pointcloud2_to_array,
    pointcloud2_to_points,
)
from sam4d_ros.conversions.uint8_data import set_uint8_data

NUMPY_TYPES = ["i1", "u1", "<i2", "<u2", "<i4", "<u4", "<f4", "<f8", ">f4", ">u2"]


def header(sec=12, nanosec=345, frame="lidar_top") -> Header:
    h = Header()
    h.stamp.sec, h.stamp.nanosec, h.frame_id = sec, nanosec, frame
    return h


@st.composite
def structured_arrays(draw):
    n_fields = draw(st.integers(1, 5))
    names = draw(st.lists(st.sampled_from("abcdefgh"), min_size=n_fields, max_size=n_fields,
                          unique=True))  # fmt: skip
    fields = []
    for name in names:
        fmt = draw(st.sampled_from(NUMPY_TYPES))
        count = draw(st.integers(1, 3))
        fields.append((name, fmt, (count,)) if count > 1 else (name, fmt))
    shape = draw(st.sampled_from([(0,), (1,), (7,), (2, 3), (3, 1)]))
    seed = draw(st.integers(0, 2**32 - 1))
    dt = np.dtype(fields)
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * dt.itemsize, np.uint8)
    return raw.view(dt).reshape(shape)


@settings(max_examples=60, deadline=None)
@given(arr=structured_arrays())
def test_array_message_round_trip_over_the_wire(arr):
    msg = array_to_pointcloud2(arr, header())
    assert isinstance(msg.data, array.array)
    assert msg.is_bigendian is False
    wire = deserialize_message(serialize_message(msg), PointCloud2)
    back = pointcloud2_to_array(wire)
    expect_shape = arr.shape if arr.ndim == 2 else (1, arr.size)
    assert back.shape == expect_shape
    assert wire.header.frame_id == "lidar_top" and wire.header.stamp.nanosec == 345
    for name in arr.dtype.names:
        want = np.ascontiguousarray(arr[name]).astype(arr.dtype[name].base.newbyteorder("<"))
        assert np.ascontiguousarray(back[name]).reshape(want.shape).tobytes() == want.tobytes()


def ouster_like_msg(n: int, organized: bool = False) -> PointCloud2:
    """Ouster-driver layout: x y z (pad) intensity t reflectivity ring ambient range, 48 bytes."""
    spec = [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7), ("t", 20, 6),
            ("reflectivity", 24, 4), ("ring", 26, 4), ("ambient", 28, 4),
            ("range", 32, 6)]  # fmt: skip
    dt = np.dtype(
        {
            "names": [s[0] for s in spec],
            "formats": ["<f4"] * 4 + ["<u4", "<u2", "<u2", "<u2", "<u4"],
            "offsets": [s[1] for s in spec],
            "itemsize": 48,
        }
    )
    arr = np.zeros(n, dt)
    arr["x"] = np.arange(n)
    arr["y"] = 2.0
    arr["z"] = -1.0
    arr["x"][::5] = np.nan  # no-return points
    arr["intensity"] = np.arange(n) * 0.5
    arr["t"] = np.arange(n) * 1000
    arr["ring"] = np.arange(n) % 64
    msg = PointCloud2()
    msg.header = header()
    msg.height, msg.width = (4, n // 4) if organized else (1, n)
    msg.fields = [PointField(name=a, offset=o, datatype=d, count=1) for a, o, d in spec]
    msg.point_step = 48
    msg.row_step = 48 * msg.width
    msg.data = array.array("B", arr.tobytes())
    msg.is_dense = False
    return msg


@pytest.mark.parametrize("organized", [False, True])
def test_points_from_driver_layout(organized):
    msg = ouster_like_msg(40, organized)
    pts = pointcloud2_to_points(msg)
    assert (pts.height, pts.width) == ((4, 10) if organized else (1, 40))
    assert pts.xyz.shape == (40, 3) and pts.xyz.dtype == np.float32
    np.testing.assert_array_equal(pts.valid, np.arange(40) % 5 != 0)
    np.testing.assert_array_equal(pts.xyz[pts.valid, 0], np.arange(40)[np.arange(40) % 5 != 0])
    np.testing.assert_array_equal(pts.intensity, np.arange(40) * 0.5)
    np.testing.assert_array_equal(pts.ring, np.arange(40) % 64)
    np.testing.assert_allclose(pts.time, np.arange(40) * 1e-6)  # uint32 ns -> s


def test_labeled_cloud_keeps_everything_and_appends():
    msg = ouster_like_msg(40, organized=True)
    labels = np.arange(40, dtype=np.int64) % 3
    scores = np.linspace(0, 1, 40, dtype=np.float32)
    out = make_labeled_pointcloud2(msg, labels.reshape(4, 10), scores)
    assert out.header.frame_id == msg.header.frame_id and out.header.stamp == msg.header.stamp
    assert out.header is not msg.header
    assert (out.height, out.width, out.is_dense) == (4, 10, False)
    names = [f.name for f in out.fields]
    assert names == [f.name for f in msg.fields] + ["label", "score"]
    label_field = out.fields[-2]
    assert (label_field.offset, label_field.datatype) == (48, PointField.UINT32)
    assert (out.fields[-1].offset, out.fields[-1].datatype) == (52, PointField.FLOAT32)
    assert out.point_step == 56 and out.row_step == 560
    assert len(out.data) == 40 * 56
    assert out._check_fields is False  # the fast-path toggle is restored
    wire = deserialize_message(serialize_message(out), PointCloud2)
    src, got = pointcloud2_to_array(msg), pointcloud2_to_array(wire)
    for f in msg.fields:
        assert got[f.name].tobytes() == src[f.name].tobytes()
    assert got["label"].reshape(-1).tolist() == labels.tolist()
    np.testing.assert_array_equal(got["score"].reshape(-1), scores)


def test_big_endian_input_gives_big_endian_output():
    arr = np.zeros(3, [("x", ">f4"), ("y", ">f4"), ("z", ">f4")])
    arr["x"] = [1, 2, 3]
    msg = PointCloud2()
    msg.height, msg.width, msg.point_step, msg.row_step = 1, 3, 12, 36
    msg.fields = [
        PointField(name=c, offset=4 * i, datatype=7, count=1) for i, c in enumerate("xyz")
    ]
    msg.is_bigendian = True
    msg.data = array.array("B", arr.tobytes())
    out = make_labeled_pointcloud2(msg, [5, 6, 7], [0.1, 0.2, 0.3])
    assert out.is_bigendian is True
    assert bytes(out.data[12:16]) == (5).to_bytes(4, "big")
    assert pointcloud2_to_points(out).xyz[:, 0].tolist() == [1, 2, 3]


def test_set_uint8_data_does_not_copy():
    msg = PointCloud2()
    data = array.array("B", b"\x01\x02\x03")
    set_uint8_data(msg, data)
    assert msg.data is data


def test_malformed_messages_raise():
    msg = ouster_like_msg(8)
    msg.row_step = 48 * 8 - 1
    with pytest.raises(PointCloudLayoutError, match=r"row_step 383 is smaller than width 8"):
        pointcloud2_to_array(msg)
    msg = ouster_like_msg(8)
    msg.data = msg.data[:-1]
    with pytest.raises(PointCloudLayoutError, match=r"data length 383 != height 1 \* row_step 384"):
        pointcloud2_to_points(msg)
    msg = ouster_like_msg(8)
    msg.fields[3].datatype = 11
    with pytest.raises(PointCloudLayoutError, match="field 'intensity' has unknown datatype 11"):
        pointcloud2_to_points(msg)
    msg = ouster_like_msg(8)
    msg.fields = [f for f in msg.fields if f.name != "y"]
    with pytest.raises(PointCloudLayoutError, match="cloud has no field 'y'"):
        pointcloud2_to_points(msg)
    msg = ouster_like_msg(8)
    msg.point_step = 30
    with pytest.raises(PointCloudLayoutError, match="point_step 30 is smaller than field 'range'"):
        pointcloud2_to_points(msg)
    with pytest.raises(PointCloudLayoutError, match="label has 7 values but the cloud has 8"):
        make_labeled_pointcloud2(ouster_like_msg(8), np.zeros(7, int), np.zeros(8))
