"""Write requirements.lock from the running venv (``make lock``).

The ROS 2 wheels (``ros-<pkg>``) also register their inner Python packages as distributions of their
own (``rclpy``, ``action_msgs``, ...) that exist on no registry; pinning those would make the lock
uninstallable, so they are left out. torch's local "+cpu" tag is dropped so the same pin resolves to
the local CPU wheel here and to a CUDA build elsewhere.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HEADER = """\
# Exact versions of every Python package of the development / CI venv.
# torch resolves to the local CPU wheel on the project's machines (see README.md for GPUs).
# Regenerate from a working venv with: make lock
"""


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def main() -> int:
    freeze = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable", "--all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    pins = {}
    for line in freeze:
        if "==" not in line:
            continue
        name, version = line.split("==", 1)
        pins[normalize(name)] = (name, version.split("+", 1)[0])
    ros_inner = {n[len("ros-") :] for n in pins if n.startswith("ros-")}
    lines = [
        f"{name}=={version}"
        for key, (name, version) in sorted(pins.items())
        # tensorrt-stubs is installed by the Makefile with --no-deps (its dependencies are the
        # TensorRT libraries, not installable here): a pin here would make pip resolve them.
        if key not in ros_inner and key not in {"pip", "setuptools", "wheel", "tensorrt-stubs"}
    ]
    Path(sys.argv[1] if len(sys.argv) > 1 else "requirements.lock").write_text(
        HEADER + "\n".join(lines) + "\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
