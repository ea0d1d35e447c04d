"""The package's own interfaces (msg/, srv/): generated, importable, serializable, and usable over
real DDS between two processes."""

from __future__ import annotations

import numpy as np
from rclpy.serialization import deserialize_message, serialize_message

from conftest import spin_until
from sam4d_ros.msg import CameraBox, Prompt, TrackedObject, TrackedObjects
from sam4d_ros.srv import AddPrompts, RemoveObject


def make_prompts() -> list[Prompt]:
    from geometry_msgs.msg import Point

    image = Prompt()
    image.header.stamp.sec, image.header.stamp.nanosec = 12, 500_000_000
    image.object_id = 0
    image.modality = Prompt.IMAGE
    image.camera_name = "front"
    image.points = [Point(x=320.0, y=200.5, z=0.0), Point(x=10.0, y=20.0, z=0.0)]
    image.labels = [Prompt.LABEL_FOREGROUND, Prompt.LABEL_BACKGROUND]
    image.has_box = True
    image.box = [1.0, 2.0, 300.0, 200.0]
    image.mask.width, image.mask.height, image.mask.encoding, image.mask.step = 3, 2, "mono8", 3
    image.mask.data = bytes([0, 255, 0, 255, 255, 0])

    lidar = Prompt()
    lidar.header.frame_id = "map"
    lidar.object_id = 7
    lidar.modality = Prompt.LIDAR
    lidar.points = [Point(x=12.5, y=-3.25, z=0.75)]
    lidar.labels = [1]
    return [image, lidar]


def test_constants_and_defaults() -> None:
    assert (Prompt.IMAGE, Prompt.LIDAR) == (0, 1)
    assert (Prompt.LABEL_BACKGROUND, Prompt.LABEL_FOREGROUND) == (0, 1)
    p = Prompt()
    assert p.object_id == 0 and not p.has_box and len(p.box) == 4
    assert p.mask.width == 0 and p.mask.height == 0
    fields = Prompt.get_fields_and_field_types()
    assert fields["object_id"] == "uint32" and fields["box"] == "double[4]"
    assert fields["points"] == "sequence<geometry_msgs/Point>"
    assert fields["mask"] == "sensor_msgs/Image"
    assert AddPrompts.Response.get_fields_and_field_types()["object_ids"] == "sequence<uint32>"
    assert RemoveObject.Request.get_fields_and_field_types()["object_ids"] == "sequence<uint32>"


def test_serialization_round_trip() -> None:
    for prompt in make_prompts():
        back = deserialize_message(serialize_message(prompt), Prompt)
        assert back == prompt

    objs = TrackedObjects()
    objs.header.frame_id = "lidar_top"
    objs.cameras_used = ["front", "left"]
    o = TrackedObject(
        id=3, presence_score=0.875, predicted_iou=0.75, lidar_score=0.5, num_points=42, lost=True
    )
    o.has_box_3d = True
    o.box_pose.position.x = 10.0
    o.box_size.x, o.box_size.y, o.box_size.z = 4.2, 1.8, 1.5
    o.camera_boxes = [
        CameraBox(camera_name="front", u_min=1.0, v_min=2.0, u_max=3.0, v_max=4.0, area=5)
    ]
    objs.objects = [o]
    back = deserialize_message(serialize_message(objs), TrackedObjects)
    assert back == objs
    assert back.objects[0].camera_boxes[0].area == 5
    assert back.objects[0].lost is True


def test_services_and_topics_across_processes(rclpy_context, ros_process) -> None:
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    server = ros_process("prompt_service.py")
    node = Node("interfaces_client", context=rclpy_context)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    try:
        add = node.create_client(AddPrompts, "/interfaces_echo/add_prompts")
        remove = node.create_client(RemoveObject, "/interfaces_echo/remove_object")
        assert add.wait_for_service(timeout_sec=30.0), server.stop()
        assert remove.wait_for_service(timeout_sec=10.0)

        request = AddPrompts.Request(prompts=make_prompts(), clear_previous_prompts=True)
        future = add.call_async(request)
        assert spin_until(executor, future.done, 10.0)
        response = future.result()
        assert response.success
        assert list(response.object_ids) == [100, 7]
        image_part, lidar_part, clear = response.message.split(";")
        assert image_part == (
            "front|0|2|[1, 0]|True|[1.0, 2.0, 300.0, 200.0]|3x2|00ff00ffff00||12.500000000"
        )
        assert lidar_part == "|1|1|[1]|False|[0.0, 0.0, 0.0, 0.0]|0x0||map|0.0"
        assert clear == "clear=True"

        future = remove.call_async(RemoveObject.Request(object_ids=[3, 5000]))
        assert spin_until(executor, future.done, 10.0)
        assert not future.result().success and future.result().message == "3,5000"

        received: list[TrackedObjects] = []
        node.create_subscription(TrackedObjects, "/interfaces_echo/objects", received.append, 10)
        pub = node.create_publisher(Prompt, "/interfaces_echo/prompts", 10)
        lidar_prompt = make_prompts()[1]

        def published_and_received() -> bool:
            if not received:
                pub.publish(lidar_prompt)
            return bool(received)

        assert spin_until(executor, published_and_received, 15.0, step_s=0.2)
        got = received[0]
        assert got.header.frame_id == "map"
        assert got.objects[0].id == 7 and got.objects[0].num_points == 1
        assert np.isclose(got.objects[0].presence_score, 12.5)
    finally:
        executor.shutdown()
        node.destroy_node()
        out = server.stop()
    assert "ready" in out
