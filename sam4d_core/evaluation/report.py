"""The evaluation report: JSON layout, aggregation into the paper's table, Markdown, lookups.

JSON (``format`` ``sam4d_ros.evaluation``, version 1)::

    command, argv            the command that regenerates the report, and the one that ran
    checkpoint               path, sha256, crc32, bytes, config name
    settings                 the evaluation settings (EvalConfig + threads, device, ...)
    sources[]                name, kind, held_out (enters the headline aggregate), details,
                             sequences[] (SequenceResult.to_dict: objects and per-object runs
                             with per-frame image_iou / boundary_f / lidar_iou / camera_iou
                             and their means, the tracker mode and its lost frames),
                             cells (that source's table, first tracker mode),
                             cells_by_mode (mode -> table)
    aggregate                the headline table over the held-out sources: cells keyed
                             "<prompt>/<modality>" (image_miou, j, f, jf, lidar_miou, objects)
                             of the first tracker mode; cells_by_mode: mode -> such a table
    targets[]                the issue's targets checked on the aggregate, per tracker mode
    timing                   seconds in all and per sequence (with argv, what differs between
                             identical runs)

A cell pools the objects of all sequences of its sources: mean over objects of each object's
mean over frames (:mod:`.metrics`). Lookups for other tools: :func:`load_report`,
:func:`object_result` (e.g. the ROS demo compares its node-measured IoU with an object's entry).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sam4d_core.evaluation.metrics import j_and_f, mean_or_none

FORMAT_NAME = "sam4d_ros.evaluation"
FORMAT_VERSION = 1

PROMPT_NAMES = {"1click": "1 click", "3click": "3 clicks", "box": "box", "mask": "GT mask"}
MODALITY_NAMES = {"img": "image (2D)", "pts": "LiDAR (3D)"}

PROMPTED_TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("1click", "img", "image_miou", 0.75),
    ("1click", "pts", "lidar_miou", 0.80),
    ("box", "img", "image_miou", 0.85),
    ("box", "pts", "lidar_miou", 0.85),
    ("1click", "img", "lidar_miou", 0.65),
    ("1click", "pts", "image_miou", 0.65),
)
"""Targets on the prompted frame alone: (prompt, prompt modality, metric, minimum)."""

TARGETS: tuple[tuple[str, str, str, float], ...] = (
    ("1click", "img", "image_miou", 0.60),
    ("1click", "pts", "lidar_miou", 0.65),
    ("1click", "img", "lidar_miou", 0.55),
    ("1click", "pts", "image_miou", 0.55),
)
"""Targets over the tracked sequence (20 frames from a first-frame prompt), met with
re-prompting; memory only is reported beside them."""


def cell_key(prompt: str, modality: str) -> str:
    return f"{prompt}/{modality}"


def run_mode(run: Mapping[str, Any]) -> str:
    """A run's tracker mode (reports before modes existed: memory only)."""
    return str(run.get("mode", "memory"))


