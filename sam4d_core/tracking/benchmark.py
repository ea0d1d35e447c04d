"""Latency benchmark of the streaming tracker: per-stage medians and parameter counts.

    python -m sam4d_core.tracking.benchmark [--config sam4d_small] [--device cpu|cuda]
                                            [--json PATH]

For each config (repeat ``--config``; a registered name, a JSON config file, or a checkpoint,
whose embedded config is timed: ``sam4d_core/weights/sam4d_small_synthetic.pt`` for the bundled
model): the reference case (1 camera, a 30k-point sweep, 1 object),
then the growth with objects (1, 4, 16; 1 camera) and with cameras (1, 3, 6; 1 object). Stages
are the tracker's ``StepResult.timings_ms`` (image encoder, LiDAR encoder, memory attention,
decoder, memory encoder, postprocess: masks at camera resolution and per point, total step),
medians over ``--steps`` tracked frames after ``--warmup``. Parameter counts are printed for every
registered config.

Data: the KITTI raw sample (``--data kitti``, default when present: 1242x375 images, sweeps
subsampled to ``--points``), else synthetic frames (``--data synthetic``, the generator's
``benchmark`` preset). More cameras are the first camera replicated under new names (same image
and calibration: the cost is what matters). Objects are LiDAR clicks on points 5-30 m ahead.
The machine's load average is recorded (shared machines make timings noisy).

``--clock cpu`` times the stages in CPU time of the process (``time.process_time``) instead of
wall time: on a machine shared with other jobs, wall time also counts the time the scheduler gives
to them, CPU time much less so (with ``--threads 1`` it is the work of the step itself; with more
threads it sums them). ``--reference`` runs the reference implementations that the optimized
paths replaced (:mod:`sam4d_core.modeling.reference_paths`), for before/after comparisons in one
environment.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.sequence import Frame
from sam4d_core.modeling.configs import CONFIGS, config_to_dict, get_config
from sam4d_core.modeling.profiling import StageClock
from sam4d_core.modeling.reference_paths import reference_paths
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt
from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig

KITTI_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kitti_raw_2011_09_26"
STAGES = (
    ("image_encoder", "image enc"),
    ("lidar_encoder", "LiDAR enc"),
    ("memory_attention", "mem attn"),
    ("decoder", "decoder"),
    ("memory_encoder", "mem enc"),
    ("postprocess", "post"),
    ("total", "total"),
)


# ---------------------------------------------------------------------------------------------
# Parameters.


def parameter_counts(name: str) -> dict[str, int]:
    """Parameters of a config, total and per component (meta device: nothing is allocated)."""
    with torch.device("meta"):
        m = SAM4D(get_config(name))

    def count(mod: torch.nn.Module) -> int:
        return sum(p.numel() for p in mod.parameters())

    return {
        "total": count(m),
        "image_backbone": count(m.pure_model.backbone["image"]),
        "point_backbone": count(m.pure_model.backbone["point"]),
        "memory_attention": count(m.pure_model.fusion.memory_attention),
        "memory_encoders": count(m.pure_model.fusion.memory_encoder),
        "sam_head": count(m.pure_model.head),
        "umpe": count(m.union_pe_func),
    }


# ---------------------------------------------------------------------------------------------
# Data.


def load_frames(
    data: str, points: int, num_frames: int, kitti_dir: Path = KITTI_DIR
) -> tuple[list[Frame], str]:
    """Frames with one camera and at most ``points`` points (fixed subsampling per frame)."""
    if data == "kitti":
        from sam4d_core.data.kitti_raw import read_kitti_raw

        seq = read_kitti_raw(kitti_dir, frames=range(min(num_frames, 24)))
        desc = "KITTI raw 2011_09_26 (image_02 1242x375)"
    else:
        from sam4d_core.data.synthetic import generate_sequence, make_config

        seq = generate_sequence(make_config("benchmark", num_frames=num_frames))
        desc = "synthetic 'benchmark' preset"
    frames = []
    rng = np.random.default_rng(0)
    for f in seq.frames:
        pts = f.points
        if len(pts) > points:
            pts = pts[np.sort(rng.choice(len(pts), points, replace=False))]
        cam_name, cam = next(iter(f.cameras.items()))
        frames.append(
            dataclasses.replace(f, points=pts, cameras={cam_name: cam}, point_labels=None)
        )
    return frames, desc


def with_cameras(frame: Frame, n: int) -> Frame:
    """The frame's first camera replicated ``n`` times under distinct names."""
    cam = next(iter(frame.cameras.values()))
    cams = {f"cam{i}": dataclasses.replace(cam, name=f"cam{i}") for i in range(n)}
    return dataclasses.replace(frame, cameras=cams)


