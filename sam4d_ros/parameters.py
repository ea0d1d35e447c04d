"""The parameters of ``sam4d_node``: declarations with descriptions, start-up validation, QoS.

``declare_parameters(node)`` declares every parameter (``rcl_interfaces/ParameterDescriptor`` with
a description, a range where one applies, the allowed values in ``additional_constraints``, and
``read_only`` where a change at run time is not supported), reads them and returns a validated
``NodeParameters``; problems are collected and raised together as one ``ParameterError`` that
names each parameter, its value and what is expected. ``validate_parameters(values)`` does the
same checks on a plain ``{name: value}`` dict, so the rules are testable without a node.
``config/sam4d.yaml`` documents every parameter (a test keeps it and the declarations in step).

Cameras: ``cameras`` lists the names; each camera then has ``camera.<name>.*`` parameters (its
topics, whether images are compressed, time offset, rectified, optical frame, extrinsics). Per
image_transport, a compressed camera subscribes ``<image_topic>/compressed``, and the CameraInfo
topic defaults to ``camera_info`` next to the image topic. Image clicks are read from
``<image_topic>_mouse_left`` (rqt_image_view's convention).

``use_sim_time`` is declared by rclpy itself and is not touched here.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sam4d_core.runtime import RUNTIMES, runtime_setup_problems
from sam4d_core.weights import BUNDLED_MODEL

__all__ = [
    "BUNDLED_CHECKPOINT",
    "DEVICE_PATTERN",
    "CameraParams",
    "NodeParameters",
    "ParamSpec",
    "ParameterError",
    "bundled_checkpoint_candidates",
    "camera_parameter_specs",
    "declare_parameters",
    "global_parameter_specs",
    "output_qos",
    "parameter_descriptor",
    "parameter_specs",
    "resolve_checkpoint",
    "resolve_device",
    "sensor_qos",
    "validate_parameters",
    "validate_update",
    "write_params_file",
]

PACKAGE = "sam4d_ros"
# The default model ships inside the sam4d_core Python package (sam4d_core/weights), so every
# install finds it next to the code that loads it.
BUNDLED_CHECKPOINT = BUNDLED_MODEL
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_CAMERA_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
RELIABILITIES = ("best_effort", "reliable")
POSE_FALLBACKS = ("error", "hold", "identity")
UNSET = object()  # default of a parameter that is optional and has no value (e.g. extrinsics)


class ParameterError(ValueError):
    """One or more parameters are invalid; ``problems`` lists them (also in the message)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "invalid sam4d_node parameters:\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default, description and constraints.

    default: the value when none is given; ``UNSET`` for an optional array without a default
        (then ``type_name`` gives its type). range: (min, max) inclusive for numbers.
    choices: allowed strings. read_only: cannot change after start-up.
    """

    name: str
    default: Any
    description: str
    read_only: bool = True
    range: tuple[float, float] | None = None
    choices: tuple[str, ...] | None = None
    type_name: str = ""  # "string_array" / "double_array" for UNSET defaults

    @property
    def kind(self) -> str:
        if self.type_name:
            return self.type_name
        d = self.default
        if isinstance(d, bool):
            return "bool"
        if isinstance(d, int):
            return "integer"
        if isinstance(d, float):
            return "double"
        if isinstance(d, str):
            return "string"
        if isinstance(d, (list, tuple)) and d and all(isinstance(v, str) for v in d):
            return "string_array"
        if isinstance(d, (list, tuple)) and d and all(isinstance(v, float) for v in d):
            return "double_array"
        raise TypeError(f"cannot infer the type of parameter {self.name} from {d!r}")


def _g(name: str, default: Any, description: str, **kw: Any) -> ParamSpec:
    return ParamSpec(name, default, description, **kw)


def global_parameter_specs() -> list[ParamSpec]:
    """Every parameter that does not belong to one camera."""
    return [
        # -------------------------------------------------------------- inputs and frames
        _g("lidar_topic", "/sensors/lidar/points",
           "sensor_msgs/PointCloud2 topic of the LiDAR (the master clock: one tracker step per "
           "sweep)."),
        _g("lidar_frame", "",
           "TF frame of the LiDAR points; empty = the cloud's header.frame_id."),
        _g("fixed_frame", "odom",
           "World-fixed TF frame of the ego pose (fixed_frame <- lidar_frame at each sweep "
           "stamp), used to compensate ego motion in the tracker's memory; empty = no odometry "
           "(identity pose)."),
        _g("cameras", UNSET,
           "Camera names (letters, digits, underscores); each has camera.<name>.* parameters. "
           "Empty = LiDAR only.", type_name="string_array"),
        # -------------------------------------------------------------- synchronization
        _g("sync.tolerance_s", 0.05,
           "Largest |image stamp - (sweep stamp + camera time_offset_s)| for an image to join a "
           "sweep (seconds).", read_only=False, range=(0.0, 1.0)),
        _g("sync.max_wait_s", 0.05,
           "Longest wall-clock wait for a camera that is late after its sweep arrived; then the "
           "sweep goes on without it (seconds).", read_only=False, range=(0.0, 1.0)),
        _g("sync.buffer_size", 8,
           "Images kept per camera for matching (cover max_wait_s plus transport delay at the "
           "camera's rate).", range=(1, 100)),
        _g("sync.time_jump_threshold_s", 0.25,
           "A sweep stamped this much before the previous one, or before the newest frame the "
           "tracker has, means time went backwards (looped or restarted bag): the tracker is "
           "reset and the node says so (seconds). A sweep less far back is a reordered or "
           "repeated one and is skipped.", range=(0.001, 3600.0)),
        # -------------------------------------------------------------- TF
        _g("tf.cache_time_s", 10.0,
           "History kept per dynamic TF edge (seconds); must exceed tracker.frame_buffer_s for "
           "prompts on past frames.", range=(0.1, 600.0)),
        _g("tf.timeout_s", 0.05,
           "How long the worker waits for a transform that has not arrived yet (odometry "
           "published after the sweep), in seconds.", range=(0.0, 1.0)),
        _g("tf.pose_fallback", "error",
           "When TF has no ego pose for a sweep: 'error' skips the sweep, 'hold' reuses the last "
           "pose, 'identity' uses no motion.", choices=POSE_FALLBACKS),
        _g("tf.motion_compensation", True,
           "Camera extrinsics through the fixed frame (camera at the image stamp, LiDAR at the "
           "sweep stamp), compensating ego motion between them; falls back to the direct "
           "transform."),
        # -------------------------------------------------------------- model
        _g("model.config", "",
           "Model configuration: a registered name (e.g. sam4d_small, sam4d_hiera_s_mink34) or a "
           ".json file; empty = the config embedded in the checkpoint."),
        _g("model.checkpoint", "",
           "Model checkpoint file; empty = the bundled default model "
           f"(sam4d_core/weights/{BUNDLED_CHECKPOINT.name}). Relative paths: the working "
           "directory, then the share directory, then the repository."),
        _g("model.device", "auto",
           "Torch device: auto (cuda when available, else cpu), cpu, cuda or cuda:N."),
        _g("model.num_threads", 0,
           "CPU threads of torch (intra-op); 0 = torch's default (all cores). Set it when other "
           "processes share the cores: oversubscribed OpenMP threads slow inference down "
           "many times.", range=(0, 256)),
        _g("model.runtime", "torch",
           "Where the model's dense stages run: torch (PyTorch eager), onnxruntime or tensorrt "
           "(both need model.onnx_dir; python -m sam4d_export onnx makes it).",
           choices=RUNTIMES, read_only=True),
        _g("model.onnx_dir", "",
           "ONNX export of the model (manifest.json + one file per stage) for the onnxruntime "
           "and tensorrt runtimes; TensorRT engines are cached in its engines/ folder.",
           read_only=True),
        _g("model.trt_precision", "fp16", "TensorRT engine precision: fp32, fp16 or bf16.",
           choices=("fp32", "fp16", "bf16"), read_only=True),
        # -------------------------------------------------------------- tracker
        _g("tracker.presence_threshold", 0.5,
           "Object-presence probability below which an object counts as absent in a sweep (no "
           "pixels, points or markers).", read_only=False, range=(0.0, 1.0)),
        _g("tracker.mask_threshold", 0.5,
           "Mask probability above which a pixel or point belongs to an object.",
           read_only=False, range=(0.0, 1.0)),
        _g("tracker.frame_buffer_s", 2.0,
           "How far back prompts may refer to (seconds): frames this old are kept so that a "
           "click on what the user saw is applied there.", range=(0.0, 30.0)),
        _g("tracker.max_objects", 32,
           "Most objects tracked at once (prompts creating more are refused).",
           range=(1, 1024)),
        _g("tracker.num_maskmem", 7,
           "Memory slots per object (conditioning + recent frames; 7 in the released model).",
           range=(1, 64)),
        _g("tracker.max_object_pointers", 8,
           "Object pointers per object in memory attention (8 in the released model).",
           range=(1, 64)),
        _g("tracker.reprompt", True,
           "Motion-compensated re-prompting: each object's LiDAR segment is kept in the fixed "
           "frame with a constant-velocity estimate, predicted into the next sweep and given to "
           "the decoder beside the memory as 3D clicks and projected camera boxes; an object "
           "whose prediction finds no support in the sweep is reported lost (TrackedObject.lost, "
           "absent). false = memory only (the SAM4D protocol, e.g. to reproduce the released "
           "checkpoint's numbers)."),
        # -------------------------------------------------------------- prompts
        _g("prompts.clicked_point_topic", "/clicked_point",
           "geometry_msgs/PointStamped topic of RViz's Publish Point tool (any TF frame); empty = "
           "not subscribed."),
        _g("prompts.image_click_suffix", "_mouse_left",
           "Image clicks are read from <image_topic><suffix> (geometry_msgs/Point in pixels, "
           "rqt_image_view's convention); empty = not subscribed."),
        _g("prompts.max_per_request", 64,
           "Most prompts in one AddPrompts request.", range=(1, 4096)),
        _g("prompts.max_points", 256,
           "Most points in one prompt.", range=(1, 65536)),
        _g("prompts.queue_size", 16,
           "Prompt requests (services, topics, clicks) waiting for the tracker at once; more are "
           "rejected with a message (a prompt storm cannot grow the node's memory or latency).",
           range=(1, 1024)),
        _g("prompts.service_timeout_s", 10.0,
           "Longest wait of a service call (add_prompts, remove_object, reset) for the tracker's "
           "answer (seconds); a request still queued by then is withdrawn and reported.",
           range=(0.1, 600.0)),
        # -------------------------------------------------------------- QoS
        _g("qos.sensor_reliability", "best_effort",
           "Reliability of the sensor subscriptions (best_effort matches both kinds of "
           "publisher).", choices=RELIABILITIES),
        _g("qos.sensor_depth", 5,
           "History depth of the sensor subscriptions.", range=(1, 1000)),
        _g("qos.output_reliability", "reliable",
           "Reliability of the output publishers.", choices=RELIABILITIES),
        _g("qos.output_depth", 1,
           "History depth of the output publishers.", range=(1, 1000)),
        _g("qos.prompt_depth", 1000,
           "History depth of the prompt subscriptions (~/prompts, clicked_point, image clicks; "
           "reliable): a burst beyond it, arriving faster than the node takes messages, is "
           "dropped by DDS before the node can count it. Every prompt taken is counted on "
           "/diagnostics (applied, failed, rejected busy).", range=(1, 100000)),
        # -------------------------------------------------------------- outputs
        _g("outputs.label_images", True,
           "Publish per camera a mono16 label image (0 = background, value = object id)."),
        _g("outputs.overlays", True,
           "Publish per camera an rgb8 overlay of the masks on the image."),
        _g("outputs.cloud", True,
           "Publish the input cloud with label (uint32) and score (float32) fields."),
        _g("outputs.objects", True,
           "Publish sam4d_ros/TrackedObjects (ids, scores, 3D and 2D boxes)."),
        _g("outputs.markers", True,
           "Publish a visualization_msgs/MarkerArray (boxes and ids)."),
        _g("outputs.debug", True,
           "Publish debug/processing_time_ms and debug/pipeline_latency_ms."),
        _g("outputs.overlay_alpha", 0.5,
           "Weight of the object colour in the overlays.", read_only=False, range=(0.0, 1.0)),
        # -------------------------------------------------------------- diagnostics
        _g("diagnostics.processing_budget_ms", 150.0,
           "Processing time per sweep above which /diagnostics reports WARN (milliseconds).",
           read_only=False, range=(1.0, 60000.0)),
        _g("diagnostics.period_s", 1.0,
           "Period of /diagnostics messages (seconds).", range=(0.05, 60.0)),
    ]  # fmt: skip


def camera_parameter_specs(name: str) -> list[ParamSpec]:
    """The ``camera.<name>.*`` parameters of one camera."""
    p = f"camera.{name}."
    return [
        _g(p + "image_topic", f"/sensors/camera/{name}/image_raw",
           "Image topic (sensor_msgs/Image); with compressed, the base topic of image_transport "
           "(<image_topic>/compressed is subscribed)."),
        _g(p + "camera_info_topic", "",
           "sensor_msgs/CameraInfo topic; empty = camera_info next to the image topic."),
        _g(p + "compressed", False,
           "Subscribe sensor_msgs/CompressedImage (JPEG/PNG) on <image_topic>/compressed."),
        _g(p + "time_offset_s", 0.0,
           "Expected image stamp - sweep stamp of this camera (seconds), e.g. when it fires as "
           "the LiDAR passes its field of view.", read_only=False, range=(-1.0, 1.0)),
        _g(p + "rectified", False,
           "Images are already rectified (image_rect): not undistorted, K = CameraInfo P[:, :3]. "
           "Otherwise distorted images are undistorted."),
        _g(p + "frame_id", "",
           "Optical TF frame of the camera; empty = the image's header.frame_id."),
        _g(p + "extrinsics", UNSET,
           "Camera optical <- LiDAR transform used when TF has none: [x, y, z, qx, qy, qz, qw] "
           "or 16 values of the 4x4 matrix, row-major. Unset = TF only.",
           type_name="double_array"),
    ]  # fmt: skip


def parameter_specs(cameras: Sequence[str]) -> list[ParamSpec]:
    """All parameters for the given camera names."""
    specs = global_parameter_specs()
    for name in cameras:
        specs.extend(camera_parameter_specs(name))
    return specs


def _constraints(spec: ParamSpec) -> str:
    if spec.choices:
        return "one of: " + ", ".join(spec.choices)
    if spec.range is not None:
        return f"in [{spec.range[0]}, {spec.range[1]}]"
    return ""


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
        additional_constraints=_constraints(spec),
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


# ------------------------------------------------------------------------------ parsed values


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

    def sync_config(self) -> Any:
        from sam4d_ros.sync import SyncConfig

        return SyncConfig(
            cameras=tuple(self.camera_names),
            time_offsets_s={c.name: c.time_offset_s for c in self.cameras},
            tolerance_s=self.sync_tolerance_s,
            max_wait_s=self.sync_max_wait_s,
            buffer_size=self.sync_buffer_size,
            time_jump_threshold_s=self.sync_time_jump_threshold_s,
        )

    def frame_builder_config(self) -> Any:
        from sam4d_ros.frame_builder import CameraSource, FrameBuilderConfig

        return FrameBuilderConfig(
            lidar_topic=self.lidar_topic,
            cameras=[
                CameraSource(
                    name=c.name,
                    image_topic=c.subscribed_image_topic,
                    camera_info_topic=c.camera_info_topic,
                    rectified=c.rectified,
                    frame_id=c.frame_id,
                    cam_from_lidar=c.extrinsics,
                )
                for c in self.cameras
            ],
            fixed_frame=self.fixed_frame,
            lidar_frame=self.lidar_frame,
            pose_fallback=self.tf_pose_fallback,
            motion_compensation=self.tf_motion_compensation,
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


# ------------------------------------------------------------------------------ resolution


def _repo_root() -> Path:
    # resolve(): in a colcon --symlink-install space this file is a link into the checkout.
    return Path(__file__).resolve().parent.parent


def _share_dir() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not installed, or no ament_index: the repository is the fallback
        return None


def bundled_checkpoint_candidates() -> list[Path]:
    """Where the bundled model is looked for, in order."""
    return [BUNDLED_CHECKPOINT]


def write_params_file(path: Path, values: Mapping[str, Any], node: str = "sam4d_node") -> Path:
    """Writes a ROS 2 parameter file (``--params-file``) for ``node`` from flat dotted names,
    nested as ROS expects; returns ``path``."""
    import yaml

    nested: dict[str, Any] = {}
    for name, value in values.items():
        d = nested
        parts = name.split(".")
        for part in parts[:-1]:
            d = d.setdefault(part, {})
        d[parts[-1]] = value
    path.write_text(yaml.safe_dump({node: {"ros__parameters": nested}}, sort_keys=False))
    return path


def resolve_checkpoint(value: str) -> Path:
    """The checkpoint file of ``model.checkpoint``; raises FileNotFoundError listing the places
    tried (empty value = the bundled model)."""
    if not value:
        candidates = bundled_checkpoint_candidates()
        what = "the bundled default model"
    else:
        path = Path(os.path.expandvars(os.path.expanduser(value)))
        if path.is_absolute():
            candidates = [path]
        else:
            candidates = [Path.cwd() / path]
            share = _share_dir()
            if share is not None:
                candidates.append(share / path)
            candidates.append(_repo_root() / path)
        what = f"'{value}'"
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(f"{what} not found (tried: {tried})")


def _torch_cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve_device(device: str, cuda_device_count: Callable[[], int] | None = None) -> str:
    """ "auto" / "cpu" / "cuda" / "cuda:N" -> a concrete device; raises ValueError when CUDA is
    asked for but not available (or the index is out of range)."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ValueError(f"'{device}' is not a device; use auto, cpu, cuda or cuda:N")
    if device == "cpu":
        return "cpu"
    count = (cuda_device_count or _torch_cuda_count)()
    if device == "auto":
        return "cuda:0" if count > 0 else "cpu"
    if count == 0:
        raise ValueError(
            f"'{device}' requested but CUDA is not available (no GPU visible to torch, or a CPU "
            f"build of torch); use cpu or auto"
        )
    index = 0 if device == "cuda" else int(device.split(":")[1])
    if index >= count:
        raise ValueError(f"'{device}' requested but only {count} CUDA device(s) are visible")
    return f"cuda:{index}"


