"""report.json, report.md and the PNG plots of a benchmark run (rate sweep, soak, faults)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from sam4d_ros.tools.benchmark.plots import Series, line_plot

__all__ = ["trial_dict", "write_report"]


def _f(v: Any, digits: int = 1) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def trial_dict(t: Any) -> dict[str, Any]:
    """A TrialResult as JSON (the per-sweep latencies rounded to 0.1 ms; stamps and output
    times left out)."""
    d = dataclasses.asdict(t)
    for raw in ("matched_stamps", "out_wall_s"):
        d.pop(raw, None)
    d["latencies_ms"] = [round(x, 1) for x in t.latencies_ms]
    return d


def _plots(rep: dict[str, Any], trials_by_runtime: dict[str, list[Any]], out: Path) -> list[str]:
    files = []
    for runtime, trials in trials_by_runtime.items():
        if not trials:
            continue
        sfx = "" if len(trials_by_runtime) == 1 else f"_{runtime}"
        cdf = []
        for t in sorted(trials, key=lambda t: t.rate):
            if t.latencies_ms:
                a = np.sort(np.asarray(t.latencies_ms))
                cdf.append(
                    Series(
                        f"rate {t.rate:.3g} ({t.label})" if t.label else f"rate {t.rate:.3g}",
                        a,
                        np.arange(1, a.size + 1) / a.size,
                    )
                )
        if cdf:
            files.append(
                line_plot(
                    out / f"latency_cdf{sfx}.png",
                    cdf[:8],
                    f"End-to-end latency CDF ({runtime})",
                    "latency (ms)",
                    "fraction of sweeps",
                    y_min=0.0,
                ).name
            )
        curve = sorted(
            (t for t in trials if t.label in ("", "search", "rate")), key=lambda t: t.rate
        )
        if len(curve) >= 1:
            r = [t.rate for t in curve]
            files.append(
                line_plot(
                    out / f"drops_vs_rate{sfx}.png",
                    [Series("dropped %", r, [100 * t.drop_fraction for t in curve], dots=True)],
                    f"Drops against playback rate ({runtime}); line: the 5 % limit",
                    "playback rate (x recorded speed)",
                    "dropped (%)",
                    hline=5.0,
                    y_min=0.0,
                ).name
            )
            lat = [
                Series(
                    k,
                    r,
                    [t.latency_ms[k] if t.latency_ms[k] is not None else np.nan for t in curve],
                    dots=True,
                )
                for k in ("p50", "p90", "max")
            ]
            files.append(
                line_plot(
                    out / f"latency_vs_rate{sfx}.png",
                    lat,
                    f"End-to-end latency against rate ({runtime})",
                    "playback rate (x recorded speed)",
                    "latency (ms)",
                    y_min=0.0,
                ).name
            )
    mem = rep.get("memory_series")
    if mem and mem.get("t_s"):
        t_min = [x / 60.0 for x in mem["t_s"]]
        files.append(
            line_plot(
                out / "memory.png",
                [Series("node RSS (MB)", t_min, mem["rss_mb"])],
                "Node resident memory over time",
                "minutes",
                "MB",
            ).name
        )
    return files


def write_report(
    rep: dict[str, Any], trials_by_runtime: dict[str, list[Any]], out: Path
) -> list[Path]:
    """Write report.json, report.md and the plots into ``out``; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    rep["plots"] = _plots(rep, trials_by_runtime, out)
    (out / "report.json").write_text(json.dumps(rep, indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(rep))
    return [out / "report.json", out / "report.md", *(out / p for p in rep["plots"])]


def markdown(rep: dict[str, Any]) -> str:
    """report.md: the tables of report.json."""
    m = rep["machine"]
    lines = [
        "# sam4d_ros benchmark report",
        "",
        f"- bag: `{rep['bag']}` ({rep['sweeps_in_bag']} sweeps, {rep['cameras']} camera(s), "
        f"recorded at {_f(rep['sweep_hz'])} Hz); model: `{rep['checkpoint']}`",
        f"- machine: {rep.get('machine_name') or ''} {m['cpu']}, {m['cores']} cores, "
        f"{m['memory_gb']} GB"
        + (f", GPU {m['gpu']}" if m["gpu"] else "")
        + f"; device {m['device']}, {m['torch_threads']} torch thread(s); load average at the "
        f"start {m['load_average'][0]}",
    ]
    if rep.get("note"):
        lines.append(f"- note: {rep['note']}")
    lines += [
        f"- prompts: {', '.join('`' + p + '`' for p in rep['prompts'])}",
        f"- command: `{rep['command']}`",
        "",
        "End-to-end latency: from the LiDAR sweep reaching a separate monitor subscriber to the "
        "node's `~/objects` with the same header stamp reaching it (wall clock). Processing: the "
        "node's `debug/processing_time_ms`; pipeline: the node's own `debug/pipeline_latency_ms` "
        "(measured on the replayed clock, divided by the rate). Dropped = sent - processed "
        "(the node keeps the newest sweep and drops older waiting ones by design).",
        "",
    ]
    for runtime, r in rep["runtimes"].items():
        lines += [f"## Runtime `{runtime}`", ""]
        if r.get("error"):
            lines += [f"Failed: {r['error']}", ""]
            continue
        for w in r.get("warnings", []):
            lines += [f"**Warning**: {w}", ""]
        s = r.get("search")
        if s:
            peak = s["peak_rate"]
            lines += [
                f"**Peak throughput** (highest rate with < {100 * s['max_drop']:g} % dropped, "
                f"search resolution {100 * s['resolution']:g} %): "
                + (
                    f"rate **{peak:.3g}** = **{peak * rep['sweep_hz']:.2f} sweeps/s**"
                    if peak is not None
                    else "none: the lowest rate tried dropped too many"
                )
                + (f"; {s['failing_rate']:.3g} failed" if s["failing_rate"] else "")
                + ("" if s["resolved"] else " (bracket not closed within the trial budget)"),
                "",
            ]
        trials = r["trials"]
        if trials:
            lines += [
                "| trial | rate | sweeps/s offered | sent | processed | dropped | frame rate (Hz) "
                "| latency mean | p50 | p90 | p99 | max | jitter | processing p50 | CPU % "
                "| RSS max (MB) |",
                "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
            ]
            for i, t in enumerate(trials):
                lat, res = t["latency_ms"], t["resources"]
                lines.append(
                    f"| {i + 1} {t['label']} | {t['rate']:.3g} | {t['rate'] * rep['sweep_hz']:.2f}"
                    f" | {t['sweeps_sent']} | {t['sweeps_processed']} | {t['sweeps_dropped']} "
                    f"({100 * t['drop_fraction']:.0f} %) | {_f(t['frame_rate_hz'], 2)} | "
                    f"{_f(lat['mean'], 0)} | {_f(lat['p50'], 0)} | {_f(lat['p90'], 0)} | "
                    f"{_f(lat['p99'], 0)} | {_f(lat['max'], 0)} | {_f(t['jitter_ms'], 0)} | "
                    f"{_f(t['processing_ms']['p50'], 0)} | {_f(res['cpu_percent'], 0)} | "
                    f"{_f(res['rss_mb_max'], 0)} |"
                )
            lines.append("")
            stages = next((t["stages_ms"] for t in reversed(trials) if t["stages_ms"]), None)
            if stages:
                lines += [
                    "Processing time per stage (ms, last trial that has them):",
                    "",
                    "| stage | count | mean | p50 | p90 | max |",
                    "|---|--:|--:|--:|--:|--:|",
                ]
                for k, v in stages.items():
                    lines.append(
                        f"| {k} | {v['count']} | {_f(v['mean'])} | {_f(v['p50'])} | "
                        f"{_f(v['p90'])} | {_f(v['max'])} |"
                    )
                lines.append("")
            else:
                lines += [
                    "Per-stage times: the node published none (`~/debug/stage_times_ms`).",
                    "",
                ]
            gpu = [t["resources"].get("gpu_mb_max") for t in trials]
            if any(g is not None for g in gpu):
                lines += [f"GPU memory (max, MB): {max(g for g in gpu if g is not None):.0f}", ""]
            acc = next((t for t in trials if t["accuracy"]), None)
            if acc:
                lines += [
                    f"### Accuracy against the bag's ground truth (trial at rate "
                    f"{acc['rate']:.3g})",
                    "",
                ]
                for a in acc["accuracy"]:
                    lines += [
                        f"Object {a['object_id']} (`{a['prompt']}`, ground-truth object "
                        f"{a['gt_object_id']}): mean image IoU **{_f(a['mean_image_iou'], 3)}**, "
                        f"mean LiDAR IoU **{_f(a['mean_lidar_iou'], 3)}** over "
                        f"{a['frames_evaluated']} frames ({a['frames_no_output']} without output).",
                        "",
                        "| frame | status | image IoU | LiDAR IoU |",
                        "|--:|---|--:|--:|",
                    ]
                    for f in a["per_frame"]:
                        lines.append(
                            f"| {f['frame']} | {f['status']} | "
                            f"{_f(f['image_iou'], 3)} | {_f(f['lidar_iou'], 3)} |"
                        )
                    lines.append("")
                by_rate = [
                    (t["rate"], a["mean_image_iou"], a["mean_lidar_iou"])
                    for t in trials
                    for a in t["accuracy"][:1]
                ]
                if len(by_rate) > 1:
                    lines += [
                        "Accuracy of the first object at each rate (drops cost frames):",
                        "",
                        "| rate | image IoU | LiDAR IoU |",
                        "|--:|--:|--:|",
                    ]
                    for rate, iou_i, iou_l in sorted(by_rate):
                        lines.append(f"| {rate:.3g} | {_f(iou_i, 3)} | {_f(iou_l, 3)} |")
                    lines.append("")
        if r.get("soak"):
            lines += _soak_md(r["soak"])
        if r.get("faults"):
            lines += _faults_md(r["faults"])
    if rep.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in rep["plots"]] + [""]
    return "\n".join(lines)


