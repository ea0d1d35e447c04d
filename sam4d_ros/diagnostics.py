"""The node's /diagnostics message: one status per stream (processing, LiDAR, each camera, the
tracker, prompts), made from a snapshot of the node's status and its building blocks' counters.

``NodeDiagnostics.message()`` is what the diagnostics timer publishes; it reads only snapshots
(``sam4d_ros.status``, the synchronizer's counters, the prompt accounting) and never waits for the
tracker. The DiagnosticStatus builders themselves are in ``sam4d_ros.outputs``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sam4d_ros.budget import BudgetWatch
from sam4d_ros.conversions.stamps import format_stamp
from sam4d_ros.memory import HeapTrimmer, rss_mb
from sam4d_ros.outputs import camera_status, diagnostic_array, processing_status, stream_status
from sam4d_ros.parameters import NodeParameters
from sam4d_ros.prompt_accounting import PromptAccounting
from sam4d_ros.requests import RequestQueue
from sam4d_ros.status import NodeStatus, StatusSnapshot, StreamState
from sam4d_ros.sync import SweepSynchronizer, SyncCounters

__all__ = ["JUMP_REPORT_S", "STALE_SWEEP_S", "NodeDiagnostics"]

# /diagnostics keeps saying the tracker was reset after a time jump (or that the worker failed)
# for this long (wall clock).
JUMP_REPORT_S = 10.0
# The LiDAR stream is reported stale when no sweep arrived for this long (wall clock).
STALE_SWEEP_S = 2.0


@dataclass
class NodeDiagnostics:
    """The sources of /diagnostics. params: the node's current parameters (they change at run
    time). tf_rejected: transforms the TF listener rejected so far."""

    name: str
    hardware_id: str
    params: Callable[[], NodeParameters]
    model_summary: str
    status: NodeStatus
    sync: SweepSynchronizer
    requests: RequestQueue
    prompts: PromptAccounting
    budget: BudgetWatch
    trimmer: HeapTrimmer
    tf_rejected: Callable[[], int]

    def message(self, stamp: Any = None) -> Any:
        """The current diagnostic_msgs/DiagnosticArray (``stamp``: its header stamp)."""
        p, st, sync, now = (
            self.params(),
            self.status.snapshot(),
            self.sync.counters(),
            time.monotonic(),
        )
        statuses = [self._processing(p, st, sync, now), self._lidar(p, st, now)]
        for cam in p.cameras:
            state = st.cameras.get(cam.name, StreamState())
            statuses.append(
                camera_status(
                    f"{self.name}: camera {cam.name}", sync.cameras.get(cam.name),
                    error=state.error, missing=st.camera_missing.get(cam.name),
                    values={"topic": cam.subscribed_image_topic, "errors": state.errors},
                    hardware_id=self.hardware_id,
                )
            )  # fmt: skip
        statuses += [self._tracker(st, now), self._prompts(p)]
        return diagnostic_array(statuses, stamp)

    def _processing(
        self, p: NodeParameters, st: StatusSnapshot, sync: SyncCounters, now: float
    ) -> Any:
        errors = []
        if st.worker_error and now - st.worker_error[0] < JUMP_REPORT_S:
            errors.append(f"worker error: {st.worker_error[1]}")
        latency = st.last_latency_ms
        return processing_status(
            f"{self.name}: processing", st.last_processing_ms, p.processing_budget_ms,
            errors=errors, hardware_id=self.hardware_id,
            values={
                "model": self.model_summary,
                "sweeps_received": sync.sweeps_received,
                "sweeps_processed": st.processed,
                "sweeps_dropped": sync.superseded,
                "sweeps_failed": st.failed,
                "sweeps_skipped": st.skipped,
                "pipeline_latency_ms": latency if latency is not None else "n/a",
                **self.budget.values(),
                "rss_mb": f"{rss_mb() or 0.0:.0f}",
                "heap_trims": self.trimmer.trims,
                **{f"published.{k}": v for k, v in sorted(st.published.items())},
            },
        )  # fmt: skip

    def _lidar(self, p: NodeParameters, st: StatusSnapshot, now: float) -> Any:
        warnings = [st.lidar.warning] if st.lidar.warning else []
        if st.last_sweep_wall is None:
            warnings.append(f"no sweep received on {p.lidar_topic} yet")
        elif now - st.last_sweep_wall > STALE_SWEEP_S:
            warnings.append(
                f"no sweep received for {now - st.last_sweep_wall:.1f} s on {p.lidar_topic}"
            )
        return stream_status(
            f"{self.name}: lidar", errors=[st.lidar.error] if st.lidar.error else [],
            warnings=warnings, hardware_id=self.hardware_id,
            values={
                "topic": p.lidar_topic,
                "last_stamp": format_stamp(st.last_stamp_ns) if st.last_stamp_ns else "n/a",
                "pose_source": st.pose_source or "n/a",
                "errors": st.lidar.errors,
                "tf_transforms_rejected": self.tf_rejected(),
            },
        )  # fmt: skip

    def _tracker(self, st: StatusSnapshot, now: float) -> Any:
        warnings = []
        if st.last_jump and now - st.last_jump[0] < JUMP_REPORT_S:
            warnings.append(st.last_jump[1])
        return stream_status(
            f"{self.name}: tracker", warnings=warnings, hardware_id=self.hardware_id,
            values={
                "objects": len(st.tracker_ids),
                "object_ids": st.tracker_ids or "none",
                "buffer_frames": st.tracker_stats.get("buffer_frames", 0),
                "pending_prompts": st.tracker_stats.get("pending_prompts", 0),
                "time_jumps": st.time_jumps,
                "resets": st.tracker_resets,
            },
        )  # fmt: skip

    def _prompts(self, p: NodeParameters) -> Any:
        values, warnings = self.prompts.diagnostic_values()
        return stream_status(
            f"{self.name}: prompts", warnings=warnings, hardware_id=self.hardware_id,
            values={
                "queued": len(self.requests),
                "queue_size": self.requests.capacity,
                "topic_depth": p.prompt_depth,
                **values,
            },
        )  # fmt: skip
