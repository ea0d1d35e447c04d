"""Layering: the ROS-free packages (``sam4d_core``, ``training``, ``export``) import no ROS.

Every ``.py`` file under them is parsed (not imported) and every import is checked, module level
and inside functions alike, as well as ``importlib.import_module("...")`` / ``__import__("...")``
with a literal name. ``sam4d_ros`` may import ``sam4d_core``, never the other way round.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ROS_FREE = ("sam4d_core", "training", "export")
# The ROS side of this repository, the ROS 2 client library and the message packages.
FORBIDDEN = {
    "sam4d_ros",
    "rclpy",
    "tf2_ros",
    "tf2_msgs",
    "sensor_msgs",
    "geometry_msgs",
    "std_msgs",
    "builtin_interfaces",
    "diagnostic_msgs",
    "visualization_msgs",
}


def _python_files() -> list[Path]:
    return sorted(p for d in ROS_FREE for p in (REPO / d).rglob("*.py"))


def imported_modules(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in a parsed file (relative ones skipped)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and node.module:
                yield node.lineno, node.module
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in ("import_module", "__import__") and isinstance(first, ast.Constant):
                if isinstance(first.value, str):
                    yield node.lineno, first.value


def test_the_checker_sees_every_kind_of_import() -> None:
    source = (
        "import rclpy\n"
        "def f():\n"
        "    from sam4d_ros.tf_buffer import TfListener\n"
        "    importlib.import_module('sensor_msgs.msg')\n"
        "from . import sibling\n"
    )
    found = [name for _, name in imported_modules(ast.parse(source))]
    assert found == ["rclpy", "sam4d_ros.tf_buffer", "sensor_msgs.msg"]


def test_ros_free_packages_import_no_ros() -> None:
    files = _python_files()
    assert len(files) > 50, "the walk found too few files"
    offenders = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for line, name in imported_modules(tree):
            if name.split(".")[0] in FORBIDDEN:
                offenders.append(f"{path.relative_to(REPO)}:{line}: {name}")
    assert not offenders, "ROS imports in ROS-free code:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "modules",
    [
        "sam4d_core.data.sequence_bag, sam4d_core.geometry.tf_buffer",
        "training.datasets, training.evaluate",
    ],
)
def test_importing_leaves_ros_unloaded(modules: str) -> None:
    code = (
        f"import sys, {modules}\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "assert not bad, bad\n"
    )
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    )
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=REPO, timeout=120)
