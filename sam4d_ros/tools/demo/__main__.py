"""``python -m sam4d_ros.tools.demo``: runs :func:`sam4d_ros.tools.demo.cli.main`."""

import sys

from sam4d_ros.tools.demo.cli import main

if __name__ == "__main__":
    sys.exit(main())
