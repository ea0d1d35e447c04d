"""``sam4d_node``: SAM4D live on a vehicle (promptable camera + LiDAR segmentation and tracking).

    ros2 run sam4d_ros sam4d_node --ros-args --params-file config/sam4d.yaml
    python -m sam4d_ros.node --checkpoint my_model.pt --ros-args -p model.device:=cuda

Inputs (QoS ``qos.sensor_*``, best effort by default): ``lidar_topic`` (PointCloud2, the master
clock: one tracker step per sweep); per camera its image (Image, or CompressedImage on
``<image_topic>/compressed``) and CameraInfo; ``/tf`` and ``/tf_static``.

Prompts: services ``~/add_prompts`` (sam4d_ros/AddPrompts), ``~/remove_object``
(sam4d_ros/RemoveObject), ``~/reset`` (std_srvs/Trigger); topics ``~/prompts``
(sam4d_ros/Prompt, fire and forget), ``/clicked_point`` (geometry_msgs/PointStamped, RViz's Publish
Point, any TF frame) and per camera ``<image_topic>_mouse_left`` (geometry_msgs/Point in pixels,
rqt_image_view's convention). After a prompt the node republishes the newest sweep's outputs, so
that a user sees the new object at once, even on a paused bag.

Outputs (QoS ``qos.output_*``; headers copied from the inputs): per camera ``~/<camera>/labels``
(mono16, 0 = background, value = object id) and ``~/<camera>/overlay`` (rgb8);
``~/points_labeled`` (the input cloud + ``label`` uint32 + ``score`` float32); ``~/objects``
(sam4d_ros/TrackedObjects); ``~/markers`` (MarkerArray); ``~/debug/processing_time_ms`` and
``~/debug/pipeline_latency_ms`` (std_msgs/Float64; latency = now - sweep stamp),
``~/debug/stage_times_ms`` (DiagnosticArray: the tracker's stage timings of each sweep);
``/diagnostics``
(every ``diagnostics.period_s``, one status per stream). An output nobody subscribes to is not
computed.

Threading: subscription callbacks only hand messages to the ``SweepSynchronizer``, the TF buffer or
the bounded request queue. One worker thread owns the tracker (it is not thread safe to drive from
several places at once): it applies queued requests (prompts, removals, resets) between steps,
waits for the newest synced sweep (a queue of one: older ready sweeps are superseded and counted as
drops), builds the frame, steps the tracker and publishes. Service callbacks wait for the worker's
answer (at most ``prompts.service_timeout_s``) on a MultiThreadedExecutor; at most
``MAX_WAITING_CALLS`` of them wait at once, further calls are answered at once with "busy", so
that sensor, TF and diagnostics callbacks always have threads left.

Robustness: no input stops the node. Malformed messages (a compressed image is checked against its
CameraInfo from its header, before decoding), a camera that stops, missing TF, time going
backwards (``sam4d_ros.time_jumps``: the tracker is reset, dynamic TF cleared and /diagnostics says
"time jumped back: tracker reset") and prompt storms (``sam4d_ros.prompt_accounting``: every prompt
counted as applied, failed or rejected busy) are logged (throttled per stream), reported on
/diagnostics per stream, and the node goes on with the other streams and recovers by itself when
good data returns. Freed memory is given back to the system (``sam4d_ros.memory``).
"""

from __future__ import annotations

import argparse
import collections
import math
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point, PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Float64
from std_srvs.srv import Trigger
from visualization_msgs.msg import MarkerArray

from sam4d_ros.budget import BudgetWatch
from sam4d_ros.conversions.stamps import stamp_to_ns
from sam4d_ros.debug_topics import STAGE_TIMES_TOPIC, stage_times_msg
from sam4d_ros.frame_builder import BuiltFrame, FrameBuilder, FrameBuildError
from sam4d_ros.memory import HeapTrimmer, limit_malloc_arenas, rss_mb
from sam4d_ros.msg import Prompt, TrackedObjects
from sam4d_ros.outputs import (
    OutputError,
    StepOutputs,
    camera_status,
    diagnostic_array,
    processing_status,
    stream_status,
)
from sam4d_ros.parameters import (
    NodeParameters,
    ParameterError,
    declare_parameters,
    output_qos,
    sensor_qos,
    validate_update,
)
from sam4d_ros.prompt_accounting import PromptAccounting
from sam4d_ros.prompts import (
    CameraGeometry,
    ObjectIdRegistry,
    PromptBatch,
    PromptContext,
    PromptConverter,
    validate_remove,
)
from sam4d_ros.prompts import PromptError as RequestError
from sam4d_ros.srv import AddPrompts, RemoveObject
from sam4d_ros.sync import SweepSynchronizer, SyncedSweep
from sam4d_ros.tf_buffer import TfBuffer, TfListener, TfLookupError
from sam4d_ros.time_jumps import backward_jump_s

__all__ = [
    "MAX_WAITING_CALLS",
    "NODE_NAME",
    "NodeStartupError",
    "Sam4dNode",
    "load_model",
    "main",
    "tracker_config",
]

NODE_NAME = "sam4d_node"
_NS = 1_000_000_000
# Service calls that may wait for the worker at once; further calls are answered "busy" at once.
MAX_WAITING_CALLS = 4
# Requests a service buffers before its callbacks take them (bursts of calls).
_SERVICE_QUEUE_DEPTH = 1000
# Executor threads: one per mutually exclusive group (sensors, TF, prompt topics, diagnostics), the
# waiting service calls, and one for calls answered at once.
EXECUTOR_THREADS = 4 + MAX_WAITING_CALLS + 1
# How long the worker sleeps at most before looking at the request queue again (prompt latency
# while no sweep arrives).
_POLL_S = 0.05
# Repeated problems of one stream are logged once per this period (the rest are counted).
_LOG_PERIOD_S = 5.0
# /diagnostics keeps saying the tracker was reset after a time jump for this long (wall clock).
_JUMP_REPORT_S = 10.0
# The LiDAR stream is reported stale when no sweep arrived for this long (wall clock).
_STALE_SWEEP_S = 2.0
# Prompt rejections for a full queue are reported on /diagnostics over this window (wall clock).
_REJECT_WINDOW_S = 10.0
# The tracker buffers tracker.frame_buffer_s of sweeps at up to this rate (and at least 32 frames).
_BUFFER_RATE_HZ = 10.0


