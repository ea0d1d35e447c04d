"""Benchmark of the message edge: ROS messages -> arrays and arrays -> output messages.

    python -m sam4d_ros.benchmarks.conversions [--json PATH] [--repeat N]

Prints a table (median / p90 per case, the issue's targets) and optionally writes JSON. Cases:
a 120,000-point PointCloud2 in a padded Velodyne/PCL-style layout (x, y, z, intensity float32,
ring uint16, time float32; 32-byte points) -> xyz + intensity (+ ring, time, validity) and ->
labeled output PointCloud2 (message construction included); a 1242x375 rgb8 Image -> array; a
1600x900 JPEG CompressedImage -> RGB array (the nuScenes CAM_FRONT sample when present). Extra
rows show the output side and what the ``uint8[]`` setter costs when data is not handed over as
an ``array.array`` without a copy.
"""

from __future__ import annotations

import argparse
import array
import glob
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sam4d_core.codecs.image import encode_compressed
from sam4d_core.codecs.pointcloud import intensity_from_points, valid_mask, xyz_from_points

__all__ = ["main", "run_benchmarks"]

NUM_POINTS = 120_000
JPEG_GLOB = "/work/shared/data/nuscenes_sample/*CAM_FRONT__*.jpg"
TARGETS_MS = {
    "cloud -> xyz + intensity": 1.0,
    "cloud -> labeled PointCloud2": 3.0,
    "rgb8 Image 1242x375 -> array": 0.2,
}


def _cloud_msg(n: int) -> Any:
    """A Velodyne-like cloud as drivers publish it (PCL PointXYZIRT: 32-byte aligned points)."""
    from sensor_msgs.msg import PointCloud2, PointField

    from sam4d_ros.conversions.uint8_data import set_uint8_data

    rng = np.random.default_rng(0)
    dt = np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "ring", "time"],
            "formats": ["<f4", "<f4", "<f4", "<f4", "<u2", "<f4"],
            "offsets": [0, 4, 8, 16, 20, 24],
            "itemsize": 32,
        }
    )
    arr = np.zeros(n, dt)
    arr["x"] = rng.normal(0, 20, n)
    arr["y"] = rng.normal(0, 20, n)
    arr["z"] = rng.normal(0, 2, n)
    arr["x"][::50] = np.nan  # no-return points of a non-dense cloud
    arr["intensity"] = rng.random(n) * 255
    arr["ring"] = np.arange(n) % 128
    arr["time"] = np.linspace(0, 0.1, n)
    msg = PointCloud2()
    msg.header.frame_id = "lidar"
    msg.header.stamp.sec = 1_700_000_000
    msg.height, msg.width = 1, n
    msg.fields = [
        PointField(name=name, offset=off, datatype=dtype, count=1)
        for name, off, dtype in [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("intensity", 16, 7),
                                 ("ring", 20, 4), ("time", 24, 7)]
    ]  # fmt: skip
    msg.point_step, msg.row_step = 32, 32 * n
    msg.is_dense = False
    set_uint8_data(msg, array.array("B", arr.tobytes()))
    return msg


def _jpeg() -> tuple[bytes, str]:
    paths = sorted(glob.glob(JPEG_GLOB))
    if paths:
        with open(paths[0], "rb") as f:
            return f.read(), os.path.basename(paths[0])
    yy, xx = np.mgrid[0:900, 0:1600]
    rgb = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8)
    return encode_compressed(rgb, "jpeg", 90), "synthetic 1600x900 (nuScenes sample not found)"