def click_points(frame: Frame, n: int) -> np.ndarray:
    """``n`` LiDAR points 5-30 m ahead (deterministic)."""
    xyz = frame.points[:, :3].astype(np.float64)
    r = np.linalg.norm(xyz[:, :2], axis=1)
    cand = np.nonzero((xyz[:, 0] > 0) & (r > 5) & (r < 30))[0]
    if len(cand) < n:
        cand = np.arange(len(xyz))
    rng = np.random.default_rng(1)
    return xyz[rng.choice(cand, n, replace=False)]


# ---------------------------------------------------------------------------------------------
# Runs.


def run_case(
    model: SAM4D,
    frames: list[Frame],
    num_objects: int,
    num_cameras: int,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """Per-stage medians (ms) of ``steps`` tracker steps after ``warmup`` (prompts on step 0)."""
    tracker = StreamingTracker(model, TrackerConfig())
    first = with_cameras(frames[0], num_cameras)
    tracker.step(first)
    xyz = click_points(first, num_objects)
    tracker.add_prompts(
        [
            ObjectPrompt(i + 1, lidar=LidarPrompt(points=xyz[i : i + 1], labels=np.array([1])))
            for i in range(num_objects)
        ]
    )
    samples: dict[str, list[float]] = {k: [] for k, _ in STAGES}
    for k in range(1, 1 + warmup + steps):
        f = frames[k % len(frames)]
        f = dataclasses.replace(
            with_cameras(f, num_cameras), timestamp=frames[0].timestamp + 0.1 * k
        )
        r = tracker.step(f)
        if k > warmup:
            for key, _ in STAGES:
                samples[key].append(r.timings_ms.get(key, 0.0))
    out: dict[str, Any] = {
        "objects": num_objects,
        "cameras": num_cameras,
        "points": int(len(frames[0].points)),
        "median_ms": {k: round(statistics.median(v), 2) for k, v in samples.items()},
        "p90_total_ms": round(float(np.percentile(samples["total"], 90)), 2),
        "max_total_ms": round(max(samples["total"]), 2),
    }
    return out


def run_config(
    name: str,
    device: str,
    frames: list[Frame],
    objects: list[int],
    cameras: list[int],
    steps: int,
    warmup: int,
    log: Any = sys.stdout,
    amp: str = "off",
    compile_image: bool = False,
    clock: str = "wall",
) -> dict[str, Any]:
    """Times ``name`` on ``device`` for each (objects, cameras) case; ``amp`` runs the steps
    under autocast (bf16 / fp16), ``compile_image`` compiles the image encoder first, ``clock``
    is the stage clock (:meth:`StageClock.named`)."""
    torch.manual_seed(0)
    if name.endswith(".pt"):  # a checkpoint: the model it embeds, with its weights
        model = build_sam4d(checkpoint=name, device=device)
    else:
        model = build_sam4d(name, device=device)
    model.clock = StageClock.named(clock)
    if compile_image:
        image = model.pure_model.backbone["image"]
        model.pure_model.backbone["image"] = torch.compile(image)
    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
    autocast = (
        torch.autocast(model.device.type, dtype=dtypes[amp])
        if amp in dtypes
        else contextlib.nullcontext()
    )
    cases = []
    plan = [(1, 1)] + [(o, 1) for o in objects if o != 1] + [(1, c) for c in cameras if c != 1]
    for n_obj, n_cam in plan:
        t0 = time.perf_counter()
        with torch.inference_mode(), autocast:
            case = run_case(model, frames, n_obj, n_cam, steps, warmup)
        case["wall_s"] = round(time.perf_counter() - t0, 1)
        cases.append(case)
        print(
            f"  {name}: {n_obj:>2} object(s), {n_cam} camera(s): median total "
            f"{case['median_ms']['total']:.1f} ms ({case['wall_s']} s)",
            file=log,
            flush=True,
        )
    return {
        "config": name,
        "model_config": config_to_dict(model.config),  # what ran (a checkpoint embeds its own)
        "device": str(model.device),
        "amp": amp,
        "compile": compile_image,
        "cases": cases,
    }


def _variant(run: dict[str, Any]) -> str:
    """`` (bf16, compiled image encoder)`` style suffix of a run's title (empty for eager fp32)."""
    parts = [run["amp"]] if run.get("amp", "off") != "off" else []
    if run.get("compile"):
        parts.append("compiled image encoder")
    return f" ({', '.join(parts)})" if parts else ""


def format_tables(result: dict[str, Any]) -> str:
    lines = ["Parameters (M)", ""]
    comps = list(next(iter(result["parameters"].values())))
    lines.append("| config | " + " | ".join(comps) + " |")
    lines.append("|---" * (len(comps) + 1) + "|")
    for name, counts in result["parameters"].items():
        lines.append(f"| {name} | " + " | ".join(f"{counts[c] / 1e6:.2f}" for c in comps) + " |")
    for run in result["runs"]:
        lines += [
            "",
            f"{run['config']} on {run['device']}{_variant(run)} ({result['data']}, "
            f"{result['points']} points; "
            f"median ms ({result.get('clock', 'wall')} clock) over {result['steps']} steps"
            f"{'; reference paths' if result.get('reference_paths') else ''})",
            "",
            "| objects | cameras | " + " | ".join(h for _, h in STAGES) + " | p90 total |",
            "|---" * (len(STAGES) + 3) + "|",
        ]
        for c in run["cases"]:
            vals = " | ".join(f"{c['median_ms'][k]:.1f}" for k, _ in STAGES)
            lines.append(f"| {c['objects']} | {c['cameras']} | {vals} | {c['p90_total_ms']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    with contextlib.ExitStack() as stack:
        return _main(argv, stack)


def _main(argv: list[str] | None, stack: contextlib.ExitStack) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--config",
        action="append",
        help="config(s) to time: a registered name, a JSON config or a .pt checkpoint (its "
        "embedded config, e.g. the bundled model's); default sam4d_small",
    )
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    ap.add_argument(
        "--data",
        choices=("kitti", "synthetic"),
        default=None,
        help="input frames: the KITTI sample (default when present) or a synthetic drive",
    )
    ap.add_argument("--kitti-dir", type=Path, default=KITTI_DIR, help="KITTI raw sample folder")
    ap.add_argument("--points", type=int, default=30000, help="points per sweep (default 30000)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per case (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    ap.add_argument(
        "--objects", default="1,4,16", help="comma-separated object counts (default 1,4,16)"
    )
    ap.add_argument(
        "--cameras", default="1,3,6", help="comma-separated camera counts (default 1,3,6)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="stage clock: wall time, or this process's CPU time (less sensitive to load)",
    )
    ap.add_argument("--reference", action="store_true", help="run the reference paths")
    ap.add_argument(
        "--amp",
        choices=("off", "bf16", "fp16"),
        default="off",
        help="autocast dtype of the tracker steps (CUDA; default off: fp32)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the image encoder (trunk + FPN) before timing",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.reference:
        stack.enter_context(reference_paths())
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("CUDA is not available", file=sys.stderr)
        return 2
    data = args.data or ("kitti" if args.kitti_dir.is_dir() else "synthetic")
    frames, desc = load_frames(data, args.points, 8, args.kitti_dir)
    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(
        f"benchmark: {desc}, {len(frames[0].points)} points, device {args.device}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs, load {load_before}, "
        f"{args.clock} clock{', reference paths' if args.reference else ''}",
        flush=True,
    )
    result: dict[str, Any] = {
        "data": desc,
        "points": int(len(frames[0].points)),
        "steps": args.steps,
        "warmup": args.warmup,
        "device": args.device,
        "torch_threads": torch.get_num_threads(),
        "clock": args.clock,
        "reference_paths": bool(args.reference),
        "amp": args.amp,
        "compile": bool(args.compile),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "load_avg_before": load_before,
        "parameters": {name: parameter_counts(name) for name in CONFIGS},
        "runs": [],
    }
    objects = [int(x) for x in args.objects.split(",") if x]
    cameras = [int(x) for x in args.cameras.split(",") if x]
    for name in args.config or ["sam4d_small"]:
        run = run_config(
            name,
            args.device,
            frames,
            objects,
            cameras,
            args.steps,
            args.warmup,
            amp=args.amp,
            compile_image=args.compile,
            clock=args.clock,
        )
        result["runs"].append(run)
    result["load_avg_after"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    print()
    print(format_tables(result))
    print(f"\nload average before {load_before}, after {result['load_avg_after']}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
