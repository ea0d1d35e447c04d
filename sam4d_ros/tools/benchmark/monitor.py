"""The benchmark's monitor: a ROS node of its own (in the benchmark's process, not in the node
under test) that sees the sweeps go in and the node's outputs come out, and reads /diagnostics.

Per trial (:meth:`Monitor.begin_trial`) it fills a :class:`TrialData`: a
:class:`~sam4d_ros.tools.benchmark.stats.LatencyBook` (LiDAR stamps in, ``~/objects`` stamps
out), the node's own debug topics (processing time, pipeline latency, per-stage times when the
node publishes them), the diagnostics levels seen, and, when asked, the outputs per sweep for
scoring against the ground truth.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sam4d_ros.tools.benchmark.stats import LatencyBook
from sam4d_ros.tools.demo.bag_info import BagInfo
from sam4d_ros.tools.demo.node_session import NODE
from sam4d_ros.tools.spinner import NodeSpinner

__all__ = ["STAGE_TOPIC", "Monitor", "TrialData"]

STAGE_TOPIC = f"{NODE}/debug/stage_times_ms"
_LEVELS = {0: "OK", 1: "WARN", 2: "ERROR", 3: "STALE"}


@dataclass
class TrialData:
    """What the monitor saw during one trial (one playback)."""

    book: LatencyBook = field(default_factory=LatencyBook)
    processing_ms: list[float] = field(default_factory=list)
    pipeline_ms_bag_clock: list[float] = field(default_factory=list)
    stages_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # status name -> level name -> messages seen at that level
    levels: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    collect: bool = False
    frames: dict[int, Any] = field(default_factory=dict)  # stamp -> demo FrameOutputs
    output_messages: dict[str, int] = field(default_factory=lambda: defaultdict(int))


class Monitor:
    """Subscribes to the node's inputs and outputs and its /diagnostics; spun by its own thread.

    ``context``: the rclpy context. Outputs are subscribed with the QoS a viewer would use
    (reliable, depth 10): the node computes each output only while someone subscribes, so the
    benchmark measures the node doing all its work.
    """

    def __init__(self, context: Any, info: BagInfo) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2
        from std_msgs.msg import Float64
        from std_srvs.srv import Trigger
        from visualization_msgs.msg import MarkerArray

        from sam4d_ros.msg import TrackedObjects
        from sam4d_ros.srv import AddPrompts

        self.info = info
        self.node = Node("sam4d_benchmark_monitor", context=context)
        self.add_client = self.node.create_client(AddPrompts, f"{NODE}/add_prompts")
        self.reset_client = self.node.create_client(Trigger, f"{NODE}/reset")
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE
        )
        self._lock = threading.Lock()
        self.trial = TrialData()
        self.diagnostics_wall: float | None = None
        self.newest_values: dict[str, dict[str, str]] = {}  # status name -> key -> value
        self.last_output_wall: float | None = None
        self.input_stamps: dict[str, int] = {}
        n = self.node
        n.create_subscription(PointCloud2, info.lidar_topic, self._on_lidar, qos, raw=True)
        n.create_subscription(TrackedObjects, f"{NODE}/objects", self._on_objects, qos)
        n.create_subscription(PointCloud2, f"{NODE}/points_labeled", self._on_cloud, qos)
        n.create_subscription(MarkerArray, f"{NODE}/markers", self._count("markers"), qos, raw=True)
        for c in info.cameras:
            n.create_subscription(Image, f"{NODE}/{c}/labels", self._on_labels(c), qos)
            n.create_subscription(
                Image, f"{NODE}/{c}/overlay", self._count(f"{c}/overlay"), qos, raw=True
            )
        n.create_subscription(Float64, f"{NODE}/debug/processing_time_ms", self._on_processing, qos)
        n.create_subscription(Float64, f"{NODE}/debug/pipeline_latency_ms", self._on_pipeline, qos)
        n.create_subscription(DiagnosticArray, STAGE_TOPIC, self._on_stages, qos)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 50)
        self._info_pubs: dict[str, Any] = {}
        for c in info.cameras.values():
            n.create_subscription(
                CameraInfo, c.info_topic, self._input_callback(c.name), qos, raw=True
            )
            self._info_pubs[c.name] = n.create_publisher(CameraInfo, c.info_topic, qos)
        self._spinner = NodeSpinner(n, context, "bench_monitor")

    # -- spinning

    def close(self) -> None:
        self._spinner.close()

    # -- trials

    def begin_trial(self, collect: bool = False) -> TrialData:
        """Start a new trial's bookkeeping; returns its (live) data."""
        with self._lock:
            self.trial = TrialData(collect=collect)
            self.input_stamps = {}
            return self.trial

    # -- callbacks

    def _on_lidar(self, raw: bytes) -> None:
        from sam4d_ros.tools.bag_interop import header_stamp_ns

        now = time.monotonic()
        ns = header_stamp_ns(raw)
        if ns is None:
            return
        with self._lock:
            self.trial.book.stamp_in(ns, now)
            self.input_stamps["lidar"] = ns

    def _input_callback(self, key: str) -> Any:
        from sam4d_ros.tools.bag_interop import header_stamp_ns

        def on_input(raw: bytes) -> None:
            ns = header_stamp_ns(raw)
            if ns is not None:
                with self._lock:
                    self.input_stamps[key] = ns

        return on_input

    def input_seen(self, key: str, stamp_ns: int, tol_ns: int = 1_000_000) -> bool:
        """Whether this trial's newest ``key`` input (``lidar`` or a camera's CameraInfo) is at
        or after ``stamp_ns``."""
        with self._lock:
            return self.input_stamps.get(key, -1) >= stamp_ns - tol_ns

    def _count(self, name: str) -> Any:
        def on_msg(_raw: bytes) -> None:
            with self._lock:
                self.trial.output_messages[name] += 1

        return on_msg

    def _frame(self, stamp_ns: int) -> Any:
        from sam4d_ros.tools.demo.report import FrameOutputs

        fr = self.trial.frames.get(stamp_ns)
        if fr is None:
            fr = self.trial.frames[stamp_ns] = FrameOutputs(stamp_ns)
        return fr

    def _on_objects(self, msg: Any) -> None:
        from sam4d_ros.conversions.stamps import stamp_to_ns

        now = time.monotonic()
        ns = stamp_to_ns(msg.header.stamp)
        with self._lock:
            self.trial.book.stamp_out(ns, now)
            self.trial.output_messages["objects"] += 1
            self.last_output_wall = now
            if self.trial.collect:
                self._frame(ns).objects = msg

    def newest_output(self) -> int | None:
        """Newest output stamp of this trial (None before the first)."""
        with self._lock:
            s = self.trial.book.matched_stamps
            return max(s) if s else None

    def _on_cloud(self, msg: Any) -> None:
        import numpy as np

        from sam4d_ros.conversions.pointcloud2 import pointcloud2_to_array
        from sam4d_ros.conversions.stamps import stamp_to_ns

        with self._lock:
            self.trial.output_messages["points_labeled"] += 1
            collect = self.trial.collect
        if not collect:
            return
        arr = pointcloud2_to_array(msg).reshape(-1)
        labels = np.asarray(arr["label"], dtype=np.uint32)
        with self._lock:
            self._frame(stamp_to_ns(msg.header.stamp)).cloud_labels = labels

    def _on_labels(self, cam: str) -> Any:
        def on_msg(msg: Any) -> None:
            import numpy as np

            from sam4d_ros.conversions.image import image_to_array
            from sam4d_ros.conversions.stamps import stamp_to_ns

            with self._lock:
                self.trial.output_messages[f"{cam}/labels"] += 1
                collect = self.trial.collect
            if not collect:
                return
            img = np.array(image_to_array(msg), copy=True)
            with self._lock:
                self._frame(stamp_to_ns(msg.header.stamp)).labels[cam] = img

        return on_msg

    def _on_processing(self, msg: Any) -> None:
        with self._lock:
            self.trial.processing_ms.append(float(msg.data))

    def _on_pipeline(self, msg: Any) -> None:
        with self._lock:
            self.trial.pipeline_ms_bag_clock.append(float(msg.data))

    def _on_stages(self, msg: Any) -> None:
        with self._lock:
            for s in msg.status:
                for kv in s.values:
                    with contextlib.suppress(ValueError):
                        self.trial.stages_ms[kv.key].append(float(kv.value))

    def _on_diagnostics(self, msg: Any) -> None:
        now = time.monotonic()
        with self._lock:
            for s in msg.status:
                raw = s.level
                code = raw[0] if isinstance(raw, (bytes, bytearray)) else int(raw)
                lv = _LEVELS.get(code, str(code))
                d = self.trial.levels[s.name]
                d[lv] = d.get(lv, 0) + 1
                self.newest_values[s.name] = {kv.key: kv.value for kv in s.values}
            self.diagnostics_wall = now

    def node_values(self, suffix: str) -> dict[str, str]:
        """The newest key/values of the node's status whose name ends with ``suffix``."""
        with self._lock:
            for name, values in self.newest_values.items():
                if name.endswith(suffix):
                    return dict(values)
        return {}

    def wait_fresh_diagnostics(self, timeout_s: float = 3.0) -> None:
        """Until a /diagnostics message newer than now arrives (counters as of now)."""
        seen = self.diagnostics_wall or 0.0
        deadline = time.monotonic() + timeout_s
        while (self.diagnostics_wall or 0.0) <= seen and time.monotonic() < deadline:
            time.sleep(0.05)

    # -- services and priming

    def call(self, client: Any, request: Any, timeout_s: float = 30.0) -> Any:
        """A service call; None when no answer came in ``timeout_s``."""
        future = client.call_async(request)
        deadline = time.monotonic() + timeout_s
        while not future.done():
            if time.monotonic() > deadline:
                future.cancel()
                return None
            time.sleep(0.01)
        return future.result()

    def prime_camera_info(self, timeout_s: float = 10.0) -> None:
        """Publish each camera's first CameraInfo once (as a camera driver does before its first
        image: in the bag it follows the image)."""
        deadline = time.monotonic() + timeout_s
        for c in self.info.cameras.values():
            pub = self._info_pubs[c.name]
            while pub.get_subscription_count() < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            if c.first_info is not None:
                pub.publish(c.first_info)
        time.sleep(0.2)
