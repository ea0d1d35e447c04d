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
``/diagnostics`` (every ``diagnostics.period_s``, one status per stream: ``sam4d_ros.diagnostics``).
An output nobody subscribes to is not computed.

Threading: subscription callbacks only hand messages to the ``SweepSynchronizer``, the TF buffer or
the bounded request queue (``sam4d_ros.requests``). One worker thread (``sam4d_ros.worker``) owns
the tracker (it is not thread safe to drive from several places at once): it applies queued
requests (prompts, removals, resets) between steps, waits for the newest synced sweep (a queue of
one: older ready sweeps are superseded and counted as drops), builds the frame, steps the tracker
and publishes (``sam4d_ros.publishers``). Service callbacks wait for the worker's answer (at most
``prompts.service_timeout_s``) on a MultiThreadedExecutor; at most ``MAX_WAITING_CALLS`` of them
wait at once, further calls are answered at once with "busy", so that sensor, TF and diagnostics
callbacks always have threads left.

Robustness: no input stops the node. Malformed messages (a compressed image is checked against its
CameraInfo from its header, before decoding), a camera that stops, missing TF, time going
backwards (``sam4d_ros.time_jumps``: the tracker is reset, dynamic TF cleared and /diagnostics says
"time jumped back: tracker reset") and prompt storms (``sam4d_ros.prompt_accounting``: every prompt
counted as applied, failed or rejected busy) are logged (throttled per stream:
``sam4d_ros.throttled_log``), reported on
/diagnostics per stream, and the node goes on with the other streams and recovers by itself when
good data returns. Freed memory is given back to the system (``sam4d_ros.memory``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Point, PointStamped
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.executors import Executor, ExternalShutdownException, MultiThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.logging import get_logger
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_srvs.srv import Trigger

from sam4d_ros.diagnostics import NodeDiagnostics
from sam4d_ros.memory import limit_malloc_arenas
from sam4d_ros.model_loading import NodeStartupError, load_model, load_tracker, tracker_config
from sam4d_ros.msg import Prompt
from sam4d_ros.parameters import (
    NodeParameters,
    ParameterError,
    declare_parameters,
    prompt_qos,
    sensor_qos,
    service_qos,
    validate_update,
)
from sam4d_ros.prompt_accounting import PromptAccounting
from sam4d_ros.publishers import OutputPublishers
from sam4d_ros.requests import MAX_WAITING_CALLS, Request, RequestGate, RequestQueue
from sam4d_ros.srv import AddPrompts, RemoveObject
from sam4d_ros.status import NodeStatus
from sam4d_ros.sync import SweepSynchronizer, SyncedSweep
from sam4d_ros.tf_buffer import TfBuffer
from sam4d_ros.throttled_log import LogThrottle
from sam4d_ros.time_jumps import JumpAwareTfListener
from sam4d_ros.worker import TrackerWorker

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
# Executor threads: one per mutually exclusive group (sensors, TF, prompt topics, diagnostics), the
# waiting service calls, and one for calls answered at once.
EXECUTOR_THREADS = 4 + MAX_WAITING_CALLS + 1
# Prompt rejections for a full queue are reported on /diagnostics over this window (wall clock).
_REJECT_WINDOW_S = 10.0


class Sam4dNode(Node):
    """SAM4D as a ROS 2 node (see the module docstring): the ROS wiring of its building blocks.

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
        self.worker: TrackerWorker | None = None
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

    def _setup(self) -> None:
        log = self.get_logger()
        self._throttle = LogThrottle(log)
        p = declare_parameters(self)
        self.model, self.tracker, model_summary = load_tracker(p, log)
        self._tf = TfBuffer(cache_time_s=p.tf_cache_time_s)
        self.sync = SweepSynchronizer(p.sync_config())
        self._requests = RequestQueue(p.prompts_queue_size)
        self._prompts = PromptAccounting(_REJECT_WINDOW_S)
        self._gate = RequestGate(self._requests, self._prompts, self._throttle, self._stopping)
        self.status = NodeStatus(p.camera_names)
        self.outputs = OutputPublishers(self, p)
        self.worker = TrackerWorker(
            p, self.tracker, sync=self.sync, tf=self._tf, requests=self._requests,
            prompts=self._prompts, status=self.status, outputs=self.outputs, logger=log,
            throttle=self._throttle, alive=self.context.ok,
        )  # fmt: skip
        self._tf_listener = JumpAwareTfListener(
            self, self._tf, p.sync_time_jump_threshold_s, self._throttle
        )
        self._subscribe(p)
        self._diagnostics = NodeDiagnostics(
            self.get_name(), self.get_fully_qualified_name(), lambda: self.params, model_summary,
            self.status, self.sync, self._requests, self._prompts, self.worker.budget,
            self.worker.trimmer, lambda: self._tf_listener.dropped,
        )  # fmt: skip
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # A steady clock: diagnostics go on while a replayed /clock is paused or jumps back.
        self._diagnostics_timer = self.create_timer(
            p.diagnostics_period_s, self._publish_diagnostics,
            callback_group=MutuallyExclusiveCallbackGroup(),
            clock=Clock(clock_type=ClockType.STEADY_TIME),
        )  # fmt: skip
        self.add_on_set_parameters_callback(self._on_set_parameters)
        cams = ", ".join(f"{c.name} ({c.subscribed_image_topic})" for c in p.cameras) or "none"
        log.info(
            f"ready: LiDAR {p.lidar_topic}, cameras {cams}, fixed frame "
            f"'{p.fixed_frame or '(none)'}'; outputs under {self.get_fully_qualified_name()}/"
        )

    def _subscribe(self, p: NodeParameters) -> None:
        """Sensor and prompt subscriptions, services. Callback groups: each sensor-ish group is
        mutually exclusive (callbacks only append to buffers), services are reentrant (they wait
        for the worker)."""
        sensors, prompts = MutuallyExclusiveCallbackGroup(), MutuallyExclusiveCallbackGroup()
        qos_in, qos_prompts = sensor_qos(p), prompt_qos(p)
        self.create_subscription(
            PointCloud2, p.lidar_topic, self._on_cloud, qos_in, callback_group=sensors
        )
        for cam in p.cameras:
            image_type = CompressedImage if cam.compressed else Image
            for msg_type, topic, add in (
                (image_type, cam.subscribed_image_topic, self.sync.add_image),
                (CameraInfo, cam.camera_info_topic, self.sync.add_camera_info),
            ):
                self.create_subscription(
                    msg_type, topic, _for_camera(cam.name, add), qos_in, callback_group=sensors
                )
            click_topic = cam.click_topic(p.image_click_suffix)
            if click_topic:
                self.create_subscription(
                    Point, click_topic, self._click_callback(cam.name, click_topic), qos_prompts,
                    callback_group=prompts,
                )  # fmt: skip
        self.create_subscription(
            Prompt, "~/prompts", self._on_prompt_msg, qos_prompts, callback_group=prompts
        )
        if p.clicked_point_topic:
            self.create_subscription(
                PointStamped, p.clicked_point_topic, self._on_clicked_point, qos_prompts,
                callback_group=prompts,
            )  # fmt: skip
        services = ReentrantCallbackGroup()
        for srv_type, name, callback in (
            (AddPrompts, "~/add_prompts", self._on_add_prompts),
            (RemoveObject, "~/remove_object", self._on_remove_object),
            (Trigger, "~/reset", self._on_reset),
        ):
            self.create_service(
                srv_type, name, callback, qos_profile=service_qos(), callback_group=services
            )

    @property
    def params(self) -> NodeParameters:
        """The current parameters (replaced when parameters change at run time)."""
        return self.worker.params

    def start(self) -> None:
        """Start the worker thread."""
        if self.worker is not None:
            self.worker.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the worker (it finishes the step it is in) and answer waiting service calls."""
        if self.worker is not None:
            self.worker.stop(timeout_s)
            self._gate.close()

    def _stopping(self) -> bool:
        return self.worker is None or self.worker.stopping.is_set()

    def destroy_node(self) -> None:
        self.stop()
        super().destroy_node()

    def process_sweep(self, sweep: SyncedSweep) -> None:
        """Build, track and publish one synced sweep (the worker's step; for tests)."""
        self.worker.process_sweep(sweep)

    def serve_requests(self) -> None:
        """Apply every queued request (the worker's step between sweeps; for tests)."""
        self.worker.serve_requests()

    # ------------------------------------------------------------------ callbacks (short)

    def _on_cloud(self, msg: PointCloud2) -> None:
        self.sync.add_sweep(msg)
        self.status.sweep_received()

    def _click_callback(self, camera: str, topic: str) -> Callable[[Point], None]:
        def on_click(msg: Point) -> None:
            self._gate.enqueue(Request("image_click", (camera, msg), f"click on {topic}"))

        return on_click

    def _on_prompt_msg(self, msg: Prompt) -> None:
        self._gate.enqueue(Request("prompt", msg, "~/prompts"))

    def _on_clicked_point(self, msg: PointStamped) -> None:
        self._gate.enqueue(Request("clicked_point", msg, self.params.clicked_point_topic))

    def _call_worker(self, kind: str, payload: Any, source: str, response: Any) -> Request:
        req = self._gate.call(Request(kind, payload, source), self.params.prompts_service_timeout_s)
        response.success, response.message = req.success, req.message
        return req

    def _on_add_prompts(self, request: Any, response: Any) -> Any:
        payload = (list(request.prompts), bool(request.clear_previous_prompts))
        req = self._call_worker("add_prompts", payload, "~/add_prompts", response)
        response.object_ids = [int(i) for i in req.object_ids]
        return response

    def _on_remove_object(self, request: Any, response: Any) -> Any:
        ids = [int(i) for i in request.object_ids]
        self._call_worker("remove", ids, "~/remove_object", response)
        return response

    def _on_reset(self, request: Any, response: Any) -> Any:
        self._call_worker("reset", None, "~/reset", response)
        return response

    def _on_set_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        try:
            updated = validate_update(self.params, {p.name: p.value for p in parameters})
            self.sync.update(
                tolerance_s=updated.sync_tolerance_s,
                max_wait_s=updated.sync_max_wait_s,
                time_offsets_s={c.name: c.time_offset_s for c in updated.cameras},
            )
        except ValueError as e:  # ParameterError is one
            return SetParametersResult(successful=False, reason=str(e))
        self.outputs.config = updated.output_config()
        # Read by the tracker at each step (a float: no lock needed to swap it).
        self.tracker.config.mask_threshold = min(max(updated.mask_threshold, 1e-6), 1.0 - 1e-6)
        self.worker.params = updated
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------------ diagnostics

    def diagnostics(self) -> DiagnosticArray:
        """The current /diagnostics message (one status per stream; sam4d_ros.diagnostics)."""
        return self._diagnostics.message(self.get_clock().now().to_msg())

    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics_pub.publish(self.diagnostics())
        except Exception as e:  # diagnostics must not take the node down either
            self._throttle.log("diagnostics", "error", f"cannot publish /diagnostics: {e}")


def _for_camera(camera: str, add: Callable[[str, Any], None]) -> Callable[[Any], None]:
    """A subscription callback that hands ``camera``'s message to ``add`` (the synchronizer)."""

    def callback(msg: Any) -> None:
        add(camera, msg)

    return callback


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


def spin_once_or_stopped(executor: Executor, timeout_sec: float = 0.1) -> bool:
    """One ``executor.spin_once``; False when the executor's context has shut down (then or
    before: a Ctrl-C between a caller's ``context.ok()`` and the executor building its wait set
    makes rclpy raise, which is a shutdown, not an error)."""
    try:
        executor.spin_once(timeout_sec=timeout_sec)
    except _rclpy.RCLError:
        if executor.context.ok():
            raise
        return False
    return executor.context.ok()


def spin_yielding(executor: Executor, pause_s: float = SPIN_PAUSE_S) -> None:
    """``executor.spin()`` with a pause (GIL released) after each iteration; returns when the
    context shuts down (Ctrl-C)."""
    while executor.context.ok() and spin_once_or_stopped(executor):
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
