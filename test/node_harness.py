"""Test helpers for ``sam4d_node`` (test_node_*.py): a tiny random-weight checkpoint, the bundled
recording as rclpy messages per sweep, a test-side node that feeds sweeps to the node under test
in lockstep and collects its outputs, and an in-process reference (the same FrameBuilder and
StreamingTracker configuration as the node) to compare outputs with.

Lockstep: each sweep's TF, CameraInfo and images are published before its cloud, and the next
sweep only after the node's outputs for this one have arrived, so the node processes every sweep
(nothing is superseded) and prompts land between known steps: the in-process reference given the
same frames and prompts in the same order must produce the same masks (deterministic on CPU with
one torch thread on both sides).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from conftest import REPO_ROOT, ROS_PROCESSES, RosProcess
from sam4d_ros.parameters import read_params_file, write_params_file
from sam4d_ros.tools.processes import interrupt

BAG = REPO_ROOT / "test" / "data" / "synthetic_drive"
CONFIG_YAML = REPO_ROOT / "config" / "sam4d.yaml"
CAMERAS = ("front", "front_left")
LIDAR_TOPIC = "/sensors/lidar/points"
NODE = "/sam4d_node"
_NS = 1_000_000_000


# ------------------------------------------------------------------------------ model


def make_tiny_checkpoint(path: Path) -> Path:
    """A real checkpoint of our format: sam4d_tiny with random weights (seed 0) and non-trivial
    BatchNorm statistics."""
    import torch

    from sam4d_core.build_sam import build_sam4d
    from sam4d_core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = build_sam4d("sam4d_tiny")
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return save_checkpoint(model, path)


class NodeProcess(RosProcess):
    """``sam4d_node`` in a child process (test/ros_processes/sam4d_node_process.py), its output
    drained by a thread (a full pipe would block the node's logging) and kept in ``lines``."""

    def __init__(self, *args: str, env: Mapping[str, str] | None = None) -> None:
        import threading

        saved = dict(os.environ)
        os.environ.update(env or {})
        try:
            super().__init__("sam4d_node_process.py", *args)
        finally:
            os.environ.clear()
            os.environ.update(saved)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self, timeout_s: float = 10.0) -> str:
        """SIGINT (as Ctrl-C), wait, return everything the node printed."""
        interrupt(self.proc, timeout_s)
        self._reader.join(5.0)
        return self.output


# Fast DDS repairs a lost sample of a reliable writer at its next heartbeat, 3 s by default. The
# messages here are large (a 480x288 rgb8 overlay is 415 kB, a sweep 300 kB) and a burst of them
# can overflow the shared-memory segment or a socket buffer: in lockstep that is a 3 s stall, and a
# sweep whose images come that late goes on without them. A 50 ms heartbeat makes repairs quick
# and changes nothing else. Fast DDS reads the file when a process creates its first participant,
# so it is set when this module is imported (at collection, before any test runs); a profile
# file chosen by the user wins.
FAST_REPAIR_XML = ROS_PROCESSES / "fastdds_fast_repair.xml"
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(FAST_REPAIR_XML))


# ------------------------------------------------------------------------------ parameters


def base_parameters() -> dict[str, Any]:
    """config/sam4d.yaml as a flat {name: value} dict."""
    return read_params_file(CONFIG_YAML)


def make_parameters(checkpoint: Path, **changes: Any) -> dict[str, Any]:
    """The parameters the tests run the node with: the bundled recording's config, the tiny
    checkpoint on the CPU, reliable sensor QoS (lockstep must not lose a sweep), a generous sync
    wait (topics may be delivered out of order) and every object drawn (random weights give low
    presence scores)."""
    values = base_parameters()
    values.update(
        {
            "model.checkpoint": str(checkpoint),
            "model.device": "cpu",
            # One thread, here and in the reference: results equal bit for bit, and two shared
            # cores are not oversubscribed.
            "model.num_threads": 1,
            "qos.sensor_reliability": "reliable",
            "sync.max_wait_s": 0.3,
            # At least twice the wait (a parameter rule); the tests' time jumps are far larger.
            "sync.time_jump_threshold_s": 0.6,
            "tracker.presence_threshold": 0.0,
            "diagnostics.period_s": 0.2,
        }
    )
    values.update(changes)
    return values


def node_parameters(values: Mapping[str, Any]) -> Any:
    from sam4d_ros.parameters import validate_parameters

    return validate_parameters(values, cuda_device_count=lambda: 0)


