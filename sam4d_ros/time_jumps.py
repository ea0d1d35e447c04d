"""When a sweep's stamp means time went backwards, so that the tracker must be reset.

The synchronizer flags a sweep stamped more than ``sync.time_jump_threshold_s`` before the
previous sweep it received. The worker also compares each sweep with the newest frame the tracker
holds: sweeps can be superseded (latest wins), skipped or fail to build, so the previous sweep
received is not always the tracker's newest frame, and several small backward steps add up. A
sweep less than the threshold back is a reordered or repeated sweep, which the tracker skips.
"""

from __future__ import annotations

__all__ = ["backward_jump_s"]

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