class NodeStartupError(RuntimeError):
    """The node cannot start (invalid parameters, unreadable model); the message says why."""


# ------------------------------------------------------------------------------ model


def tracker_config(params: NodeParameters, model: Any) -> Any:
    """The TrackerConfig the node runs with (tests build their in-process reference with it).

    Memory sizes above what the model was trained with are clamped to the model's (its temporal
    embeddings are learned per slot).
    """
    from sam4d_core.tracking.streaming_tracker import TrackerConfig

    mem = model.config.memory
    offsets = [abs(c.time_offset_s) for c in params.cameras]
    return TrackerConfig(
        frame_buffer_s=params.frame_buffer_s,
        max_buffer_frames=max(32, int(math.ceil(params.frame_buffer_s * _BUFFER_RATE_HZ)) + 2),
        # A prompt on an image stamp matches its sweep within the sync tolerance (+ offsets).
        stamp_tolerance_s=max(0.05, params.sync_tolerance_s + max(offsets, default=0.0)),
        mask_threshold=min(max(params.mask_threshold, 1e-6), 1.0 - 1e-6),
        max_objects=params.max_objects,
        num_maskmem=min(params.num_maskmem, max(int(mem.num_maskmem), 1)),
        max_object_pointers=min(
            params.max_object_pointers, max(int(mem.max_obj_ptrs_in_encoder), 1)
        ),
        reprompt=params.reprompt,
        runtime=params.runtime,
        onnx_dir=params.onnx_dir or None,
        runtime_threads=params.num_threads,
        trt_precision=params.trt_precision,
    )


def load_model(params: NodeParameters) -> Any:
    """Build the model of ``model.config`` / ``model.checkpoint`` on ``model.device``; raises
    NodeStartupError with the reason."""
    from sam4d_core.build_sam import build_sam4d

    try:
        return build_sam4d(
            params.model_config or None, checkpoint=params.model_checkpoint, device=params.device
        )
    except Exception as e:  # CheckpointError, ValueError, OSError, torch errors: all fatal here
        raise NodeStartupError(
            f"cannot load the model (config '{params.model_config or 'from the checkpoint'}', "
            f"checkpoint {params.model_checkpoint}, device {params.device}): "
            f"{type(e).__name__}: {e}"
        ) from e


# ------------------------------------------------------------------------------ requests


@dataclass(eq=False)
class _Request:
    """One prompt / removal / reset for the worker; ``done`` is set with the answer."""

    kind: str  # add_prompts, prompt, clicked_point, image_click, remove, reset
    payload: Any
    source: str
    done: threading.Event = field(default_factory=threading.Event)
    success: bool = False
    message: str = ""
    object_ids: list[int] = field(default_factory=list)

    def answer(self, success: bool, message: str, object_ids: Sequence[int] = ()) -> None:
        self.success, self.message, self.object_ids = success, message, list(object_ids)
        self.done.set()


