"""The parameters of ``sam4d_node`` on an rclpy node: ``declare_parameters(node)`` declares every
spec (``rcl_interfaces/ParameterDescriptor`` with the description, a range where one applies, the
allowed values in ``additional_constraints``, and ``read_only`` where a change at run time is not
supported), reads the values, reports overrides that match no declaration (typos) and returns the
validated ``NodeParameters``.

``use_sim_time`` is declared by rclpy itself and is not touched here.
"""

from __future__ import annotations

from typing import Any

from sam4d_ros.parameters.specs import (
    CAMERA_NAME,
    UNSET,
    ParamSpec,
    camera_parameter_specs,
    constraints,
    global_parameter_specs,
)
from sam4d_ros.parameters.validation import (
    NodeParameters,
    ParameterError,
    is_builtin,
    validate_parameters,
)

__all__ = ["declare_parameters", "parameter_descriptor"]


def parameter_descriptor(spec: ParamSpec) -> Any:
    """rcl_interfaces/ParameterDescriptor of a spec (description, range, read_only, type)."""
    from rcl_interfaces.msg import (
        FloatingPointRange,
        IntegerRange,
        ParameterDescriptor,
        ParameterType,
    )

    types = {
        "bool": ParameterType.PARAMETER_BOOL,
        "integer": ParameterType.PARAMETER_INTEGER,
        "double": ParameterType.PARAMETER_DOUBLE,
        "string": ParameterType.PARAMETER_STRING,
        "string_array": ParameterType.PARAMETER_STRING_ARRAY,
        "double_array": ParameterType.PARAMETER_DOUBLE_ARRAY,
    }
    d = ParameterDescriptor(
        name=spec.name,
        type=types[spec.kind],
        description=spec.description,
        additional_constraints=constraints(spec),
        read_only=spec.read_only,
    )
    if spec.range is not None and spec.kind == "double":
        d.floating_point_range = [
            FloatingPointRange(
                from_value=float(spec.range[0]), to_value=float(spec.range[1]), step=0.0
            )
        ]
    elif spec.range is not None and spec.kind == "integer":
        d.integer_range = [
            IntegerRange(from_value=int(spec.range[0]), to_value=int(spec.range[1]), step=1)
        ]
    return d


def _uninitialized_error() -> tuple[type[BaseException], ...]:
    try:
        from rclpy.exceptions import ParameterUninitializedException
    except ImportError:  # older rclpy: unset parameters read as None instead
        return ()
    return (ParameterUninitializedException,)


def _declare(node: Any, spec: ParamSpec, problems: list[str]) -> Any:
    from rclpy.exceptions import (
        InvalidParameterTypeException,
        InvalidParameterValueException,
    )
    from rclpy.parameter import Parameter

    descriptor = parameter_descriptor(spec)
    if spec.default is UNSET:
        default: Any = {
            "string_array": Parameter.Type.STRING_ARRAY,
            "double_array": Parameter.Type.DOUBLE_ARRAY,
        }[spec.kind]
    else:
        default = spec.default
    try:
        node.declare_parameter(spec.name, default, descriptor)
    except InvalidParameterTypeException as e:
        hint = " (write 1.0, not 1)" if spec.kind == "double" else ""
        problems.append(f"{spec.name}: expected {spec.kind.replace('_', ' ')}{hint}: {e}")
        return None
    except InvalidParameterValueException as e:
        problems.append(f"{spec.name}: {constraints(spec) or 'invalid value'}: {e}")
        return None
    try:
        return node.get_parameter(spec.name).value
    except _uninitialized_error():
        return UNSET


def declare_parameters(node: Any, **kwargs: Any) -> NodeParameters:
    """Declare every parameter on an rclpy node (global ones, then those of each camera in
    ``cameras``), read and validate them. kwargs go to ``validate_parameters``. Raises
    ParameterError listing every problem."""
    problems: list[str] = []
    values: dict[str, Any] = {}
    for spec in global_parameter_specs():
        values[spec.name] = _declare(node, spec, problems)
    cameras = values.get("cameras")
    names = [c for c in cameras if isinstance(c, str)] if isinstance(cameras, list) else []
    for name in names:
        if not CAMERA_NAME.match(name):
            continue  # reported by validation; no parameters can be declared for it
        for spec in camera_parameter_specs(name):
            values[spec.name] = _declare(node, spec, problems)
    # Overrides (parameter file, command line) that match no declaration: typos.
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    stray = sorted(n for n in overrides if n not in values and not is_builtin(n))
    if stray:
        problems.append(
            f"unknown parameter(s) {stray} given to the node (typo? a camera's parameters need "
            f"its name in 'cameras')"
        )
    try:
        params = validate_parameters({k: v for k, v in values.items() if v is not None}, **kwargs)
    except ParameterError as e:
        problems.extend(e.problems)
        raise ParameterError(problems) from None
    if problems:
        raise ParameterError(problems)
    return params
