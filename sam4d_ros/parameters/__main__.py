"""``python -m sam4d_ros.parameters FILE...``: regenerate parameter files (config/sam4d.yaml) from
the specs, keeping their values (see ``sam4d_ros.parameters.yaml_file``)."""

import sys

from sam4d_ros.parameters.yaml_file import main

sys.exit(main())
