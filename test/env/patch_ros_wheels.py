"""Patch the CMake files of the PyPI ROS 2 wheels so that packages generating interfaces configure.

The wheels' exported CMake files hard-code the Python include and numpy include directories of the
machine that built them (``/opt/python/cp311-cp311/...``). CMake then refuses to configure
("includes non-existent path"). This replaces those strings with the paths of the interpreter that
runs this script (the project's venv). Idempotent: a second run finds nothing to replace.

Usage: ``<venv>/bin/python test/env/patch_ros_wheels.py``
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

import numpy

BUILD_MACHINE_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
BUILD_MACHINE_NUMPY_INCLUDE = (
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"
)


def patch(prefix: Path) -> int:
    """Rewrite the hard-coded paths under ``prefix/share/*/cmake``; return files changed."""
    replacements = {
        # The longer string first: the numpy path does not contain the include path, but keep the
        # order explicit so that neither replacement can eat the other.
        BUILD_MACHINE_NUMPY_INCLUDE: numpy.get_include(),
        BUILD_MACHINE_PYTHON_INCLUDE: sysconfig.get_paths()["include"],
    }
    changed = 0
    for path in sorted(prefix.glob("share/*/cmake/*.cmake")):
        text = path.read_text()
        new = text
        for old, repl in replacements.items():
            new = new.replace(old, repl)
        if new != text:
            path.write_text(new)
            changed += 1
    return changed


def main() -> int:
    prefix = Path(sys.prefix)
    n = patch(prefix)
    print(f"patch_ros_wheels: {n} CMake file(s) patched under {prefix}/share")
    if not Path(sysconfig.get_paths()["include"], "Python.h").exists():
        print(
            "patch_ros_wheels: warning: Python.h not found (install the Python headers)",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
