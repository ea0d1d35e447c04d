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
    "ImageSizeError",
    "PointCloudLayoutError",
    "TransformError",
]


class CodecError(ValueError):
    """Base class: a message (or array) cannot be converted because its content is invalid."""


class PointCloudLayoutError(CodecError):
    """A PointCloud2 layout is inconsistent (fields, point_step, row_step, data length, ...)."""


class ImageEncodingError(CodecError):
    """An Image / CompressedImage has an unknown encoding or inconsistent size, step or data."""


class ImageSizeError(ImageEncodingError):
    """An image declares a size other than the one expected (the camera's CameraInfo), or one
    above the allowed bound; found from the header, before decoding.

    declared / expected: (height, width) the image declares / the size it had to have (None for
    the bound).
    """

    def __init__(
        self,
        message: str,
        declared: tuple[int, int] | None = None,
        expected: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(message)
        self.declared = declared
        self.expected = expected


class CameraInfoError(CodecError):
    """A CameraInfo has non-finite or degenerate intrinsics or a wrong distortion vector."""


class TransformError(CodecError):
    """A rigid transform is non-finite, has a non-unit quaternion or is not a rigid motion."""