def _soak_md(s: dict[str, Any]) -> list[str]:
    g = s["growth"]
    lines = [
        "### Soak",
        "",
        f"{s['minutes_run']:.1f} min at rate {s['rate']:.3g}, {s['passes']} passes of the bag, "
        f"{s['sweeps_sent']} sweeps sent, {s['sweeps_processed']} processed, node alive at the "
        f"end: {s['node_alive']}. Live tensor memory: {s['tensor_memory']}.",
        "",
        f"- RSS after warm-up (first {s['warmup_s'] / 60:g} min excluded): "
        f"{_f(g['rss_start_mb'])} MB -> {_f(g['rss_end_mb'])} MB "
        f"({_f(g['growth_percent'])} % over the run); fitted growth "
        f"**{_f(g['mb_per_hour'])} MB/h = {_f(g['percent_per_hour'])} %/h**; peak RSS "
        f"{_f(g['rss_max_mb'])} MB, VmHWM {_f(g['hwm_mb'])} MB",
        f"- latency per pass (p50 ms): first {_f(s['latency_p50_first'], 0)}, last "
        f"{_f(s['latency_p50_last'], 0)}; all passes p50 {_f(s['latency_ms']['p50'], 0)}, "
        f"p99 {_f(s['latency_ms']['p99'], 0)}",
        "",
    ]
    if not g["enough"]:
        lines += [
            "(The run was shorter than the warm-up plus a minute: the growth figures use "
            "the whole run and say little.)",
            "",
        ]
    return lines


def _faults_md(f: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### Fault injection",
        "",
        "| fault | sent | node alive | recovered after (s) | good sweeps lost | "
        "diagnostics levels seen |",
        "|---|--:|---|--:|--:|---|",
    ]
    for e in f:
        levels = ", ".join(f"{k}: {v}" for k, v in sorted(e["levels_seen"].items()))
        lines.append(
            f"| {e['fault']} | {e['sent']} | {e['node_alive']} | {_f(e['recover_s'], 2)} | "
            f"{e['good_sweeps_lost']} | {levels} |"
        )
    lines += [
        "",
        "Good sweeps lost: sweeps of the bag (not the injected ones) without output "
        "beyond those the same rate drops without faults. Recovery: from the end of the "
        "fault to the first output of a sweep played after it.",
        "",
    ]
    return lines
