"""Child process for test_interfaces.py: serves sam4d_ros/srv/AddPrompts and RemoveObject over DDS
and republishes every Prompt it receives on ``~/prompts`` as TrackedObjects, so that a test in
another process exercises the generated type support end to end (serialization both ways).

The replies are a deterministic function of the request (object id i -> i, 0 -> 100 + index) so the
test can check that every field crossed the process boundary.
"""

import sys

import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from sam4d_ros.msg import Prompt, TrackedObject, TrackedObjects
from sam4d_ros.srv import AddPrompts, RemoveObject


class EchoNode(Node):
    def __init__(self) -> None:
        super().__init__("interfaces_echo")
        self.create_service(AddPrompts, "~/add_prompts", self.on_add)
        self.create_service(RemoveObject, "~/remove_object", self.on_remove)
        self.pub = self.create_publisher(TrackedObjects, "~/objects", 10)
        self.create_subscription(Prompt, "~/prompts", self.on_prompt, 10)

    def on_add(self, request, response):
        response.object_ids = [
            p.object_id if p.object_id else 100 + i for i, p in enumerate(request.prompts)
        ]
        response.success = True
        response.message = (
            ";".join(
                f"{p.camera_name}|{p.modality}|{len(p.points)}|{list(p.labels)}|{p.has_box}|"
                f"{[float(v) for v in p.box]}|{p.mask.width}x{p.mask.height}|"
                f"{bytes(p.mask.data).hex()}|"
                f"{p.header.frame_id}|{p.header.stamp.sec}.{p.header.stamp.nanosec}"
                for p in request.prompts
            )
            + f";clear={request.clear_previous_prompts}"
        )
        return response

    def on_remove(self, request, response):
        response.success = all(i < 1000 for i in request.object_ids)
        response.message = ",".join(str(i) for i in request.object_ids)
        return response

    def on_prompt(self, msg: Prompt) -> None:
        out = TrackedObjects()
        out.header = msg.header
        obj = TrackedObject()
        obj.id = msg.object_id
        obj.num_points = len(msg.points)
        obj.presence_score = float(msg.points[0].x) if msg.points else -1.0
        out.objects = [obj]
        out.cameras_used = [msg.camera_name]
        self.pub.publish(out)


def main() -> int:
    rclpy.init()
    node = EchoNode()
    print("ready", flush=True)
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