class _RequestQueue:
    """Bounded FIFO of requests (thread safe). Removals and resets are never refused for a full
    queue: they are how a user gets out of a storm, and at most MAX_WAITING_CALLS exist."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self._lock = threading.Lock()
        self._items: collections.deque[_Request] = collections.deque()

    def put(self, req: _Request) -> bool:
        with self._lock:
            if req.kind not in ("remove", "reset") and len(self._items) >= self.capacity:
                return False
            self._items.append(req)
            return True

    def take_all(self) -> list[_Request]:
        with self._lock:
            out = list(self._items)
            self._items.clear()
            return out

    def withdraw(self, req: _Request) -> bool:
        """Remove a request that the worker has not taken yet; False when it has."""
        with self._lock:
            try:
                self._items.remove(req)
            except ValueError:
                return False
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)


class _LogThrottle:
    """At most one log line per key and period; the lines in between are counted and the count is
    added to the next line ("... (12 more since)")."""

    def __init__(self, logger: Any, period_s: float = _LOG_PERIOD_S) -> None:
        self._logger = logger
        self._period = period_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = collections.defaultdict(int)

    def log(self, key: str, level: str, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self._period:
                self._skipped[key] += 1
                return
            self._last[key] = now
            skipped = self._skipped.pop(key, 0)
        if skipped:
            message += f" ({skipped} more since the last report)"
        getattr(self._logger, level)(message)


class _JumpAwareTfListener(TfListener):
    """A TfListener whose /tf history is cleared when /tf jumps back in time (a looped bag) before
    the new transforms go in: interpolating between two timelines would give nonsense poses.
    /tf_static is kept (latched, it will not be sent again)."""

    def __init__(
        self, node: Any, buffer: TfBuffer, jump_threshold_s: float, throttle: _LogThrottle
    ) -> None:
        self._threshold_ns = int(round(jump_threshold_s * _NS))
        self._throttle = throttle
        self.jumps = 0
        super().__init__(node, buffer)

    def _on_tf(self, msg: Any) -> None:
        for ts in msg.transforms:
            try:
                rng = self.buffer.time_range(ts.header.frame_id, ts.child_frame_id)
            except (TfLookupError, ValueError):
                continue  # a new edge (or a new parent): nothing to compare with
            if rng is not None and stamp_to_ns(ts.header.stamp) < rng[1] - self._threshold_ns:
                self.buffer.clear(keep_static=True)
                self.jumps += 1
                self._throttle.log(
                    "tf_jump", "warning", "/tf went back in time: dynamic TF history cleared"
                )
                break
        super()._on_tf(msg)


# ------------------------------------------------------------------------------ status


@dataclass
class _StreamState:
    """What /diagnostics says about one input stream (written by the worker)."""

    error: str | None = None
    warning: str | None = None
    errors: int = 0


@dataclass
class _Status:
    """Everything /diagnostics reports, updated by the worker under ``_Sam4dNode._status_lock``."""

    processed: int = 0
    failed: int = 0
    skipped: int = 0
    last_processing_ms: float | None = None
    last_latency_ms: float | None = None
    last_stamp_ns: int | None = None
    last_sweep_wall: float | None = None
    lidar: _StreamState = field(default_factory=_StreamState)
    cameras: dict[str, _StreamState] = field(default_factory=dict)
    camera_missing: dict[str, str | None] = field(default_factory=dict)
    pose_source: str = ""
    time_jumps: int = 0
    last_jump: tuple[float, str] | None = None  # (wall time, message)
    tracker_resets: int = 0
    worker_error: tuple[float, str] | None = None
    # The tracker's sizes as of the worker's last change (the timer must not wait for its lock).
    tracker_ids: list[int] = field(default_factory=list)
    tracker_stats: dict[str, Any] = field(default_factory=dict)
    published: dict[str, int] = field(default_factory=lambda: collections.defaultdict(int))


# ------------------------------------------------------------------------------ the node


class Sam4dNode(Node):
    """SAM4D as a ROS 2 node (see the module docstring).

    Args:
        node_name: the node's name (the parameter file's key; ``sam4d_node``).
        context, namespace, parameter_overrides, ...: passed to ``rclpy.node.Node``
            (``parameter_overrides`` win over ``--ros-args``; ``main`` puts ``--checkpoint`` there).
        start_worker: start the worker thread at once (tests may drive ``process_sweep``
            themselves).

    Raises:
        NodeStartupError: invalid parameters or a model that cannot be loaded (the node is
            destroyed before the error leaves the constructor).
    """

    def __init__(
        self, node_name: str = NODE_NAME, *, start_worker: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(node_name, **kwargs)
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        try:
            self._setup()
        except ParameterError as e:
            self.destroy_node()
            raise NodeStartupError(str(e)) from None
        except Exception:
            self.destroy_node()
            raise
        if start_worker:
            self.start()

    # ------------------------------------------------------------------ set-up

    def _setup(self) -> None:
        log = self.get_logger()
        self._throttle = _LogThrottle(log)
        self.params: NodeParameters = declare_parameters(self)
        p = self.params
        self._budget = BudgetWatch(p.processing_budget_ms)
        log.info(
            f"loading model (config '{p.model_config or 'from the checkpoint'}', checkpoint "
            f"{p.model_checkpoint}, device {p.device}, runtime {p.runtime})"
        )
        from sam4d_core.runtime.manifest import RuntimeSetupError
        from sam4d_core.tracking.streaming_tracker import StreamingTracker

        if p.num_threads > 0:
            import torch

            torch.set_num_threads(p.num_threads)
        t0 = time.monotonic()
        self.model = load_model(p)
        try:
            self.tracker = StreamingTracker(self.model, tracker_config(p, self.model))
        except RuntimeSetupError as e:  # model.runtime: a package, file or export mismatch
            raise NodeStartupError(f"model.runtime '{p.runtime}': {e}") from e
        n_params = sum(int(v.numel()) for v in self.model.parameters())
        self._model_summary = (
            f"{self.model.config.name} ({n_params / 1e6:.2f} M parameters) from "
            f"{p.model_checkpoint} on {p.device}"
        )
        log.info(f"model {self._model_summary} loaded in {time.monotonic() - t0:.1f} s")

        self._tf = TfBuffer(cache_time_s=p.tf_cache_time_s)
        self.sync = SweepSynchronizer(p.sync_config())
        self.builder = FrameBuilder(p.frame_builder_config(), self._tf)
        self.ids = ObjectIdRegistry(p.max_objects)
        self.converter = PromptConverter(self.ids, p.prompt_limits())
        self._output_config = p.output_config()
        self._requests = _RequestQueue(p.prompts_queue_size)
        self._waiting_calls = threading.BoundedSemaphore(MAX_WAITING_CALLS)
        self._prompts = PromptAccounting(_REJECT_WINDOW_S)
        self._trimmer = HeapTrimmer()  # freed memory back to the system (sam4d_ros/memory.py)
        self._status_lock = threading.Lock()
        self._status = _Status(
            cameras={c: _StreamState() for c in p.camera_names},
            camera_missing={c: None for c in p.camera_names},
        )
        # Worker-only state: the newest frame stepped (outputs after prompts are published on it)
        # and the stamps of the frames the tracker buffers (image clicks snap to them).
        self._last_built: BuiltFrame | None = None
        self._frame_stamps: collections.deque[int] = collections.deque(maxlen=256)
        self._lidar_frame: str | None = None

        # Callback groups: each sensor-ish group is mutually exclusive (callbacks only append to
        # buffers), services are reentrant (they wait for the worker).
        sensors = MutuallyExclusiveCallbackGroup()
        prompts = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()
        timers = MutuallyExclusiveCallbackGroup()
        self._tf_listener = _JumpAwareTfListener(
            self, self._tf, p.sync_time_jump_threshold_s, self._throttle
        )

        qos_in = sensor_qos(p)
        self.create_subscription(
            PointCloud2, p.lidar_topic, self._on_cloud, qos_in, callback_group=sensors
        )
        for cam in p.cameras:
            image_type = CompressedImage if cam.compressed else Image
            self.create_subscription(
                image_type, cam.subscribed_image_topic, self._image_callback(cam.name), qos_in,
                callback_group=sensors,
            )  # fmt: skip
            self.create_subscription(
                CameraInfo, cam.camera_info_topic, self._info_callback(cam.name), qos_in,
                callback_group=sensors,
            )  # fmt: skip

        # Prompts: reliable like RViz's and rqt's publishers (a click must not be lost), and deep:
        # DDS drops unread messages beyond the depth without a trace (see prompt_accounting).
        qos_prompts = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=p.prompt_depth,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.create_subscription(
            Prompt, "~/prompts", self._on_prompt_msg, qos_prompts, callback_group=prompts
        )
        if p.clicked_point_topic:
            self.create_subscription(
                PointStamped, p.clicked_point_topic, self._on_clicked_point, qos_prompts,
                callback_group=prompts,
            )  # fmt: skip
        self._click_topics: dict[str, str] = {}
        for cam in p.cameras:
            topic = cam.click_topic(p.image_click_suffix)
            if topic:
                self._click_topics[cam.name] = topic
                self.create_subscription(
                    Point, topic, self._click_callback(cam.name), qos_prompts,
                    callback_group=prompts,
                )  # fmt: skip
        # A deep request queue: ROS's default (keep last 10) silently drops requests of a burst
        # before the executor takes them, and a dropped request is never answered. Here every
        # request is taken and answered: applied, or rejected at once when too many wait.
        qos_services = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=_SERVICE_QUEUE_DEPTH,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        for srv_type, name, callback in (
            (AddPrompts, "~/add_prompts", self._on_add_prompts),
            (RemoveObject, "~/remove_object", self._on_remove_object),
            (Trigger, "~/reset", self._on_reset),
        ):
            self.create_service(
                srv_type, name, callback, qos_profile=qos_services, callback_group=services
            )

        # Outputs: created only when enabled; each is computed only while subscribed.
        qos_out = output_qos(p)
        self._label_pubs: dict[str, Any] = {}
        self._overlay_pubs: dict[str, Any] = {}
        for cam in p.camera_names:
            if p.publish_label_images:
                self._label_pubs[cam] = self.create_publisher(Image, f"~/{cam}/labels", qos_out)
            if p.publish_overlays:
                self._overlay_pubs[cam] = self.create_publisher(Image, f"~/{cam}/overlay", qos_out)
        self._cloud_pub = (
            self.create_publisher(PointCloud2, "~/points_labeled", qos_out)
            if p.publish_cloud
            else None
        )
        self._objects_pub = (
            self.create_publisher(TrackedObjects, "~/objects", qos_out)
            if p.publish_objects
            else None
        )
        self._markers_pub = (
            self.create_publisher(MarkerArray, "~/markers", qos_out) if p.publish_markers else None
        )
        self._processing_pub = self._latency_pub = self._stage_pub = None
        if p.publish_debug:
            self._processing_pub = self.create_publisher(
                Float64, "~/debug/processing_time_ms", qos_out
            )
            self._latency_pub = self.create_publisher(
                Float64, "~/debug/pipeline_latency_ms", qos_out
            )
            self._stage_pub = self.create_publisher(DiagnosticArray, STAGE_TIMES_TOPIC, qos_out)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # A steady clock: diagnostics go on while a replayed /clock is paused or jumps back.
        self._diagnostics_timer = self.create_timer(
            p.diagnostics_period_s,
            self._publish_diagnostics,
            callback_group=timers,
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )
        self.add_on_set_parameters_callback(self._on_set_parameters)

        cams = ", ".join(f"{c.name} ({c.subscribed_image_topic})" for c in p.cameras) or "none"
        log.info(
            f"ready: LiDAR {p.lidar_topic}, cameras {cams}, fixed frame "
            f"'{p.fixed_frame or '(none)'}'; outputs under {self.get_fully_qualified_name()}/"
        )

    def start(self) -> None:
        """Start the worker thread."""
        if self._worker is None:
            self._stop.clear()
            self._worker = threading.Thread(target=self._run, name="sam4d_worker", daemon=True)
            self._worker.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the worker (it finishes the step it is in) and answer waiting service calls."""
        self._stop.set()
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.join(timeout_s)
        if hasattr(self, "_requests"):
            for req in self._requests.take_all():
                req.answer(False, "the node is shutting down; nothing was changed")
                self._prompts.failed(req.kind, req.source, req.message)

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()

    # ------------------------------------------------------------------ callbacks (short)

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.sync.add_sweep(msg)
        with self._status_lock:
            self._status.last_sweep_wall = time.monotonic()

    def _image_callback(self, camera: str) -> Callable[[Any], None]:
        def on_image(msg: Any) -> None:
            self.sync.add_image(camera, msg)

        return on_image

    def _info_callback(self, camera: str) -> Callable[[CameraInfo], None]:
        def on_info(msg: CameraInfo) -> None:
            self.sync.add_camera_info(camera, msg)

        return on_info

    def _click_callback(self, camera: str) -> Callable[[Point], None]:
        def on_click(msg: Point) -> None:
            self._enqueue_topic(
                _Request("image_click", (camera, msg), f"click on {self._click_topics[camera]}")
            )

        return on_click

    def _on_prompt_msg(self, msg: Prompt) -> None:
        self._enqueue_topic(_Request("prompt", msg, "~/prompts"))

    def _on_clicked_point(self, msg: PointStamped) -> None:
        self._enqueue_topic(_Request("clicked_point", msg, self.params.clicked_point_topic))

    def _enqueue_topic(self, req: _Request) -> None:
        self._prompts.received(req.kind, req.source)
        if not self._requests.put(req):
            self._rejected_full(req)

    def _rejected_full(self, req: _Request) -> str:
        message = (
            f"prompt queue full ({self._requests.capacity} requests waiting for the tracker, "
            f"prompts.queue_size): {req.source} rejected, try again later"
        )
        self._prompts.rejected_busy(req.kind, req.source, message)
        self._throttle.log("queue_full", "warning", message)
        return message

    def _call_worker(self, req: _Request) -> _Request:
        """Queue a service request and wait for the worker's answer (bounded, see the module
        docstring); the request comes back answered."""
        self._prompts.received(req.kind, req.source)
        if not self._waiting_calls.acquire(blocking=False):
            req.answer(
                False,
                f"busy: {MAX_WAITING_CALLS} service calls are already waiting for the tracker; "
                f"{req.source} rejected, try again later",
            )
            self._prompts.rejected_busy(req.kind, req.source, req.message)
            return req
        try:
            if self._stop.is_set():
                req.answer(False, "the node is shutting down; nothing was changed")
                self._prompts.failed(req.kind, req.source, req.message)
                return req
            if not self._requests.put(req):
                req.answer(False, self._rejected_full(req))
                return req
            timeout = self.params.prompts_service_timeout_s
            if req.done.wait(timeout):
                return req
            if self._requests.withdraw(req):
                req.answer(
                    False,
                    f"timed out after {timeout:g} s waiting for the tracker "
                    "(prompts.service_timeout_s); nothing was changed",
                )
                self._prompts.failed(req.kind, req.source, req.message)
                return req
            # The worker is applying it right now: its answer is moments away.
            if not req.done.wait(timeout):
                req.answer(False, f"timed out after {2 * timeout:g} s; the request may still apply")
            return req
        finally:
            self._waiting_calls.release()

    def _on_add_prompts(self, request: Any, response: Any) -> Any:
        req = self._call_worker(
            _Request("add_prompts", (list(request.prompts), bool(request.clear_previous_prompts)),
                     "~/add_prompts")
        )  # fmt: skip
        response.success, response.message = req.success, req.message
        response.object_ids = [int(i) for i in req.object_ids]
        return response

    def _on_remove_object(self, request: Any, response: Any) -> Any:
        req = self._call_worker(
            _Request("remove", [int(i) for i in request.object_ids], "~/remove_object")
        )
        response.success, response.message = req.success, req.message
        return response

    def _on_reset(self, request: Any, response: Any) -> Any:
        req = self._call_worker(_Request("reset", None, "~/reset"))
        response.success, response.message = req.success, req.message
        return response

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        changes = {p.name: p.value for p in parameters}
        try:
            updated = validate_update(self.params, changes)
        except ParameterError as e:
            return SetParametersResult(successful=False, reason=str(e))
        try:
            self.sync.update(
                tolerance_s=updated.sync_tolerance_s,
                max_wait_s=updated.sync_max_wait_s,
                time_offsets_s={c.name: c.time_offset_s for c in updated.cameras},
            )
        except ValueError as e:
            return SetParametersResult(successful=False, reason=str(e))
        self._output_config = updated.output_config()
        # Read by the tracker at each step (a float: no lock needed to swap it).
        self.tracker.config.mask_threshold = min(max(updated.mask_threshold, 1e-6), 1.0 - 1e-6)
        self.params = updated
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ worker

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.serve_requests()
                self._trimmer.maybe_trim()
                sweeps = self.sync.wait_ready(timeout_s=_POLL_S, newest_only=True)
                for sweep in sweeps:
                    if self._stop.is_set():
                        break
                    self.process_sweep(sweep)
            except Exception as e:  # never let the worker die: report and go on
                self._worker_failed(e)

    def _worker_failed(self, e: BaseException) -> None:
        if self._stop.is_set() or not self.context.ok():
            return  # shutting down: publishers and the context go away under the worker
        text = f"{type(e).__name__}: {e}"
        with self._status_lock:
            self._status.worker_error = (time.monotonic(), text)
        self._throttle.log(
            "worker", "error", f"unexpected error in the worker (it goes on): {text}\n"
            + "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
        )  # fmt: skip

    # -- requests

    def serve_requests(self) -> None:
        """Apply every queued request (worker thread, between tracker steps)."""
        for req in self._requests.take_all():
            try:
                self._serve(req)
            except RequestError as e:
                req.answer(False, str(e))
            except Exception as e:  # a bug: answer, report, keep the worker alive
                req.answer(False, f"internal error: {type(e).__name__}: {e}")
                self._worker_failed(e)
            finally:
                if not req.done.is_set():
                    req.answer(False, "internal error: the request was not answered")
                self._account(req)
                self._reconcile_ids()

    def _account(self, req: _Request) -> None:
        if req.success:
            self._prompts.applied(req.kind)
        else:
            self._prompts.failed(req.kind, req.source, req.message)
        if req.kind in ("prompt", "clicked_point", "image_click"):
            # Nobody waits for these: the log is their only answer.
            if req.success:
                self.get_logger().info(f"{req.source}: {req.message}")
            else:
                self._throttle.log(
                    f"prompt:{req.source}", "warning", f"{req.source} rejected: {req.message}"
                )

    def _serve(self, req: _Request) -> None:
        if req.kind == "reset":
            n_obj, n_frames = len(self.tracker.object_ids), len(self.tracker.buffered_stamps)
            self._reset_tracking()
            with self._status_lock:
                self._status.tracker_resets += 1
            self.get_logger().info("tracker reset on request")
            req.answer(
                True, f"tracker reset: {n_obj} object(s) and {n_frames} buffered frame(s) forgotten"
            )
            return
        if req.kind == "remove":
            ids = validate_remove(req.payload, self.ids.tracked())
            removed = self.tracker.remove_objects(ids)
            self.ids.release(ids)
            self._trimmer.request()
            req.answer(True, f"removed object(s) {sorted(set(removed) | set(ids))}")
            return
        ctx = self._prompt_context()
        if req.kind == "add_prompts":
            msgs, clear = req.payload
            batch = self.converter.convert_prompts(msgs, clear, ctx)
        elif req.kind == "prompt":
            batch = self.converter.convert_prompts([req.payload], False, ctx)
        elif req.kind == "clicked_point":
            batch = self.converter.clicked_point(req.payload, ctx)
        elif req.kind == "image_click":
            camera, msg = req.payload
            batch = self.converter.image_click(camera, msg, ctx, self._image_click_stamp(camera))
        else:  # pragma: no cover - kinds are internal
            raise RequestError(f"unknown request kind {req.kind}")
        self._apply_batch(req, batch)

    def _apply_batch(self, req: _Request, batch: PromptBatch) -> None:
        from sam4d_core.tracking.streaming_tracker import PromptError as TrackerPromptError

        try:
            result = self.tracker.add_prompts(batch.prompts)
        except TrackerPromptError as e:
            self.ids.cancel(batch.new_ids)
            req.answer(False, f"the tracker refused the prompts: {e}; nothing was changed")
            return
        except Exception:
            self.ids.cancel(batch.new_ids)
            raise
        ids = sorted(set(batch.object_ids))
        stamps = {p.stamp for p in batch.prompts}
        if result is None:
            where = "kept until their frame arrives (stamp after the newest sweep)"
        else:
            newest = result.timestamp
            ages = sorted({newest - s for s in stamps if s is not None})
            where = "applied on the newest sweep"
            if ages and ages[-1] > 1e-3:
                where = f"applied on the sweep {ages[-1]:.3f} s old and carried forward"
        req.answer(True, f"object(s) {ids}: {len(batch.prompts)} prompt(s) {where}",
                   batch.object_ids)  # fmt: skip
        if result is not None and self._last_built is not None:
            # Show the new objects at once (a paused bag sends no next sweep). The prompt is
            # applied whatever happens here: a publishing problem is only reported.
            try:
                self._publish(result, self._last_built, None)
            except Exception as e:
                self._worker_failed(e)

    def _prompt_context(self) -> PromptContext:
        cameras: dict[str, CameraGeometry | None] = {}
        for cam in self.params.cameras:
            info = self.sync.latest_camera_info(cam.name)
            geometry = None
            if info is not None:
                try:
                    model = self.builder.camera_models.get(cam.name, info)
                    geometry = CameraGeometry.from_model(cam.name, model, cam.rectified)
                except Exception:  # a bad CameraInfo: the camera is reported by the worker
                    geometry = None
            cameras[cam.name] = geometry
        return PromptContext(
            cameras=cameras,
            lidar_frame=self._lidar_frame,
            newest_stamp_ns=self._frame_stamps[-1] if self._frame_stamps else None,
            frame_buffer_s=self.params.frame_buffer_s,
            tf=self._tf,
        )

    def _image_click_stamp(self, camera: str) -> int | None:
        """The frame a click on ``camera``'s image refers to: the camera's newest image (what a
        viewer shows). At or before the newest sweep it snaps to the nearest tracked sweep (a
        dropped sweep's image goes to its neighbour); after it, the click waits for its sweep."""
        stamp = self.sync.latest_image_stamp_ns(camera)
        if stamp is None or not self._frame_stamps:
            return None
        if stamp > self._frame_stamps[-1] + int(self.tracker.config.stamp_tolerance_s * _NS):
            return stamp
        return min(self._frame_stamps, key=lambda s: abs(s - stamp))

    def _reconcile_ids(self) -> None:
        """Forget ids the tracker no longer has (pending prompts it dropped): the registry must
        not count them against max_objects or refuse their removal forever. Also refreshes the
        tracker snapshot that /diagnostics reports."""
        live = self.tracker.object_ids
        stats = self.tracker.memory_stats()
        stale = self.ids.tracked() - set(live)
        if stale and not stats["pending_prompts"]:
            self.ids.release(stale)
        with self._status_lock:
            self._status.tracker_ids = sorted(live)
            self._status.tracker_stats = {
                k: stats[k] for k in ("buffer_frames", "pending_prompts", "objects")
            }

    def _reset_tracking(self) -> None:
        self.tracker.reset()
        self._trimmer.request()
        self.ids.clear()
        self.builder.reset()
        self._last_built = None
        self._frame_stamps.clear()

    # -- sweeps

    def process_sweep(self, sweep: SyncedSweep) -> None:
        """Build, track and publish one synced sweep (worker thread)."""
        t0 = time.perf_counter()
        jump_s = backward_jump_s(
            sweep.stamp_ns, self._frame_stamps[-1] if self._frame_stamps else None,
            self.params.sync_time_jump_threshold_s, sweep.jump_s if sweep.time_jump else 0.0,
        )  # fmt: skip
        if jump_s > 0.0:
            self._on_time_jump(sweep, jump_s)
        built = self._build(sweep)
        if built is None:
            return
        from sam4d_core.tracking.streaming_tracker import PromptError as TrackerPromptError

        try:
            result = self.tracker.step(built.frame)
        except (ValueError, TrackerPromptError) as e:
            # A sweep not newer than the last one (reordered or repeated) or with nothing in it.
            with self._status_lock:
                self._status.skipped += 1
                self._status.lidar = replace(
                    self._status.lidar, warning=f"sweep skipped: {e}", error=None
                )
            self._throttle.log("step", "warning", f"sweep at {_fmt(sweep.stamp_ns)} s skipped: {e}")
            return
        self._last_built = built
        self._lidar_frame = built.lidar_frame
        self._frame_stamps.append(built.stamp_ns)
        self._reconcile_ids()
        self._publish(result, built, t0)

    def _on_time_jump(self, sweep: SyncedSweep, jump_s: float) -> None:
        message = (
            f"time jumped back by {jump_s:.3f} s (sweep at {_fmt(sweep.stamp_ns)} s): tracker reset"
        )
        n_obj = len(self.tracker.object_ids)
        self._reset_tracking()
        # /tf usually jumps with the sweeps and the listener has cleared it already; if this sweep
        # came first, the old timeline's transforms must go now.
        threshold = int(round(self.params.sync_time_jump_threshold_s * _NS))
        fixed, lidar = self.params.fixed_frame, self._lidar_frame_of(sweep)
        try:
            latest = self._tf.latest_common_time(fixed, lidar) if fixed and lidar else None
        except TfLookupError:
            latest = None
        if latest is not None and latest > sweep.stamp_ns + threshold:
            self._tf.clear(keep_static=True)
            message += ", dynamic TF cleared"
        with self._status_lock:
            self._status.time_jumps += 1
            self._status.tracker_resets += 1
            self._status.last_jump = (time.monotonic(), message)
        self.get_logger().warning(f"{message} ({n_obj} object(s) dropped; looped bag?)")

    def _lidar_frame_of(self, sweep: SyncedSweep) -> str:
        frame = self.params.lidar_frame or str(sweep.cloud.header.frame_id)
        return frame[1:] if frame.startswith("/") else frame

    def _build(self, sweep: SyncedSweep) -> BuiltFrame | None:
        p = self.params
        fixed, lidar = p.fixed_frame, self._lidar_frame_of(sweep)
        if fixed and lidar and fixed != lidar and p.tf_timeout_s > 0:
            # Odometry is often published a little after the sweep: wait for it here rather than
            # falling back at once. The builder reports what is still missing.
            try:
                self._tf.wait_for_transform(fixed, lidar, sweep.stamp_ns, p.tf_timeout_s)
            except TfLookupError:
                pass
        try:
            built = self.builder.build(sweep)
        except FrameBuildError as e:
            with self._status_lock:
                self._status.failed += 1
                self._status.lidar = _StreamState(
                    error=str(e), errors=self._status.lidar.errors + 1
                )
                self._status.last_stamp_ns = sweep.stamp_ns
            self._throttle.log(
                f"build:{type(e).__name__}", "warning",
                f"sweep at {_fmt(sweep.stamp_ns)} s skipped: {e}",
            )  # fmt: skip
            return None
        with self._status_lock:
            st = self._status
            warning = "; ".join(built.warnings) or None
            st.lidar = _StreamState(error=None, warning=warning, errors=st.lidar.errors)
            st.pose_source = built.pose_source
            st.last_stamp_ns = built.stamp_ns
            for cam in p.camera_names:
                err = built.camera_errors.get(cam)
                state = st.cameras[cam]
                if err is not None:
                    st.cameras[cam] = _StreamState(error=str(err), errors=state.errors + 1)
                else:
                    st.cameras[cam] = _StreamState(errors=state.errors)
                st.camera_missing[cam] = built.missing.get(cam)
        for cam, err in built.camera_errors.items():
            self._throttle.log(
                f"camera:{cam}", "warning", f"camera '{cam}' left out of the sweep: {err}"
            )
        if built.warnings:
            self._throttle.log("lidar_warnings", "warning", "; ".join(built.warnings))
        return built

    # -- outputs

    def _publish(self, result: Any, built: BuiltFrame, t0: float | None) -> None:
        """Publish what is subscribed. t0: start of the sweep's processing (None for a
        republication after prompts: no timing is reported for it)."""
        counts: dict[str, int] = {}

        def send(pub: Any, make: Callable[[], Any]) -> None:
            # Nothing is computed for an output nobody subscribes to.
            if pub is not None and pub.get_subscription_count() > 0:
                pub.publish(make())
                counts[pub.topic_name] = counts.get(pub.topic_name, 0) + 1

        try:
            out = StepOutputs(result, built, self._output_config)
            for cam in out.cameras:
                send(self._label_pubs.get(cam), lambda c=cam: out.label_image_msg(c))
                send(self._overlay_pubs.get(cam), lambda c=cam: out.overlay_msg(c))
            send(self._cloud_pub, out.labeled_cloud_msg)
            send(self._objects_pub, out.tracked_objects_msg)
            send(self._markers_pub, out.marker_array_msg)
        except OutputError as e:
            self._worker_failed(e)
            return
        latency_ms = (self.get_clock().now().nanoseconds - built.stamp_ns) / 1e6
        processing_ms = None if t0 is None else (time.perf_counter() - t0) * 1e3
        if processing_ms is not None:
            send(self._processing_pub, lambda: Float64(data=processing_ms))
            send(self._latency_pub, lambda: Float64(data=latency_ms))
            timings = getattr(result, "timings_ms", None) or {}
            send(self._stage_pub, lambda: stage_times_msg(built.stamp_ns, timings, self.get_name()))
        with self._status_lock:
            st = self._status
            for name, n in counts.items():
                st.published[name] += n
            if processing_ms is not None:
                st.processed += 1
                st.last_processing_ms = processing_ms
                st.last_latency_ms = latency_ms
        if processing_ms is not None:  # logged on a change of state only (sam4d_ros.budget)
            self._budget.budget_ms = self.params.processing_budget_ms
            self._budget.log(self.get_logger(), processing_ms)

    # -- diagnostics

    def diagnostics(self) -> DiagnosticArray:
        """The current /diagnostics message (one status per stream)."""
        name = self.get_name()
        hw = self.get_fully_qualified_name()
        now = time.monotonic()
        sync = self.sync.counters()
        statuses = []
        with self._status_lock:
            st = self._status
            errors = []
            if st.worker_error and now - st.worker_error[0] < _JUMP_REPORT_S:
                errors.append(f"worker error: {st.worker_error[1]}")
            statuses.append(
                processing_status(
                    f"{name}: processing", st.last_processing_ms,
                    self.params.processing_budget_ms, errors=errors, hardware_id=hw,
                    values={
                        "model": self._model_summary,
                        "sweeps_received": sync.sweeps_received,
                        "sweeps_processed": st.processed,
                        "sweeps_dropped": sync.superseded,
                        "sweeps_failed": st.failed,
                        "sweeps_skipped": st.skipped,
                        "pipeline_latency_ms": st.last_latency_ms
                        if st.last_latency_ms is not None else "n/a",
                        **self._budget.values(),
                        "rss_mb": f"{rss_mb() or 0.0:.0f}",
                        "heap_trims": self._trimmer.trims,
                        **{f"published.{k}": v for k, v in sorted(st.published.items())},
                    },
                )
            )  # fmt: skip
            lidar_warn = [st.lidar.warning] if st.lidar.warning else []
            if st.last_sweep_wall is None:
                lidar_warn.append(f"no sweep received on {self.params.lidar_topic} yet")
            elif now - st.last_sweep_wall > _STALE_SWEEP_S:
                lidar_warn.append(
                    f"no sweep received for {now - st.last_sweep_wall:.1f} s on "
                    f"{self.params.lidar_topic}"
                )
            statuses.append(
                stream_status(
                    f"{name}: lidar", errors=[st.lidar.error] if st.lidar.error else [],
                    warnings=lidar_warn, hardware_id=hw,
                    values={
                        "topic": self.params.lidar_topic,
                        "last_stamp": _fmt(st.last_stamp_ns) if st.last_stamp_ns else "n/a",
                        "pose_source": st.pose_source or "n/a",
                        "errors": st.lidar.errors,
                        "tf_transforms_rejected": self._tf_listener.dropped,
                    },
                )
            )  # fmt: skip
            for cam in self.params.cameras:
                state = st.cameras.get(cam.name, _StreamState())
                statuses.append(
                    camera_status(
                        f"{name}: camera {cam.name}", sync.cameras.get(cam.name),
                        error=state.error, missing=st.camera_missing.get(cam.name),
                        values={"topic": cam.subscribed_image_topic, "errors": state.errors},
                        hardware_id=hw,
                    )
                )  # fmt: skip
            tracker_warn = []
            if st.last_jump and now - st.last_jump[0] < _JUMP_REPORT_S:
                tracker_warn.append(st.last_jump[1])
            statuses.append(
                stream_status(
                    f"{name}: tracker", warnings=tracker_warn, hardware_id=hw,
                    values={
                        "objects": len(st.tracker_ids),
                        "object_ids": st.tracker_ids or "none",
                        "buffer_frames": st.tracker_stats.get("buffer_frames", 0),
                        "pending_prompts": st.tracker_stats.get("pending_prompts", 0),
                        "time_jumps": st.time_jumps,
                        "resets": st.tracker_resets,
                    },
                )
            )  # fmt: skip
            prompt_values, prompt_warn = self._prompts.diagnostic_values()
            statuses.append(
                stream_status(
                    f"{name}: prompts", warnings=prompt_warn, hardware_id=hw,
                    values={
                        "queued": len(self._requests),
                        "queue_size": self._requests.capacity,
                        "topic_depth": self.params.prompt_depth,
                        **prompt_values,
                    },
                )
            )  # fmt: skip
        return diagnostic_array(statuses, self.get_clock().now().to_msg())

    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics_pub.publish(self.diagnostics())
        except Exception as e:  # diagnostics must not take the node down either
            self._throttle.log("diagnostics", "error", f"cannot publish /diagnostics: {e}")


