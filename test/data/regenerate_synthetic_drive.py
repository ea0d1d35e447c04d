#!/usr/bin/env python3
"""Regenerate the bundled sample recording ``test/data/synthetic_drive/`` bit-for-bit.

    test/env/ros_env.sh python test/data/regenerate_synthetic_drive.py           # rewrite it
    test/env/ros_env.sh python test/data/regenerate_synthetic_drive.py --check   # compare only

(``.venv/bin/python test/data/regenerate_synthetic_drive.py`` works too: no ROS is needed.)

It runs the conversion CLI in this process, exactly as

    python -m sam4d_ros.recording.convert synthetic-to-bag <dir>/synthetic_drive \\
        --preset bundled_sample --name synthetic_drive --images jpeg --jpeg-quality 90 \\
        --storage mcap --chunk-compression zstd

into a temporary directory next to the bag, checks the size limit, prints the sha256 of every
file, then replaces the bag (a failed run leaves the old one in place). ``--check`` writes the
temporary bag, compares it file by file with the committed one and exits 1 on any difference.

The output is a pure function of the generator preset and the pinned libraries (numpy, OpenCV's
JPEG encoder, zstd, rosbags; see requirements.lock): the generator draws every random number from
seeded streams and the bag writer stores no wall-clock time, host name or random id.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
NAME = "synthetic_drive"
BAG = HERE / NAME
SIZE_LIMIT_BYTES = 15_000_000  # issue 3: the bundled recording stays <= 15 MB

# Everything that defines the recording besides the code: the CLI arguments after the output.
CLI_ARGS: tuple[str, ...] = (
    "--preset", "bundled_sample",
    "--name", NAME,
    "--images", "jpeg",
    "--jpeg-quality", "90",
    "--storage", "mcap",
    "--chunk-compression", "zstd",
)  # fmt: skip


def sha256_files(directory: Path) -> dict[str, str]:
    """Relative file name -> sha256 hex digest, for every file under ``directory``."""
    return {
        p.relative_to(directory).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def size_of(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def convert(output: Path, *extra: str, quiet: bool = False) -> None:
    """Run ``synthetic-to-bag`` with CLI_ARGS (+ ``extra``) into ``output`` (must not exist)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from sam4d_ros.recording.convert import main

    argv = ["synthetic-to-bag", str(output), *CLI_ARGS, *extra]
    if quiet:
        argv.append("--quiet")
    if main(argv) != 0:
        raise SystemExit(f"conversion failed: {' '.join(argv)}")


def _print_hashes(title: str, hashes: dict[str, str], directory: Path) -> None:
    print(f"{title} ({size_of(directory):,} bytes):")
    for name, digest in hashes.items():
        print(f"  {digest}  {name}  ({(directory / name).stat().st_size:,} bytes)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="only compare a fresh build with the committed bag"
    )
    parser.add_argument(
        "--output", type=Path, default=BAG, help=f"bag directory to (re)write (default {BAG})"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    target: Path = args.output.resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.regen-", dir=target.parent) as tmp:
        fresh = Path(tmp) / target.name  # same base name: the .mcap is named after it
        convert(fresh, quiet=args.quiet)
        hashes = sha256_files(fresh)
        _print_hashes("regenerated", hashes, fresh)
        size = size_of(fresh)
        if size > SIZE_LIMIT_BYTES:
            print(f"error: {size:,} bytes > limit {SIZE_LIMIT_BYTES:,}", file=sys.stderr)
            return 1
        if args.check:
            if not target.is_dir():
                print(f"error: {target} does not exist", file=sys.stderr)
                return 1
            committed = sha256_files(target)
            if committed != hashes:
                _print_hashes("committed", committed, target)
                print(f"error: {target} differs from a fresh build", file=sys.stderr)
                return 1
            print(f"ok: {target} is identical to a fresh build")
            return 0
        old = Path(tmp) / "previous"
        if target.exists():
            target.rename(old)  # same file system: atomic renames, old bag kept until the end
        try:
            fresh.rename(target)
        except BaseException:
            if old.exists():
                old.rename(target)
            raise
        shutil.rmtree(old, ignore_errors=True)
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
