"""The argument parser of a ``python -m training...`` command, its help taken from the docstring."""

from __future__ import annotations

import argparse

__all__ = ["doc_parser"]


def doc_parser(module: str, doc: str | None) -> argparse.ArgumentParser:
    """A parser for ``python -m <module>``: the docstring's first line is the description, the
    rest (usage examples, notes) is the epilog, printed as written."""
    lines = (doc or "").splitlines()
    return argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=lines[0] if lines else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(lines[2:]),
    )
