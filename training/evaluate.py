"""Paper-style streaming evaluation of a checkpoint: JSON and a Markdown table.

    python -m training.evaluate --help
    python -m training.evaluate --synthetic-seeds 950000 950008 --json r.json --md r.md
    python -m training.evaluate --checkpoint last.pt --waymo /data/val --max-objects-per-sequence 0
    python -m training.evaluate --synthetic-seeds 950000 950002 --tracker-modes reprompt

Every object of every sequence is prompted once on the first frame where it appears (1 click,
3 clicks, box or ground-truth mask, in the image or in the LiDAR) and tracked to the end by the
streaming tracker; the report gives image mIoU, image J&F and LiDAR mIoU per (prompt type, prompt
modality), the cross-modal cells included (the rules: :mod:`sam4d_core.evaluation`), for each
tracker mode (``--tracker-modes``: memory only, the SAM4D protocol, and motion-compensated
re-prompting), side by side.

Sources: ``--synthetic-seeds START STOP`` (sequences generated on the fly, deterministically,
one per seed of ``range(START, STOP)``, named ``<preset>_<seed>``), ``--waymo DIR`` and ``--bag
DIR`` (repeatable). Synthetic and Waymo sources make the headline (held-out) table; bags are
reported separately (unless they are the only source), and for them the object the ROS demo
prompts (:func:`~sam4d_core.evaluation.streaming_eval.pick_demo_object`, per camera) is always
among the evaluated objects. Without any source: the bundled model's report set, the held-out
synthetic sequences (``bundled_sample``, seeds 950000-950007, 20 frames; training used seeds
1000-1195 and validation 900000-900007) and the bundled recording ``test/data/synthetic_drive``.

Cost: memory attention, decoder and memory encoder run per object, frame and prompt setting;
the encoders once per frame, shared by all settings; synthetic sequences are rendered one ahead in
a worker process. Hence ``--max-objects-per-sequence`` (default 2) bounds the objects per
sequence.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import json
import multiprocessing
import platform
import shlex
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cli import doc_parser

REPO_ROOT = Path(__file__).resolve().parents[1]
HELD_OUT_SEEDS = (950000, 950008)
HELD_OUT_PRESET = "bundled_sample"
HELD_OUT_FRAMES = 20
BUNDLED_BAG = REPO_ROOT / "test" / "data" / "synthetic_drive"
DEFAULT_MAX_OBJECTS = 2


@dataclass
class Source:
    """A named set of sequences, loaded one at a time.

    Attributes:
        name: e.g. ``synthetic:bundled_sample``, ``bag:synthetic_drive``.
        kind: ``synthetic``, ``waymo`` or ``bag``.
        held_out: enters the headline aggregate.
        details: how to get the sequences again (preset, seeds, frames, path).
        sequences: (name, loader) per sequence; a loader returns the Sequence.
        demo_objects: always evaluate :func:`pick_demo_object` of every camera.
    """

    name: str
    kind: str
    held_out: bool
    details: dict[str, Any]
    sequences: list[tuple[str | None, Callable[[], Any]]] = field(default_factory=list)
    demo_objects: bool = False


def _display_path(p: Path) -> str:
    """Relative to the repository root when inside it (the report's command runs from there)."""
    p = Path(p).resolve()
    try:
        return str(p.relative_to(REPO_ROOT))
    except ValueError:
        return str(p)


def checkpoint_info(path: Path) -> dict[str, Any]:
    """path, sha256, crc32, bytes and config name of a checkpoint file."""
    from sam4d_core.checkpoint import read_checkpoint

    data = path.read_bytes()
    ck = read_checkpoint(path, verify=False)
    return {
        "path": _display_path(path),
        "sha256": hashlib.sha256(data).hexdigest(),
        "crc32": f"{zlib.crc32(data):08x}",
        "bytes": len(data),
        "config": ck.config.name if ck.config is not None else "sam4d_hiera_s_mink34",
    }


# ---------------------------------------------------------------------------------------------
# Sources.


def _generate_synthetic(preset: str, seed: int, frames: int, name: str) -> Any:
    """One synthetic sequence (module level: it runs in a worker process when prefetching)."""
    from sam4d_core.data.synthetic import generate_sequence, make_config

    return generate_sequence(make_config(preset, seed=seed, num_frames=frames, name=name))


def synthetic_source(preset: str, seeds: tuple[int, int], frames: int) -> Source:
    src = Source(
        f"synthetic:{preset}",
        "synthetic",
        True,
        {"preset": preset, "seeds": [int(seeds[0]), int(seeds[1])], "frames": int(frames)},
    )
    for s in range(*seeds):
        name = f"{preset}_{s:05d}"
        src.sequences.append(
            (name, functools.partial(_generate_synthetic, preset, s, frames, name))
        )
    return src


def waymo_source(root: Path) -> Source:
    from sam4d_core.data.waymo4dseg import Waymo4DSegDataset

    ds = Waymo4DSegDataset(root)
    src = Source(f"waymo:{root.name}", "waymo", True, {"path": _display_path(root)})
    for name in ds.sequence_names():
        src.sequences.append((name, lambda name=name: ds.load_sequence(name)))
    return src


def bag_source(path: Path, held_out: bool) -> Source:
    from sam4d_core.data.sequence_bag import read_sequence_bag

    src = Source(f"bag:{path.name}", "bag", held_out, {"path": _display_path(path)})
    # The name comes from the bag's metadata: known only once read.
    src.sequences.append((None, lambda: read_sequence_bag(path)))
    src.demo_objects = True
    return src


# ---------------------------------------------------------------------------------------------
# Command line.


def build_parser() -> argparse.ArgumentParser:
    p = doc_parser("training.evaluate", __doc__)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    g = p.add_argument_group("sources (none given: the bundled model's report set)")
    g.add_argument("--synthetic-seeds", type=int, nargs=2, metavar=("START", "STOP"))
    g.add_argument("--preset", default=HELD_OUT_PRESET, help="synthetic preset (bundled_sample)")
    g.add_argument("--frames", type=int, default=HELD_OUT_FRAMES, help="synthetic frames (20)")
    g.add_argument("--waymo", type=Path, action="append", default=[], help="Waymo-4DSeg root")
    g.add_argument("--bag", type=Path, action="append", default=[], help="rosbag2 with labels")
    g.add_argument("--sequences", nargs="+", default=None, help="only these sequence names")
    e = p.add_argument_group("protocol")
    e.add_argument("--prompts", default="1click,3click,box,mask", help="1click,3click,box,mask")
    e.add_argument("--modalities", default="img,pts", help="img,pts: where prompts are given")
    e.add_argument(
        "--max-objects-per-sequence",
        type=int,
        default=DEFAULT_MAX_OBJECTS,
        help=f"0 = all candidates ({DEFAULT_MAX_OBJECTS}: see the cost note)",
    )
    e.add_argument("--min-pixels", type=int, default=30, help="an object appears in a camera")
    e.add_argument("--min-points", type=int, default=10, help="an object appears in the LiDAR")
    e.add_argument(
        "--tracker-modes",
        default="memory,reprompt",
        help="memory,reprompt: tracker modes reported side by side (memory: the SAM4D protocol; "
        "reprompt: motion-compensated re-prompting)",
    )
    e.add_argument(
        "--refine-masks",
        choices=("on", "off"),
        default="on",
        help="refine LiDAR masks geometrically, as the node does by default (off: the decoder's "
        "masks as they are, the SAM4D protocol)",
    )
    e.add_argument(
        "--lift-image-clicks",
        choices=("on", "off"),
        default="on",
        help="add a 3D click under image clicks and on the cluster an image box frames, as the "
        "node does by default "
        "(off: the prompt as given, the SAM4D protocol)",
    )
    e.add_argument(
        "--zoom",
        choices=("on", "off"),
        default="on",
        help="decode a prompted camera's mask again on a window around the prompt, as the node "
        "does by default (off: one decode, the SAM4D protocol)",
    )
    e.add_argument(
        "--boundary-refine",
        choices=("on", "off"),
        default="on",
        help="refine camera masks on their image crop with the learned boundary refiner, as "
        "the node does by default (off: GrabCut only)",
    )
    r = p.add_argument_group("run and output")
    r.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    r.add_argument("--device", default="cpu")
    r.add_argument("--json", type=Path, default=None, help="write the JSON report here")
    r.add_argument("--md", type=Path, default=None, help="write the Markdown report here")
    r.add_argument(
        "--no-prefetch",
        dest="prefetch",
        action="store_false",
        help="render synthetic sequences in this process, not one ahead in a worker",
    )
    r.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def _split(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def canonical_command(args: argparse.Namespace, checkpoint: Path) -> str:
    """The command that regenerates the report, every setting explicit, paths from the
    repository root."""
    parts = ["test/env/ros_env.sh", "python", "-m", "training.evaluate"]
    parts += ["--checkpoint", _display_path(checkpoint)]
    if args.synthetic_seeds:
        parts += ["--synthetic-seeds", *map(str, args.synthetic_seeds)]
        parts += ["--preset", args.preset, "--frames", str(args.frames)]
    for w in args.waymo:
        parts += ["--waymo", _display_path(w)]
    for b in args.bag:
        parts += ["--bag", _display_path(b)]
    if args.sequences:
        parts += ["--sequences", *args.sequences]
    parts += ["--prompts", args.prompts, "--modalities", args.modalities]
    parts += ["--max-objects-per-sequence", str(args.max_objects_per_sequence)]
    parts += ["--min-pixels", str(args.min_pixels), "--min-points", str(args.min_points)]
    parts += ["--tracker-modes", args.tracker_modes]
    parts += ["--refine-masks", args.refine_masks]
    parts += ["--lift-image-clicks", args.lift_image_clicks]
    parts += ["--zoom", args.zoom]
    parts += ["--boundary-refine", args.boundary_refine]
    parts += ["--threads", str(args.threads), "--device", args.device]
    if args.json:
        parts += ["--json", _display_path(args.json)]
    if args.md:
        parts += ["--md", _display_path(args.md)]
    return shlex.join(parts)


def _dumps(obj: Any, indent: int = 0) -> str:
    """JSON with lists of scalars on one line (per-frame score lists stay readable)."""
    pad = " " * indent
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{pad} {json.dumps(str(k))}: {_dumps(v, indent + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        items = [f"{pad} {_dumps(v, indent + 1)}" for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj)


def _iter_sequences(src: Source, wanted: set[str] | None, prefetch: bool) -> Iterator[Any]:
    """The source's sequences in order. With ``prefetch``, synthetic sequences are rendered in a
    worker process one ahead of the one being evaluated: rendering (0.3-1 s per frame) and
    tracking then run on two cores at once."""
    todo = [
        (name, load)
        for name, load in src.sequences
        if wanted is None or name is None or name in wanted
    ]
    if prefetch and src.kind == "synthetic" and len(todo) > 1:
        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding torch threads
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
            futures = [pool.submit(todo[0][1])]
            for k in range(len(todo)):
                if k + 1 < len(todo):
                    futures.append(pool.submit(todo[k + 1][1]))
                yield futures[k].result()
                futures[k] = None  # type: ignore[call-overload]
        return
    for _, load in todo:
        seq = load()
        if wanted is None or seq.name in wanted:
            yield seq


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluates and returns the JSON report (also written / printed as asked)."""
    import torch

    from sam4d_core.build_sam import build_sam4d
    from sam4d_core.evaluation.report import (
        FORMAT_NAME,
        FORMAT_VERSION,
        aggregate_runs,
        render_markdown,
        report_targets,
        source_runs,
    )
    from sam4d_core.evaluation.streaming_eval import (
        EvalConfig,
        evaluate_sequence,
        pick_demo_object,
    )
    from sam4d_core.weights import BUNDLED_REFINER, bundled_model_path

    t_start = time.perf_counter()
    log = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    checkpoint = args.checkpoint if args.checkpoint is not None else bundled_model_path()
    if not (args.synthetic_seeds or args.waymo or args.bag):
        args.synthetic_seeds = list(HELD_OUT_SEEDS)
        args.preset, args.frames = HELD_OUT_PRESET, HELD_OUT_FRAMES
        if BUNDLED_BAG.is_dir():
            args.bag = [BUNDLED_BAG]
    cfg = EvalConfig(
        prompt_types=_split(args.prompts),
        modalities=_split(args.modalities),
        min_pixels=args.min_pixels,
        min_points=args.min_points,
        max_objects=args.max_objects_per_sequence or None,
        tracker_modes=_split(args.tracker_modes),
        refine_masks=args.refine_masks == "on",
        lift_image_clicks=args.lift_image_clicks == "on",
        zoom=args.zoom == "on",
        boundary_refine=args.boundary_refine == "on",
    )
    sources: list[Source] = []
    if args.synthetic_seeds:
        a, b = args.synthetic_seeds
        if b <= a:
            raise SystemExit("--synthetic-seeds START STOP needs START < STOP")
        sources.append(synthetic_source(args.preset, (a, b), args.frames))
    sources += [waymo_source(w) for w in args.waymo]
    only_bags = not sources
    sources += [bag_source(b, held_out=only_bags) for b in args.bag]

    if args.threads:
        torch.set_num_threads(args.threads)
    model = build_sam4d(checkpoint=checkpoint, device=args.device)
    ck = checkpoint_info(Path(checkpoint))
    log(f"checkpoint {ck['path']} ({ck['config']}, sha256 {ck['sha256'][:12]})")
    wanted = set(args.sequences) if args.sequences else None
    per_seq_s: dict[str, float] = {}
    out_sources = []
    for src in sources:
        seqs = []
        for seq in _iter_sequences(src, wanted, args.prefetch):
            demo: dict[str, int | None] = {}
            if src.demo_objects:
                demo = {
                    cam: pick_demo_object(seq, cam, min_pixels=cfg.min_pixels)
                    for cam in seq.camera_names
                }
            include = [o for o in demo.values() if o is not None]
            res = evaluate_sequence(model, seq, cfg, include=include)
            per_seq_s[f"{src.name}/{res.name}"] = round(res.seconds, 1)
            d = res.to_dict()
            if src.demo_objects:
                d["demo_objects"] = demo
            seqs.append(d)
            log(
                f"{src.name} {res.name}: {len(res.objects)} of {res.num_candidates} objects, "
                f"{res.num_frames} frames, {res.seconds:.1f} s"
            )
        if not seqs:
            continue
        out_sources.append(
            {
                "name": src.name,
                "kind": src.kind,
                "held_out": src.held_out,
                "details": src.details,
                "sequences": seqs,
            }
        )
    if not out_sources:
        raise SystemExit("no sequence to evaluate (check --sequences and the sources)")
    modes = list(cfg.tracker_modes)
    for s in out_sources:
        s["cells_by_mode"] = {m: aggregate_runs(source_runs(s), m) for m in modes}
        s["cells"] = s["cells_by_mode"][modes[0]]
    held = [s for s in out_sources if s["held_out"]] or out_sources
    by_mode = {m: aggregate_runs((r for s in held for r in source_runs(s)), m) for m in modes}
    cells = by_mode[modes[0]]
    settings = cfg.to_dict()
    settings.update({"threads": args.threads, "device": args.device})
    if cfg.boundary_refine:  # which refiner made the camera masks
        data = BUNDLED_REFINER.read_bytes()
        settings["boundary_refiner_sha256"] = hashlib.sha256(data).hexdigest()
    report: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "command": canonical_command(args, Path(checkpoint)),
        "argv": list(sys.argv[1:]) if args._argv is None else list(args._argv),
        "checkpoint": ck,
        "settings": settings,
        "sources": out_sources,
        "aggregate": {
            "sources": [s["name"] for s in held],
            "cells": cells,
            "cells_by_mode": by_mode,
        },
        "targets": report_targets((r for s in held for r in source_runs(s)), modes),
        "timing": {
            "total_s": round(time.perf_counter() - t_start, 1),
            "per_sequence_s": per_seq_s,
            "machine": f"{platform.machine()}, {_cpu_count()} CPU cores, torch {torch.__version__}",
        },
    }
    md = render_markdown(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(_dumps(report) + "\n", encoding="utf-8")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(md, encoding="utf-8")
    if not args.quiet:
        print(md)
    return report


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args._argv = argv
    run(args)
    return 0


__all__ = ["build_parser", "canonical_command", "checkpoint_info", "main", "run"]


if __name__ == "__main__":
    sys.exit(main())