def _fmt(ns: int | None) -> str:
    if ns is None:
        return "n/a"
    return f"{ns // _NS}.{ns % _NS:09d}"


# ------------------------------------------------------------------------------ entry point


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="sam4d_node",
        description="SAM4D camera + LiDAR segmentation node. Every setting is a ROS parameter "
        "(--ros-args -p name:=value or --params-file FILE; see config/sam4d.yaml); the options "
        "below are shortcuts that override them.",
    )
    parser.add_argument("--checkpoint", help="model checkpoint file (parameter model.checkpoint)")
    parser.add_argument("--model-config", help="model configuration (parameter model.config)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:N (parameter model.device)")
    return parser.parse_args(list(argv))


# rclpy's executor runs Python on every wake-up (it rebuilds its wait set), and the multithreaded
# one wakes again at once while a ready entity's callback group is busy. With a 100 Hz /clock (a
# bag played with --clock) its loop held the GIL ~93 % of the time (py-spy --gil) and the worker,
# which needs the GIL between torch operations, took 2-9 s for a 0.3 s tracker step (sweeps
# dropped). A pause between iterations, the GIL released, bounds the loop's share; it delays a
# callback by at most this much.
SPIN_PAUSE_S = 0.001


def spin_yielding(executor: Executor, pause_s: float = SPIN_PAUSE_S) -> None:
    """``executor.spin()`` with a pause (GIL released) after each iteration."""
    context = executor.context
    while context.ok():
        executor.spin_once(timeout_sec=0.1)
        time.sleep(pause_s)


