"""The node under demo: its parameters, its process (:class:`NodeProcess`), the demo's own
ROS node beside it (:class:`DemoSession`: prompts service, outputs seen, diagnostics) and the
prompt messages sent to it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam4d_ros.tools.demo.bag_info import STAMP_MATCH_NS, BagInfo
from sam4d_ros.tools.demo.errors import DemoError
from sam4d_ros.tools.demo.prompts import ScheduledPrompt
from sam4d_ros.tools.processes import interrupt
from sam4d_ros.tools.spinner import NodeSpinner

__all__ = [
    "NODE",
    "NODE_NAME",
    "DemoSession",
    "NodeProcess",
    "node_parameters",
    "prompt_message",
]


NODE_NAME = "sam4d_node"
NODE = f"/{NODE_NAME}"


def node_parameters(info: BagInfo, args: argparse.Namespace) -> dict[str, Any]:
    """The node's parameters for this bag (flat dotted names); ``--params-file`` wins over them."""
    values: dict[str, Any] = {
        "use_sim_time": True,
        "lidar_topic": info.lidar_topic,
        "fixed_frame": info.fixed_frame,
        "model.checkpoint": str(args.checkpoint) if args.checkpoint else "",
        "model.device": args.device,
        "model.num_threads": int(args.threads),
        "model.runtime": getattr(args, "runtime", "torch"),
        "model.onnx_dir": str(getattr(args, "onnx_dir", None) or ""),
        # The player publishes reliably over loopback: a reliable subscription loses no sweep.
        "qos.sensor_reliability": "reliable",
        # Outputs kept for a lost fragment's repair until the recorder has them (large images).
        "qos.output_depth": 10,
        "diagnostics.period_s": 0.5,
    }
    if info.cameras:
        values["cameras"] = list(info.cameras)
    for c in info.cameras.values():
        values[f"camera.{c.name}.image_topic"] = c.image_topic
        values[f"camera.{c.name}.camera_info_topic"] = c.info_topic
        values[f"camera.{c.name}.compressed"] = c.compressed
    return values


class NodeProcess:
    """``sam4d_node`` in a child process (``python -m sam4d_ros.node``), its log in a file."""

    def __init__(self, params_files: Sequence[Path], log_path: Path) -> None:
        import sam4d_ros

        args = [sys.executable, "-m", "sam4d_ros.node", "--ros-args"]
        for f in params_files:
            args += ["--params-file", str(f)]
        env = dict(os.environ)
        # The child imports the same sam4d_ros as this process (a checkout or an install).
        pkg_root = str(Path(next(iter(sam4d_ros.__path__))).parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pkg_root, env.get("PYTHONPATH", "")) if p)
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, text=True
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout_s: float = 20.0) -> int:
        """SIGINT (as Ctrl-C), wait, kill if it does not stop; returns the exit status."""
        code = interrupt(self.proc, timeout_s)
        self._log.close()
        return code