def _time(fn: Callable[[], Any], repeat: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


def run_benchmarks(repeat: int = 50) -> dict[str, Any]:
    """Run every case; returns {"cases": {name: {median_ms, p90_ms, ...}}, "environment": ...}."""
    from sensor_msgs.msg import CompressedImage, PointCloud2

    from sam4d_ros.conversions.image import (
        compressed_image_to_rgb,
        image_to_rgb,
        labels_to_mono16_msg,
        overlay_msg,
        rgb_to_image_msg,
    )
    from sam4d_ros.conversions.pointcloud2 import (
        make_labeled_pointcloud2,
        pointcloud2_to_array,
        pointcloud2_to_points,
    )
    from sam4d_ros.conversions.uint8_data import set_uint8_data

    cloud = _cloud_msg(NUM_POINTS)
    labels = (np.arange(NUM_POINTS) % 7).astype(np.uint32)
    scores = np.random.default_rng(1).random(NUM_POINTS).astype(np.float32)
    rgb = np.random.default_rng(2).integers(0, 256, (375, 1242, 3), dtype=np.uint8)
    image = rgb_to_image_msg(rgb)
    mask_ids = np.zeros((375, 1242), np.int64)
    mask_ids[100:300, 200:700] = 1
    mask_ids[50:200, 800:1100] = 2
    jpeg_bytes, jpeg_name = _jpeg()
    jpeg = CompressedImage()
    jpeg.format = "rgb8; jpeg compressed bgr8"
    set_uint8_data(jpeg, array.array("B", jpeg_bytes))

    def xyz_intensity():
        arr = pointcloud2_to_array(cloud)
        xyz = xyz_from_points(arr)
        return xyz, intensity_from_points(arr), valid_mask(xyz)

    labeled = make_labeled_pointcloud2(cloud, labels, scores)
    labeled_bytes = bytes(labeled.data)
    labeled_array = array.array("B", labeled_bytes)

    def setter(value: Any, check_fields: bool | None) -> Callable[[], None]:
        def run() -> None:
            msg = PointCloud2()
            if check_fields is not None and hasattr(msg, "_check_fields"):
                msg._check_fields = check_fields
            msg.data = value

        return run

    cases: list[tuple[str, Callable[[], Any], int]] = [
        ("cloud -> xyz + intensity", xyz_intensity, repeat),
        ("cloud -> LidarPoints (xyz, intensity, ring, time, valid)",
         lambda: pointcloud2_to_points(cloud), repeat),
        ("cloud -> labeled PointCloud2", lambda: make_labeled_pointcloud2(cloud, labels, scores),
         repeat),
        ("rgb8 Image 1242x375 -> array", lambda: image_to_rgb(image), repeat),
        (f"JPEG 1600x900 -> RGB array ({jpeg_name[:40]})", lambda: compressed_image_to_rgb(jpeg),
         max(5, repeat // 5)),
        ("overlay rgb8 Image 1242x375 (out)", lambda: overlay_msg(rgb, mask_ids), repeat),
        ("label mono16 Image 1242x375 (out)", lambda: labels_to_mono16_msg(mask_ids), repeat),
        ("setter: data = array.array, no copy (ours)",
         lambda: set_uint8_data(PointCloud2(), labeled_array), repeat),
        ("setter: data = array.array, default (copy)", setter(labeled_array, None), repeat),
        ("setter: data = bytes, default", setter(labeled_bytes, None), repeat),
        ("setter: data = bytes, checked fields (Humble-like)", setter(labeled_bytes, True), 1),
    ]  # fmt: skip
    results: dict[str, Any] = {}
    for name, fn, n in cases:
        samples = _time(fn, n, warmup=0 if n == 1 else 3)
        results[name] = {
            "median_ms": float(np.median(samples)),
            "p90_ms": float(np.percentile(samples, 90)),
            "min_ms": float(np.min(samples)),
            "repeat": n,
            "target_ms": TARGETS_MS.get(name),
        }
    import cv2

    return {
        "cases": results,
        "environment": {
            "python": platform.python_version(),
            "numpy": np.__version__,
            "opencv": cv2.__version__,
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
            "points": NUM_POINTS,
            "labeled_point_step": labeled.point_step,
        },
    }


def _print_table(report: dict[str, Any]) -> None:
    width = max(len(n) for n in report["cases"]) + 2
    print(f"{'case':<{width}}{'median ms':>11}{'p90 ms':>10}{'target':>9}  ok")
    for name, r in report["cases"].items():
        target = r["target_ms"]
        ok = "" if target is None else ("yes" if r["median_ms"] <= target else "NO")
        tgt = "" if target is None else f"<= {target:g}"
        print(f"{name:<{width}}{r['median_ms']:>11.3f}{r['p90_ms']:>10.3f}{tgt:>9}  {ok}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per case (default 50)")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    report = run_benchmarks(args.repeat)
    _print_table(report)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
