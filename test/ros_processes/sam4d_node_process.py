"""Child process: ``sam4d_node`` as users run it (``sam4d_ros.node.main``). Arguments are the
node's command line (``--checkpoint ...``, ``--ros-args ...``)."""

import sys

from sam4d_ros.node import main

if __name__ == "__main__":
    sys.exit(main([sys.argv[0], *sys.argv[1:]]))
