"""Exceptions raised by the message codecs when a message is malformed.

Every converter at the ROS edge raises one of these (never a bare ``IndexError`` or a numpy error)
so that a node can catch ``CodecError``, log the message and drop the one bad input without
crashing. The message of each exception names the offending field and its values.
"""

from __future__ import annotations

__all__ = [
    "CameraInfoError",
    "CodecError",
    "ImageEncodingError",
    "PointCloudLayoutError",
    "TransformError",
]


class CodecError(ValueError):
    """Base class: a message (or array) cannot be converted because its content is invalid."""


class PointCloudLayoutError(CodecError):
    """A PointCloud2 layout is inconsistent (fields, point_step, row_step, data length, ...)."""


class ImageEncodingError(CodecError):
    """An Image / CompressedImage has an unknown encoding or inconsistent size, step or data."""


class CameraInfoError(CodecError):
    """A CameraInfo has non-finite or degenerate intrinsics or a wrong distortion vector."""


class TransformError(CodecError):
    """A rigid transform is non-finite, has a non-unit quaternion or is not a rigid motion."""