class DemoSession:
    """The demo's own node: the AddPrompts client, the stamps of the node's outputs and its newest
    diagnostics, spun by a thread of its own."""

    def __init__(self, context: Any, info: BagInfo) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.node import Node
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, PointCloud2

        from sam4d_ros.msg import TrackedObjects
        from sam4d_ros.srv import AddPrompts

        self.node = Node("sam4d_demo", context=context)
        self.add_client = self.node.create_client(AddPrompts, f"{NODE}/add_prompts")
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE
        )
        self._lock = threading.Lock()
        self.output_stamps: list[int] = []
        self.last_output_wall: float | None = None
        self.diagnostics: Any = None
        self.diagnostics_wall: float | None = None
        self.node.create_subscription(TrackedObjects, f"{NODE}/objects", self._on_objects, qos)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        # What the player has sent so far (the node receives the same): newest stamp per input.
        self.input_stamps: dict[str, int] = {}
        self.node.create_subscription(
            PointCloud2, info.lidar_topic, self._input_callback("lidar"), qos, raw=True
        )
        self._info_pubs: dict[str, Any] = {}
        for c in info.cameras.values():
            self.node.create_subscription(
                CameraInfo, c.info_topic, self._input_callback(c.name), qos, raw=True
            )
            self._info_pubs[c.name] = self.node.create_publisher(CameraInfo, c.info_topic, qos)
        self._spinner = NodeSpinner(self.node, context, "demo_spin")

    def _input_callback(self, key: str) -> Any:
        from sam4d_ros.tools.bag_interop import header_stamp_ns

        def on_input(raw: bytes) -> None:
            ns = header_stamp_ns(raw)
            if ns is not None:
                with self._lock:
                    self.input_stamps[key] = max(ns, self.input_stamps.get(key, ns))

        return on_input

    def input_seen(self, key: str, stamp_ns: int) -> bool:
        """Whether the player has sent ``key``'s (``lidar`` or a camera) message of that stamp."""
        with self._lock:
            return self.input_stamps.get(key, -1) >= stamp_ns - STAMP_MATCH_NS

    def prime_camera_info(self, info: BagInfo, timeout_s: float = 10.0) -> None:
        """Once the node has subscribed to its inputs, publish each camera's first CameraInfo
        once, as a camera driver does before its first image: in the bag it follows its image,
        and the node would build the first sweep without that camera."""
        deadline = time.monotonic() + timeout_s
        # The node's subscriptions (and our own on the LiDAR and CameraInfo topics) exist: the
        # player, which waits for one subscriber per topic, must not start on ours alone.
        for topic in info.sensor_topics:
            ours = 0 if topic in {c.subscribed_topic for c in info.cameras.values()} else 1
            while self.node.count_subscribers(topic) < 1 + ours and time.monotonic() < deadline:
                time.sleep(0.02)
        for c in info.cameras.values():
            pub = self._info_pubs[c.name]
            while pub.get_subscription_count() < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
            if c.first_info is not None:
                pub.publish(c.first_info)
        time.sleep(0.2)

    def _on_objects(self, msg: Any) -> None:
        from sam4d_ros.conversions.stamps import stamp_to_ns

        with self._lock:
            self.output_stamps.append(stamp_to_ns(msg.header.stamp))
            self.last_output_wall = time.monotonic()

    def _on_diagnostics(self, msg: Any) -> None:
        if any(s.name.endswith(": processing") for s in msg.status):
            with self._lock:
                self.diagnostics = msg
                self.diagnostics_wall = time.monotonic()

    def output_seen(self, stamp_ns: int) -> bool:
        """Whether the node has published outputs for that sweep or a later one."""
        newest = self.newest_output()
        return newest is not None and newest >= stamp_ns - STAMP_MATCH_NS

    def newest_output(self) -> int | None:
        with self._lock:
            return max(self.output_stamps) if self.output_stamps else None

    def processing_values(self) -> dict[str, str]:
        with self._lock:
            msg = self.diagnostics
        if msg is None:
            return {}
        for s in msg.status:
            if s.name.endswith(": processing"):
                return {kv.key: kv.value for kv in s.values}
        return {}

    def call_add_prompts(self, prompts: list[Any], timeout_s: float = 30.0) -> Any:
        from sam4d_ros.srv import AddPrompts

        future = self.add_client.call_async(AddPrompts.Request(prompts=prompts))
        deadline = time.monotonic() + timeout_s
        while not future.done():
            if time.monotonic() > deadline:
                raise DemoError(f"no answer from {NODE}/add_prompts in {timeout_s:g} s")
            time.sleep(0.01)
        return future.result()

    def close(self) -> None:
        self._spinner.close()


def prompt_message(p: ScheduledPrompt) -> Any:
    """The sam4d_ros/Prompt of one scheduled prompt: a new object, one foreground click."""
    from geometry_msgs.msg import Point

    from sam4d_ros.conversions.stamps import make_header
    from sam4d_ros.msg import Prompt

    msg = Prompt()
    msg.header = make_header(p.stamp_ns, "")
    msg.object_id = 0
    pt = p.spec.point
    if p.spec.modality == "image":
        msg.modality = Prompt.IMAGE
        msg.camera_name = str(p.spec.camera)
        msg.points = [Point(x=float(pt[0]), y=float(pt[1]), z=0.0)]
    else:
        msg.modality = Prompt.LIDAR
        msg.points = [Point(x=float(pt[0]), y=float(pt[1]), z=float(pt[2]))]
    msg.labels = [1]
    return msg
