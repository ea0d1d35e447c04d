"""Command-line converter between driving-sequence formats.

    python -m sam4d_ros.recording.convert <command> --help

Commands:
    synthetic-to-waymo  generate a synthetic sequence and write it as a Waymo-4DSeg data set
    synthetic-to-bag    generate a synthetic sequence and write it as a rosbag2 recording
    waymo-to-bag        a Waymo-4DSeg sequence -> rosbag2 (streamed frame by frame)
    kitti-to-bag        a KITTI raw drive folder (synced+rectified, as downloaded) -> rosbag2
    nuscenes-to-bag     the nuScenes sample of shared/data -> rosbag2
    bag-to-waymo        rosbag2 -> Waymo-4DSeg
    bag-to-frames       rosbag2 -> one folder per frame: PNG images, npz points, JSON poses/calib

Every command shows a progress bar on stderr (``--quiet`` turns it off) and prints a summary table
on stdout at the end. Outputs appear atomically: a failed run leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

from sam4d_core.data.errors import DatasetError
from sam4d_core.data.sequence import Frame, Sequence
from sam4d_core.data.sequence_bag import (
    BagTopics,
    SequenceBagReader,
    static_calibrations,
    write_frames_bag,
)

__all__ = ["Progress", "main"]


# ------------------------------------------------------------------------------ progress, summary


class Progress:
    """A minimal progress bar on stderr (tqdm is not a dependency of this project).

    On a terminal the bar redraws in place; otherwise (logs, CI) it prints a line about every
    10 % so that logs stay short. Call it as ``progress(done, total)``.
    """

    def __init__(self, label: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.label = label
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self._last_decile = -1
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        frac = done / total if total else 1.0
        width = 28
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        text = f"{self.label:<8} [{bar}] {done}/{total} frames  {rate:5.1f} frames/s"
        if self._tty:
            self.stream.write("\r" + text + ("\n" if done >= total else ""))
            self.stream.flush()
        else:
            decile = int(frac * 10)
            if decile != self._last_decile or done >= total:
                self._last_decile = decile
                self.stream.write(text + "\n")
                self.stream.flush()


@dataclass
class Stats:
    """What went through a conversion, for the summary table."""

    frames: int = 0
    points: int = 0
    images: int = 0
    labeled_frames: int = 0
    cameras: list[str] = field(default_factory=list)
    t_first: float | None = None
    t_last: float | None = None

    def add(self, frame: Frame) -> None:
        self.frames += 1
        self.points += int(frame.points.shape[0])
        self.images += len(frame.cameras)
        self.labeled_frames += int(frame.has_ground_truth)
        for c in frame.cameras:
            if c not in self.cameras:
                self.cameras.append(c)
        self.t_first = (
            frame.timestamp if self.t_first is None else min(self.t_first, frame.timestamp)
        )
        self.t_last = frame.timestamp if self.t_last is None else max(self.t_last, frame.timestamp)


def _size_of(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def print_summary(
    rows: list[tuple[str, str]], stream: TextIO | None = None, title: str = "summary"
) -> None:
    """A two-column table."""
    stream = stream or sys.stdout
    w0 = max(len(k) for k, _ in rows)
    w1 = max(len(v) for _, v in rows)
    line = "+" + "-" * (w0 + 2) + "+" + "-" * (w1 + 2) + "+"
    stream.write(f"{title}\n{line}\n")
    for k, v in rows:
        stream.write(f"| {k:<{w0}} | {v:<{w1}} |\n")
    stream.write(line + "\n")


def _summary_rows(
    src: str, dst: Path, stats: Stats, elapsed: float, extra: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    per = stats.points / stats.frames if stats.frames else 0
    span = (
        f"{stats.t_last - stats.t_first:.3f} s"
        if stats.t_first is not None and stats.t_last is not None
        else "-"
    )
    rate = stats.frames / elapsed if elapsed > 0 else 0.0
    return [
        ("input", src),
        ("output", str(dst)),
        ("frames", str(stats.frames)),
        ("cameras", ", ".join(stats.cameras) or "-"),
        ("points", f"{stats.points:,} ({per:,.0f} per frame)"),
        ("images", str(stats.images)),
        ("frames with ground truth", str(stats.labeled_frames)),
        ("time span", span),
        *extra,
        ("output size", _human_bytes(_size_of(dst)) if dst.exists() else "-"),
        ("elapsed", f"{elapsed:.2f} s ({rate:.1f} frames/s)"),
    ]


def _counted(frames: Iterable[Frame], stats: Stats) -> Iterator[Frame]:
    for f in frames:
        stats.add(f)
        yield f


# ------------------------------------------------------------------------------------ writers


def _bag_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "compressed_images": args.images != "raw",
        "compression_format": "png" if args.images == "png" else "jpeg",
        "jpeg_quality": args.jpeg_quality,
        "storage": args.storage,
        "chunk_compression": args.chunk_compression,
        "ground_truth": not args.no_ground_truth,
        "overwrite": args.overwrite,
    }


def _write_bag(
    frames: Iterable[Frame], total: int, out: Path, *, args: argparse.Namespace, **sequence: Any
) -> None:
    """Stream frames into a bag; ``sequence``: the writer's name, point fields, frame ids and
    static camera calibrations."""
    write_frames_bag(
        out,
        frames,
        total=total,
        progress=Progress("write", enabled=not args.quiet),
        **sequence,
        **_bag_options(args),
    )


def _sequence_to_bag(seq: Sequence, out: Path, args: argparse.Namespace, stats: Stats) -> None:
    _write_bag(
        _counted(seq.frames, stats),
        len(seq),
        out,
        name=seq.name,
        point_fields=tuple(seq.point_fields),
        lidar_frame_id=seq.lidar_frame_id,
        world_frame_id=seq.world_frame_id,
        static_cameras=static_calibrations(seq.frames),
        args=args,
    )


# ------------------------------------------------------------------------------------ synthetic


def _synthetic_generator(args: argparse.Namespace) -> Any:
    """The synthetic generator for a named preset (seed / frame count / name overridable)."""
    from sam4d_core.data.synthetic import PRESETS, SyntheticGenerator, make_config

    if args.preset not in PRESETS:
        raise ValueError(f"unknown preset {args.preset!r} (have: {', '.join(PRESETS)})")
    overrides = {
        k: v
        for k, v in (("seed", args.seed), ("num_frames", args.frames), ("name", args.name))
        if v is not None
    }
    gen = SyntheticGenerator(make_config(args.preset, **overrides))
    if args.first is not None and not 1 <= args.first <= len(gen):
        raise ValueError(f"--first {args.first} must be in [1, {len(gen)}] (the sequence length)")
    return gen


def _synthetic_frames(gen: Any, args: argparse.Namespace) -> tuple[Iterator[Frame], int]:
    """The frames to convert and their number: all, or the first ``--first`` of them."""
    total = len(gen) if args.first is None else args.first
    return itertools.islice(gen.frames(), total), total


def cmd_synthetic_to_waymo(args: argparse.Namespace) -> list[tuple[str, str]]:
    gen = _synthetic_generator(args)
    progress = Progress("render", enabled=not args.quiet)
    frames = []
    todo, total = _synthetic_frames(gen, args)
    for k, frame in enumerate(todo):
        frames.append(frame)
        progress(k + 1, total)
    cfg = gen.config
    seq = Sequence(
        name=cfg.sequence_name,
        frames=frames,
        point_fields=cfg.lidar.point_fields,
        lidar_frame_id=cfg.lidar_frame_id,
        world_frame_id=cfg.world_frame_id,
    )
    _write_waymo(seq, args)
    return [("preset", f"{args.preset} (seed {cfg.seed})")]


def cmd_synthetic_to_bag(args: argparse.Namespace) -> list[tuple[str, str]]:
    gen = _synthetic_generator(args)
    cfg = gen.config
    # Rendering is the slow part, so stream: render, write, forget. The cameras are rigidly
    # mounted, so the first frame's extrinsics are the static calibration.
    frames, total = _synthetic_frames(gen, args)
    first = next(frames)
    static = {c: cam.cam_from_lidar for c, cam in first.cameras.items()}
    _write_bag(
        _counted(itertools.chain([first], frames), args.stats),
        total,
        args.output,
        name=cfg.sequence_name,
        point_fields=tuple(cfg.lidar.point_fields),
        lidar_frame_id=cfg.lidar_frame_id,
        world_frame_id=cfg.world_frame_id,
        static_cameras=static,
        args=args,
    )
    return [("preset", f"{args.preset} (seed {cfg.seed})")]


def _write_waymo(seq: Sequence, args: argparse.Namespace) -> None:
    from sam4d_core.data.waymo4dseg import write_waymo4dseg

    for f in seq.frames:
        args.stats.add(f)
    write_waymo4dseg(
        seq,
        args.output,
        image_format=args.image_format,
        jpeg_quality=args.jpeg_quality,
        overwrite=args.overwrite,
        progress=Progress("write", enabled=not args.quiet),
    )


# ------------------------------------------------------------------------------------ datasets


def cmd_waymo_to_bag(args: argparse.Namespace) -> list[tuple[str, str]]:
    from sam4d_core.data.waymo4dseg import Waymo4DSegDataset

    ds = Waymo4DSegDataset(args.input)
    names = ds.sequence_names()
    name = args.sequence
    if name is None:
        if len(names) != 1:
            raise DatasetError(
                f"give --sequence: the data set has {len(names)}: {names}", args.input
            )
        name = names[0]
    meta = ds.meta(name)
    # Calibration comes from the pkl alone, so the bag can be streamed without loading images twice.
    static: dict[str, np.ndarray] = {}
    moving: set[str] = set()
    for fi in meta.frames:
        for c, ci in fi.cameras.items():
            if c in static and not np.array_equal(static[c], ci.cam_from_lidar):
                moving.add(c)
            static.setdefault(c, ci.cam_from_lidar)
    _write_bag(
        _counted(ds.iter_frames(name), args.stats),
        ds.num_frames(name),
        args.output,
        name=meta.name,
        point_fields=ds.point_fields(name),
        lidar_frame_id=meta.lidar_frame_id,
        world_frame_id=meta.world_frame_id,
        static_cameras={c: m for c, m in static.items() if c not in moving},
        args=args,
    )
    return [("sequence", name)]


def _camera_renames(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for text in pairs:
        src, sep, dst = text.partition("=")
        if not sep or not src or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", dst):
            raise ValueError(
                f"--camera-name {text!r}: expected CAMERA=NAME, e.g. image_02=front "
                "(NAME: letters, digits, _)"
            )
        out[src] = dst
    return out


def cmd_kitti_to_bag(args: argparse.Namespace) -> list[tuple[str, str]]:
    from sam4d_core.data.kitti_raw import open_kitti_drive

    drive = open_kitti_drive(args.input)
    indices = drive.select(args.start, args.end, args.step, args.frames)
    renames = _camera_renames(args.camera_name)
    seq, sources = drive.read(
        indices,
        poses=args.poses,
        cameras=args.cameras,
        camera_names=renames,
        progress=Progress("read", enabled=not args.quiet),
        pose_progress=Progress("kiss-icp", enabled=not args.quiet),
    )
    _sequence_to_bag(seq, args.output, args, args.stats)
    step = f", step {args.step}" if args.step > 1 else ""
    rows = [
        ("drive frames", f"{indices[0]}..{indices[-1]}{step} of 0..{drive.num_frames - 1}"),
        *[(k, v) for k, v in sources.items()],
    ]
    names = [renames.get(c, c) for c in args.cameras]
    rows.append(("prompt a camera as", ", ".join(f"{n}:U,V" for n in names)))
    return rows


def cmd_nuscenes_to_bag(args: argparse.Namespace) -> list[tuple[str, str]]:
    from sam4d_core.data.nuscenes_sample import read_nuscenes_sample

    renames = _camera_renames(args.camera_name)
    seq = read_nuscenes_sample(args.input, cameras=tuple(args.cameras) if args.cameras else None)
    unknown = sorted(set(renames) - set(seq.frames[0].cameras))
    if unknown:
        raise ValueError(f"--camera-name for {unknown}, which are not converted")
    for f in seq.frames:
        f.cameras = {
            renames.get(c, c): dataclasses.replace(cam, name=renames.get(c, c))
            for c, cam in f.cameras.items()
        }
    _sequence_to_bag(seq, args.output, args, args.stats)
    names = list(seq.frames[0].cameras)
    return [
        ("timestamps", "calib.json timestamp_s (LiDAR) and cameras.<CAM>.timestamp_s"),
        ("poses", "calib.json ego2global @ lidar.lidar2ego (one key frame: no motion)"),
        ("calibration", "calib.json cameras.<CAM>.intrinsics and lidar2cam"),
        ("prompt a camera as", ", ".join(f"{n}:U,V" for n in names)),
    ]


def _bag_reader(args: argparse.Namespace) -> SequenceBagReader:
    return SequenceBagReader(
        args.input,
        BagTopics(),
        cameras=args.cameras or None,
        camera_tolerance=args.camera_tolerance,
        max_tf_gap=args.max_tf_gap,
    )


def cmd_bag_to_waymo(args: argparse.Namespace) -> list[tuple[str, str]]:
    bag = _bag_reader(args)
    seq = bag.read_sequence(progress=Progress("read", enabled=not args.quiet))
    _write_waymo(seq, args)
    return [("sequence", seq.name)]


def _atomic_dir(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (use --overwrite to replace it)")
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    return tmp


def _commit_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(out, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(tmp, out)


def _dump_frame(frame: Frame, folder: Path, point_fields: tuple[str, ...]) -> None:
    folder.mkdir()
    arrays: dict[str, np.ndarray] = {
        "points": frame.points,
        "point_fields": np.array(point_fields),
    }
    if frame.point_labels is not None:
        arrays["point_labels"] = frame.point_labels
    np.savez_compressed(folder / "points.npz", **arrays)
    cams: dict[str, Any] = {}
    for name, cam in frame.cameras.items():
        entry: dict[str, Any] = {
            "image": f"{name}.png",
            "size_wh": list(cam.size_wh),
            "timestamp": cam.timestamp,
            "intrinsics": np.asarray(cam.intrinsics).tolist(),
            "cam_from_lidar": np.asarray(cam.cam_from_lidar).tolist(),
        }
        if not cv2.imwrite(str(folder / f"{name}.png"), cv2.cvtColor(cam.image, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {folder / f'{name}.png'}")
        if cam.instance_mask is not None:
            inst = np.asarray(cam.instance_mask)
            if inst.size == 0 or (inst.min() >= 0 and inst.max() <= 0xFFFF):
                entry["instance_mask"] = f"{name}_instances.png"  # 16-bit PNG, value = object id
                cv2.imwrite(str(folder / entry["instance_mask"]), inst.astype(np.uint16))
            else:
                entry["instance_mask"] = f"{name}_instances.npy"
                np.save(folder / entry["instance_mask"], inst.astype(np.int32))
        cams[name] = entry
    info = {
        "index": frame.index,
        "timestamp": frame.timestamp,
        "world_from_lidar": np.asarray(frame.world_from_lidar).tolist(),
        "num_points": int(frame.points.shape[0]),
        "cameras": cams,
        "objects": [
            {
                "object_id": o.object_id,
                "semantic": o.semantic,
                "score": o.score,
                "volume": o.volume,
            }
            for _, o in sorted(frame.objects.items())
        ],
    }
    (folder / "frame.json").write_text(json.dumps(info, indent=1))


def cmd_bag_to_frames(args: argparse.Namespace) -> list[tuple[str, str]]:
    bag = _bag_reader(args)
    out: Path = args.output
    tmp = _atomic_dir(out, args.overwrite)
    try:
        progress = Progress("dump", enabled=not args.quiet)
        for k, frame in enumerate(bag):
            args.stats.add(frame)
            _dump_frame(frame, tmp / f"{k:06d}", bag.point_fields)
            progress(k + 1, len(bag))
        seq_info = {
            "name": bag.name,
            "source": str(args.input),
            "num_frames": len(bag),
            "point_fields": list(bag.point_fields),
            "lidar_frame_id": bag.lidar_frame_id,
            "world_frame_id": bag.world_frame_id,
            "cameras": bag.camera_names,
            "layout": "<index>/points.npz (points, point_fields[, point_labels]), <cam>.png, "
            "<cam>_instances.png (uint16 ids), frame.json (timestamp, poses, calibration)",
        }
        (tmp / "sequence.json").write_text(json.dumps(seq_info, indent=1))
        _commit_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [("sequence", bag.name)]


# ------------------------------------------------------------------------------------ parser


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_bag_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bag output")
    g.add_argument(
        "--images",
        choices=("raw", "jpeg", "png"),
        default="raw",
        help="rgb8 Image (default), or CompressedImage as jpeg (lossy) / png (lossless)",
    )
    g.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality (default 90)")
    g.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap", help="rosbag2 storage")
    g.add_argument(
        "--chunk-compression",
        choices=("zstd", "none"),
        default=None,
        help="MCAP chunk compression (default zstd for mcap, none for sqlite3)",
    )
    g.add_argument(
        "--no-ground-truth", action="store_true", help="leave out the /ground_truth topics"
    )


def _add_waymo_output(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("Waymo-4DSeg output")
    g.add_argument(
        "--image-format",
        choices=("jpg", "png"),
        default="jpg",
        help="jpg like the official data (default) or png (lossless)",
    )
    g.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality (default 95)")


def _add_bag_input(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("bag input")
    g.add_argument("--cameras", nargs="*", help="camera names to read (default: all found)")
    g.add_argument(
        "--camera-tolerance",
        type=float,
        default=0.05,
        help="max |image - sweep| stamp difference in s (default 0.05)",
    )
    g.add_argument(
        "--max-tf-gap",
        type=float,
        default=0.5,
        help="largest TF gap in s a pose may be interpolated over (default 0.5)",
    )


def _add_synthetic(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("synthetic scene")
    g.add_argument(
        "--preset",
        default="bundled_sample",
        help="generator preset: bundled_sample (default), tiny, benchmark",
    )
    g.add_argument("--seed", type=int, help="random seed (default: the preset's)")
    g.add_argument("--frames", type=int, help="number of frames (default: the preset's)")
    g.add_argument(
        "--first",
        type=int,
        metavar="N",
        help="convert only the first N frames; unlike --frames the scene stays the one of the "
        "full sequence, so they are identical to the start of a full conversion",
    )
    g.add_argument("--name", help="sequence name (default: the preset's)")


def _add_kitti(p: argparse.ArgumentParser) -> None:
    from sam4d_core.data.kitti_raw import POSE_METHODS

    g = p.add_argument_group("KITTI raw drive")
    g.add_argument("--start", type=int, default=0, help="first frame index (default 0)")
    g.add_argument("--end", type=int, default=None,
                   help="stop before this frame index (exclusive; default: all)")  # fmt: skip
    g.add_argument("--step", type=int, default=1, help="take every Nth frame (default 1)")
    g.add_argument("--frames", type=int, help="at most N frames (after --start/--end/--step)")
    g.add_argument("--poses", choices=POSE_METHODS, default="auto",
                   help="oxts: GPS/IMU as the KITTI devkit converts it; kiss-icp: estimated "
                   "from the scans; file: poses_lidar.txt; auto (default): oxts when the drive "
                   "has oxts/data, else file, else kiss-icp")  # fmt: skip
    g.add_argument("--cameras", nargs="+", default=["image_02"], metavar="FOLDER",
                   help="camera folders to convert (default image_02, the left colour camera; "
                   "image_03 right colour, image_00/01 grey)")  # fmt: skip
    g.add_argument("--camera-name", action="append", default=[], metavar="FOLDER=NAME",
                   help="name a camera in the bag, e.g. image_02=front (default: the folder "
                   "name); repeatable")  # fmt: skip


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], list[tuple[str, str]]], str]] = {
    "synthetic-to-waymo": (cmd_synthetic_to_waymo, "synthetic sequence -> Waymo-4DSeg root"),
    "synthetic-to-bag": (cmd_synthetic_to_bag, "synthetic sequence -> rosbag2"),
    "waymo-to-bag": (cmd_waymo_to_bag, "Waymo-4DSeg sequence -> rosbag2 (streamed)"),
    "kitti-to-bag": (cmd_kitti_to_bag, "KITTI raw drive folder (as downloaded) -> rosbag2"),
    "nuscenes-to-bag": (
        cmd_nuscenes_to_bag,
        "one nuScenes key frame (the sample layout) -> rosbag2",
    ),
    "bag-to-waymo": (cmd_bag_to_waymo, "rosbag2 -> Waymo-4DSeg root"),
    "bag-to-frames": (cmd_bag_to_frames, "rosbag2 -> per-frame PNG / npz / JSON folders"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sam4d_ros.recording.convert",
        description="Convert driving sequences between synthetic, Waymo-4DSeg, KITTI raw, "
        "nuScenes sample, rosbag2 and per-frame folders.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        src, dst = name.split("-to-")
        if src != "synthetic":
            what = {
                "waymo": "Waymo-4DSeg root",
                "kitti": "KITTI raw drive folder (e.g. 2011_09_26/2011_09_26_drive_0005_sync)",
                "nuscenes": "nuScenes sample directory",
                "bag": "rosbag2 directory or file",
            }
            p.add_argument("input", type=Path, help=what[src])
        outs = {
            "waymo": "Waymo-4DSeg root (created if needed)",
            "bag": "bag directory to create",
            "frames": "folder to create",
        }
        p.add_argument("output", type=Path, help=outs[dst])
        if src == "synthetic":
            _add_synthetic(p)
        if src == "waymo":
            p.add_argument("--sequence", help="sequence name (needed when the root has several)")
        if src == "kitti":
            _add_kitti(p)
        if src == "nuscenes":
            p.add_argument("--cameras", nargs="+", metavar="CAM",
                           help="cameras to convert (default all six, CAM_FRONT ...)")  # fmt: skip
            p.add_argument("--camera-name", action="append", default=[], metavar="CAM=NAME",
                           help="name a camera in the bag, e.g. CAM_FRONT=front")  # fmt: skip
        if src == "bag":
            _add_bag_input(p)
        if dst == "bag":
            _add_bag_output(p)
        if dst == "waymo":
            _add_waymo_output(p)
        _add_common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.stats = Stats()
    func = COMMANDS[args.command][0]
    start = time.perf_counter()
    try:
        extra = func(args)
    except (DatasetError, FileExistsError, FileNotFoundError, ImportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    src = str(getattr(args, "input", None) or f"synthetic preset {args.preset!r}")
    rows = _summary_rows(src, args.output, args.stats, time.perf_counter() - start, extra)
    print_summary(rows, title=args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
