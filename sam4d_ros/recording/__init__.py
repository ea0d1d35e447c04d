"""rosbag2 recordings of driving sequences, readable and writable without a ROS install.

Built on the ``rosbags`` library and the ROS-free codecs of ``sam4d_core.codecs``; nothing here
imports rclpy, so training and evaluation code can use it on machines without ROS.
"""

from sam4d_ros.recording.sequence_bag import (
    BagError,
    BagTopics,
    MissingTopicError,
    SequenceBagReader,
    SequenceBagWriter,
    read_bag_metadata,
    read_sequence_bag,
    static_calibrations,
    write_sequence_bag,
)
from sam4d_ros.recording.tf_buffer import TfBuffer, TfGapError, TfLookupError

__all__ = [
    "BagError",
    "BagTopics",
    "MissingTopicError",
    "SequenceBagReader",
    "SequenceBagWriter",
    "TfBuffer",
    "TfGapError",
    "TfLookupError",
    "read_bag_metadata",
    "read_sequence_bag",
    "static_calibrations",
    "write_sequence_bag",
]
