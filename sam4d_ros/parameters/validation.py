"""Start-up and run-time validation of the parameters of ``sam4d_node``.

``validate_parameters(values)`` checks a plain ``{name: value}`` dict against the specs
(``sam4d_ros.parameters.specs``: unknown names, types, ranges, allowed values) and the rules that
join several parameters (topics used twice, the TF cache against the frame buffer, ...), resolves
the model files (``.resolution``) and returns a ``NodeParameters``; every problem is collected and
raised together as one ``ParameterError`` that names each parameter, its value and what is
expected. ``validate_update`` does the same for a change at run time.

Cameras: ``cameras`` lists the names; each camera then has ``camera.<name>.*`` parameters. Per
image_transport, a compressed camera subscribes ``<image_topic>/compressed``, and the CameraInfo
topic defaults to ``camera_info`` next to the image topic. Image clicks are read from
``<image_topic>_mouse_left`` (rqt_image_view's convention).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sam4d_core.runtime import runtime_setup_problems
from sam4d_ros.parameters import resolution
from sam4d_ros.parameters.resolution import resolve_checkpoint, resolve_device
from sam4d_ros.parameters.specs import (
    CAMERA_NAME,
    UNSET,
    ParamSpec,
    global_parameter_specs,
    parameter_specs,
)

__all__ = [
    "BUILTIN_PARAMETERS",
    "CameraParams",
    "NodeParameters",
    "ParameterError",
    "is_builtin",
    "validate_parameters",
    "validate_update",
]

# Parameters rclpy declares itself (and qos_overrides.*): not ours to declare or check.
BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")


def is_builtin(name: str) -> bool:
    """A parameter of rclpy's own (``use_sim_time``, ``qos_overrides.*``, ...)."""
    return name in BUILTIN_PARAMETERS or name.startswith("qos_overrides.")


