"""``python -m sam4d_export bench``: the tracker step on PyTorch eager vs ONNX Runtime.

Two trackers of the same checkpoint (default: the bundled model), one per runtime, step the same
frames alternately (so that the load of a shared machine falls on both alike):

1. timing: the reference case of ``sam4d_core.tracking.benchmark`` (1 camera, a 30k-point
   synthetic sweep, 1 object from a LiDAR click, ``--threads`` for torch and ONNX Runtime),
   medians per stage over ``--steps`` tracked steps after ``--warmup``;
2. agreement: every sweep of the bundled recording (both cameras), one object clicked in the
   LiDAR on the first sweep (the prompted result) and tracked to the end; per sweep the IoU of
   the ONNX Runtime masks against the PyTorch ones (per camera and per point; two empty masks
   count as 1). The run fails (exit 1) when one is below ``--min-iou`` (0.99).

Prints a table and writes JSON (``--json``). The ONNX export is made first when ``--onnx-dir``
has none.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECORDING = REPO / "test" / "data" / "synthetic_drive"
STAGES = (
    ("image_encoder", "image enc"),
    ("lidar_encoder", "LiDAR enc (torch in both)"),
    ("memory_attention", "mem attn"),
    ("decoder", "decoder"),
    ("memory_encoder", "mem enc (LiDAR part torch)"),
    ("postprocess", "post"),
    ("total", "total"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--onnx-dir", type=Path, default=None,
                   help="its ONNX export (default .build/onnx/<checkpoint name>; made if "
                   "absent)")  # fmt: skip
    p.add_argument("--points", type=int, default=30000, help="points per timing sweep")
    p.add_argument("--steps", type=int, default=20, help="timed steps (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime threads")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="stage clock: wall time or this process's CPU time")  # fmt: skip
    p.add_argument("--recording", type=Path, default=DEFAULT_RECORDING,
                   help="rosbag2 recording with ground truth for the agreement check")  # fmt: skip
    p.add_argument("--min-iou", type=float, default=0.99, help="agreement threshold")
    p.add_argument("--json", type=Path, default=None, help="write the results here")


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _compare(r_torch: Any, r_ort: Any) -> dict[str, float]:
    """Lowest IoU per view over the objects of one step's results."""
    out: dict[str, float] = {}
    ids_t = [o.object_id for o in r_torch.objects]
    ids_o = [o.object_id for o in r_ort.objects]
    if ids_t != ids_o:
        return {"objects": 0.0}
    for a, b in zip(r_torch.objects, r_ort.objects, strict=True):
        out["lidar"] = min(out.get("lidar", 1.0), _iou(a.point_mask, b.point_mask))
        for cam, m in a.image_masks.items():
            out[cam] = min(out.get(cam, 1.0), _iou(m, b.image_masks.get(cam, np.zeros_like(m))))
    return out


def _trackers(
    checkpoint: str, onnx_dir: Path, threads: int, clock: str = "wall"
) -> tuple[Any, Any]:
    from sam4d_core.build_sam import build_sam4d
    from sam4d_core.modeling.profiling import StageClock
    from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig

    models = [build_sam4d(checkpoint=checkpoint).float() for _ in range(2)]
    for m in models:
        m.clock = StageClock.named(clock)
    t = StreamingTracker(models[0], TrackerConfig())
    o = StreamingTracker(
        models[1],
        TrackerConfig(runtime="onnxruntime", onnx_dir=str(onnx_dir), runtime_threads=threads),
    )
    return t, o


def _timing(args: argparse.Namespace, checkpoint: str, onnx_dir: Path) -> dict[str, Any]:
    from sam4d_core.tracking.benchmark import click_points, load_frames
    from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt

    frames, desc = load_frames("synthetic", args.points, 12)
    trackers = _trackers(checkpoint, onnx_dir, args.threads, args.clock)
    xyz = click_points(frames[0], 1)
    prompt = [ObjectPrompt(1, lidar=LidarPrompt(points=xyz[:1], labels=np.array([1])))]
    samples: list[dict[str, list[float]]] = [{k: [] for k, _ in STAGES} for _ in trackers]
    for tr in trackers:
        tr.step(frames[0])
        tr.add_prompts(prompt)
    for k in range(1, 1 + args.warmup + args.steps):
        f = dataclasses.replace(frames[k % len(frames)], timestamp=frames[0].timestamp + 0.1 * k)
        for i, tr in enumerate(trackers):
            r = tr.step(f)
            if k > args.warmup:
                for key, _ in STAGES:
                    samples[i][key].append(r.timings_ms.get(key, 0.0))
    med = [{k: round(statistics.median(v), 2) for k, v in s.items()} for s in samples]
    return {
        "data": desc,
        "points": int(len(frames[0].points)),
        "torch": med[0],
        "onnxruntime": med[1],
    }


