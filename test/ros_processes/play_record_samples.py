"""Deterministic messages for the play / record tests: the publisher process sends them and the
test rebuilds them to compare serialized bytes. Message ``i`` of every topic is a pure function of
``i`` (stamps 50 ms apart from BASE_STAMP_NS); float32 fields hold exactly representable values
so that a deserialized message compares equal to the one built here."""

from __future__ import annotations

from typing import Any

import numpy as np

from sam4d_ros.conversions.image import array_to_image_msg
from sam4d_ros.conversions.pointcloud2 import array_to_pointcloud2
from sam4d_ros.conversions.stamps import make_header

BASE_STAMP_NS = 1_700_000_000_000_000_000
PERIOD_NS = 50_000_000
NUM_MESSAGES = 5
TOPICS = {
    "/play_record/image": "sensor_msgs/msg/Image",
    "/play_record/points": "sensor_msgs/msg/PointCloud2",
    "/play_record/objects": "sam4d_ros/msg/TrackedObjects",
}


def stamp_ns(i: int) -> int:
    return BASE_STAMP_NS + i * PERIOD_NS


def image(i: int) -> Any:
    rgb = (np.arange(6 * 8 * 3, dtype=np.int64).reshape(6, 8, 3) * 7 + 13 * i) % 256
    return array_to_image_msg(rgb.astype(np.uint8), "rgb8", make_header(stamp_ns(i), "camera"))


def points(i: int) -> Any:
    rng = np.random.default_rng(100 + i)
    cloud = np.zeros(20 + i, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("intensity", "<f4")])
    for name in cloud.dtype.names:
        cloud[name] = rng.normal(size=cloud.shape[0])
    return array_to_pointcloud2(cloud, make_header(stamp_ns(i), "lidar"))


def objects(i: int) -> Any:
    from sam4d_ros.msg import CameraBox, TrackedObject, TrackedObjects

    msg = TrackedObjects(header=make_header(stamp_ns(i), "lidar"), cameras_used=["front"])
    for k in range(1 + i % 3):
        obj = TrackedObject(id=k + 1, presence_score=0.5 + 0.125 * k, num_points=10 * i + k)
        obj.has_box_3d = True
        obj.box_pose.position.x = float(i)
        obj.box_size.x, obj.box_size.y, obj.box_size.z = 4.0, 2.0, 1.5
        obj.camera_boxes = [
            CameraBox(camera_name="front", u_min=1.0, v_min=2.0, u_max=3.0 + i, v_max=4.0, area=5)
        ]
        msg.objects.append(obj)
    return msg


BUILDERS = {
    "/play_record/image": image,
    "/play_record/points": points,
    "/play_record/objects": objects,
}


def message(topic: str, i: int) -> Any:
    return BUILDERS[topic](i)