class ParameterError(ValueError):
    """One or more parameters are invalid; ``problems`` lists them (also in the message)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "invalid sam4d_node parameters:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


@dataclass(frozen=True)
class CameraParams:
    """One camera. extrinsics: (4, 4) camera optical <- LiDAR from parameters, or None."""

    name: str
    image_topic: str
    camera_info_topic: str
    compressed: bool
    time_offset_s: float
    rectified: bool
    frame_id: str
    extrinsics: np.ndarray | None = None

    @property
    def subscribed_image_topic(self) -> str:
        """The topic actually subscribed (image_transport's compressed sub-topic if compressed)."""
        if self.compressed and not self.image_topic.endswith("/compressed"):
            return self.image_topic + "/compressed"
        return self.image_topic

    def click_topic(self, suffix: str) -> str:
        """Image-click topic ``<image_topic><suffix>`` (empty suffix: none)."""
        if not suffix:
            return ""
        base = self.image_topic
        if base.endswith("/compressed"):
            base = base[: -len("/compressed")]
        return base + suffix


@dataclass(frozen=True)
class NodeParameters:
    """Every parameter of the node, validated; ``values`` holds the raw {name: value} dict.

    model_checkpoint: the resolved file. device: the resolved torch device ("cpu", "cuda:0", ...).
    """

    lidar_topic: str
    lidar_frame: str
    fixed_frame: str
    cameras: tuple[CameraParams, ...]
    sync_tolerance_s: float
    sync_max_wait_s: float
    sync_buffer_size: int
    sync_time_jump_threshold_s: float
    tf_cache_time_s: float
    tf_timeout_s: float
    tf_pose_fallback: str
    tf_motion_compensation: bool
    model_config: str
    model_checkpoint: Path | None
    device: str
    num_threads: int
    presence_threshold: float
    mask_threshold: float
    frame_buffer_s: float
    max_objects: int
    num_maskmem: int
    max_object_pointers: int
    reprompt: bool
    reprompt_with_memory: bool
    refine_masks: bool
    lift_image_clicks: bool
    zoom: bool
    boundary_refine: bool
    clicked_point_topic: str
    image_click_suffix: str
    prompts_max_per_request: int
    prompts_max_points: int
    prompts_queue_size: int
    prompts_service_timeout_s: float
    sensor_reliability: str
    sensor_depth: int
    output_reliability: str
    output_depth: int
    prompt_depth: int
    publish_label_images: bool
    publish_overlays: bool
    publish_cloud: bool
    publish_objects: bool
    publish_markers: bool
    publish_debug: bool
    overlay_alpha: float
    processing_budget_ms: float
    diagnostics_period_s: float
    values: Mapping[str, Any] = field(default_factory=dict, repr=False)
    runtime: str = "torch"
    onnx_dir: str = ""
    trt_precision: str = "fp16"

    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    def camera(self, name: str) -> CameraParams:
        for c in self.cameras:
            if c.name == name:
                return c
        raise KeyError(f"unknown camera '{name}' (cameras: {self.camera_names})")

    # The configs of the building blocks, so that the node only wires them.

    def _fields(self, prefix: str, *names: str) -> dict[str, Any]:
        """``{name: self.<prefix><name>}``: the building blocks name the parameters without the
        prefix of their group."""
        return {name: getattr(self, prefix + name) for name in names}

    def sync_config(self) -> Any:
        from sam4d_ros.sync import SyncConfig

        return SyncConfig(
            cameras=tuple(self.camera_names),
            time_offsets_s={c.name: c.time_offset_s for c in self.cameras},
            **self._fields(
                "sync_", "tolerance_s", "max_wait_s", "buffer_size", "time_jump_threshold_s"
            ),
        )

    def frame_builder_config(self) -> Any:
        from sam4d_ros.frame_builder import CameraSource, FrameBuilderConfig

        cameras = [
            CameraSource(
                name=c.name,
                image_topic=c.subscribed_image_topic,
                camera_info_topic=c.camera_info_topic,
                rectified=c.rectified,
                frame_id=c.frame_id,
                cam_from_lidar=c.extrinsics,
            )
            for c in self.cameras
        ]
        return FrameBuilderConfig(
            cameras=cameras,
            **self._fields("", "lidar_topic", "fixed_frame", "lidar_frame"),
            **self._fields("tf_", "pose_fallback", "motion_compensation"),
        )

    def output_config(self) -> Any:
        from sam4d_ros.outputs import OutputConfig

        return OutputConfig(
            presence_threshold=self.presence_threshold, overlay_alpha=self.overlay_alpha
        )

    def prompt_limits(self) -> Any:
        from sam4d_ros.prompts import PromptLimits

        return PromptLimits(
            max_prompts_per_request=self.prompts_max_per_request,
            max_points_per_prompt=self.prompts_max_points,
        )


def _check_type(spec: ParamSpec, value: Any) -> str | None:
    kind = spec.kind
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, (int, np.integer)) and not isinstance(v, bool),
        "double": lambda v: (
            isinstance(v, (float, int, np.floating, np.integer)) and not isinstance(v, bool)
        ),
        "string": lambda v: isinstance(v, str),
        "string_array": lambda v: (
            isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)
        ),
        "double_array": lambda v: (
            isinstance(v, (list, tuple, np.ndarray))
            and all(isinstance(x, (float, int, np.floating, np.integer)) for x in v)
        ),
    }[kind]
    if ok(value):
        return None
    return f"{spec.name}: expected {kind.replace('_', ' ')}, got {value!r}"


def _extrinsics(name: str, values: Sequence[float]) -> np.ndarray:
    from sam4d_core.codecs.errors import TransformError
    from sam4d_core.codecs.transform import tq_to_matrix, validate_transform

    v = np.asarray(values, dtype=np.float64).reshape(-1)
    try:
        if v.size == 7:
            return tq_to_matrix(v[:3], v[3:])
        if v.size == 16:
            return validate_transform(v.reshape(4, 4))
    except TransformError as e:
        raise ValueError(f"{name}: {e}") from None
    raise ValueError(
        f"{name}: expected 7 values [x, y, z, qx, qy, qz, qw] or 16 (4x4 row-major), got {v.size}"
    )


def _topic_ok(topic: str) -> bool:
    # ROS topic names: tokens of letters, digits, underscores, separated by '/', optional '~/'.
    return bool(re.match(r"^(~/|/)?[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$", topic))


