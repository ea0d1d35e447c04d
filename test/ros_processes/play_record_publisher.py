"""Child process: publishes play_record_samples' Image, PointCloud2 and TrackedObjects messages.

Waits until every topic has SUBSCRIBERS subscriptions (the recorder under test, and the test's own
raw subscriber), lets discovery settle, then
publishes NUM_MESSAGES messages per topic at 20 Hz (reliable, depth 10) and stays up until
interrupted, so that the recorder can still see the publishers' QoS.

    play_record_publisher.py [NUM_MESSAGES [SUBSCRIBERS]]
"""

from __future__ import annotations

import sys
import time

import play_record_samples as samples
import rclpy
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from sensor_msgs.msg import Image, PointCloud2

from sam4d_ros.msg import TrackedObjects

CLASSES = {
    "/play_record/image": Image,
    "/play_record/points": PointCloud2,
    "/play_record/objects": TrackedObjects,
}


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else samples.NUM_MESSAGES
    subscribers = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    rclpy.init()
    node = Node("play_record_publisher")
    pubs = {t: node.create_publisher(CLASSES[t], t, 10) for t in samples.TOPICS}
    try:
        while not all(p.get_subscription_count() >= subscribers for p in pubs.values()):
            time.sleep(0.02)
        # The publisher side has matched the recorder; give the recorder's side the same time.
        time.sleep(0.3)
        for i in range(count):
            for topic, pub in pubs.items():
                pub.publish(samples.message(topic, i))
            time.sleep(0.05)
        print("published", flush=True)
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
