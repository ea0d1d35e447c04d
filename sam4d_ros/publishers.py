"""The output publishers of ``sam4d_node`` and the publication of one tracker step.

Outputs (QoS ``qos.output_*``; headers copied from the inputs): per camera ``~/<camera>/labels``
and ``~/<camera>/overlay``; ``~/points_labeled``; ``~/objects``; ``~/markers``; with
``outputs.debug`` ``~/debug/processing_time_ms``, ``~/debug/pipeline_latency_ms`` and
``~/debug/stage_times_ms``. A publisher is created only when its ``outputs.*`` switch is on, and an
output nobody subscribes to is not computed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from diagnostic_msgs.msg import DiagnosticArray
from sensor_msgs.msg import Image, PointCloud2
from std_msgs.msg import Float64
from visualization_msgs.msg import MarkerArray

from sam4d_ros.debug_topics import STAGE_TIMES_TOPIC, stage_times_msg
from sam4d_ros.frame_builder import BuiltFrame
from sam4d_ros.msg import TrackedObjects
from sam4d_ros.outputs import StepOutputs
from sam4d_ros.parameters import NodeParameters, output_qos

__all__ = ["OutputPublishers"]


class OutputPublishers:
    """The enabled output publishers of ``node`` (see the module docstring). ``config``: the
    OutputConfig of the next publication (the node swaps it when parameters change)."""

    def __init__(self, node: Any, params: NodeParameters) -> None:
        self._node = node
        self.config = params.output_config()
        qos = output_qos(params)

        def pub(enabled: bool, msg_type: Any, topic: str) -> Any:
            return node.create_publisher(msg_type, topic, qos) if enabled else None

        cams = params.camera_names
        self._labels = {c: pub(params.publish_label_images, Image, f"~/{c}/labels") for c in cams}
        self._overlays = {c: pub(params.publish_overlays, Image, f"~/{c}/overlay") for c in cams}
        self._cloud = pub(params.publish_cloud, PointCloud2, "~/points_labeled")
        self._objects = pub(params.publish_objects, TrackedObjects, "~/objects")
        self._markers = pub(params.publish_markers, MarkerArray, "~/markers")
        debug = params.publish_debug
        self._processing = pub(debug, Float64, "~/debug/processing_time_ms")
        self._latency = pub(debug, Float64, "~/debug/pipeline_latency_ms")
        self._stages = pub(debug, DiagnosticArray, STAGE_TIMES_TOPIC)

    def publish(
        self, result: Any, built: BuiltFrame, t0: float | None
    ) -> tuple[dict[str, int], float | None, float]:
        """Publish what is subscribed of a tracker step's ``result`` on ``built``. t0: start of
        the sweep's processing (None for a republication after prompts: no timing is published).
        Returns (messages per topic, processing time or None, pipeline latency), both in ms.
        Raises OutputError."""
        counts: dict[str, int] = {}

        def send(pub: Any, make: Callable[[], Any]) -> None:
            # Nothing is computed for an output nobody subscribes to.
            if pub is not None and pub.get_subscription_count() > 0:
                pub.publish(make())
                counts[pub.topic_name] = counts.get(pub.topic_name, 0) + 1

        out = StepOutputs(result, built, self.config)
        for cam in out.cameras:
            send(self._labels.get(cam), lambda c=cam: out.label_image_msg(c))
            send(self._overlays.get(cam), lambda c=cam: out.overlay_msg(c))
        send(self._cloud, out.labeled_cloud_msg)
        send(self._objects, out.tracked_objects_msg)
        send(self._markers, out.marker_array_msg)
        latency_ms = (self._node.get_clock().now().nanoseconds - built.stamp_ns) / 1e6
        processing_ms = None if t0 is None else (time.perf_counter() - t0) * 1e3
        if processing_ms is not None:
            send(self._processing, lambda: Float64(data=processing_ms))
            send(self._latency, lambda: Float64(data=latency_ms))
            timings = getattr(result, "timings_ms", None) or {}
            name = self._node.get_name()
            send(self._stages, lambda: stage_times_msg(built.stamp_ns, timings, name))
        return counts, processing_ms, latency_ms
