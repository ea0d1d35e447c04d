"""Memory soak of the streaming tracker: many steps, RSS first vs last.

    python -m sam4d_core.tracking.soak --steps 1000 --config sam4d_small [--json PATH]

A few synthetic frames are generated once and replayed in a loop with advancing stamps and an ego
pose that keeps moving (the memory PEs see a real trajectory), two objects are prompted on the
first frame (a LiDAR click and a camera click) and, every ``--reprompt-every`` steps, one of them
again on a buffered past frame (the replay path). The process RSS and the tracker's own sizes
(frame buffer, bank entries, kept predictions), and the bytes of all tensors reachable from Python,
are sampled at checkpoints and printed as a table, plus a JSON file.

Reading it: the buffer fills in ``frame_buffer_s`` and the banks in their capacity (~40 steps);
from then on the live tensor bytes are flat. RSS keeps rising for a few hundred more steps while
the C allocator's heap settles (freed blocks are reused, not returned), then only fluctuates by a
few tens of MiB. Pass criteria (exit code 1 otherwise): live tensor bytes after warm-up grow by at
most ``--max-tensor-growth-mb`` (a leak detector that ignores the allocator) and RSS over the
second half of the run by at most ``--max-growth-mb``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
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
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.tracking.records import ImagePrompt, LidarPrompt, ObjectPrompt
from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig


def rss_mb() -> float:
    """Resident set size of this process (MiB), from /proc (Linux) or resource (peak) elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def live_tensors() -> tuple[int, float]:
    """(count, MiB of distinct storages) of the tensors reachable from Python objects: flat when
    nothing leaks, whatever the allocator does with RSS."""
    gc.collect()
    n, total, seen = 0, 0, set()
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor) and not o.is_meta:
            n += 1
            s = o.untyped_storage()
            if s.data_ptr() not in seen:
                seen.add(s.data_ptr())
                total += s.nbytes()
    return n, total / 2**20


def _frame_at(base: list[Frame], step: int, period_s: float, speed_mps: float) -> Frame:
    """Frame ``step`` of the endless loop: a base frame with a new stamp and a pose moved on."""
    f = base[step % len(base)]
    lap = step // len(base)
    pose = f.world_from_lidar.copy()
    # Each lap starts where the previous one ended (plus the loop's own motion).
    pose[:3, 3] += np.array([speed_mps * period_s * len(base) * lap, 0.0, 0.0])
    return dataclasses.replace(f, timestamp=1000.0 + step * period_s, world_from_lidar=pose)


def _prompts(frame: Frame, stamp: float | None) -> list[ObjectPrompt]:
    """Two objects: a LiDAR click on the labelled object with most points and a camera click on
    the object with most pixels in the first camera."""
    assert frame.point_labels is not None
    ids, counts = np.unique(frame.point_labels[frame.point_labels > 0], return_counts=True)
    lidar_obj = int(ids[np.argmax(counts)])
    xyz = frame.points[frame.point_labels == lidar_obj][:1, :3].astype(np.float64)
    cam_name, cam = next(iter(frame.cameras.items()))
    assert cam.instance_mask is not None
    ids, counts = np.unique(cam.instance_mask[cam.instance_mask > 0], return_counts=True)
    img_obj = int(ids[np.argmax(counts)])
    vs, us = np.nonzero(cam.instance_mask == img_obj)
    k = len(us) // 2
    return [
        ObjectPrompt(1, stamp=stamp, lidar=LidarPrompt(points=xyz, labels=np.array([1]))),
        ObjectPrompt(
            2,
            stamp=stamp,
            image=[
                ImagePrompt(
                    cam_name, points=np.array([[float(us[k]), float(vs[k])]]), labels=np.array([1])
                )
            ],
        ),
    ]


