#!/usr/bin/env bash
# Build sam4d_ros (and a stand-in tf2_msgs when no ROS install provides one) with colcon, using the
# ROS 2 wheels of .venv, into .build/{build,install,log}. Called by `make build`.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="$PWD/.venv"
export AMENT_PREFIX_PATH="$venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$venv${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}"
export PATH="$venv/bin:$PATH"

# CMake refuses to export include paths (numpy's, in .venv) that lie inside a package's source
# directory, and this package's source directory is the checkout that holds .venv. Building it
# through a symlink gives it a source path of its own that does not contain .venv.
mkdir -p .build/src
ln -sfn ../.. .build/src/sam4d_ros
paths=(.build/src/sam4d_ros)
if ! python - <<'PY' 2>/dev/null; then
from ament_index_python.packages import get_package_share_directory
get_package_share_directory("tf2_msgs")
PY
  paths+=(test/env/tf2_msgs)
  # A stand-in from an earlier build is found in our own install space: keep building it.
elif [ -d .build/install/tf2_msgs ]; then
  paths+=(test/env/tf2_msgs)
fi

colcon --log-base .build/log build \
  --build-base .build/build --install-base .build/install \
  --symlink-install --paths "${paths[@]}" \
  --event-handlers console_cohesion- console_stderr+ summary+ parallel_status- \
  --cmake-args -DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF \
    -Wno-dev --no-warn-unused-cli
