"""TF for the node: ``TfListener`` feeds a :class:`~sam4d_core.geometry.tf_buffer.TfBuffer` from
/tf and /tf_static.

The buffer and its lookup errors are ROS-free and live in :mod:`sam4d_core.geometry.tf_buffer`
(the recording reader uses them too); ``TfBuffer`` and ``TfLookupError`` are re-exported here for
the node. rclpy and tf2_msgs are imported only inside ``TfListener``.
"""

from __future__ import annotations

from typing import Any

from sam4d_core.geometry.tf_buffer import TfBuffer, TfLookupError

__all__ = ["TfBuffer", "TfListener", "TfLookupError"]


class TfListener:
    """Feeds a ``TfBuffer`` from /tf and /tf_static on an rclpy node (like tf2_ros's listener).

    QoS as tf2_ros: /tf reliable, volatile, depth 100; /tf_static reliable, transient-local,
    depth 100 (late joiners get the latched static transforms). Callbacks run in a callback group
    of their own, so a MultiThreadedExecutor serves them while other callbacks are busy.
    """

    def __init__(
        self,
        node: Any,
        buffer: TfBuffer,
        tf_topic: str = "/tf",
        tf_static_topic: str = "/tf_static",
        qos_depth: int = 100,
    ) -> None:
        from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from tf2_msgs.msg import TFMessage

        self.buffer = buffer
        self._node = node
        self.dropped = 0  # transforms rejected as invalid
        group = MutuallyExclusiveCallbackGroup()
        dynamic_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=qos_depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        static_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=qos_depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self._subs = [
            node.create_subscription(
                TFMessage, tf_topic, self._on_tf, dynamic_qos, callback_group=group
            ),
            node.create_subscription(
                TFMessage, tf_static_topic, self._on_tf_static, static_qos, callback_group=group
            ),
        ]

    def _on(self, msg: Any, static: bool) -> None:
        added = self.buffer.add_message(msg, static=static)
        bad = len(msg.transforms) - added
        if bad:
            self.dropped += bad
            self._node.get_logger().warning(
                f"ignored {bad} invalid transform(s) on {'/tf_static' if static else '/tf'}",
                throttle_duration_sec=5.0,
            )

    def _on_tf(self, msg: Any) -> None:
        self._on(msg, static=False)

    def _on_tf_static(self, msg: Any) -> None:
        self._on(msg, static=True)

    def destroy(self) -> None:
        """Remove the subscriptions from the node."""
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []
