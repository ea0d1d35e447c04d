"""Pre-generate a synthetic training (or validation) set in the Waymo-4DSeg layout.

    python -m training.generate_data --out .build/train_data --seeds 1000 1200 --frames 20
    nice -n 19 python -m training.generate_data --out .build/val_data --seeds 900000 900016

One sequence per seed (``<preset>_<seed>``), written with
:func:`~sam4d_core.data.waymo4dseg.write_waymo4dseg` (atomic per sequence: an interrupted run
leaves no partial sequence, and a re-run skips the sequences already there, so the command can be
stopped and restarted, or started while training already reads the first sequences: a
:class:`~.datasets.Waymo4DSegSource` lists the sequences present when it is built).
Loading a written frame is much faster than rendering it, which is why real runs train from a
pre-generated set.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def generate(
    out: Path,
    seeds: range,
    num_frames: int,
    preset: str = "bundled_sample",
    image_format: str = "jpg",
    jpeg_quality: int = 95,
    progress: bool = True,
) -> list[str]:
    """Writes the missing sequences; returns the names of those written."""
    from sam4d_core.data.synthetic import generate_sequence, make_config
    from sam4d_core.data.waymo4dseg import write_waymo4dseg

    written = []
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    for k, seed in enumerate(seeds):
        name = f"{preset}_{seed:05d}"
        if (out / "meta_infos" / f"{name}.pkl").is_file():
            continue
        t0 = time.perf_counter()
        seq = generate_sequence(make_config(preset, seed=seed, num_frames=num_frames, name=name))
        write_waymo4dseg(
            seq, out, image_format=image_format, jpeg_quality=jpeg_quality, overwrite=True
        )
        written.append(name)
        if progress:
            el = time.perf_counter() - t_start
            print(
                f"[{k + 1}/{len(seeds)}] {name}: {num_frames} frames in "
                f"{time.perf_counter() - t0:.1f} s (total {el / 60:.1f} min)",
                flush=True,
            )
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.generate_data", description=__doc__.splitlines()[0]
    )
    p.add_argument("--out", type=Path, required=True, help="Waymo-4DSeg root to write into")
    p.add_argument("--seeds", type=int, nargs=2, required=True, metavar=("START", "STOP"))
    p.add_argument("--frames", type=int, default=20, help="frames per sequence (20)")
    p.add_argument("--preset", default="bundled_sample")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg")
    p.add_argument("--jpeg-quality", type=int, default=95)
    args = p.parse_args(argv)
    if args.seeds[1] <= args.seeds[0]:
        p.error("--seeds START STOP needs START < STOP")
    written = generate(
        args.out,
        range(*args.seeds),
        args.frames,
        args.preset,
        args.image_format,
        args.jpeg_quality,
    )
    print(f"wrote {len(written)} sequences into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
