"""The benchmark's command line (:func:`build_parser`, :func:`main`)."""

from __future__ import annotations

import argparse
import math
import platform
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sam4d_ros.tools.benchmark.progress import Progress
from sam4d_ros.tools.benchmark.rate_search import DEFAULT_MAX_DROP, find_peak_rate
from sam4d_ros.tools.benchmark.report import trial_dict, write_report
from sam4d_ros.tools.demo.cli import DEFAULT_BAG, _check_args, _dds_environment, _prompt_arg

__all__ = ["DEFAULT_OUT", "build_parser", "check_runtimes", "main"]

DEFAULT_OUT = Path(".build") / "benchmark"
DEFAULT_START_RATE = 0.1
RUNTIME_PARAM = "model.runtime"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sam4d_ros.tools.benchmark",
        description="Replay benchmark of sam4d_node (like ros2_benchmark): per playback rate "
        "sweeps sent / processed / dropped, frame rate, end-to-end latency, jitter, processing "
        "time, CPU and memory; the peak rate with < 5 %% drops by a search over rates; accuracy "
        "against the bag's ground truth; --soak and --faults for long runs and fault injection.",
    )
    p.add_argument(
        "--bag",
        type=Path,
        default=DEFAULT_BAG,
        help="rosbag2 directory (default: the bundled recording)",
    )
    p.add_argument(
        "--prompt",
        type=_prompt_arg,
        action="append",
        default=[],
        metavar="SPEC",
        help="as the demo: front:320,200@0.3 or lidar:12,-1.5,0.4@0.3; repeat for more "
        "objects (default: the demo's automatic prompt from the ground truth)",
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default {DEFAULT_OUT}")
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads of the node (0 = all)")
    p.add_argument("--params-file", type=Path, default=None, help="extra node parameter file")
    p.add_argument("--remap", nargs="+", default=[], metavar="FROM:=TO", help="as the demo")
    p.add_argument(
        "--runtime",
        nargs="+",
        default=["torch"],
        metavar="NAME",
        help="runtimes to compare side by side (node parameter model.runtime); default torch",
    )
    p.add_argument(
        "--onnx-dir",
        type=Path,
        default=None,
        help="the exported model for onnxruntime / tensorrt (python -m sam4d_export onnx "
        "--checkpoint CK --out DIR; node parameter model.onnx_dir)",
    )
    p.add_argument(
        "--rates",
        type=float,
        nargs="+",
        default=None,
        metavar="R",
        help="measure these rates instead of searching",
    )
    p.add_argument(
        "--start-rate",
        type=float,
        default=DEFAULT_START_RATE,
        help=f"first rate of the search (default {DEFAULT_START_RATE:g})",
    )
    p.add_argument(
        "--max-drop",
        type=float,
        default=DEFAULT_MAX_DROP,
        help="drop fraction that fails a rate (default 0.05)",
    )
    p.add_argument(
        "--resolution",
        type=float,
        default=0.15,
        help="search stops when failing/passing rate <= 1 + this (default 0.15)",
    )
    p.add_argument("--max-trials", type=int, default=8, help="bag passes of the search (default 8)")
    p.add_argument(
        "--soak",
        type=float,
        default=None,
        metavar="MINUTES",
        help="instead of the rate search: loop the bag this long, record memory and "
        "latency over time",
    )
    p.add_argument(
        "--soak-rate",
        type=float,
        default=None,
        help="rate of the soak and fault passes (default: --start-rate)",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=2.0,
        metavar="MINUTES",
        help="soak warm-up left out of the growth figures (default 2)",
    )
    p.add_argument(
        "--faults",
        action="store_true",
        help="run the fault-injection episodes (after the search, or during the soak)",
    )
    p.add_argument(
        "--tf-withheld",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds of bag time TF is withheld in the fault run (default 1)",
    )
    p.add_argument("--note", default="", help="a line for the report (e.g. the machine's load)")
    p.add_argument("--machine-name", default=platform.node(), help="machine named in the report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def check_runtimes(runtimes: Sequence[str]) -> str | None:
    """None when every runtime can be asked of the node, else why not: a runtime other than torch
    needs the node parameter ``model.runtime`` (and one of its choices when it lists them)."""
    from sam4d_ros.parameters import global_parameter_specs

    spec = next((s for s in global_parameter_specs() if s.name == RUNTIME_PARAM), None)
    others = [r for r in runtimes if r != "torch"]
    if spec is None:
        if others:
            return (
                f"runtime(s) {', '.join(others)}: this sam4d_node has no '{RUNTIME_PARAM}' "
                "parameter and runs torch only"
            )
        return None
    choices = getattr(spec, "choices", None)
    if choices:
        bad = [r for r in runtimes if r not in choices]
        if bad:
            return f"unknown runtime(s) {', '.join(bad)} (the node knows {', '.join(choices)})"
    return None


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f}"


def _runtime_params(runtime: str) -> dict[str, Any]:
    from sam4d_ros.parameters import global_parameter_specs

    if any(s.name == RUNTIME_PARAM for s in global_parameter_specs()):
        return {RUNTIME_PARAM: runtime}
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 when it failed, 2 for bad options."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    args.rate = args.start_rate
    args.video_fps = 1.0
    _check_args(args, parser)
    for name in ("start_rate", "max_drop", "resolution"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            parser.error(f"--{name.replace('_', '-')} must be positive, got {v:g}")
    if args.rates and not all(math.isfinite(r) and r > 0 for r in args.rates):
        parser.error("--rates must be positive")
    if args.soak is not None and not args.soak > 0:
        parser.error("--soak must be a positive number of minutes")
    why = check_runtimes(args.runtime)
    if why:
        parser.error(why)
    from sam4d_ros.tools.bag_interop import parse_remaps
    from sam4d_ros.tools.demo.bag_info import GroundTruth, inspect_bag
    from sam4d_ros.tools.demo.errors import DemoError
    from sam4d_ros.tools.demo.prompts import auto_prompt, resolve_prompts

    try:
        remap = parse_remaps(args.remap)
        info = inspect_bag(args.bag, remap)
        prompts = resolve_prompts(args.prompt, info)
    except (ValueError, DemoError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.checkpoint is None:
        from sam4d_core.weights import bundled_model_path

        checkpoint = bundled_model_path()
    else:
        checkpoint = args.checkpoint.resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _dds_environment(out)
    progress = Progress(enabled=not args.no_progress)
    say = progress.line
    gt = None
    if info.ground_truth:
        try:
            gt = GroundTruth(info.path, info)
        except Exception as e:  # noqa: BLE001 - a bag with unreadable labels still benchmarks
            say(f"[benchmark] ground truth unreadable ({e}): no accuracy")
    if not prompts:
        if gt is None:
            print(
                "error: no --prompt and no ground truth to choose an object from", file=sys.stderr
            )
            return 2
        prompts = [auto_prompt(info, gt)]
    stop = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: stop.set())
    from sam4d_ros.tools.demo.report import machine_info

    stamps = info.sweep_stamps_ns
    sweep_hz = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9) if len(stamps) > 1 else 1.0
    rep: dict[str, Any] = {
        "command": "python -m sam4d_ros.tools.benchmark " + shlex.join(argv),
        "bag": str(info.path),
        "checkpoint": str(checkpoint),
        "sweeps_in_bag": len(stamps),
        "sweep_hz": sweep_hz,
        "cameras": len(info.cameras),
        "prompts": [p.spec.text for p in prompts],
        "machine": machine_info(args.device, args.threads),
        "machine_name": args.machine_name,
        "note": args.note,
        "runtimes": {},
    }
    trials_by_runtime: dict[str, list[Any]] = {}
    t_start = time.monotonic()
    code = 0
    try:
        for runtime in args.runtime:
            sub = out / runtime if len(args.runtime) > 1 else out
            sub.mkdir(parents=True, exist_ok=True)
            r, trials = _run_runtime(runtime, info, prompts, gt, args, sub, progress, stop, rep)
            rep["runtimes"][runtime] = r
            trials_by_runtime[runtime] = trials
            if r.get("error"):
                code = 1
    except KeyboardInterrupt:
        say("interrupted: writing what was measured")
        code = 1
    finally:
        signal.signal(signal.SIGINT, previous)
    rep["wall_s"] = round(time.monotonic() - t_start, 1)
    files = write_report(rep, trials_by_runtime, out)
    say(f"[benchmark] report: {files[1]} ({len(files) - 2} plot(s)), json: {files[0]}")
    return code


def _run_runtime(
    runtime: str,
    info: Any,
    prompts: list[Any],
    gt: Any,
    args: argparse.Namespace,
    out: Path,
    progress: Progress,
    stop: threading.Event,
    rep: dict[str, Any],
) -> tuple[dict[str, Any], list[Any]]:
    from sam4d_ros.tools.benchmark.session import BenchSession
    from sam4d_ros.tools.demo.errors import DemoError

    say = progress.line
    trials: list[Any] = []
    r: dict[str, Any] = {"trials": []}
    say(f"[benchmark] runtime {runtime}: starting the node (log {out / 'node.log'})")
    try:
        session = BenchSession(info, args, out, _runtime_params(runtime), log=say)
    except DemoError as e:
        r["error"] = str(e)
        return r, trials

    def trial(rate: float, label: str, **kw: Any) -> Any:
        if stop.is_set():
            raise KeyboardInterrupt
        text = f"{runtime} {label} rate {rate:.3g}"

        def show(done: int, total: int) -> None:
            progress.update(done, total, text)

        t = session.run_trial(rate, prompts, label=label, progress=show, stop=stop, **kw)
        trials.append(t)
        r["trials"].append(trial_dict(t))
        lat = t.latency_ms
        say(
            f"[benchmark] {text}: {t.sweeps_sent} sent, {t.sweeps_processed} processed, "
            f"{t.sweeps_dropped} dropped ({100 * t.drop_fraction:.0f} %), latency p50 "
            f"{_num(lat['p50'])} ms p90 {_num(lat['p90'])} ms, node RSS "
            f"{_num(t.resources['rss_mb_max'])} MB"
        )
        if label in ("search", "rate", "soak") and t.sweeps_sent != len(info.sweep_stamps_ns):
            warn = (
                f"{label} trial at rate {rate:.3g}: the monitor saw {t.sweeps_sent} sweeps for "
                f"{len(info.sweep_stamps_ns)} played: another publisher on the input topics "
                "(same ROS_DOMAIN_ID)?"
            )
            r.setdefault("warnings", []).append(warn)
            say(f"[benchmark] WARNING: {warn}")
        if not t.node_alive and not label.startswith("fault"):
            raise DemoError(f"sam4d_node died:\n{session.node.log_tail()}")
        return t

    try:
        if args.soak is not None:
            from sam4d_ros.tools.benchmark.soak import run_soak

            r["soak"], series = run_soak(session, trial, args, gt is not None, say)
            rep["memory_series"] = series
            if r["soak"]["faults"]:
                r["faults"] = r["soak"]["faults"]
        elif args.rates:
            for k, rate in enumerate(args.rates):
                trial(rate, "rate", gt=gt if k == 0 else None)
        else:
            first = [True]

            def measure(rate: float) -> float:
                t = trial(rate, "search", gt=gt if first[0] else None)
                first[0] = False
                return t.drop_fraction

            s = find_peak_rate(
                measure,
                args.start_rate,
                max_drop=args.max_drop,
                resolution=args.resolution,
                max_trials=args.max_trials,
            )
            r["search"] = {
                "peak_rate": s.peak_rate,
                "failing_rate": s.failing_rate,
                "max_drop": s.max_drop,
                "resolution": s.resolution,
                "resolved": s.resolved,
                "trials": s.trials,
            }
            if s.peak_rate is not None:
                say(
                    f"[benchmark] peak throughput: rate {s.peak_rate:.3g} "
                    f"({s.peak_rate * rep['sweep_hz']:.2f} sweeps/s) with < "
                    f"{100 * args.max_drop:g} % dropped"
                )
        if args.faults and args.soak is None:
            from sam4d_ros.tools.benchmark.faults import run_faults

            rate = args.soak_rate or args.start_rate
            r["faults"] = run_faults(session, trial, rate, args, say)
        if "memory_series" not in rep and session.sampler is not None:
            s0 = session.sampler.series()
            rep["memory_series"] = {
                "t_s": [x.t_s - s0[0].t_s for x in s0] if s0 else [],
                "rss_mb": [x.rss_mb for x in s0],
            }
    except DemoError as e:
        r["error"] = str(e)
    finally:
        r["node_exit_code"] = session.close()
    return r, trials


if __name__ == "__main__":
    sys.exit(main())
