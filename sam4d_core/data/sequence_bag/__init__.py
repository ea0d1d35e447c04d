"""A :class:`~sam4d_core.data.sequence.Sequence` <-> a rosbag2 recording (MCAP or sqlite3).

Written and read with the ``rosbags`` library, so it needs no ROS install and imports no rclpy
(training code imports it too). Contents of a written bag (topic names from :class:`BagTopics`):

======================================================  =========================================
``/sensors/lidar/points``                               sensor_msgs/PointCloud2, x y z intensity
                                                        (+ extra fields) float32, frame = LiDAR
``/sensors/camera/<cam>/image_raw``                     sensor_msgs/Image rgb8, or
``/sensors/camera/<cam>/image_raw/compressed``          sensor_msgs/CompressedImage jpeg / png
``/sensors/camera/<cam>/camera_info``                   sensor_msgs/CameraInfo (K, P = [K|0],
                                                        plumb_bob with zero distortion)
``/tf``                                                 ``<world> -> base_link`` at each sweep
``/tf_static``                                          ``base_link -> <lidar>`` (mounting) and
                                                        ``<lidar> -> <cam>_optical_frame``
``/ground_truth/<cam>/instance_labels``                 sensor_msgs/Image mono16 (32SC1 when ids
                                                        exceed 65535), 0 = background
``/ground_truth/lidar/labeled_points``                  PointCloud2 with one field, label int32
                                                        (0 background, -1 ignore), point k of the
                                                        sweep with the same stamp
``/ground_truth/objects``                               std_msgs/String, JSON object table
======================================================  =========================================

The object table is ``{"stamp": {"sec", "nanosec"}, "frame_index", "objects": [{"object_id",
"semantic", "score", "volume"}]}``, stamped like the sweep it belongs to (String has no header).
The labeled cloud holds no coordinates: they would repeat the sweep's (and float coordinates are
what compresses worst); the reader also accepts one with x, y, z besides ``label``.
Bags are rosbag2 format version 8 with the message definitions of ROS 2 Humble (identical for
these types up to Kilted); ``/tf_static`` is offered as transient local, like a latched topic.
MCAP files are written with zstd chunk compression by default (what ``ros2 bag record
--storage-preset-profile zstd_fast`` does; every MCAP reader handles it). A bag's bytes depend only
on its content and the library versions (no wall-clock time, host or random id is stored), so
writing the same sequence twice gives identical files.

Stamps: a sweep's messages carry the frame timestamp, a camera's messages the camera timestamp
(the sweep's when the camera has none); the bag's log time equals the header stamp. A camera
whose ``cam_from_lidar`` changes between frames (nuScenes' lidar2cam includes ego motion) is
published on ``/tf`` at its image stamps instead of ``/tf_static``. The sequence name, point
fields and frame ids are also kept in the bag metadata (``custom_data``).

Reading rebuilds one frame per PointCloud2: per camera the image nearest to the sweep stamp
(within a tolerance), the ego pose from TF (interpolated between samples, with an error for gaps),
the extrinsics from TF at the image stamp and the intrinsics from CameraInfo. Ground truth is
matched by exact stamp. Bags from elsewhere work too as long as their topics are named in
``BagTopics`` and their TF tree connects the cloud's and the images' frames.

Round trips sequence -> bag -> sequence are exact for points, labels, images (rgb8 or png),
timestamps at nanosecond resolution, and poses / calibration up to float64 rounding (~1e-15).

Modules: :mod:`.schema` (metadata tags, embedded message types, :class:`BagTopics`, stamps),
:mod:`.messages` (building and parsing the messages), :mod:`.writer`, :mod:`.reader` and
:mod:`.errors`; every public name is importable from this package.
"""

from __future__ import annotations

from sam4d_core.data.sequence_bag.errors import (
    BagError,
    BagTfError,
    BagTfExtrapolationError,
    BagTfGapError,
    MissingTopicError,
)
from sam4d_core.data.sequence_bag.reader import (
    SequenceBagReader,
    open_bag,
    read_bag_metadata,
    read_sequence_bag,
)
from sam4d_core.data.sequence_bag.schema import (
    FORMAT_TAG,
    METADATA_KEY,
    TYPESTORE,
    BagTopics,
    ProgressFn,
    T,
)
from sam4d_core.data.sequence_bag.writer import (
    SequenceBagWriter,
    static_calibrations,
    write_frames_bag,
    write_sequence_bag,
)

__all__ = [
    "BagError",
    "BagTfError",
    "BagTfExtrapolationError",
    "BagTfGapError",
    "BagTopics",
    "FORMAT_TAG",
    "METADATA_KEY",
    "MissingTopicError",
    "ProgressFn",
    "SequenceBagReader",
    "SequenceBagWriter",
    "T",
    "TYPESTORE",
    "open_bag",
    "read_bag_metadata",
    "read_sequence_bag",
    "static_calibrations",
    "write_frames_bag",
    "write_sequence_bag",
]
