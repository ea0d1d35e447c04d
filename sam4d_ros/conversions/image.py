"""sensor_msgs/Image and CompressedImage <-> numpy at the node's edge.

Reading is duck-typed (rclpy or rosbags messages). Building returns rclpy messages whose ``data``
is an ``array.array('B')`` filled with one memcpy (the generated setter loops in Python over
anything else). The encodings themselves live in ``sam4d_core.codecs.image``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sam4d_core.codecs.errors import ImageSizeError
from sam4d_core.codecs.image import (
    compressed_format_string,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image_array,
    label_image_mono8,
    label_image_mono16,
    overlay,
    to_rgb,
)
from sam4d_ros.conversions.stamps import copy_header
from sam4d_ros.conversions.uint8_data import byte_array, set_uint8_data

__all__ = [
    "array_to_image_msg",
    "compressed_image_to_rgb",
    "image_to_array",
    "image_to_rgb",
    "labels_to_mono8_msg",
    "labels_to_mono16_msg",
    "overlay_msg",
    "rgb_to_compressed_msg",
    "rgb_to_image_msg",
]


def image_to_array(msg: Any) -> np.ndarray:
    """Raw view of an Image: (H, W) or (H, W, C) in the message's encoding (no copy).

    Raises ImageEncodingError for unknown encodings and inconsistent height/width/step/data.
    """
    return decode_image(msg.data, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian)


def image_to_rgb(msg: Any, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from an Image of any supported encoding (rgb8: no copy).

    expected_size: (height, width) the image must have (the camera's CameraInfo); checked on the
        message's fields before any conversion (ImageSizeError).
    """
    if expected_size is not None:
        _check_expected(int(msg.height), int(msg.width), expected_size)
    return to_rgb(image_to_array(msg), msg.encoding)


def compressed_image_to_rgb(msg: Any, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a JPEG or PNG CompressedImage.

    expected_size: (height, width) the image must have (the camera's CameraInfo). The size is
        read from the JPEG / PNG header and checked before decoding (a header claiming a huge
        image costs nothing); without it the size is only bounded by ``MAX_COMPRESSED_PIXELS``.
    """
    return decode_compressed(msg.data, msg.format, expected_size)


def _check_expected(height: int, width: int, expected_size: tuple[int, int]) -> None:
    exp_h, exp_w = (int(v) for v in expected_size)
    if (height, width) != (exp_h, exp_w):
        raise ImageSizeError(
            f"image is {width}x{height} but {exp_w}x{exp_h} is expected",
            (height, width),
            (exp_h, exp_w),
        )


def array_to_image_msg(array: np.ndarray, encoding: str, header: Any = None) -> Any:
    """sensor_msgs.msg.Image holding ``array`` in ``encoding`` (little-endian, no row padding)."""
    from sensor_msgs.msg import Image

    buf, step = encode_image_array(array, encoding)
    msg = Image()
    msg.header = copy_header(header)
    msg.height = int(buf.shape[0])
    msg.width = int(np.asarray(array).shape[1])
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(step)
    set_uint8_data(msg, byte_array(buf))
    return msg


def rgb_to_image_msg(rgb: np.ndarray, header: Any = None, encoding: str = "rgb8") -> Any:
    """(H, W, 3) uint8 RGB -> Image (rgb8)."""
    return array_to_image_msg(rgb, encoding, header)


def labels_to_mono16_msg(labels: np.ndarray, header: Any = None) -> Any:
    """(H, W) object ids -> mono16 Image (0 = background)."""
    return array_to_image_msg(label_image_mono16(labels), "mono16", header)


def labels_to_mono8_msg(labels: np.ndarray, header: Any = None) -> Any:
    """(H, W) object ids (<= 255) -> mono8 Image (0 = background)."""
    return array_to_image_msg(label_image_mono8(labels), "mono8", header)


def overlay_msg(
    rgb: np.ndarray,
    labels: np.ndarray,
    header: Any = None,
    alpha: float = 0.5,
) -> Any:
    """rgb8 Image of the object colours blended over ``rgb`` (H, W, 3) uint8 where labels > 0."""
    return array_to_image_msg(overlay(rgb, labels, alpha), "rgb8", header)


def rgb_to_compressed_msg(
    rgb: np.ndarray, header: Any = None, fmt: str = "jpeg", quality: int = 90
) -> Any:
    """(H, W, 3) uint8 RGB -> CompressedImage with image_transport's format string."""
    from sensor_msgs.msg import CompressedImage

    msg = CompressedImage()
    msg.header = copy_header(header)
    msg.format = compressed_format_string(fmt, "rgb8")
    set_uint8_data(msg, byte_array(encode_compressed(rgb, fmt, quality)))
    return msg
