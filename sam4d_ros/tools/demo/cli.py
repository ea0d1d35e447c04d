"""The demo's command line: options (:func:`build_parser`) and :func:`main`, which runs the
demo and writes the report and the video.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam4d_ros.tools.demo.bag_info import GroundTruth, inspect_bag
from sam4d_ros.tools.demo.errors import DemoError
from sam4d_ros.tools.demo.prompts import PromptSpec, auto_prompt, parse_prompt, resolve_prompts
from sam4d_ros.tools.demo.report import (
    build_report,
    fmt_value,
    read_outputs,
    report_markdown,
    score_object,
)
from sam4d_ros.tools.demo.run import run, say
from sam4d_ros.tools.demo.video import write_video

__all__ = [
    "DEFAULT_BAG",
    "DEFAULT_OUT",
    "DEFAULT_RATE",
    "DEFAULT_THREADS",
    "build_parser",
    "main",
    "new_run_folder",
]


_REPO = Path(__file__).resolve().parents[3]
DEFAULT_BAG = _REPO / "test" / "data" / "synthetic_drive"
DEFAULT_OUT = Path(".build") / "demo"  # each run gets a new timestamped folder under it
# A sweep every 2 s of wall time: the bundled model steps a sweep of the bundled recording (two
# cameras) well within that on one free core; the margin is for other jobs on the cores.
DEFAULT_RATE = 0.05
DEFAULT_THREADS = 1


def _prompt_arg(text: str) -> PromptSpec:
    try:
        return parse_prompt(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sam4d_ros.tools.demo",
        description="The main job: sam4d_node on a recording with a scripted prompt; writes a "
        "report (objects, IoU against the ground truth, latency, drops), an overlay video and "
        "the recorded outputs.",
        epilog="Prompts: CAMERA:U,V[@T] clicks pixel (U, V) of a camera, lidar:X,Y,Z[@T] a point "
        "in the LiDAR frame, T seconds into the bag (default 0). Without --prompt on a bag with "
        "ground truth, one object is chosen from it and clicked at its centre on the first sweep.",
    )
    p.add_argument("--bag", type=Path, default=DEFAULT_BAG,
                   help="rosbag2 directory (default: the bundled recording)")  # fmt: skip
    p.add_argument("--prompt", type=_prompt_arg, action="append", default=[], metavar="SPEC",
                   help="a click, e.g. front:320,200@0.3 or lidar:12.0,-1.5,0.4@0.3; "
                   "repeat for more objects")  # fmt: skip
    p.add_argument("--rate", type=float, default=DEFAULT_RATE,
                   help=f"playback speed factor (default {DEFAULT_RATE:g}: slow enough for the "
                   "CPU model to process every sweep)")  # fmt: skip
    p.add_argument("--out", type=Path, default=None,
                   help=f"output directory (default: a new folder {DEFAULT_OUT}/YYYYmmdd-HHMMSS, "
                   f"and {DEFAULT_OUT}/latest links to it)")  # fmt: skip
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="model checkpoint (default: the bundled model)")  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help=f"torch CPU threads of the node, 0 = all cores "
                   f"(default {DEFAULT_THREADS})")  # fmt: skip
    p.add_argument("--runtime", choices=("torch", "onnxruntime", "tensorrt"), default="torch",
                   help="where the model's dense stages run (node parameter model.runtime; "
                   "default torch)")  # fmt: skip
    p.add_argument("--onnx-dir", type=Path, default=None,
                   help="ONNX export of the checkpoint for --runtime onnxruntime / tensorrt "
                   "(python -m sam4d_export onnx; default .build/onnx/<checkpoint "
                   "name>)")  # fmt: skip
    p.add_argument("--params-file", type=Path, default=None,
                   help="extra ROS parameter file for sam4d_node (wins over the "
                   "demo's)")  # fmt: skip
    p.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO",
                   help="play bag topic FROM on TO (e.g. your LiDAR topic onto "
                   "/sensors/lidar/points)")  # fmt: skip
    p.add_argument("--video-fps", type=float, default=5.0, help="frame rate of overlay.mp4")
    p.add_argument("--no-video", action="store_true", help="do not write overlay.mp4")
    return p


def _check_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    if not (math.isfinite(args.rate) and args.rate > 0):
        parser.error(f"--rate must be a positive number, got {args.rate:g}")
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if not (math.isfinite(args.video_fps) and args.video_fps > 0):
        parser.error(f"--video-fps must be positive, got {args.video_fps:g}")
    if args.checkpoint is not None and not args.checkpoint.is_file():
        parser.error(f"--checkpoint {args.checkpoint}: no such file")
    if args.params_file is not None and not args.params_file.is_file():
        parser.error(f"--params-file {args.params_file}: no such file")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", args.device):
        parser.error(f"--device must be auto, cpu, cuda or cuda:N, got {args.device!r}")


# Reliable writers heartbeat every 50 ms instead of 3 s: a fragment of a large output (an overlay
# is 415 kB) lost in a burst is repaired before the next sweep's output replaces it.
_FASTDDS_PROFILE = """<?xml version="1.0" encoding="UTF-8"?>
<profiles xmlns="http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles">
  <data_writer profile_name="sam4d_demo_writer" is_default_profile="true">
    <times><heartbeat_period><sec>0</sec><nanosec>50000000</nanosec></heartbeat_period></times>
  </data_writer>