def validate_parameters(
    values: Mapping[str, Any],
    *,
    cuda_device_count: Callable[[], int] | None = None,
    known_configs: Sequence[str] | None = None,
    check_files: bool = True,
) -> NodeParameters:
    """Check a {name: value} dict (missing names take their defaults) and build NodeParameters.

    cuda_device_count: visible CUDA devices (default: asks torch). known_configs: registered
    model config names (default: sam4d_core's registry). check_files: resolve the checkpoint
    (tests of other rules pass False). Raises ParameterError listing every problem.
    """
    problems: list[str] = []
    cameras_value = values.get("cameras")
    cameras = [] if cameras_value is None or cameras_value is UNSET else list(cameras_value)
    specs = {s.name: s for s in parameter_specs([c for c in cameras if isinstance(c, str)])}
    unknown = sorted(k for k in values if k not in specs and not is_builtin(k))
    if unknown:
        problems.append(
            f"unknown parameter(s) {unknown} (a camera's parameters need its name in 'cameras')"
        )
    v: dict[str, Any] = {}
    for name, spec in specs.items():
        value = values.get(name, spec.default)
        if value is None:
            value = spec.default
        if value is UNSET:
            v[name] = [] if spec.kind.endswith("array") else None
            continue
        err = _check_type(spec, value)
        if err:
            problems.append(err)
            v[name] = spec.default if spec.default is not UNSET else []
            continue
        if spec.kind == "double":
            value = float(value)
            if not math.isfinite(value):
                problems.append(f"{name}: must be finite, got {value}")
                v[name] = spec.default
                continue
        elif spec.kind == "integer":
            value = int(value)
        if spec.range is not None and isinstance(value, (int, float)):
            lo, hi = spec.range
            if not lo <= value <= hi:
                problems.append(f"{name}: {value} is outside [{lo}, {hi}]")
        if spec.choices is not None and value not in spec.choices:
            problems.append(f"{name}: '{value}' is not one of {list(spec.choices)}")
        v[name] = value

    # Cameras.
    seen = set()
    for c in cameras:
        if not isinstance(c, str) or not CAMERA_NAME.match(c):
            problems.append(
                f"cameras: '{c}' is not a valid camera name (a letter, then letters, digits or "
                f"underscores)"
            )
        elif c in seen:
            problems.append(f"cameras: '{c}' is listed twice")
        seen.add(c)
    topics: dict[str, str] = {}

    def topic(name: str, value: str, allow_empty: bool = False) -> bool:
        if not value and allow_empty:
            return True
        if not _topic_ok(value):
            problems.append(f"{name}: '{value}' is not a valid topic name")
            return False
        if value in topics:
            problems.append(f"{name}: topic '{value}' is also used by {topics[value]}")
            return False
        topics[value] = name
        return True

    topic("lidar_topic", v["lidar_topic"])
    camera_params = []
    bad_image_topic: set[str] = set()
    for c in dict.fromkeys(cameras):  # a duplicate is reported above, once
        if not isinstance(c, str) or not CAMERA_NAME.match(c):
            continue
        p = f"camera.{c}."
        image_topic = v[p + "image_topic"]
        info_topic = v[p + "camera_info_topic"] or (
            image_topic.rsplit("/", 1)[0] + "/camera_info" if "/" in image_topic else "camera_info"
        )
        extrinsics = None
        raw = v[p + "extrinsics"]
        if raw is not None and len(raw):
            try:
                extrinsics = _extrinsics(p + "extrinsics", raw)
            except ValueError as e:
                problems.append(str(e))
        cam = CameraParams(
            name=c,
            image_topic=image_topic,
            camera_info_topic=info_topic,
            compressed=v[p + "compressed"],
            time_offset_s=v[p + "time_offset_s"],
            rectified=v[p + "rectified"],
            frame_id=v[p + "frame_id"],
            extrinsics=extrinsics,
        )
        if topic(p + "image_topic", cam.subscribed_image_topic):
            # The derived topics of a bad image topic would only repeat its problem.
            topic(p + "camera_info_topic", info_topic)
        else:
            bad_image_topic.add(c)
        camera_params.append(cam)
    topic("prompts.clicked_point_topic", v["prompts.clicked_point_topic"], allow_empty=True)
    suffix = v["prompts.image_click_suffix"]
    if suffix and not re.match(r"^[A-Za-z0-9_/]+$", suffix):
        problems.append(f"prompts.image_click_suffix: '{suffix}' cannot extend a topic name")
    elif suffix:
        for cam in camera_params:
            if cam.name not in bad_image_topic:
                topic(f"camera.{cam.name} click topic", cam.click_topic(suffix))

    # Cross-parameter rules.
    if v["tf.cache_time_s"] < v["tracker.frame_buffer_s"]:
        problems.append(
            f"tf.cache_time_s ({v['tf.cache_time_s']}) must be >= tracker.frame_buffer_s "
            f"({v['tracker.frame_buffer_s']}): prompts on buffered frames need their transforms"
        )
    if v["sync.max_wait_s"] > 0.5 * v["sync.time_jump_threshold_s"]:
        problems.append(
            f"sync.max_wait_s ({v['sync.max_wait_s']}) must be at most half of "
            f"sync.time_jump_threshold_s ({v['sync.time_jump_threshold_s']})"
        )
    for frame_param in ("lidar_frame", "fixed_frame"):
        if v[frame_param] and not re.match(r"^/?[A-Za-z0-9_./-]+$", v[frame_param]):
            problems.append(f"{frame_param}: '{v[frame_param]}' is not a valid TF frame id")

    # Model.
    config = v["model.config"]
    if config and not config.endswith(".json"):
        names = known_configs if known_configs is not None else resolution.known_configs()
        if names is not None and config not in names:
            problems.append(
                f"model.config: unknown configuration '{config}' (known: {list(names)}, a .json "
                f"file, or empty for the checkpoint's own)"
            )
    elif config and check_files and not Path(os.path.expanduser(config)).is_file():
        problems.append(f"model.config: file '{config}' not found")
    checkpoint = None
    if check_files:
        try:
            checkpoint = resolve_checkpoint(v["model.checkpoint"])
        except FileNotFoundError as e:
            problems.append(f"model.checkpoint: {e}")
    device = "cpu"
    try:
        device = resolve_device(v["model.device"], cuda_device_count)
    except ValueError as e:
        problems.append(f"model.device: {e}")
    onnx_dir = os.path.expanduser(v["model.onnx_dir"])
    problems += [
        f"model.runtime: {p}"
        for p in runtime_setup_problems(v["model.runtime"], onnx_dir, check_files)
    ]

    if problems:
        raise ParameterError(problems)
    fields = {s.attribute: v[s.name] for s in global_parameter_specs() if s.attribute}
    return NodeParameters(
        cameras=tuple(camera_params),
        model_checkpoint=checkpoint,
        device=device,
        onnx_dir=onnx_dir,
        values=dict(v, cameras=list(cameras)),
        **fields,
    )


def validate_update(
    current: NodeParameters,
    changes: Mapping[str, Any],
    **kwargs: Any,
) -> NodeParameters:
    """NodeParameters after applying run-time ``changes`` ({name: value}); raises ParameterError
    when a changed parameter is read-only or the result is invalid (for the node's
    on-set-parameters callback; the files are not checked again)."""
    specs = {s.name: s for s in parameter_specs(current.camera_names)}
    problems = []
    for name in changes:
        spec = specs.get(name)
        if spec is not None and spec.read_only:
            problems.append(f"{name}: read-only (set it at start-up)")
    if problems:
        raise ParameterError(problems)
    merged = dict(current.values)
    merged.update(changes)
    kwargs.setdefault("check_files", False)
    updated = validate_parameters(merged, **kwargs)
    # Keep what was resolved at start-up (the files are not looked up again).
    return _replace_resolved(updated, current)


def _replace_resolved(updated: NodeParameters, current: NodeParameters) -> NodeParameters:
    return replace(updated, model_checkpoint=current.model_checkpoint, device=current.device)
