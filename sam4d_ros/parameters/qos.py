"""The QoS profiles of ``sam4d_node``'s subscriptions, publishers and services (``qos.*``)."""

from __future__ import annotations

from typing import Any

from sam4d_ros.parameters.validation import NodeParameters

__all__ = ["output_qos", "prompt_qos", "sensor_qos", "service_qos"]

# Requests a service buffers before its callbacks take them (bursts of calls).
SERVICE_QUEUE_DEPTH = 1000


def _qos(reliability: str, depth: int) -> Any:
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=int(depth),
        reliability=ReliabilityPolicy.BEST_EFFORT
        if reliability == "best_effort"
        else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.VOLATILE,
    )


def sensor_qos(params: NodeParameters) -> Any:
    """QoSProfile of the sensor subscriptions (keep last ``qos.sensor_depth``)."""
    return _qos(params.sensor_reliability, params.sensor_depth)


def output_qos(params: NodeParameters) -> Any:
    """QoSProfile of the output publishers (keep last ``qos.output_depth``)."""
    return _qos(params.output_reliability, params.output_depth)


def prompt_qos(params: NodeParameters) -> Any:
    """QoSProfile of the prompt subscriptions: reliable like RViz's and rqt's publishers (a click
    must not be lost), and deep (``qos.prompt_depth``): DDS drops unread messages beyond the depth
    without a trace (see sam4d_ros.prompt_accounting)."""
    return _qos("reliable", params.prompt_depth)


def service_qos() -> Any:
    """QoSProfile of the services: a deep request queue. ROS's default (keep last 10) silently
    drops requests of a burst before the executor takes them, and a dropped request is never
    answered; here every request is taken and answered (applied, or rejected at once when too
    many wait)."""
    return _qos("reliable", SERVICE_QUEUE_DEPTH)
