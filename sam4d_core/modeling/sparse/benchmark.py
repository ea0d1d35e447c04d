"""Benchmark of the plain-PyTorch sparse convolution: per-offset loop vs batched (im2col GEMM).

Usage::

    python -m sam4d_core.modeling.sparse.benchmark [--device cpu|cuda] [--json PATH]
        [--points FILE.bin|synthetic] [--max-points N] [--repeat R] [--skip-full]

It voxelizes one LiDAR sweep SAM4D's way (0.05 m, then 0.15 m), then times (min and median of R runs
after a warm-up, kernel maps already cached except in the backbone forward, inference mode) the
four implementations ("loop": one gather-matmul-scatter per kernel offset; "packed": the loop's
sums with one gather, per-offset matmuls into one buffer and one index_add per cache-sized chunk,
the CPU default; "grouped": offsets batched into a few bmm groups, the CUDA default; "gemm":
im2col, one gather + one matmul):

- the kernel-map build of a k3 submanifold conv on that sweep;
- k3 submanifold convs C -> C at 32 / 64 / 128 channels, k2 stride-2 and transposed convs at 64;
- the MinkUNet backbone forward (voxelization included) at full (MinkUNet34-W32) and tiny width.

The default sweep is the KITTI raw frame in ``shared/data`` when present (float32 (N, 4) .bin),
otherwise a synthetic one (ground plane, walls and boxes).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sam4d_core.modeling.backbones.minkunet import (
    build_minkunet,
    minkunet34_w32_config,
    minkunet_tiny_config,
)
from sam4d_core.modeling.reference_paths import reference_paths
from sam4d_core.modeling.sparse.conv import conv_impl, sparse_conv3d
from sam4d_core.modeling.sparse.kernel_map import get_kernel_map
from sam4d_core.modeling.sparse.tensor import SparseTensor
from sam4d_core.modeling.sparse.voxelize import sam4d_voxelize

IMPLS = ("loop", "packed", "grouped", "gemm")
DEFAULT_SWEEP = (
    Path(__file__).resolve().parents[3].parent
    / "shared/data/kitti_raw_2011_09_26/velodyne_points/data/0000000000.bin"
)


def synthetic_sweep(n: int = 120_000, seed: int = 0) -> np.ndarray:
    """A plausible sweep: ground ring (denser near the sensor), two walls, 30 car-sized boxes."""
    rng = np.random.default_rng(seed)
    n_ground, n_walls = n // 2, n // 5
    r = 3 + 70 * rng.random(n_ground) ** 2
    a = rng.random(n_ground) * 2 * np.pi
    ground = np.stack([r * np.cos(a), r * np.sin(a), -1.7 + 0.02 * rng.standard_normal(n_ground)])
    wx = rng.uniform(-60, 60, n_walls)
    walls = np.stack(
        [wx, np.where(rng.random(n_walls) < 0.5, -12.0, 12.0), rng.uniform(-1.7, 4, n_walls)]
    )
    n_box = n - n_ground - n_walls
    centres = rng.uniform([-40, -10, -1.0], [40, 10, -1.0], size=(30, 3))
    idx = rng.integers(0, 30, n_box)
    boxes = centres[idx] + rng.uniform(-0.5, 0.5, (n_box, 3)) * np.array([4.2, 1.8, 1.5])
    return np.concatenate([ground.T, walls.T, boxes]).astype(np.float32)


def load_sweep(source: str, max_points: int | None) -> tuple[np.ndarray, str]:
    if source == "synthetic" or (source == "auto" and not DEFAULT_SWEEP.exists()):
        pts, name = synthetic_sweep(), "synthetic"
    else:
        path = DEFAULT_SWEEP if source == "auto" else Path(source)
        pts = np.fromfile(path, dtype=np.float32).reshape(-1, 4)[:, :3]
        name = path.name
    if max_points is not None and pts.shape[0] > max_points:
        keep = np.random.default_rng(0).choice(pts.shape[0], max_points, replace=False)
        pts = pts[np.sort(keep)]
    return pts, name


def timeit(fn: Callable[[], object], device: torch.device, repeat: int) -> tuple[float, float]:
    """(min, median) wall time of ``fn`` in milliseconds, after one warm-up call.

    The table shows the minimum: on a shared machine it is the number least disturbed by other
    processes; the JSON keeps both.
    """

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), statistics.median(times)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    pts_np, sweep_name = load_sweep(args.points, args.max_points)
    pts = torch.from_numpy(pts_np).to(device)
    vox = sam4d_voxelize(pts)
    coords = vox.voxels.coords
    n_vox = coords.shape[0]
    results: dict = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "sweep": sweep_name,
        "points": int(pts.shape[0]),
        "voxels_0.15m": int(n_vox),
        "rows": [],
    }

    def fresh(channels: int) -> SparseTensor:
        feats = torch.randn(n_vox, channels, device=device)
        return SparseTensor(feats, coords, stride=1)

    def kmap_build() -> None:
        get_kernel_map(fresh(1), (3, 3, 3), (1, 1, 1), (1, 1, 1))

    t_kmap = timeit(kmap_build, device, args.repeat)[0]
    with reference_paths():
        t_kmap_ref = timeit(kmap_build, device, args.repeat)[0]
    results["kmap_build_reference_ms"] = t_kmap_ref
    kmap = get_kernel_map(fresh(1), (3, 3, 3), (1, 1, 1), (1, 1, 1))
    fill = float((kmap.nbr >= 0).float().mean())
    results["kmap_build_ms"] = t_kmap
    results["k3_neighbour_fill"] = fill

    def add_row(name: str, fn_for_impl: Callable[[str], Callable[[], object]]) -> None:
        row: dict = {"op": name}
        for impl in IMPLS:
            with conv_impl(impl), torch.inference_mode():
                row[impl], row[f"{impl}_median"] = timeit(fn_for_impl(impl), device, args.repeat)
        best = min(row[impl] for impl in IMPLS if impl != "loop")
        row["speedup_vs_loop"] = row["loop"] / best
        results["rows"].append(row)
        times = "".join(f"{row[impl]:>10.1f}" for impl in IMPLS)
        print(f"{name:<44}{times}{row['speedup_vs_loop']:>9.2f}x")

    print(
        f"device {results['device_name']}, torch {torch.__version__}, "
        f"{results['threads']} threads; "
        f"sweep {sweep_name}: {pts.shape[0]} points -> {n_vox} voxels at 0.15 m; "
        f"k3 kernel map build {t_kmap:.1f} ms (reference lookups {t_kmap_ref:.1f} ms), "
        f"neighbour fill {fill:.1%}"
    )
    print(f"{'operation (min ms)':<44}" + "".join(f"{i:>10}" for i in IMPLS) + "  loop/best")
    for c in (32, 64, 128):
        x = fresh(c)
        kernel = torch.randn(27, c, c, device=device) / (27 * c) ** 0.5
        get_kernel_map(x, (3, 3, 3), (1, 1, 1), (1, 1, 1))
        add_row(
            f"subm k3 {c}->{c} @ stride 1",
            lambda impl, x=x, kernel=kernel: lambda: sparse_conv3d(x, kernel, 3),
        )
    x = fresh(64)
    k_down = torch.randn(8, 64, 64, device=device) / (8 * 64) ** 0.5
    down = sparse_conv3d(x, k_down, 2, stride=2)
    add_row(
        f"down k2 s2 64->64 ({n_vox}->{down.num_points})",
        lambda impl: lambda: sparse_conv3d(x, k_down, 2, stride=2),
    )
    add_row(
        f"up k2 s2 transposed 64->64 (->{n_vox})",
        lambda impl: lambda: sparse_conv3d(down, k_down, 2, stride=2, transposed=True),
    )

    configs = [("MinkUNet tiny", minkunet_tiny_config())]
    if not args.skip_full:
        configs.append(("MinkUNet34-W32 (official)", minkunet34_w32_config()))
    for name, cfg in configs:
        model = build_minkunet(cfg).to(device).eval()
        n_params = sum(p.numel() for p in model.parameters())
        add_row(
            f"{name} fwd ({n_params / 1e6:.1f} M)",
            lambda impl, model=model: lambda: model(pts),
        )
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            with torch.inference_mode():
                model(pts)
            results["rows"][-1]["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        del model
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--points", default="auto", help="a KITTI .bin file, 'synthetic' or auto")
    parser.add_argument("--max-points", type=int, default=None, help="subsample the sweep")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--skip-full", action="store_true", help="skip MinkUNet34-W32")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
