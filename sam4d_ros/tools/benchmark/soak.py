"""The soak: the bag played pass after pass (each pass from its start: the node resets and the
same prompts are sent again, so the set of tracked objects stays fixed) for a number of minutes,
with the node's RSS sampled all along and the latency per pass; :func:`memory_growth` states the
growth per hour after the warm-up.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sam4d_ros.tools.benchmark.stats import summarize

__all__ = ["memory_growth", "run_soak"]

# The node reports no live tensor memory of its own (its /diagnostics give the tracker's object,
# buffer and pending-prompt counts): the soak records RSS only.
TENSOR_MEMORY = "not exposed by the node: RSS only"


def memory_growth(
    t_s: Sequence[float], rss_mb: Sequence[float], warmup_s: float
) -> dict[str, float | bool | None]:
    """Growth of RSS after ``warmup_s`` (seconds from the first sample): the first and last
    values (medians of the first / last 10 % of the samples after the warm-up), the change in
    %, the least-squares slope in MB/h and in % of the post-warm-up start per hour.

    ``enough`` says whether at least a minute of samples follows the warm-up; if not, the whole
    run is used.
    """
    t = np.asarray(t_s, dtype=np.float64)
    m = np.asarray(rss_mb, dtype=np.float64)
    out: dict[str, float | bool | None] = {
        "rss_start_mb": None, "rss_end_mb": None, "growth_percent": None, "mb_per_hour": None,
        "percent_per_hour": None, "rss_max_mb": float(m.max()) if m.size else None,
        "enough": False, "hwm_mb": None,
    }  # fmt: skip
    if t.size < 2:
        return out
    t = t - t[0]
    keep = t >= warmup_s
    enough = bool(keep.any() and t[-1] - warmup_s >= 60.0 and keep.sum() >= 4)
    if not enough:
        keep = np.ones_like(t, dtype=bool)
    tk, mk = t[keep], m[keep]
    k = max(1, int(round(0.1 * mk.size)))
    start, end = float(np.median(mk[:k])), float(np.median(mk[-k:]))
    slope = float(np.polyfit(tk, mk, 1)[0]) * 3600.0 if tk.size >= 2 and np.ptp(tk) > 0 else 0.0
    out.update(
        rss_start_mb=start,
        rss_end_mb=end,
        growth_percent=100.0 * (end - start) / start if start > 0 else None,
        mb_per_hour=slope,
        percent_per_hour=100.0 * slope / start if start > 0 else None,
        enough=enough,
    )
    return out


def run_soak(
    session: Any,
    trial: Callable[..., Any],
    args: argparse.Namespace,
    with_gt: bool,
    say: Callable[[str], None],
) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Passes of the bag at ``--soak-rate`` (or ``--start-rate``) until ``--soak`` minutes are
    up; with ``--faults`` every third pass is a fault episode. Returns (soak summary, memory
    series)."""
    rate = args.soak_rate or args.start_rate
    t0 = time.monotonic()
    end = t0 + 60.0 * args.soak
    passes: list[dict[str, Any]] = []
    latencies: list[float] = []
    sent = processed = 0
    faults: list[dict[str, Any]] = []
    fault_iter = None
    if args.faults:
        from sam4d_ros.tools.benchmark.faults import episodes

        fault_iter = iter(episodes(args))
    n = 0
    while time.monotonic() < end:
        n += 1
        if fault_iter is not None and n % 3 == 0:
            from sam4d_ros.tools.benchmark.faults import run_episode

            ep = next(fault_iter, None)
            if ep is None:
                fault_iter = None
            else:
                faults.append(run_episode(session, trial, rate, ep, say))
                continue
        t = trial(rate, "soak")
        sent += t.sweeps_sent
        processed += t.sweeps_processed
        latencies += t.latencies_ms
        # Bounded: a soak of hours keeps a reservoir of latencies, not all.
        if len(latencies) > 100_000:
            latencies = latencies[::2]
        passes.append({
            "t_min": (time.monotonic() - t0) / 60.0,
            "latency_p50_ms": t.latency_ms["p50"],
            "latency_p90_ms": t.latency_ms["p90"],
            "dropped": t.sweeps_dropped,
            "rss_mb_max": t.resources["rss_mb_max"],
        })  # fmt: skip
    samples = session.sampler.series()
    ts = [s.t_s - samples[0].t_s for s in samples] if samples else []
    rss = [s.rss_mb for s in samples]
    # Samples from the start of the soak (the node's start-up is before it).
    first = next((i for i, s in enumerate(samples) if s.t_s >= t0), 0)
    growth = memory_growth(
        [s.t_s for s in samples[first:]], rss[first:], warmup_s=60.0 * args.warmup
    )
    growth["hwm_mb"] = samples[-1].hwm_mb if samples else None
    p50s = [p["latency_p50_ms"] for p in passes if p["latency_p50_ms"] is not None]
    summary = {
        "minutes_run": (time.monotonic() - t0) / 60.0,
        "rate": rate,
        "passes": len(passes),
        "sweeps_sent": sent,
        "sweeps_processed": processed,
        "node_alive": session.node.alive(),
        "tensor_memory": TENSOR_MEMORY,
        "warmup_s": 60.0 * args.warmup,
        "growth": growth,
        "latency_ms": summarize(latencies),
        "latency_p50_first": p50s[0] if p50s else None,
        "latency_p50_last": p50s[-1] if p50s else None,
        "per_pass": passes,
        "faults": faults,
    }
    say(
        f"[benchmark] soak: {summary['minutes_run']:.1f} min, {len(passes)} passes; RSS "
        f"{growth['rss_start_mb'] or 0:.0f} -> {growth['rss_end_mb'] or 0:.0f} MB after warm-up, "
        f"{growth['mb_per_hour'] or 0:.1f} MB/h"
    )
    return summary, {"t_s": ts, "rss_mb": rss}
