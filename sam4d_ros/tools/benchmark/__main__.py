"""``python -m sam4d_ros.tools.benchmark``."""

import sys

from sam4d_ros.tools.benchmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
