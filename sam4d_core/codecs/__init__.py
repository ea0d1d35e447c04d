"""ROS-free codecs for the ROS 2 wire formats (PointCloud2, Image, CompressedImage, CameraInfo,
transforms): plain bytes and numbers in, numpy arrays out, and back.

They know the message layouts as plain data and never import a message type or rclpy, so the bag
reader/writer (rosbags) and the rclpy adapters in ``sam4d_ros.conversions`` share one
implementation. Malformed input raises a subclass of ``CodecError`` (a ``ValueError``).
"""

from sam4d_core.codecs.errors import (
    CameraInfoError,
    CodecError,
    ImageEncodingError,
    ImageSizeError,
    PointCloudLayoutError,
    TransformError,
)

__all__ = [
    "CameraInfoError",
    "CodecError",
    "ImageEncodingError",
    "ImageSizeError",
    "PointCloudLayoutError",
    "TransformError",
]
