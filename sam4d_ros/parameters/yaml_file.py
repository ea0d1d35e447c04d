"""ROS 2 parameter files (``--params-file``) of ``sam4d_node``, and config/sam4d.yaml made from the
specs.

``write_params_file(path, values)`` writes the given ``{dotted name: value}`` pairs, nested as ROS
expects (the demo and the benchmark start the node with it). ``documented_params_text(values)``
writes every declared parameter, each under its description from the specs, with the given values
(the others at their defaults, a value that differs from its default marked so);
config/sam4d.yaml is that text, and a test keeps it so. After a change of the specs, regenerate it
(the values set in the file are kept):

    python -m sam4d_ros.parameters config/sam4d.yaml
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from sam4d_ros.parameters.specs import (
    UNSET,
    ParamSpec,
    camera_parameter_specs,
    parameter_specs,
)

__all__ = [
    "documented_params_text",
    "flatten_parameters",
    "main",
    "read_params_file",
    "write_params_file",
]

NODE = "sam4d_node"
WIDTH = 100
# Section titles of config/sam4d.yaml, by the first part of the names ("": no dot).
SECTIONS = {
    "": "inputs and frames",
    "sync": "synchronization",
    "tf": "TF",
    "model": "model",
    "tracker": "tracker",
    "prompts": "prompts",
    "qos": "QoS",
    "outputs": "outputs",
    "diagnostics": "diagnostics",
}


def _nest(values: Mapping[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for name, value in values.items():
        d = nested
        parts = name.split(".")
        for part in parts[:-1]:
            d = d.setdefault(part, {})
        d[parts[-1]] = value
    return nested


def write_params_file(path: Path, values: Mapping[str, Any], node: str = NODE) -> Path:
    """Writes a ROS 2 parameter file (``--params-file``) for ``node`` from flat dotted names,
    nested as ROS expects; returns ``path``."""
    path.write_text(yaml.safe_dump({node: {"ros__parameters": _nest(values)}}, sort_keys=False))
    return path


def flatten_parameters(data: Mapping[str, Any], node: str = NODE) -> dict[str, Any]:
    """The ``{dotted name: value}`` pairs of a loaded parameter file's ``node`` entry."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, d: Mapping[str, Any]) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                flat[f"{prefix}{k}"] = v

    walk("", data[node]["ros__parameters"])
    return flat


def read_params_file(path: Path, node: str = NODE) -> dict[str, Any]:
    """A parameter file's values for ``node`` as ``{dotted name: value}``."""
    return flatten_parameters(yaml.safe_load(Path(path).read_text()), node)


def _scalar(value: Any) -> str:
    return yaml.safe_dump([value], default_flow_style=True, width=1000).strip()[1:-1]


def _comment(text: str, indent: int) -> list[str]:
    pad = " " * indent + "# "
    return textwrap.wrap(
        text, WIDTH, initial_indent=pad, subsequent_indent=pad, break_long_words=False
    )


def _describe(spec: ParamSpec) -> str:
    text = ("" if spec.read_only else "[runtime] ") + spec.description
    if spec.range is not None:
        text += f" Range [{spec.range[0]}, {spec.range[1]}]."
    return text


def _entry(spec: ParamSpec, values: Mapping[str, Any], indent: int, describe: bool) -> list[str]:
    leaf = spec.name.rsplit(".", 1)[-1]
    lines = _comment(_describe(spec), indent) if describe else []
    if spec.name not in values:
        if spec.default is UNSET:  # an empty array cannot be written: an example instead
            example = [0.0] * 6 + [1.0] if spec.kind == "double_array" else ["name"]
            return lines + [f"{' ' * indent}# {leaf}: {_scalar(example)}"]
        return lines + [f"{' ' * indent}{leaf}: {_scalar(spec.default)}"]
    line = f"{' ' * indent}{leaf}: {_scalar(values[spec.name])}"
    if spec.default is not UNSET and values[spec.name] != spec.default:
        line += f"  # default: {_scalar(spec.default)}"
    return lines + [line]


def documented_params_text(values: Mapping[str, Any], header: str = "", node: str = NODE) -> str:
    """Every parameter of the cameras in ``values['cameras']`` (the others take their defaults)
    under its description, nested as ROS expects, after ``header`` (comment lines). Raises
    ValueError for a name that is not declared."""
    cameras = list(values.get("cameras") or [])
    specs = parameter_specs(cameras)
    unknown = sorted(set(values) - {s.name for s in specs})
    if unknown:
        raise ValueError(f"not declared parameter(s) {unknown}")
    lines = [header.rstrip("\n")] if header else []
    lines += [f"{node}:", "  ros__parameters:"]
    section = None
    for spec in specs:
        parts = spec.name.split(".")
        if parts[0] == "camera":
            continue  # written after 'cameras'
        group = parts[0] if len(parts) > 1 else ""
        if group != section:
            if section is not None:
                lines.append("")
            lines.append(f"    # {'-' * 64} {SECTIONS.get(group, group)}")
            if group:
                lines.append(f"    {group}:")
            section = group
        lines += _entry(spec, values, 6 if group else 4, True)
        if spec.name == "cameras" and cameras:
            lines.append("    camera:")
            for i, cam in enumerate(cameras):
                lines.append(f"      {cam}:")
                for cam_spec in camera_parameter_specs(cam):
                    lines += _entry(cam_spec, values, 8, i == 0)
    return "\n".join(lines) + "\n"


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Regenerate parameter files (the values and the leading comment lines are kept)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print(f"usage: python -m sam4d_ros.parameters FILE... ({__doc__.split('.')[0]})")
        return 2
    for name in args:
        path = Path(name)
        text = path.read_text()
        path.write_text(documented_params_text(read_params_file(path), _header(text)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
