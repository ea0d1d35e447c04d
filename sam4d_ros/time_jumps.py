"""When a sweep's stamp means time went backwards, so that the tracker must be reset.

The synchronizer flags a sweep stamped more than ``sync.time_jump_threshold_s`` before the
previous sweep it received. The worker also compares each sweep with the newest frame the tracker
holds: sweeps can be superseded (latest wins), skipped or fail to build, so the previous sweep
received is not always the tracker's newest frame, and several small backward steps add up. A
sweep less than the threshold back is a reordered or repeated sweep, which the tracker skips.

TF jumps with the sweeps: ``JumpAwareTfListener`` clears the dynamic /tf history when /tf goes
back in time, and ``clear_stale_tf`` clears it when a sweep that jumped back arrives before the new
timeline's transforms (interpolating between two timelines would give nonsense poses).
"""

from __future__ import annotations

from typing import Any

from sam4d_ros.conversions.stamps import stamp_to_ns
from sam4d_ros.tf_buffer import TfBuffer, TfListener, TfLookupError
from sam4d_ros.throttled_log import LogThrottle

__all__ = ["JumpAwareTfListener", "backward_jump_s", "clear_stale_tf"]

_NS = 1_000_000_000


def backward_jump_s(
    stamp_ns: int,
    newest_frame_ns: int | None,
    threshold_s: float,
    flagged_jump_s: float = 0.0,
) -> float:
    """How far (seconds, > 0) time jumped back at a sweep, or 0.0 when it did not.

    stamp_ns: the sweep's stamp. newest_frame_ns: the tracker's newest frame (None: no frame).
    threshold_s: the tolerance (``sync.time_jump_threshold_s``). flagged_jump_s: the jump the
    synchronizer flagged on this sweep (0.0: none); the larger of the two is returned.
    """
    jump = max(0.0, float(flagged_jump_s))
    if newest_frame_ns is not None:
        back_ns = int(newest_frame_ns) - int(stamp_ns)
        if back_ns > int(round(float(threshold_s) * _NS)):
            jump = max(jump, back_ns / _NS)
    return jump


def clear_stale_tf(
    tf: TfBuffer, fixed_frame: str, lidar_frame: str, stamp_ns: int, threshold_s: float
) -> bool:
    """After a sweep jumped back to ``stamp_ns``: clear the dynamic TF history (static kept) when
    the ego pose's newest transform is still from the old timeline (more than ``threshold_s``
    after the sweep). /tf usually jumps with the sweeps and the listener has cleared it already;
    if this sweep came first, the old timeline's transforms must go now. True when cleared."""
    try:
        latest = (
            tf.latest_common_time(fixed_frame, lidar_frame) if fixed_frame and lidar_frame else None
        )
    except TfLookupError:
        latest = None
    if latest is not None and latest > stamp_ns + int(round(threshold_s * _NS)):
        tf.clear(keep_static=True)
        return True
    return False


class JumpAwareTfListener(TfListener):
    """A TfListener whose /tf history is cleared when /tf jumps back in time (a looped bag) before
    the new transforms go in: interpolating between two timelines would give nonsense poses.
    /tf_static is kept (latched, it will not be sent again)."""

    def __init__(
        self, node: Any, buffer: TfBuffer, jump_threshold_s: float, throttle: LogThrottle
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