def _agreement(args: argparse.Namespace, checkpoint: str, onnx_dir: Path) -> dict[str, Any]:
    from sam4d_core.data.sequence_bag import read_sequence_bag
    from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt

    seq = read_sequence_bag(args.recording)
    frames = seq.frames
    f0 = frames[0]
    labels = f0.point_labels
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    obj = int(ids[np.argmax(counts)])
    pts = f0.points[labels == obj][:, :3].astype(np.float64)
    click = pts[np.argmin(np.linalg.norm(pts - pts.mean(axis=0), axis=1))]
    prompt = [ObjectPrompt(1, lidar=LidarPrompt(points=click[None], labels=np.array([1])))]
    t, o = _trackers(checkpoint, onnx_dir, args.threads)
    per_sweep = []
    for k, f in enumerate(frames):
        rt, ro = t.step(f), o.step(f)
        if k == 0:
            rt, ro = t.add_prompts(prompt), o.add_prompts(prompt)
        ious = _compare(rt, ro)
        per_sweep.append(
            {"sweep": k, "prompted": k == 0, **{v: round(x, 5) for v, x in ious.items()}}
        )
    worst = min(
        min(v for key, v in s.items() if key not in ("sweep", "prompted")) for s in per_sweep
    )
    return {
        "recording": str(args.recording),
        "object": obj,
        "sweeps": len(frames),
        "min_iou": worst,
        "per_sweep": per_sweep,
    }


def format_table(res: dict[str, Any]) -> str:
    tm = res["timing"]
    lines = [
        f"tracker step, {res['checkpoint_name']}: 1 camera, {tm['points']} points, 1 object, "
        f"{res['threads']} threads, median {res['clock']}-clock ms over {res['steps']} steps",
        "",
        "| stage | torch eager | onnxruntime | speed-up |",
        "|---|---|---|---|",
    ]
    for key, label in STAGES:
        a, b = tm["torch"][key], tm["onnxruntime"][key]
        lines.append(f"| {label} | {a:.1f} | {b:.1f} | {a / b if b else float('nan'):.2f}x |")
    a = tm["torch"]["total"] - tm["torch"]["lidar_encoder"]
    b = tm["onnxruntime"]["total"] - tm["onnxruntime"]["lidar_encoder"]
    lines.append(f"| step without the LiDAR encoder | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    ag = res["agreement"]
    lines += [
        "",
        f"masks, onnxruntime vs torch, {ag['sweeps']} sweeps of {Path(ag['recording']).name} "
        f"(prompted + tracked): min IoU {ag['min_iou']:.4f} (threshold {res['min_iou']})",
    ]
    return "\n".join(lines)


def run_bench(args: argparse.Namespace) -> int:
    import torch

    from sam4d_core.runtime.manifest import MANIFEST_NAME

    from .onnx_export import export_onnx

    torch.set_num_threads(args.threads)
    if args.checkpoint is None:
        from sam4d_core.weights import bundled_model_path

        args.checkpoint = str(bundled_model_path())
    name = Path(args.checkpoint).stem
    onnx_dir = args.onnx_dir or REPO / ".build" / "onnx" / name
    if not (onnx_dir / MANIFEST_NAME).is_file():
        from sam4d_core.build_sam import build_sam4d

        print(f"exporting {args.checkpoint} to {onnx_dir} ...", flush=True)
        export_onnx(build_sam4d(checkpoint=args.checkpoint), onnx_dir, checkpoint=args.checkpoint)
    t0 = time.perf_counter()
    # (Models built outside inference mode; the tracker enters it per step.)
    timing = _timing(args, args.checkpoint, onnx_dir)
    agreement = _agreement(args, args.checkpoint, onnx_dir)
    res = {
        "checkpoint": args.checkpoint,
        "checkpoint_name": name,
        "onnx_dir": str(onnx_dir),
        "threads": args.threads,
        "clock": args.clock,
        "steps": args.steps,
        "min_iou": args.min_iou,
        "timing": timing,
        "agreement": agreement,
        "speedup_total": round(timing["torch"]["total"] / timing["onnxruntime"]["total"], 3),
        "machine": {
            "cpus": os.cpu_count(),
            "load_avg": os.getloadavg(),
            "platform": platform.platform(),
            "torch": torch.__version__,
        },
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(format_table(res))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0 if agreement["min_iou"] >= args.min_iou else 1
