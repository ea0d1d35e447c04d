"""The parameters of ``sam4d_node``, one module per concern:

- ``specs``: every parameter declared once, with its name, type, default, range or allowed values,
  description and whether it may change at run time (the one source of truth);
- ``validation``: start-up and run-time checks -> ``NodeParameters`` (or one ``ParameterError``
  naming every problem);
- ``resolution``: ``model.checkpoint`` -> a file, ``model.device`` -> a torch device (the only
  module that asks torch);
- ``declare``: the specs declared on an rclpy node (descriptors with ranges, read-only);
- ``qos``: the QoS profiles of the subscriptions, publishers and services;
- ``yaml_file``: parameter files, and config/sam4d.yaml generated from the specs.

The names below are re-exported here, so ``from sam4d_ros.parameters import ...`` keeps working.
"""

from sam4d_ros.parameters.declare import declare_parameters, parameter_descriptor
from sam4d_ros.parameters.qos import output_qos, prompt_qos, sensor_qos, service_qos
from sam4d_ros.parameters.resolution import (
    BUNDLED_CHECKPOINT,
    DEVICE_PATTERN,
    bundled_checkpoint_candidates,
    resolve_checkpoint,
    resolve_device,
)
from sam4d_ros.parameters.specs import (
    UNSET,
    ParamSpec,
    camera_parameter_specs,
    global_parameter_specs,
    parameter_specs,
)
from sam4d_ros.parameters.validation import (
    CameraParams,
    NodeParameters,
    ParameterError,
    validate_parameters,
    validate_update,
)
from sam4d_ros.parameters.yaml_file import (
    documented_params_text,
    read_params_file,
    write_params_file,
)

__all__ = [
    "BUNDLED_CHECKPOINT",
    "DEVICE_PATTERN",
    "UNSET",
    "CameraParams",
    "NodeParameters",
    "ParamSpec",
    "ParameterError",
    "bundled_checkpoint_candidates",
    "camera_parameter_specs",
    "declare_parameters",
    "documented_params_text",
    "global_parameter_specs",
    "output_qos",
    "parameter_descriptor",
    "parameter_specs",
    "prompt_qos",
    "read_params_file",
    "resolve_checkpoint",
    "resolve_device",
    "sensor_qos",
    "service_qos",
    "validate_parameters",
    "validate_update",
    "write_params_file",
]