</profiles>
"""


def _dds_environment(out: Path) -> None:
    # Before rclpy starts (and inherited by the node): DDS on loopback only, and a domain of this
    # run's own unless the user chose one (then RViz on that domain sees the run). A Fast DDS
    # profile of the user's own wins over ours.
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    os.environ.setdefault("ROS_DOMAIN_ID", str(1 + os.getpid() % 100))
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        profile = out / "fastdds_profile.xml"
        profile.write_text(_FASTDDS_PROFILE)
        os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(profile.resolve())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the demo; returns 0 on success, 1 when the run failed, 2 for bad options."""
    t_start = time.monotonic()
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    _check_args(args, parser)
    from sam4d_ros.tools.bag_interop import parse_remaps

    try:
        remap = parse_remaps(args.remap)
    except ValueError as e:
        parser.error(str(e))
    if args.bag == DEFAULT_BAG and not DEFAULT_BAG.exists():
        print(
            f"error: the bundled recording ({DEFAULT_BAG}) comes with the source checkout, not "
            "with an installed package: pass --bag",
            file=sys.stderr,
        )
        return 2
    try:
        info = inspect_bag(args.bag, remap)
        prompts = resolve_prompts(args.prompt, info)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.checkpoint is None:
        from sam4d_core.weights import bundled_model_path

        try:
            checkpoint = bundled_model_path()
        except FileNotFoundError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        checkpoint = args.checkpoint.resolve()
    if args.runtime != "torch":
        args.onnx_dir = (args.onnx_dir or Path(".build") / "onnx" / checkpoint.stem).resolve()
        if not (args.onnx_dir / "manifest.json").is_file():
            print(
                f"error: --runtime {args.runtime} needs the ONNX export of {checkpoint} in "
                f"{args.onnx_dir}: python -m sam4d_export onnx --checkpoint {checkpoint} "
                f"--out {args.onnx_dir}",
                file=sys.stderr,
            )
            return 2
    out = Path(args.out) if args.out is not None else new_run_folder(DEFAULT_OUT)
    args.out = out
    out.mkdir(parents=True, exist_ok=True)
    _dds_environment(out)
    for stale in ("report.md", "report.json", "overlay.mp4"):
        with contextlib.suppress(FileNotFoundError):
            (out / stale).unlink()
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        gt = None
        if info.ground_truth:
            from sam4d_core.data.sequence_bag import BagError

            try:
                gt = GroundTruth(info.path, info)
            except BagError as e:
                say(f"the bag's ground truth cannot be read ({e}): no IoU in the report")
        if not prompts:
            if gt is None:
                print(
                    "error: no --prompt given and the bag has no ground truth to choose an "
                    "object from",
                    file=sys.stderr,
                )
                return 2
            prompts = [auto_prompt(info, gt)]
            say(f"automatic prompt: {prompts[0].describe()} (ground-truth object "
                 f"{prompts[0].gt_object_id})")  # fmt: skip
        result = run(info, prompts, args, out, gt, stop)
        if stop.is_set():
            print("interrupted", file=sys.stderr)
            return 1
        outputs = read_outputs(out / "outputs", info)
        scores = [score_object(p, info, outputs, gt) for p in prompts if p.object_id is not None]
        report = build_report(info, args, result, outputs, scores, checkpoint)
        (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
        (out / "report.md").write_text(report_markdown(report))
        frames = 0
        if not args.no_video:
            frames = write_video(
                out / "overlay.mp4", info, outputs, scores, result.prompts, args.video_fps
            )
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGINT, previous)
    _print_summary(report, out, frames)
    say(f"done in {time.monotonic() - t_start:.0f} s")
    failed = [p for p in result.prompts if not p.success]
    return 1 if failed else 0