# ------------------------------------------------------------------------------ recording


@dataclass
class SweepMessages:
    """One sweep of the recording as rclpy messages (images share the sweep's stamp)."""

    stamp_ns: int
    cloud: Any
    images: dict[str, Any] = field(default_factory=dict)
    infos: dict[str, Any] = field(default_factory=dict)
    tf: list[Any] = field(default_factory=list)

    def shifted(self, offset_ns: int) -> SweepMessages:
        """The same sweep with every stamp moved by ``offset_ns`` (messages are not shared)."""
        return SweepMessages(
            self.stamp_ns + offset_ns,
            _restamp(self.cloud, offset_ns),
            {c: _restamp(m, offset_ns) for c, m in self.images.items()},
            {c: _restamp(m, offset_ns) for c, m in self.infos.items()},
            [_restamp_tf(m, offset_ns) for m in self.tf],
        )


def _header(header: Any, offset_ns: int) -> Any:
    from sam4d_ros.conversions.stamps import make_header, stamp_to_ns

    return make_header(stamp_to_ns(header.stamp) + offset_ns, header.frame_id)


def _restamp(msg: Any, offset_ns: int) -> Any:
    out = copy.copy(msg)  # shares the (read-only) data, not the header
    out.header = _header(msg.header, offset_ns)
    return out


def _restamp_tf(msg: Any, offset_ns: int) -> Any:
    from tf2_msgs.msg import TFMessage

    return TFMessage(transforms=[_restamp(ts, offset_ns) for ts in msg.transforms])


@dataclass
class Recording:
    static_tf: Any
    sweeps: list[SweepMessages]


_RECORDING_CACHE: dict[int, Recording] = {}


def load_recording(num_sweeps: int = 12) -> Recording:
    """The first ``num_sweeps`` sweeps of the bundled recording (cached per process)."""
    hit = _RECORDING_CACHE.get(num_sweeps)
    if hit is not None:
        return hit
    from rclpy.serialization import deserialize_message

    from sam4d_core.data.sequence_bag import open_bag
    from sam4d_ros.conversions.stamps import stamp_to_ns
    from sam4d_ros.tools.bag_interop import message_class

    topics = {LIDAR_TOPIC: "cloud", "/tf": "tf", "/tf_static": "static"}
    for cam in CAMERAS:
        topics[f"/sensors/camera/{cam}/image_raw/compressed"] = f"image:{cam}"
        topics[f"/sensors/camera/{cam}/camera_info"] = f"info:{cam}"
    reader = open_bag(BAG)
    by_stamp: dict[int, SweepMessages] = {}
    pending: dict[int, list[tuple[str, Any]]] = defaultdict(list)
    static = None
    try:
        conns = [c for c in reader.connections if c.topic in topics]
        for conn, _t, raw in reader.messages(connections=conns):
            what = topics[conn.topic]
            msg = deserialize_message(bytes(raw), message_class(conn.msgtype))
            if what == "static":
                static = msg
                continue
            stamp = (
                stamp_to_ns(msg.transforms[0].header.stamp)
                if what == "tf"
                else stamp_to_ns(msg.header.stamp)
            )
            pending[stamp].append((what, msg))
            if what == "cloud":
                by_stamp[stamp] = SweepMessages(stamp, msg)
            if len(by_stamp) > num_sweeps:
                break
    finally:
        reader.close()
    sweeps = []
    for stamp in sorted(by_stamp)[:num_sweeps]:
        sweep = by_stamp[stamp]
        for what, msg in pending[stamp]:
            if what == "tf":
                sweep.tf.append(msg)
            elif what.startswith("image:"):
                sweep.images[what[6:]] = msg
            elif what.startswith("info:"):
                sweep.infos[what[5:]] = msg
        sweeps.append(sweep)
    assert static is not None and len(sweeps) == num_sweeps
    rec = Recording(static, sweeps)
    _RECORDING_CACHE[num_sweeps] = rec
    return rec


def transform_stamped(parent: str, child: str, matrix: np.ndarray, stamp_ns: int = 0) -> Any:
    from sam4d_ros.conversions.transform import matrix_to_transform_stamped

    return matrix_to_transform_stamped(matrix, parent, child, stamp_ns)


