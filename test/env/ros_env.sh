#!/usr/bin/env bash
# Run a command in the project's ROS 2 environment: .venv on PATH, the colcon install space sourced,
# DDS kept on loopback. Usage: test/env/ros_env.sh <command> [args...]
set -eo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
export PATH="$root/.venv/bin:$PATH"
export VIRTUAL_ENV="$root/.venv"
export AMENT_PREFIX_PATH="$root/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
set +u
# shellcheck disable=SC1091
source "$root/.build/install/setup.bash"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
exec "$@"
