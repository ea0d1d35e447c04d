"""Benchmark commands (not tests): run them with ``python -m sam4d_ros.benchmarks.<name>``."""