def aggregate_runs(
    runs: Iterable[Mapping[str, Any]], mode: str = "memory"
) -> dict[str, dict[str, Any]]:
    """Per (prompt, modality) cell: the means over objects of the runs' per-object means, over
    the runs of tracker mode ``mode``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        if run_mode(r) != mode:
            continue
        groups.setdefault(cell_key(r["prompt"], r["modality"]), []).append(r)
    cells = {}
    for key, rs in groups.items():
        j = mean_or_none(r["j"] for r in rs)
        f = mean_or_none(r["f"] for r in rs)
        cells[key] = {
            "image_miou": j,
            "j": j,
            "f": f,
            "jf": j_and_f(j, f),
            "lidar_miou": mean_or_none(r["lidar_miou"] for r in rs),
            "objects": len(rs),
            "image_objects": sum(r["j"] is not None for r in rs),
            "lidar_objects": sum(r["lidar_miou"] is not None for r in rs),
            "lost_frames": sum(int(r.get("lost_frames", 0)) for r in rs),
        }
    return cells


def source_runs(source: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [r for s in source["sequences"] for r in s["runs"]]


def report_modes(report: Mapping[str, Any]) -> list[str]:
    """The tracker modes of a report, in its order (older reports: memory only)."""
    return list(report.get("settings", {}).get("tracker_modes", ["memory"]))


def prompted_frame_cells(
    runs: Iterable[Mapping[str, Any]], mode: str = "memory"
) -> dict[str, dict[str, Any]]:
    """Per (prompt, modality) cell: the means over objects of the scores on the prompted frame
    alone (the first of each run's frames), over the runs of tracker mode ``mode``."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in runs:
        if run_mode(r) == mode and r["frames"] and r["frames"][0] == r["first_frame"]:
            groups.setdefault(cell_key(r["prompt"], r["modality"]), []).append(r)
    return {
        key: {
            "image_miou": mean_or_none(r["image_iou"][0] for r in rs),
            "lidar_miou": mean_or_none(r["lidar_iou"][0] for r in rs),
            "objects": len(rs),
        }
        for key, rs in groups.items()
    }


def check_targets(
    cells: Mapping[str, Mapping[str, Any]], mode: str = "memory", stage: str = "tracked"
) -> list[dict[str, Any]]:
    """The issue's targets on a table (``stage`` "tracked": :data:`TARGETS` on the sequence's
    table; "prompted": :data:`PROMPTED_TARGETS` on :func:`prompted_frame_cells`): value (None
    when the cell is missing) and whether met."""
    out = []
    for prompt, mod, metric, minimum in PROMPTED_TARGETS if stage == "prompted" else TARGETS:
        cell = cells.get(cell_key(prompt, mod))
        value = None if cell is None else cell.get(metric)
        out.append(
            {
                "stage": stage,
                "prompt": prompt,
                "modality": mod,
                "metric": metric,
                "cross_modal": (mod == "img") != (metric == "image_miou"),
                "target": minimum,
                "mode": mode,
                "value": value,
                "met": value is not None and value >= minimum,
            }
        )
    return out


def report_targets(runs: Iterable[Mapping[str, Any]], modes: list[str]) -> list[dict[str, Any]]:
    """Every target of the issue on the held-out runs: the prompted frame (the first mode: the
    prompted frame does not depend on it), then the tracked sequence per tracker mode."""
    runs = list(runs)
    out = check_targets(prompted_frame_cells(runs, modes[0]), modes[0], "prompted")
    for m in modes:
        out += check_targets(aggregate_runs(runs, m), m, "tracked")
    return out


# ---------------------------------------------------------------------------------------------
# Lookups.


def load_report(path: str | Path | None = None) -> dict[str, Any]:
    """Reads a report (default: the bundled model's,
    :data:`sam4d_core.weights.BUNDLED_EVAL_JSON`)."""
    if path is None:
        from sam4d_core.weights import BUNDLED_EVAL_JSON

        path = BUNDLED_EVAL_JSON
    with open(path, encoding="utf-8") as f:
        report = json.load(f)
    if report.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: not an evaluation report (format {report.get('format')!r})")
    if report.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: report version {report.get('version')}, expected 1")
    return report


def object_result(
    report: Mapping[str, Any],
    sequence: str,
    object_id: int,
    prompt: str = "1click",
    modality: str = "img",
    source: str | None = None,
    mode: str = "memory",
) -> dict[str, Any]:
    """One object's entry: ``first_frame``, ``prompt_detail`` (camera, ``points`` = the click(s),
    box, mask size), ``frames``, per-frame ``image_iou`` (pooled over cameras) / ``boundary_f`` /
    ``lidar_iou``, ``camera_iou`` (camera -> per-frame IoU in that camera alone) and the means
    (``image_miou``, ``j``, ``f``, ``jf``, ``lidar_miou``).

    Args:
        sequence: the sequence name (e.g. ``"synthetic_drive"``, ``"bundled_sample_950000"``).
        source: restrict to the source of that name (None: the first sequence of that name).
        mode: the tracker mode (``memory`` or ``reprompt``).

    Raises:
        KeyError: no such sequence, or the object was not evaluated with that prompt.
    """
    found_seq = False
    for src in report["sources"]:
        if source is not None and src["name"] != source:
            continue
        for seq in src["sequences"]:
            if seq["name"] != sequence:
                continue
            found_seq = True
            for r in seq["runs"]:
                if (
                    int(r["object_id"]) == int(object_id)
                    and r["prompt"] == prompt
                    and r["modality"] == modality
                    and run_mode(r) == mode
                ):
                    return dict(r)
            evaluated = seq.get("objects", [])
            raise KeyError(
                f"sequence {sequence!r}: object {object_id} has no {prompt}/{modality} entry "
                f"{'' if mode == 'memory' else f'in mode {mode} '}"
                f"(evaluated objects: {evaluated})"
            )
    if not found_seq:
        raise KeyError(f"no sequence {sequence!r} in the report")
    raise KeyError(sequence)  # pragma: no cover


# ---------------------------------------------------------------------------------------------
# Markdown.


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _mark(text: str, view: str, prompted_in: str) -> str:
    """A cell of ``view`` ("img" / "pts") for a prompt in ``prompted_in``: bold in the prompt's
    own modality, else marked as the cross-modal case."""
    if view == prompted_in:
        return f"**{text}**"
    return f"{text} (x-modal {'3D->2D' if view == 'img' else '2D->3D'})"


def markdown_table(
    cells: Mapping[str, Mapping[str, Any]],
    combos: Iterable[tuple[str, str]],
    jf: bool = True,
) -> str:
    """The paper-style table: one row per (prompt, prompt modality); cells of the other modality
    than the prompt's are the cross-modal cases, marked ``x-modal``. ``jf``: with the J&F
    column (cells without ``jf`` / ``j`` / ``f`` need False)."""
    header = "| prompt | prompted in | image mIoU | " + ("image J&F (J / F) | " if jf else "")
    lines = [
        header + "LiDAR mIoU | objects |",
        "|---|---|" + "---:|" * (4 if jf else 3),
    ]
    for prompt, mod in combos:
        c = cells.get(cell_key(prompt, mod))
        if c is None:
            continue
        row = [PROMPT_NAMES.get(prompt, prompt), MODALITY_NAMES.get(mod, mod)]
        row.append(_mark(_fmt(c["image_miou"]), "img", mod))
        if jf:
            row.append(_mark(f"{_fmt(c['jf'])} ({_fmt(c['j'])} / {_fmt(c['f'])})", "img", mod))
        row += [_mark(_fmt(c["lidar_miou"]), "pts", mod), str(c["objects"])]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


MODE_NAMES = {"memory": "memory only", "reprompt": "re-prompting"}


def modes_table(
    by_mode: Mapping[str, Mapping[str, Mapping[str, Any]]], combos: Iterable[tuple[str, str]]
) -> str:
    """The tracker modes side by side: image and LiDAR mIoU of each mode per (prompt, prompt
    modality), and the frames each mode reported an object lost (summed over objects)."""
    modes = list(by_mode)
    names = [MODE_NAMES.get(m, m) for m in modes]
    lines = [
        "| prompt | prompted in | "
        + " | ".join(f"image mIoU {n}" for n in names)
        + " | "
        + " | ".join(f"LiDAR mIoU {n}" for n in names)
        + " | "
        + " | ".join(f"lost frames {n}" for n in names)
        + " | objects |",
        "|---|---|" + "---:|" * (3 * len(modes) + 1),
    ]
    for prompt, mod in combos:
        cells = [by_mode[m].get(cell_key(prompt, mod)) for m in modes]
        if all(c is None for c in cells):
            continue
        img = [_fmt(None if c is None else c["image_miou"]) for c in cells]
        lid = [_fmt(None if c is None else c["lidar_miou"]) for c in cells]
        lost = ["n/a" if c is None else str(int(c.get("lost_frames", 0))) for c in cells]
        n = next(c["objects"] for c in cells if c is not None)
        lines.append(
            f"| {PROMPT_NAMES.get(prompt, prompt)} | {MODALITY_NAMES.get(mod, mod)} | "
            + " | ".join(img + lid + lost)
            + f" | {n} |"
        )
    return "\n".join(lines)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The Markdown report of a JSON report."""
    st = report["settings"]
    ck = report["checkpoint"]
    combos = [(p, m) for p in st["prompt_types"] for m in st["modalities"]]
    held = [s for s in report["sources"] if s["held_out"]]
    n_seq = sum(len(s["sequences"]) for s in held)
    n_obj = sum(len(q["objects"]) for s in held for q in s["sequences"])
    out = [
        f"# Streaming evaluation of `{Path(ck['path']).name}`",
        "",
        f"Checkpoint `{ck['path']}` (config `{ck['config']}`, sha256 `{ck['sha256'][:16]}...`, "
        f"{ck['bytes']:,} bytes). Regenerate this report (and its JSON) with:",
        "",
        "```",
        report["command"],
        "```",
        "",
        "Protocol (as the SAM4D paper's streaming table): every object is prompted once, on the "
        "first frame where it appears in the prompt's modality (image: >= "
        f"{st['min_pixels']} pixels in a camera, the camera where it is largest; LiDAR: >= "
        f"{st['min_points']} points), then tracked by the streaming tracker to the end of the "
        "sequence. 1 click: the point deepest inside the ground truth (SAM's evaluation click); "
        "3 clicks: that click plus two farthest-point clicks inside the object; box: the tight "
        "ground-truth box (BEV box in the LiDAR); GT mask: the ground-truth mask. Per object the "
        "scores are averaged over its frames from the prompted one on (frames where the ground "
        "truth and the prediction are both empty are skipped; a predicted but absent object "
        "scores 0), then over objects. Image scores pool all cameras; J&F is DAVIS's (boundary "
        f"tolerance {st['bound_th']} of the image diagonal). Bold: same modality as the prompt; "
        "x-modal: the cross-modal cases. Objects: those not blacklisted and visible in both "
        "modalities"
        + (
            f", at most {st['max_objects']} per sequence (a random sample seeded by the sequence "
            "name; in a recording the ROS demo's object is always among them)"
            if st.get("max_objects")
            else ""
        )
        + "."
        + (
            " Masks are refined with the sweep's geometry in every tracker mode, as the node "
            "does by default (`refine_masks`: the LiDAR mask's segment nearest the prompt or the "
            "predicted position, completed with the non-ground clusters it mostly covers; camera "
            "masks following it where the LiDAR sees, then one GrabCut iteration; "
            "`--refine-masks off` reports the decoder's masks)."
            if st.get("refine_masks")
            else ""
        )
        + (
            " An image click (a box: its centre) also gives the tracker a 3D click on the LiDAR "
            "point seen under it "
            "(`lift_image_clicks`, the node's default; `--lift-image-clicks off`: the prompt as "
            "given)."
            if st.get("lift_image_clicks")
            else ""
        )
        + (
            " On the prompted frame the prompted camera's mask (a LiDAR prompt: each camera "
            "seeing the object's segment) is decoded again on a window around the object, "
            "zoomed up to 2x (`zoom`, the node's default; `--zoom off`: one decode)."
            if st.get("zoom")
            else ""
        )
        + (
            " Camera masks the LiDAR segment guides are also refined on their image crop by the "
            "learned boundary refiner (`boundary_refine`; `--boundary-refine off`: GrabCut only)."
            if st.get("boundary_refine")
            else ""
        ),
        "",
    ]
    agg = report["aggregate"]
    modes = report_modes(report)
    out += [
        f"## Held-out ({', '.join(agg['sources'])}): {n_seq} sequences, {n_obj} objects",
        "",
    ]
    if len(modes) > 1:
        out += [f"Tracker mode: {MODE_NAMES.get(modes[0], modes[0])}.", ""]
    out += [
        markdown_table(agg["cells"], combos),
        "",
    ]
    by_mode = agg.get("cells_by_mode", {})
    if len(modes) > 1 and by_mode:
        out += [
            "### Tracker modes side by side",
            "",
            "Memory only: the SAM4D protocol (the decoder sees the object's memory). "
            "Re-prompting: each object's LiDAR segment is kept in the world frame with a "
            "constant-velocity motion estimate, predicted into the next sweep and turned into "
            "3D clicks and projected camera boxes that the frame is decoded from (the memory is "
            "still written; `RepromptConfig.memory` adds it to the decoding); an object whose "
            "prediction finds no support is reported lost (absent). In both modes an object "
            "without a mask anywhere is reported lost. Lost frames: summed over objects.",
            "",
            modes_table(by_mode, combos),
            "",
        ]
    held_runs = [r for src in held for r in source_runs(src)]
    first_cells = prompted_frame_cells(held_runs, modes[0])
    if first_cells:
        out += [
            "### Prompted frame alone",
            "",
            "The same runs scored on the prompted frame only (the frame the prompt was made on): "
            "what the decoder makes of the prompt before anything is tracked.",
            "",
            markdown_table(first_cells, combos, jf=False),
        ]
        out.append("")
    # Reports written before the prompted-frame targets: recomputed from their runs.
    tg = report.get("targets", [])
    if not any(t.get("stage") == "prompted" for t in tg):
        tg = report_targets(held_runs, modes)
    for stage, title in (
        ("prompted", "Targets on the prompted frame"),
        ("tracked", "Targets over the sequence (first-frame prompt, 20 frames)"),
    ):
        parts = []
        for t in tg:
            if t.get("stage", "tracked") != stage:
                continue
            what = (
                f"{PROMPT_NAMES.get(t['prompt'], t['prompt'])} in "
                f"{'the image' if t['modality'] == 'img' else 'the LiDAR'} -> "
                f"{'image' if t['metric'] == 'image_miou' else 'LiDAR'} mIoU"
            )
            status = "n/a" if t["value"] is None else ("met" if t["met"] else "NOT met")
            if stage == "tracked" and len(modes) > 1:
                what += f" ({MODE_NAMES.get(t.get('mode', 'memory'), t.get('mode'))})"
            parts.append(f"{what} {_fmt(t['value'])} (target >= {t['target']:.2f}: {status})")
        if parts:
            out += [f"{title}: " + "; ".join(parts) + ".", ""]
    for src in report["sources"]:
        if src["held_out"] and len(held) == 1:
            continue
        seqs = src["sequences"]
        note = "" if src["held_out"] else " (reported separately, not in the held-out aggregate)"
        out += [
            f"## {src['name']}{note}: {len(seqs)} sequence(s), "
            f"{sum(len(q['objects']) for q in seqs)} objects",
            "",
            markdown_table(src["cells"], combos),
            "",
        ]
    # Per sequence, 1-click (or the first prompt type) rows: where the numbers come from.
    first = st["prompt_types"][0]
    out += [
        f"## Per sequence ({PROMPT_NAMES.get(first, first)}; image / LiDAR mIoU)",
        "",
        "| source | sequence | objects (of candidates) | "
        + " | ".join(f"prompted in {MODALITY_NAMES.get(m, m)}" for m in st["modalities"])
        + " |",
        "|---|---|---|" + "---|" * len(st["modalities"]),
    ]
    for src in report["sources"]:
        for seq in src["sequences"]:
            cells = aggregate_runs(seq["runs"], modes[0])
            row = [src["name"], seq["name"], f"{len(seq['objects'])} ({seq['num_candidates']})"]
            for m in st["modalities"]:
                c = cells.get(cell_key(first, m))
                row.append(
                    "n/a" if c is None else f"{_fmt(c['image_miou'])} / {_fmt(c['lidar_miou'])}"
                )
            out.append("| " + " | ".join(row) + " |")
    timing = report.get("timing", {})
    if timing:
        out += [
            "",
            f"Run time: {timing.get('total_s', 0.0) / 60:.1f} min with {st.get('threads')} "
            f"thread(s) on {st.get('device')} ({timing.get('machine', '')}).",
        ]
    return "\n".join(out) + "\n"


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PROMPTED_TARGETS",
    "TARGETS",
    "aggregate_runs",
    "cell_key",
    "check_targets",
    "load_report",
    "markdown_table",
    "modes_table",
    "report_modes",
    "run_mode",
    "object_result",
    "prompted_frame_cells",
    "report_targets",
    "render_markdown",
    "source_runs",
]
