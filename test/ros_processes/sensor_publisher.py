"""Child process: publishes the sensor samples of sensor_samples.py with the project's converters
(PointCloud2, Image rgb8 and mono16, CompressedImage png and jpeg, CameraInfo) and a moving TF tree
on /tf (odom -> base_link, 20 Hz, stamps from t = 1000 s) and /tf_static (base_link -> lidar), until
interrupted. Sensor topics are republished at 10 Hz so a late subscriber still gets them.
"""

from __future__ import annotations

import sys

import rclpy
import sensor_samples as samples
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from tf2_msgs.msg import TFMessage

from sam4d_ros.conversions.image import array_to_image_msg, rgb_to_compressed_msg
from sam4d_ros.conversions.pointcloud2 import array_to_pointcloud2
from sam4d_ros.conversions.stamps import make_header
from sam4d_ros.conversions.transform import matrix_to_transform_stamped


class SensorPublisher(Node):
    def __init__(self) -> None:
        super().__init__("sensor_publisher")
        stamp = samples.BASE_STAMP_NS
        self.cloud = array_to_pointcloud2(samples.cloud(), make_header(stamp, "lidar"))
        self.rgb = array_to_image_msg(samples.rgb_image(), "rgb8", make_header(stamp, "cam"))
        self.mono16 = array_to_image_msg(samples.depth_image(), "mono16", make_header(stamp, "cam"))
        self.png = rgb_to_compressed_msg(samples.rgb_image(), make_header(stamp, "cam"), "png")
        self.jpeg = rgb_to_compressed_msg(samples.smooth_image(), make_header(stamp, "cam"), "jpeg")
        info = CameraInfo()
        info.header = make_header(stamp, "cam")
        info.width, info.height = 64, 48
        info.distortion_model = "plumb_bob"
        info.k = samples.CAMERA_K.ravel().tolist()
        info.d = samples.CAMERA_D.tolist()
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [*samples.CAMERA_K[0], 0.0, *samples.CAMERA_K[1], 0.0, *samples.CAMERA_K[2], 0.0]
        self.info = info

        self.pubs = {
            "points": (self.create_publisher(PointCloud2, "test/points", 10), self.cloud),
            "rgb": (self.create_publisher(Image, "test/image_rgb", 10), self.rgb),
            "mono16": (self.create_publisher(Image, "test/image_mono16", 10), self.mono16),
            "png": (self.create_publisher(CompressedImage, "test/image/png", 10), self.png),
            "jpeg": (self.create_publisher(CompressedImage, "test/image/jpeg", 10), self.jpeg),
            "info": (self.create_publisher(CameraInfo, "test/camera_info", 10), self.info),
        }
        static_qos = QoSProfile(
            depth=100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.tf_static = self.create_publisher(TFMessage, "/tf_static", static_qos)
        self.tf = self.create_publisher(TFMessage, "/tf", 100)
        mount = matrix_to_transform_stamped(samples.lidar_mount(), "base_link", "lidar")
        self.tf_static.publish(TFMessage(transforms=[mount]))
        self.tf_stamp = samples.BASE_STAMP_NS
        self.create_timer(0.1, self.publish_sensors)
        self.create_timer(0.05, self.publish_tf)

    def publish_sensors(self) -> None:
        for pub, msg in self.pubs.values():
            pub.publish(msg)

    def publish_tf(self) -> None:
        pose = samples.moving_pose(self.tf_stamp)
        self.tf.publish(
            TFMessage(
                transforms=[matrix_to_transform_stamped(pose, "odom", "base_link", self.tf_stamp)]
            )
        )
        self.tf_stamp += samples.TF_PERIOD_NS


def main() -> int:
    rclpy.init()
    node = SensorPublisher()
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