def yaw_transform(yaw: float, translation: Iterable[float]) -> np.ndarray:
    m = np.eye(4)
    c, s = math.cos(yaw), math.sin(yaw)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:3, 3] = list(translation)
    return m


# ------------------------------------------------------------------------------ test-side node


class Harness:
    """A node in the test process: publishes sensor data, subscribes to the node's outputs,
    calls its services. ``spin_until`` spins it; outputs are kept per topic in arrival order."""

    def __init__(
        self,
        context: Any,
        cameras: Iterable[str] = CAMERAS,
        outputs: Iterable[str] | None = None,
        extra_static: Iterable[Any] = (),
    ) -> None:
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import Point, PointStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
        from std_msgs.msg import Float64
        from std_srvs.srv import Trigger
        from tf2_msgs.msg import TFMessage
        from visualization_msgs.msg import MarkerArray

        from sam4d_ros.msg import Prompt, TrackedObjects
        from sam4d_ros.srv import AddPrompts, RemoveObject

        self.node = Node("sam4d_test_harness", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.cameras = tuple(cameras)
        n = self.node
        reliable = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        static_qos = QoSProfile(
            depth=10,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.TRANSIENT_LOCAL,
        )
        self.pub_cloud = n.create_publisher(PointCloud2, LIDAR_TOPIC, reliable)
        self.pub_tf = n.create_publisher(TFMessage, "/tf", QoSProfile(depth=100))
        self.pub_static = n.create_publisher(TFMessage, "/tf_static", static_qos)
        self.pub_image = {
            c: n.create_publisher(
                CompressedImage, f"/sensors/camera/{c}/image_raw/compressed", reliable
            )
            for c in self.cameras
        }
        self.pub_info = {
            c: n.create_publisher(CameraInfo, f"/sensors/camera/{c}/camera_info", reliable)
            for c in self.cameras
        }
        self.pub_prompt = n.create_publisher(Prompt, f"{NODE}/prompts", reliable)
        self.pub_clicked = n.create_publisher(PointStamped, "/clicked_point", reliable)
        self.pub_click = {
            c: n.create_publisher(Point, f"/sensors/camera/{c}/image_raw_mouse_left", reliable)
            for c in self.cameras
        }
        # Deep response queues: a burst of answers must not overwrite unread ones.
        deep = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.add_client = n.create_client(AddPrompts, f"{NODE}/add_prompts", qos_profile=deep)
        self.remove_client = n.create_client(
            RemoveObject, f"{NODE}/remove_object", qos_profile=deep
        )
        self.reset_client = n.create_client(Trigger, f"{NODE}/reset", qos_profile=deep)

        types = {
            f"{NODE}/objects": TrackedObjects,
            f"{NODE}/points_labeled": PointCloud2,
            f"{NODE}/markers": MarkerArray,
            f"{NODE}/debug/processing_time_ms": Float64,
            f"{NODE}/debug/pipeline_latency_ms": Float64,
        }
        for c in CAMERAS:
            types[f"{NODE}/{c}/labels"] = Image
            types[f"{NODE}/{c}/overlay"] = Image
        wanted = list(types) if outputs is None else [f"{NODE}/{o}" for o in outputs]
        self.received: dict[str, list[Any]] = defaultdict(list)
        self.output_topics = wanted
        for topic in wanted:
            n.create_subscription(
                types[topic], topic, lambda m, t=topic: self.received[t].append(m), reliable
            )
        self.diagnostics: list[Any] = []
        n.create_subscription(DiagnosticArray, "/diagnostics", self.diagnostics.append, 10)
        self._static_extra = list(extra_static)
        self._TF = TFMessage

    # -- spinning

    def spin_until(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        from conftest import spin_until

        return spin_until(self.executor, predicate, timeout_s)

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def wait_connected(self, timeout_s: float = 30.0) -> None:
        """Until the node under test is up: services available, our publishers and its
        publishers matched both ways."""
        deadline = time.monotonic() + timeout_s
        for client in (self.add_client, self.remove_client, self.reset_client):
            while not client.wait_for_service(timeout_sec=0.2):
                self.spin_for(0.05)
                assert time.monotonic() < deadline, f"{client.srv_name} not available"
        pubs = [self.pub_cloud, self.pub_tf, self.pub_prompt, self.pub_clicked]
        pubs += [*self.pub_image.values(), *self.pub_info.values(), *self.pub_click.values()]
        ok = self.spin_until(
            lambda: (
                all(p.get_subscription_count() > 0 for p in pubs)
                and all(self.node.count_publishers(t) > 0 for t in self.output_topics)
            ),
            max(0.0, deadline - time.monotonic()),
        )
        assert ok, "the node's subscriptions / publishers were not discovered"
        # Our subscriptions must be known on the node's side too before it skips an output.
        self.spin_until(
            lambda: all(self.node.count_subscribers(t) > 0 for t in self.output_topics), 5.0
        )
        self.spin_for(0.5)

    # -- sensors

    def publish_static(self, static_tf: Any) -> None:
        transforms = list(static_tf.transforms) + self._static_extra
        self.pub_static.publish(self._TF(transforms=transforms))

    def publish_sweep(
        self,
        sweep: SweepMessages,
        cameras: Iterable[str] | None = None,
        tf: bool = True,
        cloud: Any = None,
        images: Mapping[str, Any] | None = None,
    ) -> None:
        """TF, CameraInfo and images first, the cloud last (overrides replace messages)."""
        if tf:
            for m in sweep.tf:
                self.pub_tf.publish(m)
        for cam in self.cameras if cameras is None else cameras:
            self.pub_info[cam].publish(sweep.infos[cam])
            self.pub_image[cam].publish((images or {}).get(cam, sweep.images[cam]))
        if cloud is not False:  # False: no cloud at all
            self.pub_cloud.publish(sweep.cloud if cloud is None else cloud)

    def outputs_at(self, topic: str, stamp_ns: int) -> list[Any]:
        from sam4d_ros.conversions.stamps import stamp_to_ns

        key = topic if topic.startswith("/") else f"{NODE}/{topic}"
        return [m for m in self.received[key] if stamp_to_ns(m.header.stamp) == stamp_ns]

    def latest_objects(self, stamp_ns: int) -> Any | None:
        got = self.outputs_at("objects", stamp_ns)
        return got[-1] if got else None

    def feed(
        self,
        sweep: SweepMessages,
        timeout_s: float = 20.0,
        expect_cameras: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Publish a sweep (``publish_sweep`` arguments) and wait for the node's outputs for it:
        every subscribed output with a header, camera outputs for ``expect_cameras`` (default:
        the cameras published without an override). Returns the TrackedObjects message."""
        if expect_cameras is None:
            sent = kwargs.get("cameras") or self.cameras
            expect_cameras = [c for c in sent if c not in (kwargs.get("images") or {})]
        expected = []
        for t in self._stamped_topics():
            cam = next((c for c in CAMERAS if t.startswith(f"{NODE}/{c}/")), None)
            if cam is None or cam in expect_cameras:
                expected.append(t)
        before = {t: len(self.outputs_at(t, sweep.stamp_ns)) for t in expected}
        self.publish_sweep(sweep, **kwargs)
        ok = self.spin_until(
            lambda: all(len(self.outputs_at(t, sweep.stamp_ns)) > before[t] for t in expected),
            timeout_s,
        )
        assert ok, f"no outputs for the sweep at {sweep.stamp_ns} ns:\n{self.describe()}"
        return self.latest_objects(sweep.stamp_ns)

    def _stamped_topics(self) -> list[str]:
        return [t for t in self.output_topics if "/debug/" not in t]

    # -- prompts

    def call(self, client: Any, request: Any, timeout_s: float = 30.0) -> Any:
        future = client.call_async(request)
        ok = self.spin_until(future.done, timeout_s)
        assert ok, f"no answer from {client.srv_name}"
        return future.result()

    def add_prompts(self, prompts: list[Any], clear: bool = False) -> Any:
        from sam4d_ros.srv import AddPrompts

        return self.call(
            self.add_client, AddPrompts.Request(prompts=prompts, clear_previous_prompts=clear)
        )

    def remove(self, ids: list[int]) -> Any:
        from sam4d_ros.srv import RemoveObject

        return self.call(self.remove_client, RemoveObject.Request(object_ids=ids))

    def reset(self) -> Any:
        from std_srvs.srv import Trigger

        return self.call(self.reset_client, Trigger.Request())

    # -- diagnostics

    def status(self, name: str) -> Any | None:
        """The newest DiagnosticStatus whose name ends with ``name``."""
        for arr in reversed(self.diagnostics):
            for s in arr.status:
                if s.name.endswith(name):
                    return s
        return None

    def wait_status(
        self, name: str, predicate: Callable[[Any], bool], timeout_s: float = 10.0
    ) -> Any:
        seen: list[Any] = []

        def check() -> bool:
            s = self.status(name)
            if s is not None and (not seen or seen[-1] is not s):
                seen.append(s)
            return s is not None and predicate(s)

        ok = self.spin_until(check, timeout_s)
        last = seen[-1] if seen else None
        assert ok, f"status '{name}' never matched; last: {describe_status(last)}"
        return self.status(name)

    def describe(self) -> str:
        lines = [f"{t}: {len(v)} message(s)" for t, v in sorted(self.received.items())]
        if self.diagnostics:
            lines += [describe_status(s) for s in self.diagnostics[-1].status]
        return "\n".join(lines)

    def destroy(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def level(status: Any) -> int:
    lv = status.level
    return lv[0] if isinstance(lv, (bytes, bytearray)) else int(lv)


def values(status: Any) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def describe_status(status: Any) -> str:
    if status is None:
        return "(none)"
    return f"[{level(status)}] {status.name}: {status.message} {values(status)}"


# ------------------------------------------------------------------------------ messages


def lidar_prompt(
    points: np.ndarray,
    labels: Iterable[int] | None = None,
    frame_id: str = "",
    stamp_ns: int = 0,
    object_id: int = 0,
    box: Iterable[float] | None = None,
) -> Any:
    from geometry_msgs.msg import Point

    from sam4d_ros.conversions.stamps import make_header
    from sam4d_ros.msg import Prompt

    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    msg = Prompt()
    msg.header = make_header(stamp_ns, frame_id)
    msg.object_id = object_id
    msg.modality = Prompt.LIDAR
    msg.points = [Point(x=float(p[0]), y=float(p[1]), z=float(p[2])) for p in pts]
    msg.labels = [int(v) for v in (labels if labels is not None else [1] * len(pts))]
    if box is not None:
        msg.has_box = True
        msg.box = [float(v) for v in box]
    return msg


def image_prompt(
    camera: str,
    pixels: np.ndarray,
    labels: Iterable[int] | None = None,
    stamp_ns: int = 0,
    object_id: int = 0,
) -> Any:
    from geometry_msgs.msg import Point

    from sam4d_ros.conversions.stamps import make_header
    from sam4d_ros.msg import Prompt

    px = np.asarray(pixels, dtype=np.float64).reshape(-1, 2)
    msg = Prompt()
    msg.header = make_header(stamp_ns, "")
    msg.object_id = object_id
    msg.modality = Prompt.IMAGE
    msg.camera_name = camera
    msg.points = [Point(x=float(p[0]), y=float(p[1]), z=0.0) for p in px]
    msg.labels = [int(v) for v in (labels if labels is not None else [1] * len(px))]
    return msg


def cloud_fields(msg: Any) -> dict[str, np.ndarray]:
    from sam4d_ros.conversions.pointcloud2 import pointcloud2_to_array

    arr = pointcloud2_to_array(msg).reshape(-1)
    return {name: arr[name] for name in arr.dtype.names}


def image_array(msg: Any) -> np.ndarray:
    from sam4d_ros.conversions.image import image_to_array

    return image_to_array(msg)


# ------------------------------------------------------------------------------ reference


class Reference:
    """The node's pipeline in this process, without DDS: FrameBuilder + StreamingTracker with the
    node's configuration (``sam4d_ros.node.tracker_config``) and the same checkpoint."""

    def __init__(self, values: Mapping[str, Any], static_tf: Any, extra_static: Iterable = ()):
        import torch

        from sam4d_core.geometry.tf_buffer import TfBuffer
        from sam4d_core.tracking.streaming_tracker import StreamingTracker
        from sam4d_ros.frame_builder import FrameBuilder
        from sam4d_ros.node import load_model, tracker_config

        torch.set_num_threads(1)
        self.params = node_parameters(values)
        model = load_model(self.params)
        self.tracker = StreamingTracker(model, tracker_config(self.params, model))
        self.tf = TfBuffer(cache_time_s=None)
        self.tf.add_message(static_tf, static=True)
        for ts in extra_static:
            self.tf.add_transform_stamped(ts, static=True)
        self.builder = FrameBuilder(self.params.frame_builder_config(), self.tf)
        self.output_config = self.params.output_config()
        self.built: Any = None
        self.result: Any = None

    def step(self, sweep: SweepMessages, cameras: Iterable[str] | None = None) -> Any:
        for m in sweep.tf:
            self.tf.add_message(m)
        cams = CAMERAS if cameras is None else tuple(cameras)
        images = {c: (sweep.images[c], sweep.infos[c]) for c in cams}
        self.built = self.builder.build_from(sweep.cloud, images, sweep.stamp_ns)
        self.result = self.tracker.step(self.built.frame)
        return self.result

    def add_prompts(self, prompts: list[Any]) -> Any:
        result = self.tracker.add_prompts(prompts)
        if result is not None:
            self.result = result
        return result

    def outputs(self) -> Any:
        from sam4d_ros.outputs import StepOutputs

        return StepOutputs(self.result, self.built, self.output_config)

    def lidar_from(self, frame: str, stamp_ns: int) -> np.ndarray:
        return self.tf.lookup(self.built.lidar_frame, frame, stamp_ns)


def assert_outputs_match(
    h: Harness,
    ref: Reference,
    stamp_ns: int,
    image_stamps: Mapping[str, int],
    min_equal: float = 0.999,
) -> None:
    """The node's newest outputs at ``stamp_ns`` equal the reference's current result: object ids
    and scores, mono16 label images per camera and the cloud's label / score fields."""
    out = ref.outputs()
    objs = h.latest_objects(stamp_ns)
    assert objs is not None
    expected = {o.object_id: o for o in ref.result.objects}
    got = {o.id: o for o in objs.objects}
    assert sorted(got) == sorted(expected), (sorted(got), sorted(expected))
    for oid, o in expected.items():
        assert got[oid].presence_score == pytest_approx(o.presence_score)
        assert got[oid].predicted_iou == pytest_approx(o.predicted_iou)
        assert got[oid].lost == o.lost
    for cam in out.cameras:
        labels = h.outputs_at(f"{cam}/labels", image_stamps[cam])
        if f"{NODE}/{cam}/labels" not in h.output_topics:
            continue
        assert labels, f"no label image of {cam} at {image_stamps[cam]}"
        got_img = image_array(labels[-1])
        want = out.label_image(cam)
        assert got_img.shape == want.shape and labels[-1].encoding == "mono16"
        assert (got_img == want).mean() >= min_equal, (cam, (got_img == want).mean())
        # And the label image is the tracker's masks composed (independently of StepOutputs).
        for oid, o in expected.items():
            mask = o.image_masks.get(cam)
            if mask is not None and len(expected) == 1:
                assert ((got_img == oid) == mask).mean() >= min_equal
    clouds = h.outputs_at("points_labeled", stamp_ns)
    if clouds:
        fields = cloud_fields(clouds[-1])
        want_labels, want_scores = out.cloud_labels()
        assert (fields["label"] == want_labels).mean() >= min_equal
        np.testing.assert_allclose(fields["score"], want_scores, atol=1e-3)


def pytest_approx(value: float, abs_tol: float = 1e-4) -> Any:
    import pytest

    return pytest.approx(value, abs=abs_tol)


# ------------------------------------------------------------------------------ node + harness


def start_node(
    tmp: Path, params: Mapping[str, Any], outputs: list[str], *args: str
) -> tuple[NodeProcess, Any, Harness]:
    """sam4d_node in a child process with ``params`` (a parameter file in ``tmp``; ``args``
    before ``--ros-args``), a fresh rclpy context and a Harness subscribed to ``outputs``, once
    the node is up."""
    import rclpy
    from rclpy.context import Context

    params_file = write_params_file(Path(tmp) / "params.yaml", params)
    proc = NodeProcess(*args, "--ros-args", "--params-file", str(params_file))
    context = Context()
    rclpy.init(context=context)
    h = Harness(context, outputs=outputs)
    try:
        h.wait_connected(timeout_s=60.0)
    except AssertionError:
        print(proc.stop())
        h.destroy()
        rclpy.try_shutdown(context=context)
        raise
    return proc, context, h


def stop_node(proc: NodeProcess, context: Any, h: Harness) -> str:
    """Stop everything ``start_node`` started; prints the node's output (pytest shows it when a
    test failed) and returns it."""
    import rclpy

    h.destroy()
    out = proc.stop()
    print("---- sam4d_node output (tail) ----\n" + out[-8000:])
    rclpy.try_shutdown(context=context)
    return out
