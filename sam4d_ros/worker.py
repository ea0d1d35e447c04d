"""The worker thread of ``sam4d_node``: the one place that drives the tracker (it is not thread
safe to drive from several places at once), off the ROS callbacks.

It applies queued requests (prompts, removals, resets; ``sam4d_ros.requests``) between steps,
waits for the newest synced sweep (a queue of one: older ready sweeps are superseded and counted as
drops), builds the frame, steps the tracker and publishes (``sam4d_ros.publishers``). Time going
backwards resets the tracker (``sam4d_ros.time_jumps``). No error stops it: each one is reported on
/diagnostics (``sam4d_ros.status``) and logged, throttled per stream.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from sam4d_ros.budget import BudgetWatch
from sam4d_ros.conversions.stamps import format_stamp
from sam4d_ros.frame_builder import BuiltFrame, FrameBuilder, FrameBuildError
from sam4d_ros.memory import HeapTrimmer
from sam4d_ros.outputs import OutputError
from sam4d_ros.parameters import NodeParameters
from sam4d_ros.prompt_accounting import PromptAccounting
from sam4d_ros.prompts import (
    CameraGeometry,
    ObjectIdRegistry,
    PromptBatch,
    PromptContext,
    PromptConverter,
    PromptError,
    validate_remove,
)
from sam4d_ros.publishers import OutputPublishers
from sam4d_ros.requests import Request, RequestQueue
from sam4d_ros.status import NodeStatus
from sam4d_ros.sync import SweepSynchronizer, SyncedSweep
from sam4d_ros.tf_buffer import TfBuffer, TfLookupError
from sam4d_ros.throttled_log import LogThrottle
from sam4d_ros.time_jumps import backward_jump_s, clear_stale_tf

__all__ = ["TrackerWorker"]

_NS = 1_000_000_000
# How long the worker sleeps at most before looking at the request queue again (prompt latency
# while no sweep arrives).
_POLL_S = 0.05
# Requests nobody waits for (topics): the log is their only answer.
_TOPIC_KINDS = ("prompt", "clicked_point", "image_click")


class TrackerWorker:
    """Owns the tracker and the frame building (see the module docstring).

    ``params`` is swapped by the node when parameters change at run time. ``alive()`` is False
    once the node's context is shut down (errors are then not reported).
    """

    def __init__(
        self,
        params: NodeParameters,
        tracker: Any,
        *,
        sync: SweepSynchronizer,
        tf: TfBuffer,
        requests: RequestQueue,
        prompts: PromptAccounting,
        status: NodeStatus,
        outputs: OutputPublishers,
        logger: Any,
        throttle: LogThrottle,
        alive: Callable[[], bool],
    ) -> None:
        self.params = params
        self.tracker = tracker
        self.sync, self.tf, self.requests, self.prompts = sync, tf, requests, prompts
        self.status, self.outputs = status, outputs
        self._log, self._throttle, self._alive = logger, throttle, alive
        self.builder = FrameBuilder(params.frame_builder_config(), tf)
        self.ids = ObjectIdRegistry(params.max_objects)
        self.converter = PromptConverter(self.ids, params.prompt_limits())
        self.budget = BudgetWatch(params.processing_budget_ms)
        self.trimmer = HeapTrimmer()  # freed memory back to the system (sam4d_ros/memory.py)
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # The newest frame stepped (outputs after prompts are published on it) and the stamps of
        # the frames the tracker buffers (image clicks snap to them).
        self.last_built: BuiltFrame | None = None
        self.frame_stamps: collections.deque[int] = collections.deque(maxlen=256)
        self.lidar_frame: str | None = None

    # ------------------------------------------------------------------ thread

    def start(self) -> None:
        if self._thread is None:
            self.stopping.clear()
            self._thread = threading.Thread(target=self._run, name="sam4d_worker", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float) -> None:
        """Stop the thread (it finishes the step it is in)."""
        self.stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout_s)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.serve_requests()
                self.trimmer.maybe_trim()
                for sweep in self.sync.wait_ready(timeout_s=_POLL_S, newest_only=True):
                    if self.stopping.is_set():
                        break
                    self.process_sweep(sweep)
            except Exception as e:  # never let the worker die: report and go on
                self.failed(e)

    def failed(self, e: BaseException) -> None:
        """Report an unexpected error (the worker goes on)."""
        if self.stopping.is_set() or not self._alive():
            return  # shutting down: publishers and the context go away under the worker
        text = f"{type(e).__name__}: {e}"
        self.status.worker_failed(text)
        self._throttle.log(
            "worker", "error", f"unexpected error in the worker (it goes on): {text}\n"
            + "".join(traceback.format_exception(type(e), e, e.__traceback__)[-6:])
        )  # fmt: skip

    # ------------------------------------------------------------------ requests

    def serve_requests(self) -> None:
        """Apply every queued request (between tracker steps)."""
        for req in self.requests.take_all():
            try:
                self._serve(req)
            except PromptError as e:
                req.answer(False, str(e))
            except Exception as e:  # a bug: answer, report, keep the worker alive
                req.answer(False, f"internal error: {type(e).__name__}: {e}")
                self.failed(e)
            finally:
                if not req.done.is_set():
                    req.answer(False, "internal error: the request was not answered")
                self._account(req)
                self._reconcile_ids()

    def _account(self, req: Request) -> None:
        if req.success:
            self.prompts.applied(req.kind)
        else:
            self.prompts.failed(req.kind, req.source, req.message)
        if req.kind in _TOPIC_KINDS and req.success:
            self._log.info(f"{req.source}: {req.message}")
        elif req.kind in _TOPIC_KINDS:
            self._throttle.log(
                f"prompt:{req.source}", "warning", f"{req.source} rejected: {req.message}"
            )

    def _serve(self, req: Request) -> None:
        if req.kind == "reset":
            n_obj, n_frames = len(self.tracker.object_ids), len(self.tracker.buffered_stamps)
            self.reset_tracking()
            self.status.tracker_reset()
            self._log.info("tracker reset on request")
            req.answer(
                True, f"tracker reset: {n_obj} object(s) and {n_frames} buffered frame(s) forgotten"
            )
            return
        if req.kind == "remove":
            ids = validate_remove(req.payload, self.ids.tracked())
            removed = self.tracker.remove_objects(ids)
            self.ids.release(ids)
            self.trimmer.request()
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
            raise PromptError(f"unknown request kind {req.kind}")
        self._apply_batch(req, batch)

    def _apply_batch(self, req: Request, batch: PromptBatch) -> None:
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
        if result is not None and self.last_built is not None:
            # Show the new objects at once (a paused bag sends no next sweep). The prompt is
            # applied whatever happens here: a publishing problem is only reported.
            try:
                self._publish(result, self.last_built, None)
            except Exception as e:
                self.failed(e)

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
            lidar_frame=self.lidar_frame,
            newest_stamp_ns=self.frame_stamps[-1] if self.frame_stamps else None,
            frame_buffer_s=self.params.frame_buffer_s,
            tf=self.tf,
        )

    def _image_click_stamp(self, camera: str) -> int | None:
        """The frame a click on ``camera``'s image refers to: the camera's newest image (what a
        viewer shows). At or before the newest sweep it snaps to the nearest tracked sweep (a
        dropped sweep's image goes to its neighbour); after it, the click waits for its sweep."""
        stamp = self.sync.latest_image_stamp_ns(camera)
        if stamp is None or not self.frame_stamps:
            return None
        if stamp > self.frame_stamps[-1] + int(self.tracker.config.stamp_tolerance_s * _NS):
            return stamp
        return min(self.frame_stamps, key=lambda s: abs(s - stamp))

    def _reconcile_ids(self) -> None:
        """Forget ids the tracker no longer has (pending prompts it dropped): the registry must
        not count them against max_objects or refuse their removal forever. Also refreshes the
        tracker snapshot that /diagnostics reports."""
        live = self.tracker.object_ids
        stats = self.tracker.memory_stats()
        stale = self.ids.tracked() - set(live)
        if stale and not stats["pending_prompts"]:
            self.ids.release(stale)
        self.status.tracker_changed(live, stats)

    def reset_tracking(self) -> None:
        self.tracker.reset()
        self.trimmer.request()
        self.ids.clear()
        self.builder.reset()
        self.last_built = None
        self.frame_stamps.clear()

    # ------------------------------------------------------------------ sweeps

    def process_sweep(self, sweep: SyncedSweep) -> None:
        """Build, track and publish one synced sweep."""
        t0 = time.perf_counter()
        jump_s = backward_jump_s(
            sweep.stamp_ns, self.frame_stamps[-1] if self.frame_stamps else None,
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
            self.status.sweep_skipped(f"sweep skipped: {e}")
            self._throttle.log(
                "step", "warning", f"sweep at {format_stamp(sweep.stamp_ns)} s skipped: {e}"
            )
            return
        self.last_built = built
        self.lidar_frame = built.lidar_frame
        self.frame_stamps.append(built.stamp_ns)
        self._reconcile_ids()
        self._publish(result, built, t0)

    def _on_time_jump(self, sweep: SyncedSweep, jump_s: float) -> None:
        message = (
            f"time jumped back by {jump_s:.3f} s (sweep at {format_stamp(sweep.stamp_ns)} s): "
            "tracker reset"
        )
        n_obj = len(self.tracker.object_ids)
        self.reset_tracking()
        p = self.params
        if clear_stale_tf(
            self.tf, p.fixed_frame, self._lidar_frame_of(sweep), sweep.stamp_ns,
            p.sync_time_jump_threshold_s,
        ):  # fmt: skip
            message += ", dynamic TF cleared"
        self.status.time_jumped(message)
        self._log.warning(f"{message} ({n_obj} object(s) dropped; looped bag?)")

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
                self.tf.wait_for_transform(fixed, lidar, sweep.stamp_ns, p.tf_timeout_s)
            except TfLookupError:
                pass
        try:
            built = self.builder.build(sweep)
        except FrameBuildError as e:
            self.status.sweep_failed(sweep.stamp_ns, str(e))
            self._throttle.log(
                f"build:{type(e).__name__}", "warning",
                f"sweep at {format_stamp(sweep.stamp_ns)} s skipped: {e}",
            )  # fmt: skip
            return None
        self.status.sweep_built(
            built.stamp_ns, built.pose_source, built.warnings, built.camera_errors, built.missing
        )
        for cam, err in built.camera_errors.items():
            self._throttle.log(
                f"camera:{cam}", "warning", f"camera '{cam}' left out of the sweep: {err}"
            )
        if built.warnings:
            self._throttle.log("lidar_warnings", "warning", "; ".join(built.warnings))
        return built

    def _publish(self, result: Any, built: BuiltFrame, t0: float | None) -> None:
        """Publish what is subscribed. t0: start of the sweep's processing (None for a
        republication after prompts: no timing is reported for it)."""
        try:
            counts, processing_ms, latency_ms = self.outputs.publish(result, built, t0)
        except OutputError as e:
            self.failed(e)
            return
        self.status.published(counts, processing_ms, latency_ms)
        if processing_ms is not None:  # logged on a change of state only (sam4d_ros.budget)
            self.budget.budget_ms = self.params.processing_budget_ms
            self.budget.log(self._log, processing_ms)
