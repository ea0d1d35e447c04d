"""rosbag2 recordings of driving sequences, readable and writable without a ROS install.

Built on the ``rosbags`` library and the ROS-free codecs of ``sam4d_core.codecs``; nothing here
imports rclpy, so training and evaluation code can use it on machines without ROS.

TF comes from the node's own buffer (``sam4d_ros.tf_buffer.TfBuffer``, ROS-free at import); its
lookup errors are re-exported here so that callers can catch them without importing it. The
reader raises ``BagTfError`` / ``BagTfExtrapolationError`` / ``BagTfGapError``, which are both
``BagError`` (``DatasetError``) and the matching buffer error.
"""

from sam4d_ros.recording.sequence_bag import (
    BagError,
    BagTfError,
    BagTfExtrapolationError,
    BagTfGapError,
    BagTopics,
    MissingTopicError,
    SequenceBagReader,
    SequenceBagWriter,
    read_bag_metadata,
    read_sequence_bag,
    static_calibrations,
    write_sequence_bag,
)
from sam4d_ros.tf_buffer import ExtrapolationError, TfGapError, TfLookupError

__all__ = [
    "BagError",
    "BagTfError",
    "BagTfExtrapolationError",
    "BagTfGapError",
    "BagTopics",
    "ExtrapolationError",
    "MissingTopicError",
    "SequenceBagReader",
    "SequenceBagWriter",
    "TfGapError",
    "TfLookupError",
    "read_bag_metadata",
    "read_sequence_bag",
    "static_calibrations",
    "write_sequence_bag",
]