def new_run_folder(base: Path, now: float | None = None) -> Path:
    """A folder under ``base`` named after the local time (``20261204-184512``, ``-2`` etc. added
    when taken), created; ``base/latest`` is pointed at it where symlinks work."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    base.mkdir(parents=True, exist_ok=True)
    for k in range(1, 1000):
        out = base / (stamp if k == 1 else f"{stamp}-{k}")
        try:
            out.mkdir()
        except FileExistsError:
            continue
        latest = base / "latest"
        with contextlib.suppress(OSError):
            if latest.is_symlink():
                latest.unlink()
            if not latest.exists():
                latest.symlink_to(out.name)
        return out
    raise DemoError(f"no free run folder for {stamp} under {base}")


def _print_summary(rep: dict[str, Any], out: Path, frames: int) -> None:
    s = rep["sweeps"]
    lat = rep["latency_ms"]
    say(
        f"sweeps: {s['played']} played, {s['processed']} processed, {s['dropped']} dropped "
        f"at rate {rep['rate']:g}; processing p50 {fmt_value(lat['processing']['p50'], 0)} ms, "
        f"pipeline latency p50 {fmt_value(lat['pipeline']['p50'], 0)} ms"
    )
    for o in rep["objects"]:
        n = o["frames_with_output"]
        masks = ", ".join(f"{k} {v}/{n}" for k, v in o["frames_with_mask"].items())
        agree = ", ".join(f"{k} {fmt_value(v, 2)}" for k, v in o["cross_modal_agreement"].items())
        say(
            f"object {o['object_id']}: non-empty mask in {masks} frames; cross-modal agreement "
            f"{agree or 'n/a'}; lost in {o['frames_lost']} frame(s)"
            + (", lost at the end" if o["lost"] else "")
        )
    for e in rep["evaluation"]:
        if e["gt_object_id"] is None:
            continue  # no ground truth for it: the lines above are all there is
        say(
            f"object {e['object_id']} against the ground truth: tracked in "
            f"{e['frames_tracked']}/{e['frames_evaluated']} frames, "
            f"mean image IoU {fmt_value(e['mean_image_iou'])}, "
            f"mean LiDAR IoU {fmt_value(e['mean_lidar_iou'])}"
        )
    say(f"report: {out / 'report.md'} (and report.json)")
    if frames:
        say(f"video:  {out / 'overlay.mp4'} ({frames} frames)")
    say(f"outputs: {out / 'outputs'} (rosbag2)")
    say(f"everything of this run is in {out.resolve()}")