def main(args: Sequence[str] | None = None) -> int:
    """Run the node until interrupted. ``args``: command line like ``sys.argv`` (program name
    first; ``--ros-args ...`` go to rclpy). Returns the exit status (0 after Ctrl-C, 1 when the
    node cannot start, 2 for bad options)."""
    argv = list(sys.argv if args is None else args)
    limit_malloc_arenas()  # before rclpy and torch start their threads
    try:
        options = _parse_args(remove_ros_args(argv)[1:])
    except SystemExit as e:  # argparse already printed the problem (or --help)
        return int(e.code or 0)
    overrides = [
        Parameter(name, value=value)
        for name, value in (
            ("model.checkpoint", options.checkpoint),
            ("model.config", options.model_config),
            ("model.device", options.device),
        )
        if value is not None
    ]
    rclpy.init(args=argv)
    node = None
    executor = None
    try:
        try:
            node = Sam4dNode(parameter_overrides=overrides)
        except NodeStartupError as e:
            get_logger(NODE_NAME).fatal(f"cannot start: {e}")
            return 1
        executor = MultiThreadedExecutor(num_threads=EXECUTOR_THREADS)
        executor.add_node(node)
        spin_yielding(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C / shutdown: stop cleanly below
    finally:
        if node is not None:
            node.stop()
            if executor is not None:
                executor.shutdown(timeout_sec=5.0)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
