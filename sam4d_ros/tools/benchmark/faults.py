"""Fault injection episodes (``--faults``): one pass of the bag per fault, the fault injected
40 % into it, measured against a pass without faults at the same rate.

Faults: malformed PointCloud2 (truncated data, no x field), malformed Image (raw cameras) and
CompressedImage (garbage bytes; a JPEG whose header claims 8000x8000), malformed CameraInfo (zero
and NaN intrinsics), a camera that stops (its images withheld for ``--tf-withheld`` s of bag
time), TF withheld as long, NaN transforms, time jumping back 0.5 s (the player restarted), and a
prompt storm (200 invalid prompts on ``~/prompts`` and 20 on ``~/add_prompts``).

Counted per episode: messages sent, node alive after it, seconds from the end of the fault to
the first output of a sweep played after it, diagnostics levels seen during the pass, and good
sweeps lost (sweeps of the bag without output beyond what the fault-free pass dropped).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["Episode", "episodes", "run_episode", "run_faults"]

_AT = 0.4  # fraction of the bag where the fault starts
_NS = 1_000_000_000


@dataclass
class Episode:
    """One fault: its name, its kind and how long it lasts in bag seconds (0: instantaneous)."""

    name: str
    kind: str
    duration_s: float = 0.0
    params: dict[str, Any] = field(default_factory=dict)


def episodes(args: argparse.Namespace) -> list[Episode]:
    """The fault episodes, in order."""
    w = float(args.tf_withheld)
    return [
        Episode("malformed PointCloud2", "cloud"),
        Episode("malformed Image / CompressedImage", "image"),
        Episode("CompressedImage header bomb (8000x8000)", "bomb"),
        Episode("malformed CameraInfo", "camera_info"),
        Episode(f"camera stops for {w:g} s", "camera_stop", w),
        Episode(f"TF withheld for {w:g} s", "tf_withheld", w),
        Episode("NaN transforms", "tf_nan"),
        Episode("time jumps back 0.5 s (player restart)", "time_jump"),
        Episode("prompt storm (200 topic + 20 service)", "prompt_storm"),
    ]


class _Injector:
    """Publishers of malformed messages on the node's input topics (the monitor's node)."""

    def __init__(self, session: Any) -> None:
        from diagnostic_msgs.msg import DiagnosticArray  # noqa: F401 - type support loaded
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2

        from sam4d_ros.msg import Prompt
        from sam4d_ros.tools.bag_interop import message_class
        from sam4d_ros.tools.demo.node_session import NODE

        info = session.info
        node = session.monitor.node
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.info = info
        self.node = node
        self.cloud = node.create_publisher(PointCloud2, info.lidar_topic, qos)
        self.images: dict[str, Any] = {}
        for c in info.cameras.values():
            typ = CompressedImage if c.compressed else Image
            self.images[c.name] = node.create_publisher(typ, c.subscribed_topic, qos)
        self.infos = {
            c.name: node.create_publisher(CameraInfo, c.info_topic, qos)
            for c in info.cameras.values()
        }
        self.tf = node.create_publisher(message_class("tf2_msgs/msg/TFMessage"), "/tf", qos)
        self.prompts = node.create_publisher(Prompt, f"{NODE}/prompts", qos)
        time.sleep(1.0)  # matched by the node

    def close(self) -> None:
        for p in [self.cloud, self.tf, self.prompts, *self.images.values(), *self.infos.values()]:
            self.node.destroy_publisher(p)

    def inject(self, kind: str, stamp_ns: int, session: Any) -> int:
        """Publish the malformed messages of ``kind`` stamped near ``stamp_ns``; returns how
        many were sent."""
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2, PointField

        from sam4d_ros.conversions.stamps import make_header

        info = self.info
        sent = 0
        if kind == "cloud":
            frame = info.lidar_frame
            for k, fields in enumerate((("x", "y", "z"), ("y", "z"))):
                msg = PointCloud2(header=make_header(stamp_ns + (k + 1) * 20_000_000, frame))
                msg.fields = [
                    PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                    for i, n in enumerate(fields)
                ]
                msg.point_step, msg.height, msg.width = 4 * len(fields), 1, 1000
                msg.row_step = msg.point_step * msg.width
                msg.data = bytes(100)  # far shorter than width * point_step
                self.cloud.publish(msg)
                sent += 1
        elif kind in ("image", "bomb"):
            for c in info.cameras.values():
                h = make_header(stamp_ns + 10_000_000, "")
                if c.compressed:
                    data = _jpeg_claiming(8000, 8000) if kind == "bomb" else b"\xff\xd8garbage"
                    self.images[c.name].publish(CompressedImage(header=h, format="jpeg", data=data))
                else:
                    self.images[c.name].publish(
                        Image(
                            header=h,
                            height=100,
                            width=100,
                            encoding="rgb8",
                            step=300,
                            data=bytes(10),
                        )
                    )
                sent += 1
        elif kind == "camera_info":
            for c in info.cameras.values():
                for bad in (0.0, math.nan):
                    msg = CameraInfo(
                        header=make_header(stamp_ns, ""), width=c.width, height=c.height
                    )
                    msg.k = [bad] * 9
                    self.infos[c.name].publish(msg)
                    sent += 1
        elif kind == "tf_nan":
            from geometry_msgs.msg import TransformStamped

            cls = self.tf.msg_type
            for k in range(3):
                tr = TransformStamped(
                    header=make_header(stamp_ns + k * 30_000_000, info.fixed_frame or "map")
                )
                tr.child_frame_id = info.lidar_frame
                tr.transform.rotation.w = math.nan
                tr.transform.translation.x = math.nan
                self.tf.publish(cls(transforms=[tr]))
                sent += 1
        elif kind == "prompt_storm":
            sent = self._storm(stamp_ns, session)
        return sent

    def _storm(self, stamp_ns: int, session: Any) -> int:
        from geometry_msgs.msg import Point

        from sam4d_ros.conversions.stamps import make_header
        from sam4d_ros.msg import Prompt
        from sam4d_ros.srv import AddPrompts

        def bad(k: int) -> Any:
            msg = Prompt(header=make_header(stamp_ns, ""), object_id=0)
            msg.modality = Prompt.IMAGE
            # An unknown camera, or a pixel far outside the image: refused with a reason.
            msg.camera_name = "no_such_camera" if k % 2 else next(iter(self.info.cameras), "x")
            msg.points = [Point(x=-1e6, y=-1e6, z=0.0)]
            msg.labels = [1]
            return msg

        for k in range(200):
            self.prompts.publish(bad(k))
        client = session.monitor.add_client
        futures = [client.call_async(AddPrompts.Request(prompts=[bad(k)])) for k in range(20)]
        deadline = time.monotonic() + 30.0
        while not all(f.done() for f in futures) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.storm_answers = [f.result() for f in futures if f.done()]
        return 220


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small valid JPEG whose SOF header says ``width`` x ``height`` (a decompression bomb
    for a decoder that trusts it)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))
    data = bytearray(buf.tobytes())
    i = 2
    while i < len(data) - 9:
        if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 7] = height.to_bytes(2, "big")
            data[i + 7 : i + 9] = width.to_bytes(2, "big")
            break
        i += 2 + int.from_bytes(data[i + 2 : i + 4], "big") if data[i] == 0xFF else 1
    return bytes(data)


def run_episode(
    session: Any,
    trial: Callable[..., Any],
    rate: float,
    ep: Episode,
    say: Callable[[str], None],
    baseline_dropped: int = 0,
) -> dict[str, Any]:
    """One pass of the bag at ``rate`` with ``ep`` injected; the episode's counts."""
    info = session.info
    stamps = info.sweep_stamps_ns
    t_fault = stamps[0] + int(_AT * (stamps[-1] - stamps[0]))
    t_end = t_fault + int(ep.duration_s * _NS)
    injector = _Injector(session)
    state: dict[str, Any] = {"sent": 0, "end_wall": None, "injected": set()}
    mon = session.monitor

    def wait_input(stamp: int, player: Any) -> bool:
        while not mon.input_seen("lidar", stamp):
            if not player.running:
                return False
            time.sleep(0.002)
        return True

    message_filter = None
    if ep.kind == "camera_stop" and info.cameras:
        cam = next(iter(info.cameras.values()))
        topic = cam.subscribed_topic

        def message_filter(out_topic: str, t: int) -> bool:
            return not (out_topic == topic and t_fault <= t < t_end)

        state["sent"] = sum(1 for s in stamps if t_fault <= s < t_end)
    elif ep.kind == "tf_withheld":

        def message_filter(out_topic: str, t: int) -> bool:
            return not (out_topic == "/tf" and t_fault <= t < t_end)

        state["sent"] = sum(1 for s in stamps if t_fault <= s < t_end)

    def during(player: Any, data: Any) -> None:
        if ep.kind in ("camera_stop", "tf_withheld"):
            if wait_input(t_end, player):
                state["end_wall"] = time.monotonic()
            return
        if not wait_input(t_fault, player):
            return
        if ep.kind == "time_jump":
            player.request_stop()
            while player.running:
                time.sleep(0.01)
            offset = (t_fault - stamps[0]) / _NS - 0.5
            second = session.make_player(
                rate, start_offset_s=max(0.0, offset), node_name="bag_player_restarted"
            )
            state["sent"] = 1
            state["end_wall"] = time.monotonic()
            state["jump_from"] = t_fault
            try:
                second.start()
                second.wait()
            finally:
                second.close()
            return
        state["sent"] = injector.inject(ep.kind, t_fault, session)
        state["end_wall"] = time.monotonic()

    try:
        t = trial(rate, "fault", during=during, message_filter=message_filter)
    finally:
        injector.close()
    # Recovery: first output of a sweep stamped after the fault's end, from the fault's end.
    recover = None
    end_wall = state["end_wall"]
    if end_wall is not None:
        after = (
            [
                w
                for s, w in zip(t.matched_stamps, t.out_wall_s, strict=True)
                if s > t_end and w >= end_wall - 5.0
            ]
            if ep.kind != "time_jump"
            else [w for w in t.out_wall_s if w >= end_wall]
        )
        if after:
            recover = max(0.0, min(after) - end_wall)
    # The injected clouds reach the monitor as sweeps too: not good sweeps.
    injected = state["sent"] if ep.kind == "cloud" else 0
    lost = max(0, t.sweeps_dropped - injected - baseline_dropped)
    result = {
        "fault": ep.name,
        "sent": state["sent"],
        "node_alive": bool(t.node_alive),
        "recover_s": recover,
        "good_sweeps_lost": lost,
        "sweeps_sent": t.sweeps_sent,
        "sweeps_processed": t.sweeps_processed,
        "levels_seen": _worst_levels(t.diagnostics_levels),
        "node_counters": t.node_counters,
    }
    if ep.kind == "prompt_storm":
        answers = getattr(injector, "storm_answers", [])
        result["service_answers"] = len(answers)
        result["service_refused_with_message"] = sum(
            1 for a in answers if not a.success and a.message
        )
        result["prompts_counters"] = mon.node_values(": prompts")
    say(
        f"[benchmark] fault '{ep.name}': sent {result['sent']}, alive {result['node_alive']}, "
        f"recovered after {recover if recover is None else round(recover, 2)} s, "
        f"lost {lost}"
    )
    return result


def _worst_levels(levels: dict[str, dict[str, int]]) -> dict[str, int]:
    """Level -> how many statuses were seen at that level (all streams together)."""
    out: dict[str, int] = {}
    for per in levels.values():
        for lv, n in per.items():
            out[lv] = out.get(lv, 0) + n
    return out


def run_faults(
    session: Any,
    trial: Callable[..., Any],
    rate: float,
    args: argparse.Namespace,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """A fault-free pass at ``rate`` (the baseline of drops), then every episode."""
    base = trial(rate, "fault baseline")
    out = []
    for ep in episodes(args):
        out.append(run_episode(session, trial, rate, ep, say, base.sweeps_dropped))
        if not out[-1]["node_alive"]:
            break
    return out
