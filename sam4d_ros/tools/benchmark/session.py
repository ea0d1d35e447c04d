"""The node under benchmark in its own process, the monitor beside it, and one trial: the bag
played once at a rate, prompted, and what came out (:meth:`BenchSession.run_trial`).
"""

from __future__ import annotations

import argparse
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam4d_ros.tools.benchmark.monitor import Monitor, TrialData
from sam4d_ros.tools.benchmark.stats import (
    ProcessSampler,
    bag_clock_to_wall_ms,
    jitter_ms,
    summarize,
)
from sam4d_ros.tools.demo.bag_info import STAMP_MATCH_NS, BagInfo, GroundTruth
from sam4d_ros.tools.demo.errors import DemoError
from sam4d_ros.tools.demo.node_session import NODE_NAME, NodeProcess, node_parameters
from sam4d_ros.tools.demo.prompts import ScheduledPrompt

__all__ = ["BenchSession", "TrialResult"]

_READY_TIMEOUT_S = 180.0
# After the last sweep, the node is idle once nothing came for this long (plus the slowest
# processing seen).
_IDLE_GRACE_S = 3.0
_COUNTERS = (
    "sweeps_received",
    "sweeps_processed",
    "sweeps_dropped",
    "sweeps_failed",
    "sweeps_skipped",
)


@dataclass
class TrialResult:
    """One playback of the bag at one rate (what report.json holds per trial)."""

    rate: float
    label: str
    sweeps_sent: int
    sweeps_processed: int
    sweeps_dropped: int
    drop_fraction: float
    frame_rate_hz: float | None
    latency_ms: dict[str, Any]  # end to end, by the monitor: count/mean/p50/p90/p99/max
    jitter_ms: float | None
    processing_ms: dict[str, Any]  # the node's debug/processing_time_ms
    pipeline_ms: dict[str, Any]  # the node's debug/pipeline_latency_ms in wall ms (/ rate)
    stages_ms: dict[str, dict[str, Any]]  # per stage, when the node publishes them
    node_counters: dict[str, int | None]  # deltas of the node's /diagnostics counters
    resources: dict[str, float | None]
    diagnostics_levels: dict[str, dict[str, int]]
    prompts: list[dict[str, Any]]
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    node_alive: bool = True
    latencies_ms: list[float] = field(default_factory=list)  # raw, for the CDF plot
    matched_stamps: list[int] = field(default_factory=list)  # stamps of latencies_ms
    out_wall_s: list[float] = field(default_factory=list)  # when each of them came out


