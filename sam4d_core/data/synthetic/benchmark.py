"""Speed benchmark of the synthetic generator (a command, not a test).

    python -m sam4d_core.data.synthetic.benchmark [--preset benchmark] [--frames 6] [--json PATH]

Builds the scene, renders one warm-up frame, then times ``--frames`` frames and prints the median,
min and max per stage (each camera, the LiDAR, the whole frame). The ``benchmark`` preset is the
speed target of the project: one 640x384 camera plus a 64 x 1024 LiDAR in <= 1 s per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .generator import PRESETS, SyntheticGenerator, make_config


def run(preset: str = "benchmark", frames: int = 6, seed: int | None = None) -> dict:
    """Time the generator; returns the JSON-able result (seconds)."""
    overrides: dict = {"num_frames": frames + 1}
    if seed is not None:
        overrides["seed"] = seed
    cfg = make_config(preset, **overrides)
    t0 = time.perf_counter()
    gen = SyntheticGenerator(cfg)
    build_s = time.perf_counter() - t0
    gen.render(0)  # warm-up: first-touch allocations, lazy imports
    per_stage: dict[str, list[float]] = {}
    points, objects = [], []
    for i in range(1, frames + 1):
        r = gen.render(i)
        for k, v in r.timings.items():
            per_stage.setdefault(k, []).append(v)
        points.append(len(r.frame.points))
        objects.append(len(r.frame.objects))
    stages = {
        k: {"median_s": float(np.median(v)), "min_s": float(min(v)), "max_s": float(max(v))}
        for k, v in per_stage.items()
    }
    return {
        "preset": preset,
        "frames_timed": frames,
        "cameras": [{"name": c.name, "width": c.width, "height": c.height} for c in cfg.cameras],
        "lidar": {"beams": gen.lidar.beams, "columns": gen.lidar.columns},
        "scene_objects": len(gen.scene.objects),
        "scene_build_s": build_s,
        "points_per_frame_median": float(np.median(points)),
        "objects_per_frame_median": float(np.median(objects)),
        "stages": stages,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "platform": platform.platform(),
        },
    }


def format_table(result: dict) -> str:
    lines = [
        f"synthetic generator benchmark: preset {result['preset']}, "
        f"{result['frames_timed']} frames, "
        + ", ".join(f"{c['name']} {c['width']}x{c['height']}" for c in result["cameras"])
        + f", LiDAR {result['lidar']['beams']}x{result['lidar']['columns']}",
        f"scene build {result['scene_build_s'] * 1e3:.0f} ms, {result['scene_objects']} objects; "
        f"median {result['points_per_frame_median']:.0f} points and "
        f"{result['objects_per_frame_median']:.0f} visible objects per frame",
        f"{'stage':<24}{'median ms':>12}{'min ms':>10}{'max ms':>10}",
    ]
    for name, s in result["stages"].items():
        ms = [s[k] * 1e3 for k in ("median_s", "min_s", "max_s")]
        lines.append(f"{name:<24}{ms[0]:>12.1f}{ms[1]:>10.1f}{ms[2]:>10.1f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="benchmark", choices=PRESETS)
    parser.add_argument("--frames", type=int, default=6, help="frames timed (after 1 warm-up)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args(argv)
    if args.frames < 1:
        parser.error("--frames must be >= 1")
    result = run(args.preset, args.frames, args.seed)
    print(format_table(result))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
