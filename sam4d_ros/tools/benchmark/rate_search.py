"""Peak-throughput search over playback rates (as ros2_benchmark's autotune): the highest rate at
which the node drops fewer than a threshold of the sweeps it is sent.

Pure: :func:`find_peak_rate` calls a ``measure(rate) -> drop fraction`` function (a real playback
in the benchmark, a synthetic responder in the tests) and never touches ROS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["DEFAULT_MAX_DROP", "RateSearch", "find_peak_rate"]

DEFAULT_MAX_DROP = 0.05


@dataclass
class RateSearch:
    """Outcome of a search.

    peak_rate: the highest rate measured with drops below ``max_drop`` (None when even
    ``min_rate`` dropped too many). failing_rate: the lowest rate measured at or above it
    (None when ``max_rate`` passed). trials: (rate, drop fraction) in the order measured.
    resolved: whether failing_rate / peak_rate <= 1 + resolution (the bracket closed).
    """

    peak_rate: float | None
    failing_rate: float | None
    max_drop: float
    resolution: float
    trials: list[tuple[float, float]] = field(default_factory=list)
    resolved: bool = False


def find_peak_rate(
    measure: Callable[[float], float],
    start: float,
    *,
    max_drop: float = DEFAULT_MAX_DROP,
    resolution: float = 0.15,
    min_rate: float = 1e-3,
    max_rate: float = 100.0,
    max_trials: int = 12,
) -> RateSearch:
    """Bracket the peak rate by doubling (or halving) from ``start``, then bisect geometrically
    until the failing rate is within ``1 + resolution`` of the passing one.

    Drops are assumed to grow with the rate (a node that keeps up at rate r keeps up below it);
    each rate is measured once. ``max_trials`` bounds the cost: the result says whether the
    bracket closed.
    """
    if not (min_rate > 0 and max_rate >= min_rate and min_rate <= start <= max_rate):
        raise ValueError(
            f"need 0 < min_rate <= start <= max_rate, got {min_rate}, {start}, {max_rate}"
        )
    if not (0 < max_drop < 1 and resolution > 0):
        raise ValueError(f"need 0 < max_drop < 1 and resolution > 0, got {max_drop}, {resolution}")
    out = RateSearch(None, None, max_drop, resolution)

    def passes(rate: float) -> bool:
        drop = float(measure(rate))
        out.trials.append((rate, drop))
        return drop < max_drop

    lo: float | None = None  # highest passing rate
    hi: float | None = None  # lowest failing rate
    rate = start
    # Bracket.
    while len(out.trials) < max_trials:
        if passes(rate):
            lo = rate
            if hi is not None or rate >= max_rate:
                break
            rate = min(rate * 2.0, max_rate)
        else:
            hi = rate
            if lo is not None or rate <= min_rate:
                break
            rate = max(rate / 2.0, min_rate)
    # Bisect (geometric: rates span orders of magnitude).
    while lo is not None and hi is not None and hi / lo > 1.0 + resolution:
        if len(out.trials) >= max_trials:
            break
        mid = math.sqrt(lo * hi)
        if passes(mid):
            lo = mid
        else:
            hi = mid
    out.peak_rate, out.failing_rate = lo, hi
    out.resolved = (
        (lo is not None and hi is not None and hi / lo <= 1.0 + resolution)
        or (lo is not None and lo >= max_rate)
        or (hi is not None and hi <= min_rate)
    )
    return out