class BenchSession:
    """Starts ``sam4d_node`` (``python -m sam4d_ros.node``) with the demo's parameters for the
    bag, an rclpy context with the :class:`Monitor`, and a :class:`ProcessSampler` on the node.
    ``extra_params``: more node parameters (e.g. ``model.runtime``)."""

    def __init__(
        self,
        info: BagInfo,
        args: argparse.Namespace,
        out: Path,
        extra_params: dict[str, Any] | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.signals import SignalHandlerOptions

        from sam4d_ros.parameters import write_params_file

        self.info = info
        self.args = args
        self.log = log
        self.t0 = time.monotonic()
        values = node_parameters(info, args)
        values.update(extra_params or {})
        params = write_params_file(out / "node_params.yaml", values)
        files = [params] + ([Path(args.params_file)] if args.params_file else [])
        self.node = NodeProcess(files, out / "node.log")
        self.context = Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.monitor: Monitor | None = None
        self.sampler: ProcessSampler | None = None
        try:
            self.monitor = Monitor(self.context, info)
            self._wait_ready()
            self.sampler = ProcessSampler(
                self.node.proc.pid, period_s=0.5, gpu=str(args.device).startswith("cuda")
            ).start()
            self.monitor.prime_camera_info()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        assert self.monitor is not None
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not self.monitor.add_client.wait_for_service(timeout_sec=0.2):
            if not self.node.alive():
                raise DemoError(f"{NODE_NAME} exited at start-up:\n{self.node.log_tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"{NODE_NAME} not ready after {_READY_TIMEOUT_S:g} s")
        # Its subscriptions to the sensor topics exist (the monitor's own are on the LiDAR and
        # CameraInfo topics).
        images = {c.subscribed_topic for c in self.info.cameras.values()}
        for topic in self.info.sensor_topics:
            want = 1 if topic in images else 2
            while self.monitor.node.count_subscribers(topic) < want:
                if time.monotonic() > deadline:
                    raise DemoError(f"{NODE_NAME} does not subscribe to {topic}")
                time.sleep(0.05)
        self.log(
            f"{NODE_NAME} ready after {time.monotonic() - self.t0:.1f} s (pid {self.node.proc.pid})"
        )

    def close(self) -> int | None:
        """Stop everything; returns the node's exit status."""
        import rclpy

        if self.sampler is not None:
            self.sampler.stop()
        if self.monitor is not None:
            self.monitor.close()
        code = self.node.stop()
        rclpy.try_shutdown(context=self.context)
        return code

    # -- one trial

    def counters(self) -> dict[str, int | None]:
        assert self.monitor is not None
        self.monitor.wait_fresh_diagnostics()
        values = self.monitor.node_values(": processing")
        out: dict[str, int | None] = {}
        for k in _COUNTERS:
            try:
                out[k] = int(values[k])
            except (KeyError, ValueError):
                out[k] = None
        return out

    def make_player(
        self,
        rate: float,
        start_offset_s: float = 0.0,
        message_filter: Callable[[str, int], bool] | None = None,
        node_name: str = "bag_player",
    ) -> Any:
        from sam4d_ros.tools.play import BagPlayer

        info = self.info
        cams = [c.subscribed_topic for c in info.cameras.values()]
        return BagPlayer(
            info.path,
            context=self.context,
            rate=rate,
            clock_hz=100.0,
            topics=info.played_topics,
            remap=info.remap,
            start_offset_s=start_offset_s,
            # The node's subscriptions (the monitor subscribes to the LiDAR too: 2 there).
            wait_for_subscribers=1 if cams else 2,
            wait_topics=cams + info.tf_topics if cams else [info.lidar_topic],
            wait_timeout_s=60.0,
            delay_s=0.5,
            log=None,
            message_filter=message_filter,
            node_name=node_name,
        )

    def run_trial(
        self,
        rate: float,
        prompts: Sequence[ScheduledPrompt],
        *,
        label: str = "",
        gt: GroundTruth | None = None,
        progress: Callable[[int, int], None] | None = None,
        during: Callable[[Any, TrialData], None] | None = None,
        message_filter: Callable[[str, int], bool] | None = None,
        stop: threading.Event | None = None,
    ) -> TrialResult:
        """Play the bag once at ``rate`` (the node sees time jump back to the bag's start and
        resets), send the prompts, wait until the node is idle; returns what was measured.

        ``during(player, data)`` runs in the calling thread while the bag plays (fault
        injection); ``progress(sent, total)`` is called a few times a second.
        """
        assert self.monitor is not None and self.sampler is not None
        mon = self.monitor
        info = self.info
        before = self.counters()
        data = mon.begin_trial(collect=gt is not None)
        trial_prompts = [dataclasses.replace(p) for p in prompts]
        player = self.make_player(rate, message_filter=message_filter)
        t_start = time.monotonic()
        try:
            player.start()
            sender = threading.Thread(
                target=self._send_prompts, args=(trial_prompts, player), daemon=True
            )
            sender.start()
            if during is not None:
                during(player, data)
            total = len(info.sweep_stamps_ns)
            while player.running:
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                if progress is not None:
                    progress(data.book.sent, total)
                time.sleep(0.2)
            player.wait()
            self._wait_idle(data)
            sender.join(30.0)
        finally:
            player.close()
        if progress is not None:
            progress(data.book.sent, len(info.sweep_stamps_ns))
        t_end = time.monotonic()
        after = self.counters()
        return self._result(rate, label, data, trial_prompts, before, after, t_start, t_end, gt)

    def _send_prompts(self, prompts: list[ScheduledPrompt], player: Any) -> None:
        """Each prompt once the node has published outputs for its frame or a later one in this
        trial: the node then applies it on that frame in its buffer and carries the object
        forward (sent earlier, it could land before the reset that the trial's first sweep
        causes)."""
        from sam4d_ros.srv import AddPrompts
        from sam4d_ros.tools.demo.node_session import prompt_message

        assert self.monitor is not None
        mon = self.monitor
        for p in sorted(prompts, key=lambda p: p.stamp_ns):
            while True:
                newest = mon.newest_output()
                if newest is not None and newest >= p.stamp_ns - STAMP_MATCH_NS:
                    break
                if (
                    not player.running
                    and mon.last_output_wall is not None
                    and (time.monotonic() - mon.last_output_wall > _IDLE_GRACE_S)
                ):
                    p.success, p.message = False, "no output for its frame: not sent"
                    break
                time.sleep(0.005)
            if p.success is False:
                continue
            answer = mon.call(mon.add_client, AddPrompts.Request(prompts=[prompt_message(p)]))
            if answer is not None and not answer.success:
                # Refused (e.g. the frame left the node's buffer while we waited): once more,
                # on the newest frame it has, as the demo does.
                first = str(answer.message)
                time.sleep(0.2)
                answer = mon.call(mon.add_client, AddPrompts.Request(prompts=[prompt_message(p)]))
                if answer is not None and not answer.success:
                    answer.message = f"{first}; again: {answer.message}"
            if answer is None:
                p.success, p.message = False, "no answer from add_prompts"
                continue
            p.success, p.message = bool(answer.success), str(answer.message)
            p.object_id = (
                int(answer.object_ids[0]) if answer.success and answer.object_ids else None
            )

    def _wait_idle(self, data: TrialData) -> None:
        """Until the node published outputs for the last sweep sent, or nothing came for a
        while (it dropped the last sweeps)."""
        assert self.monitor is not None
        last = self.info.sweep_stamps_ns[-1]
        slowest = max(data.processing_ms, default=0.0) / 1e3
        deadline = time.monotonic() + 120.0
        while time.monotonic() < deadline and self.node.alive():
            newest = self.monitor.newest_output()
            if newest is not None and newest >= last - STAMP_MATCH_NS:
                break
            since = self.monitor.last_output_wall
            if since is not None and time.monotonic() - since > _IDLE_GRACE_S + slowest:
                break
            time.sleep(0.02)
        time.sleep(0.3)  # the last debug messages

    def _result(
        self,
        rate: float,
        label: str,
        data: TrialData,
        prompts: list[ScheduledPrompt],
        before: dict[str, int | None],
        after: dict[str, int | None],
        t0: float,
        t1: float,
        gt: GroundTruth | None,
    ) -> TrialResult:
        assert self.sampler is not None
        book = data.book
        delta = {
            k: (after[k] - before[k]) if after[k] is not None and before[k] is not None else None
            for k in _COUNTERS
        }
        accuracy: list[dict[str, Any]] = []
        if gt is not None:
            accuracy = self._score(prompts, data, gt)
        return TrialResult(
            rate=rate,
            label=label,
            sweeps_sent=book.sent,
            sweeps_processed=book.processed,
            sweeps_dropped=book.dropped,
            drop_fraction=book.drop_fraction(),
            frame_rate_hz=book.frame_rate_hz(),
            latency_ms=summarize(book.latencies_ms),
            jitter_ms=jitter_ms(book.out_wall_s),
            processing_ms=summarize(data.processing_ms),
            pipeline_ms=summarize(
                [bag_clock_to_wall_ms(x, rate) for x in data.pipeline_ms_bag_clock]
            ),
            stages_ms={k: summarize(v) for k, v in sorted(data.stages_ms.items())},
            node_counters=delta,
            resources=self.sampler.window(t0, t1),
            diagnostics_levels={k: dict(v) for k, v in data.levels.items()},
            prompts=[
                {
                    "prompt": p.spec.text,
                    "frame": p.frame_index,
                    "success": p.success,
                    "message": p.message,
                    "object_id": p.object_id,
                }
                for p in prompts
            ],
            accuracy=accuracy,
            wall_s=t1 - t0,
            node_alive=self.node.alive(),
            latencies_ms=list(book.latencies_ms),
            matched_stamps=list(book.matched_stamps),
            out_wall_s=list(book.out_wall_s),
        )

    def _score(
        self, prompts: list[ScheduledPrompt], data: TrialData, gt: GroundTruth
    ) -> list[dict[str, Any]]:
        """Per prompted object: per-frame IoU against the ground truth (the demo's scoring)."""
        from dataclasses import asdict

        from sam4d_ros.tools.demo.report import Outputs, score_object

        outputs = Outputs(dict(data.frames), [], [], dict(data.output_messages))
        out = []
        for p in prompts:
            if p.object_id is None:
                continue
            if p.gt_object_id is None:
                s = p.spec
                if s.modality == "image":
                    p.gt_object_id = gt.object_at_pixel(p.frame_index, str(s.camera), *s.point[:2])
                else:
                    p.gt_object_id = gt.object_at_point(p.frame_index, s.point)
            rep = score_object(p, self.info, outputs, gt)
            out.append(
                {
                    "object_id": rep.object_id,
                    "prompt": rep.prompt,
                    "gt_object_id": rep.gt_object_id,
                    "frames_evaluated": len(rep.evaluated),
                    "frames_no_output": sum(1 for f in rep.frames if f.status == "no_output"),
                    "mean_image_iou": rep.mean("image_iou"),
                    "mean_lidar_iou": rep.mean("lidar_iou"),
                    "per_frame": [asdict(f) for f in rep.frames],
                }
            )
        data.frames.clear()
        return out