def run_soak(
    steps: int,
    config: str,
    preset: str,
    num_base_frames: int,
    checkpoints: int,
    reprompt_every: int,
    threads: int | None,
    device: str,
    log: Any = sys.stdout,
) -> dict[str, Any]:
    if threads:
        torch.set_num_threads(threads)
    t_gen = time.perf_counter()
    base = generate_sequence(make_config(preset, num_frames=num_base_frames)).frames
    t_gen = time.perf_counter() - t_gen
    torch.manual_seed(0)
    model = build_sam4d(config, device=device)
    tracker = StreamingTracker(model, TrackerConfig())
    period = 0.1
    marks = sorted(
        {0, 9, 49, steps - 1}
        | {int(round(steps * k / checkpoints)) - 1 for k in range(1, checkpoints + 1)}
    )
    marks = [m for m in marks if 0 <= m < steps]
    rows: list[dict[str, Any]] = []
    step_ms: list[float] = []
    rss0 = rss_mb()
    t_start = time.perf_counter()
    for step in range(steps):
        frame = _frame_at(base, step, period, speed_mps=8.0)
        t0 = time.perf_counter()
        tracker.step(frame)
        if step == 0:
            tracker.add_prompts(_prompts(frame, None))
        elif reprompt_every and step % reprompt_every == 0:
            # A click on a frame 1 s back: the prompted object is replayed up to the newest.
            past = max(0, step - int(round(1.0 / period)))
            tracker.add_prompts(
                _prompts(_frame_at(base, past, period, 8.0), 1000.0 + past * period)[:1]
            )
        step_ms.append((time.perf_counter() - t0) * 1e3)
        if step in marks:
            n_tensors, tensor_mb = live_tensors()
            s = tracker.memory_stats()
            row = {
                "step": step + 1,
                "rss_mb": round(rss_mb(), 1),
                "live_tensors": n_tensors,
                "tensor_mb": round(tensor_mb, 1),
                "buffer_frames": s["buffer_frames"],
                "bank_entries": max(s["bank_entries"].values(), default=0),  # type: ignore[union-attr]
                "bank_capacity": s["bank_capacity"],
                "outputs_kept": max(s["outputs_kept"].values(), default=0),  # type: ignore[union-attr]
                "objects": s["objects"],
                "median_step_ms": round(statistics.median(step_ms[-50:]), 1),
                "elapsed_s": round(time.perf_counter() - t_start, 1),
            }
            rows.append(row)
            print(
                f"  step {row['step']:>5}  rss {row['rss_mb']:8.1f} MiB  "
                f"tensors {row['tensor_mb']:7.1f} MiB  "
                f"buffer {row['buffer_frames']:>2}  "
                f"bank {row['bank_entries']:>2}/{row['bank_capacity']}  "
                f"step {row['median_step_ms']:6.1f} ms",
                file=log,
                flush=True,
            )
    warm = next((r for r in rows if r["step"] >= 50), rows[0])
    half = next((r for r in rows if r["step"] >= steps // 2), rows[0])
    return {
        "config": config,
        "preset": preset,
        "steps": steps,
        "objects": 2,
        "device": str(model.device),
        "threads": torch.get_num_threads(),
        "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "points_per_frame": int(np.median([len(f.points) for f in base])),
        "cameras": list(base[0].cameras),
        "generate_s": round(t_gen, 1),
        "rss_before_first_step_mb": round(rss0, 1),
        "rss_first_mb": rows[0]["rss_mb"],
        "rss_after_warmup_mb": warm["rss_mb"],
        "rss_last_mb": rows[-1]["rss_mb"],
        "growth_after_warmup_mb": round(rows[-1]["rss_mb"] - warm["rss_mb"], 1),
        "growth_second_half_mb": round(rows[-1]["rss_mb"] - half["rss_mb"], 1),
        "tensor_mb_after_warmup": warm["tensor_mb"],
        "tensor_mb_last": rows[-1]["tensor_mb"],
        "median_step_ms": round(statistics.median(step_ms), 1),
        "checkpoints": rows,
    }


def _table(result: dict[str, Any]) -> str:
    cols = [
        ("step", "step"),
        ("rss_mb", "RSS MiB"),
        ("tensor_mb", "live tensors MiB"),
        ("live_tensors", "tensors"),
        ("buffer_frames", "buffer"),
        ("bank_entries", "bank"),
        ("outputs_kept", "kept"),
        ("median_step_ms", "step ms"),
        ("elapsed_s", "elapsed s"),
    ]
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in result["checkpoints"]:
        lines.append("| " + " | ".join(str(r[k]) for k, _ in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--config", default="sam4d_small", help="model config name")
    ap.add_argument("--preset", default="bundled_sample", help="synthetic scene preset")
    ap.add_argument("--base-frames", type=int, default=8, help="distinct frames in the loop")
    ap.add_argument("--checkpoints", type=int, default=10)
    ap.add_argument("--reprompt-every", type=int, default=100, help="0: never")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", type=Path, default=None, help="write the result here")
    ap.add_argument(
        "--max-growth-mb",
        type=float,
        default=64.0,
        help="fail above this RSS growth over the second half of the run (allocator noise is "
        "some 10s of MiB)",
    )
    ap.add_argument(
        "--max-tensor-growth-mb",
        type=float,
        default=1.0,
        help="fail above this growth of live tensor bytes after warm-up (a leak)",
    )
    args = ap.parse_args(argv)
    print(
        f"soak: {args.steps} steps of {args.config} on the synthetic '{args.preset}' scene, "
        "2 objects",
        flush=True,
    )
    with torch.inference_mode():
        result = run_soak(
            args.steps,
            args.config,
            args.preset,
            args.base_frames,
            args.checkpoints,
            args.reprompt_every,
            args.threads,
            args.device,
        )
    print()
    print(_table(result))
    print(
        f"\nRSS first {result['rss_first_mb']} MiB, after warm-up (step >= 50) "
        f"{result['rss_after_warmup_mb']} MiB, last {result['rss_last_mb']} MiB: growth after "
        f"warm-up {result['growth_after_warmup_mb']} MiB (second half "
        f"{result['growth_second_half_mb']} MiB); live tensors {result['tensor_mb_after_warmup']} "
        f"-> {result['tensor_mb_last']} MiB; median step {result['median_step_ms']} ms"
    )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    leak = result["tensor_mb_last"] - result["tensor_mb_after_warmup"]
    ok = leak <= args.max_tensor_growth_mb and result["growth_second_half_mb"] <= args.max_growth_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
