"""Parameters of sam4d_node (sam4d_ros.parameters): the rules without a node, declarations on a real
rclpy node (descriptions, ranges, read-only), config/sam4d.yaml in step with the declarations, and
start-up errors that name every bad parameter."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import ReliabilityPolicy

from sam4d_ros.frame_builder import FrameBuilderConfig
from sam4d_ros.outputs import OutputConfig
from sam4d_ros.parameters import (
    BUNDLED_CHECKPOINT,
    UNSET,
    NodeParameters,
    ParameterError,
    bundled_checkpoint_candidates,
    declare_parameters,
    documented_params_text,
    global_parameter_specs,
    output_qos,
    parameter_specs,
    read_params_file,
    resolve_checkpoint,
    resolve_device,
    sensor_qos,
    validate_parameters,
    validate_update,
)
from sam4d_ros.prompts import PromptLimits
from sam4d_ros.sync import SyncConfig

REPO = Path(__file__).resolve().parent.parent
YAML = REPO / "config" / "sam4d.yaml"


def no_gpu() -> int:
    return 0


def check(values, **kw) -> NodeParameters:
    kw.setdefault("cuda_device_count", no_gpu)
    kw.setdefault("check_files", False)
    kw.setdefault("known_configs", ["sam4d_small", "sam4d_hiera_s_mink34"])
    return validate_parameters(values, **kw)


def problems(values, **kw) -> list[str]:
    with pytest.raises(ParameterError) as e:
        check(values, **kw)
    assert str(e.value).startswith("invalid sam4d_node parameters:\n  - ")
    return e.value.problems


def test_defaults_are_valid():
    p = check({})
    assert p.cameras == () and p.device == "cpu" and p.lidar_topic == "/sensors/lidar/points"
    assert p.frame_buffer_s == 2.0 and p.fixed_frame == "odom" and p.tf_pose_fallback == "error"
    for spec in global_parameter_specs():
        assert spec.description.endswith(".") or spec.description.endswith(")"), spec.name


def test_cameras_and_derived_configs():
    p = check({
        "cameras": ["front", "rear"],
        "camera.front.compressed": True,
        "camera.front.time_offset_s": 0.03,
        "camera.rear.image_topic": "/rear/image_rect",
        "camera.rear.camera_info_topic": "/rear/info",
        "camera.rear.rectified": True,
        "camera.rear.extrinsics": [1.0, 2.0, 3.0, 0.0, 0.0, 0.0, 1.0],
    })  # fmt: skip
    front, rear = p.cameras
    assert front.subscribed_image_topic == "/sensors/camera/front/image_raw/compressed"
    assert front.camera_info_topic == "/sensors/camera/front/camera_info"
    assert front.click_topic("_mouse_left") == "/sensors/camera/front/image_raw_mouse_left"
    assert front.extrinsics is None and rear.camera_info_topic == "/rear/info"
    np.testing.assert_array_equal(rear.extrinsics[:3, 3], [1, 2, 3])
    sync = p.sync_config()
    assert isinstance(sync, SyncConfig) and sync.time_offsets_s == {"front": 0.03, "rear": 0.0}
    fb = p.frame_builder_config()
    assert isinstance(fb, FrameBuilderConfig) and fb.camera("rear").rectified
    assert fb.camera("front").image_topic.endswith("/compressed")
    assert isinstance(p.output_config(), OutputConfig)
    assert isinstance(p.prompt_limits(), PromptLimits)
    m16 = list(np.eye(4).reshape(-1))
    assert check({"cameras": ["a"], "camera.a.extrinsics": m16}).cameras[0].extrinsics is not None


def test_tracker_parameters_reach_the_tracker_config():
    """tracker.reprompt / tracker.reprompt_with_memory / tracker.refine_masks become the
    TrackerConfig the node runs (re-prompted sweeps decoded from their prompts alone and LiDAR
    masks refined by default)."""
    from sam4d_core.build_sam import build_sam4d
    from sam4d_ros.model_loading import tracker_config

    model = build_sam4d("sam4d_tiny")
    default = tracker_config(check({}), model)
    assert default.reprompt and not default.reprompt_config.memory and default.refine_masks
    assert not tracker_config(check({"tracker.refine_masks": False}), model).refine_masks
    assert default.lift_image_clicks
    assert not tracker_config(check({"tracker.lift_image_clicks": False}), model).lift_image_clicks
    assert default.zoom and not tracker_config(check({"tracker.zoom": False}), model).zoom
    assert default.boundary_refine
    assert not tracker_config(check({"tracker.boundary_refine": False}), model).boundary_refine
    on = tracker_config(check({"tracker.reprompt_with_memory": True}), model)
    assert on.reprompt and on.reprompt_config.memory
    off = tracker_config(check({"tracker.reprompt": False}), model)
    assert not off.reprompt


def test_every_problem_is_reported_at_once():
    found = problems({
        "cameras": ["front", "front", "9bad"],
        "sync.tolerance_s": -0.1,
        "sync.buffer_size": 2.5,
        "tf.pose_fallback": "guess",
        "qos.sensor_depth": 0,
        "camera.front.extrinsics": [1.0, 2.0],
        "camera.rear.image_topic": "/rear",
        "lidar_topic": "not a topic",
        "tracker.frame_buffer_s": 20.0,
        "model.config": "sam4d_huge",
        "model.device": "cuda",
    })  # fmt: skip
    text = "\n".join(found)
    expected = [
        "cameras: 'front' is listed twice",
        "cameras: '9bad' is not a valid camera name",
        "sync.tolerance_s: -0.1 is outside [0.0, 1.0]",
        "sync.buffer_size: expected integer, got 2.5",
        "tf.pose_fallback: 'guess' is not one of ['error', 'hold', 'identity']",
        "qos.sensor_depth: 0 is outside [1, 1000]",
        "camera.front.extrinsics: expected 7 values [x, y, z, qx, qy, qz, qw] or 16",
        "unknown parameter(s) ['camera.rear.image_topic']",
        "lidar_topic: 'not a topic' is not a valid topic name",
        "tf.cache_time_s (10.0) must be >= tracker.frame_buffer_s (20.0)",
        "model.config: unknown configuration 'sam4d_huge'",
        "model.device: 'cuda' requested but CUDA is not available",
    ]
    for e in expected:
        assert e in text, e
    assert len(found) == len(expected)


def test_other_rules():
    assert "camera.a.extrinsics: quaternion" in " ".join(
        problems({"cameras": ["a"], "camera.a.extrinsics": [0.0] * 7})
    )
    (msg,) = problems(
        {"cameras": ["a", "b"], "camera.b.image_topic": "/sensors/camera/a/image_raw"}
    )
    assert "topic '/sensors/camera/a/image_raw' is also used by camera.a.image_topic" in msg
    (msg,) = problems({"sync.max_wait_s": 0.8})
    assert "sync.max_wait_s (0.8) must be at most half of sync.time_jump_threshold_s" in msg
    (msg,) = problems({"fixed_frame": "odom frame"})
    assert "not a valid TF frame id" in msg
    (msg,) = problems({"sync.tolerance_s": float("nan")})
    assert "must be finite" in msg
    assert check({"model.config": "sam4d_small"}).model_config == "sam4d_small"


def test_device_resolution():
    assert resolve_device("cpu", no_gpu) == "cpu"
    assert resolve_device("auto", no_gpu) == "cpu"
    assert resolve_device("auto", lambda: 2) == "cuda:0"
    assert resolve_device("cuda", lambda: 1) == "cuda:0"
    assert resolve_device("cuda:1", lambda: 2) == "cuda:1"
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0", no_gpu)
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        resolve_device("cuda:1", lambda: 1)
    with pytest.raises(ValueError, match="'gpu' is not a device; use auto, cpu, cuda or cuda:N"):
        resolve_device("gpu", no_gpu)


def test_checkpoint_resolution(tmp_path, monkeypatch):
    ckpt = tmp_path / "m.pt"
    ckpt.write_bytes(b"x")
    assert resolve_checkpoint(str(ckpt)) == ckpt
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("m.pt") == tmp_path / "m.pt"
    with pytest.raises(FileNotFoundError, match=r"'nope.pt' not found \(tried: .*nope.pt"):
        resolve_checkpoint("nope.pt")
    assert check({"model.checkpoint": str(ckpt)}, check_files=True).model_checkpoint == ckpt
    (msg,) = problems({"model.checkpoint": str(tmp_path / "x.pt")}, check_files=True)
    assert msg.startswith("model.checkpoint: '") and "x.pt" in msg
    candidates = bundled_checkpoint_candidates()
    assert candidates == [REPO / "sam4d_core" / "weights" / "sam4d_small_synthetic.pt"]
    assert BUNDLED_CHECKPOINT == candidates[0]
    if not any(c.is_file() for c in candidates):
        with pytest.raises(FileNotFoundError, match="the bundled default model not found"):
            resolve_checkpoint("")


def yaml_parameters() -> dict:
    return read_params_file(YAML)


def test_yaml_documents_exactly_the_declared_parameters():
    values = yaml_parameters()
    specs = parameter_specs(values["cameras"])
    declared = {s.name for s in specs if s.default is not UNSET}
    optional = {s.name for s in specs if s.default is UNSET}
    assert set(values) == declared | {"cameras"}
    # Optional arrays without a default cannot be written empty in a parameter file: each one is
    # shown as a commented example in its block.
    text = YAML.read_text()
    for name in optional - {"cameras"}:
        leaf = name.rsplit(".", 1)[1]
        assert len(re.findall(rf"^\s*# {leaf}: \[", text, re.M)) == len(values["cameras"]), name
    # Values in the file pass validation.
    p = check(values)
    assert p.camera_names == ["front", "front_left"] and p.cameras[0].compressed


def test_yaml_is_generated_from_the_specs():
    """config/sam4d.yaml is what the writer makes of its values (descriptions, defaults, ranges
    from the specs: regenerate it with python -m sam4d_ros.parameters config/sam4d.yaml), and every
    value in it is a declared parameter of the right type, in range."""
    text = YAML.read_text()
    values = yaml_parameters()
    header = text.split("\nsam4d_node:")[0]
    assert text == documented_params_text(values, header)
    check(values)


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("sync.tolerance_ms", 0.05), "unknown parameter"),  # unknown key
        (("camera.rear.compressed", True), "unknown parameter"),  # camera not in 'cameras'
        (("sync.buffer_size", "8"), "sync.buffer_size: expected integer"),  # wrong type
        (("outputs.cloud", 1), "outputs.cloud: expected bool"),
        (("tracker.max_objects", 5000), "outside"),  # out of range
        (("qos.sensor_reliability", "sometimes"), "is not one of"),
    ],
)
def test_yaml_check_fails_on_a_bad_value(edit, expected):
    """The checks above fail for an unknown key, a wrong-typed or out-of-range value."""
    name, value = edit
    values = dict(yaml_parameters(), **{name: value})
    with pytest.raises(ParameterError, match=expected):
        check(values)
    if expected == "unknown parameter":
        with pytest.raises(ValueError, match="not declared parameter"):
            documented_params_text(values)


def test_declare_on_a_node_from_the_yaml_file(rclpy_context, tmp_path):
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    node = Node(
        "sam4d_node",
        context=rclpy_context,
        cli_args=["--ros-args", "--params-file", str(YAML), "-p", f"model.checkpoint:={ckpt}"],
    )
    try:
        p = declare_parameters(node, cuda_device_count=no_gpu)
        assert p.model_checkpoint == ckpt and p.device == "cpu"
        assert p.camera_names == ["front", "front_left"]
        assert p.cameras[1].extrinsics is None
        assert p.sync_tolerance_s == 0.05 and p.max_objects == 32
        names = {
            n
            for n in node._parameters
            if n not in ("use_sim_time", "start_type_description_service")
        }
        assert names == {s.name for s in parameter_specs(p.camera_names)}
        d = node.describe_parameter("sync.tolerance_s")
        assert d.description and not d.read_only
        assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0, 1)
        d = node.describe_parameter("tracker.max_objects")
        assert d.read_only and d.integer_range[0].to_value == 1024
        d = node.describe_parameter("tf.pose_fallback")
        assert d.additional_constraints == "one of: error, hold, identity"
        for name in names:
            assert node.describe_parameter(name).description, name
        # rclpy enforces read-only and ranges itself; validate_update checks the rest.
        (res,) = node.set_parameters([Parameter("lidar_topic", value="/other")])
        assert not res.successful
        (res,) = node.set_parameters([Parameter("tracker.presence_threshold", value=1.5)])
        assert not res.successful
        updated = validate_update(p, {"tracker.presence_threshold": 0.7})
        assert updated.presence_threshold == 0.7 and updated.model_checkpoint == ckpt
        with pytest.raises(ParameterError, match="lidar_topic: read-only"):
            validate_update(p, {"lidar_topic": "/x"})
        with pytest.raises(ParameterError, match="outside"):
            validate_update(p, {"outputs.overlay_alpha": 2.0})
        assert sensor_qos(p).reliability == ReliabilityPolicy.BEST_EFFORT
        assert sensor_qos(p).depth == 5
        assert output_qos(p).reliability == ReliabilityPolicy.RELIABLE and output_qos(p).depth == 1
    finally:
        node.destroy_node()


def test_declare_reports_bad_overrides(rclpy_context, tmp_path):
    args = [
        "--ros-args",
        "-p", "cameras:=[front]",
        "-p", "sync.tolerance_s:=5.0",
        "-p", "sync.max_wait_s:=0",
        "-p", "camera.front.extrinsics:=[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]",
        "-p", "camera.rear.image_topic:=/rear",
        "-p", "trackr.max_objects:=3",
        "-p", f"model.checkpoint:={tmp_path / 'missing.pt'}",
    ]  # fmt: skip
    node = Node("sam4d_node", context=rclpy_context, cli_args=args)
    try:
        with pytest.raises(ParameterError) as e:
            declare_parameters(node, cuda_device_count=no_gpu)
        text = str(e.value)
        assert "sync.tolerance_s: in [0.0, 1.0]" in text
        assert "sync.max_wait_s: expected double (write 1.0, not 1)" in text
        assert "unknown parameter(s) ['camera.rear.image_topic', 'trackr.max_objects']" in text
        assert "model.checkpoint: " in text and "missing.pt" in text
        assert "extrinsics" not in text  # a valid identity given on the command line
    finally:
        node.destroy_node()