def _known_configs() -> list[str] | None:
    try:
        from sam4d_core.modeling.configs import CONFIGS
    except Exception:  # the model package may be unavailable (e.g. without torch): skip the check
        return None
    return sorted(CONFIGS)


# ------------------------------------------------------------------------------ validation


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
    unknown = sorted(
        k for k in values if k not in specs and not k.startswith("qos_overrides.")
        and k not in ("use_sim_time", "start_type_description_service")
    )  # fmt: skip
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
        if not isinstance(c, str) or not _CAMERA_NAME.match(c):
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
        if not isinstance(c, str) or not _CAMERA_NAME.match(c):
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
        names = known_configs if known_configs is not None else _known_configs()
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
    return NodeParameters(
        lidar_topic=v["lidar_topic"],
        lidar_frame=v["lidar_frame"],
        fixed_frame=v["fixed_frame"],
        cameras=tuple(camera_params),
        sync_tolerance_s=v["sync.tolerance_s"],
        sync_max_wait_s=v["sync.max_wait_s"],
        sync_buffer_size=v["sync.buffer_size"],
        sync_time_jump_threshold_s=v["sync.time_jump_threshold_s"],
        tf_cache_time_s=v["tf.cache_time_s"],
        tf_timeout_s=v["tf.timeout_s"],
        tf_pose_fallback=v["tf.pose_fallback"],
        tf_motion_compensation=v["tf.motion_compensation"],
        model_config=config,
        model_checkpoint=checkpoint,
        device=device,
        num_threads=v["model.num_threads"],
        runtime=v["model.runtime"],
        onnx_dir=onnx_dir,
        trt_precision=v["model.trt_precision"],
        presence_threshold=v["tracker.presence_threshold"],
        mask_threshold=v["tracker.mask_threshold"],
        frame_buffer_s=v["tracker.frame_buffer_s"],
        max_objects=v["tracker.max_objects"],
        num_maskmem=v["tracker.num_maskmem"],
        max_object_pointers=v["tracker.max_object_pointers"],
        reprompt=v["tracker.reprompt"],
        clicked_point_topic=v["prompts.clicked_point_topic"],
        image_click_suffix=suffix,
        prompts_max_per_request=v["prompts.max_per_request"],
        prompts_max_points=v["prompts.max_points"],
        prompts_queue_size=v["prompts.queue_size"],
        prompts_service_timeout_s=v["prompts.service_timeout_s"],
        sensor_reliability=v["qos.sensor_reliability"],
        sensor_depth=v["qos.sensor_depth"],
        output_reliability=v["qos.output_reliability"],
        output_depth=v["qos.output_depth"],
        prompt_depth=v["qos.prompt_depth"],
        publish_label_images=v["outputs.label_images"],
        publish_overlays=v["outputs.overlays"],
        publish_cloud=v["outputs.cloud"],
        publish_objects=v["outputs.objects"],
        publish_markers=v["outputs.markers"],
        publish_debug=v["outputs.debug"],
        overlay_alpha=v["outputs.overlay_alpha"],
        processing_budget_ms=v["diagnostics.processing_budget_ms"],
        diagnostics_period_s=v["diagnostics.period_s"],
        values=dict(v, cameras=list(cameras)),
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
    from dataclasses import replace

    return replace(updated, model_checkpoint=current.model_checkpoint, device=current.device)


# ------------------------------------------------------------------------------ with a node


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
        problems.append(f"{spec.name}: {_constraints(spec) or 'invalid value'}: {e}")
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
        if not _CAMERA_NAME.match(name):
            continue  # reported by validation; no parameters can be declared for it
        for spec in camera_parameter_specs(name):
            values[spec.name] = _declare(node, spec, problems)
    # Overrides (parameter file, command line) that match no declaration: typos.
    overrides = getattr(node, "_parameter_overrides", {}) or {}
    stray = sorted(n for n in overrides if n not in values and not _builtin(n))
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


def _builtin(name: str) -> bool:
    return name in ("use_sim_time", "start_type_description_service") or name.startswith(
        "qos_overrides."
    )


# ------------------------------------------------------------------------------ QoS


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
