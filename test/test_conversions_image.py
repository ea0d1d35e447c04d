"""Image / CompressedImage adapters with real rclpy messages (and rclpy's wire format)."""

from __future__ import annotations

import array

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from sam4d_core.codecs.errors import ImageEncodingError
from sam4d_core.codecs.image import encoding_info, label_color
from sam4d_ros.conversions.image import (
    array_to_image_msg,
    compressed_image_to_rgb,
    image_to_array,
    image_to_rgb,
    labels_to_mono8_msg,
    labels_to_mono16_msg,
    overlay_msg,
    rgb_to_compressed_msg,
    rgb_to_image_msg,
)

ENCODINGS = ["rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "8UC1", "8UC3", "16UC1",
             "yuv422", "yuv422_yuy2", "32FC1"]  # fmt: skip


def header() -> Header:
    h = Header()
    h.stamp.sec, h.stamp.nanosec, h.frame_id = 7, 8, "cam_front"
    return h


@settings(max_examples=60, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    height=st.integers(1, 5),
    half_width=st.integers(1, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_array_image_round_trip_over_the_wire(encoding, height, half_width, seed):
    info = encoding_info(encoding)
    shape = (height, 2 * half_width) + ((info.channels,) if info.channels > 1 else ())
    raw = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * int(info.code[1]))
    arr = raw.astype(np.uint8).view(info.code).reshape(shape)
    msg = array_to_image_msg(arr, encoding, header())
    assert isinstance(msg.data, array.array) and msg.encoding == encoding
    wire = deserialize_message(serialize_message(msg), Image)
    back = image_to_array(wire)
    assert back.tobytes() == arr.tobytes()
    assert wire.header.frame_id == "cam_front" and wire.header.stamp.sec == 7


def test_padded_bgr8_message_to_rgb():
    bgr = np.random.default_rng(0).integers(0, 256, (3, 5, 3), dtype=np.uint8)
    msg = Image()
    msg.height, msg.width, msg.encoding, msg.step = 3, 5, "bgr8", 20  # 5 bytes of row padding
    msg.data = array.array("B", b"".join(bgr[r].tobytes() + b"\0" * 5 for r in range(3)))
    np.testing.assert_array_equal(image_to_rgb(msg), bgr[..., ::-1])


def test_rgb8_message_is_zero_copy():
    rgb = np.random.default_rng(0).integers(0, 256, (4, 6, 3), dtype=np.uint8)
    msg = rgb_to_image_msg(rgb, header())
    out = image_to_rgb(msg)
    np.testing.assert_array_equal(out, rgb)
    assert np.shares_memory(out, np.frombuffer(msg.data, np.uint8))


def test_compressed_round_trip():
    rgb = np.random.default_rng(3).integers(0, 256, (6, 8, 3), dtype=np.uint8)
    msg = rgb_to_compressed_msg(rgb, header(), fmt="png")
    assert msg.format == "rgb8; png compressed bgr8"
    wire = deserialize_message(serialize_message(msg), CompressedImage)
    np.testing.assert_array_equal(compressed_image_to_rgb(wire), rgb)
    jpeg = rgb_to_compressed_msg(np.full((16, 16, 3), 128, np.uint8), header(), "jpeg", 90)
    assert jpeg.format == "rgb8; jpeg compressed bgr8"
    assert np.abs(compressed_image_to_rgb(jpeg).astype(int) - 128).max() <= 2


def test_label_and_overlay_messages():
    labels = np.array([[0, 1, 2], [300, 0, 1]])
    m16 = labels_to_mono16_msg(labels, header())
    assert (m16.encoding, m16.step, m16.is_bigendian) == ("mono16", 6, 0)
    assert image_to_array(m16).tolist() == labels.tolist()
    with pytest.raises(ImageEncodingError, match="do not fit mono8"):
        labels_to_mono8_msg(labels, header())
    m8 = labels_to_mono8_msg(labels % 256, header())
    assert m8.encoding == "mono8" and image_to_array(m8).tolist() == (labels % 256).tolist()
    rgb = np.zeros((2, 3, 3), np.uint8)
    ov = overlay_msg(rgb, labels, header(), alpha=1.0)
    assert ov.encoding == "rgb8" and ov.header.frame_id == "cam_front"
    out = image_to_array(ov)
    assert out[0, 1].tolist() == list(label_color(1)) and out[0, 0].tolist() == [0, 0, 0]


def test_malformed_image_messages_raise():
    msg = rgb_to_image_msg(np.zeros((2, 4, 3), np.uint8))
    msg.step = 11
    with pytest.raises(ImageEncodingError, match=r"step 11 is smaller than width 4 \* 3"):
        image_to_rgb(msg)
    msg = rgb_to_image_msg(np.zeros((2, 4, 3), np.uint8))
    msg.height = 3
    with pytest.raises(ImageEncodingError, match=r"data length 24 != height 3 \* step 12 = 36"):
        image_to_array(msg)
    msg.height, msg.encoding = 2, "hsv8"
    with pytest.raises(ImageEncodingError, match="unknown or unsupported image encoding 'hsv8'"):
        image_to_rgb(msg)
    bad = CompressedImage()
    bad.format = "jpeg"
    bad.data = array.array("B", b"\xff\xd8\xff\xe0" + b"\0" * 20)
    with pytest.raises(ImageEncodingError, match="cannot decode 24 bytes of JPEG"):
        compressed_image_to_rgb(bad)
