"""Launch sam4d_node (and optionally RViz with rviz/sam4d.rviz).

    ros2 launch sam4d_ros sam4d.launch.py
    ros2 launch sam4d_ros sam4d.launch.py checkpoint:=/models/my_model.pt device:=cuda
    ros2 launch sam4d_ros sam4d.launch.py use_sim_time:=true rviz:=true   # with a replayed bag
    ros2 launch sam4d_ros sam4d.launch.py cameras:=front,rear \\
        image_topics:=/cam_front/image_raw,/cam_rear/image_raw compressed:=false

Every node setting is a parameter; ``params_file`` (default: the package's config/sam4d.yaml)
holds them all. The arguments below override single parameters; an argument left empty keeps the
file's value (``PARAMETER_ARGUMENTS`` maps each one to its parameter).
"""

# isort would take `launch` for this repository's launch/ folder (first party) and move it.
from __future__ import annotations  # noqa: I001

from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = "sam4d_ros"
NODE_NAME = "sam4d_node"

# Launch argument -> node parameter. Empty values are not passed (the parameter file decides).
PARAMETER_ARGUMENTS = {
    "lidar_topic": "lidar_topic",
    "fixed_frame": "fixed_frame",
    "model_config": "model.config",
    "checkpoint": "model.checkpoint",
    "device": "model.device",
    "runtime": "model.runtime",
    "onnx_dir": "model.onnx_dir",
}
# Arguments that expand into several parameters (per camera).
CAMERA_ARGUMENTS = {
    "cameras": "cameras",
    "image_topics": "camera.<name>.image_topic",
    "compressed": "camera.<name>.compressed",
}

ARGUMENTS = [
    ("params_file", "", "Parameter file of sam4d_node; empty = the package's config/sam4d.yaml."),
    ("cameras", "", "Camera names, comma-separated (e.g. front,front_left); empty = from the "
                    "parameter file."),
    ("image_topics", "", "Image topic per camera, comma-separated in the order of 'cameras'; "
                         "empty = from the parameter file (or /sensors/camera/<name>/image_raw)."),
    ("compressed", "", "true / false: the cameras publish sensor_msgs/CompressedImage on "
                       "<image_topic>/compressed; empty = from the parameter file."),
    ("lidar_topic", "", "LiDAR PointCloud2 topic; empty = from the parameter file."),
    ("fixed_frame", "", "World-fixed TF frame of the ego pose (e.g. odom); empty = from the "
                        "parameter file."),
    ("model_config", "", "Model configuration name or .json file; empty = from the checkpoint."),
    ("checkpoint", "", "Model checkpoint file; empty = the bundled default model."),
    ("device", "", "Torch device: auto, cpu, cuda or cuda:N; empty = from the parameter file."),
    ("runtime", "", "Where the model runs: torch, onnxruntime or tensorrt; empty = from the "
                    "parameter file."),
    ("onnx_dir", "", "ONNX export of the model (python -m sam4d_export onnx) for onnxruntime / "
                     "tensorrt; empty = from the parameter file."),
    ("use_sim_time", "false", "Use /clock (true when replaying a bag with --clock)."),
    ("namespace", "", "Namespace of the node."),
    ("log_level", "info", "Log level of the node (debug, info, warn, error)."),
    ("rviz", "false", "Also start RViz with the package's rviz/sam4d.rviz."),
]  # fmt: skip


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _bool(text: str, name: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"launch argument {name}:={text!r} must be true or false")


def parameter_overrides(args: dict[str, str]) -> dict[str, object]:
    """Node parameters from the launch arguments' values (plain strings): only those given."""
    out: dict[str, object] = {}
    for arg, param in PARAMETER_ARGUMENTS.items():
        if args.get(arg, "").strip():
            out[param] = args[arg].strip()
    cameras = _split(args.get("cameras", ""))
    if cameras:
        out["cameras"] = cameras
    topics = _split(args.get("image_topics", ""))
    compressed = args.get("compressed", "").strip()
    if (topics or compressed) and not cameras:
        raise ValueError("image_topics / compressed need the cameras argument (their order)")
    if topics and len(topics) != len(cameras):
        raise ValueError(
            f"image_topics lists {len(topics)} topic(s) for {len(cameras)} camera(s) {cameras}"
        )
    for i, name in enumerate(cameras):
        if topics:
            out[f"camera.{name}.image_topic"] = topics[i]
        if compressed:
            out[f"camera.{name}.compressed"] = _bool(compressed, "compressed")
    out["use_sim_time"] = _bool(args.get("use_sim_time", "false"), "use_sim_time")
    return out


def _node(context: LaunchContext) -> list[Node]:
    args = {name: LaunchConfiguration(name).perform(context) for name, _, _ in ARGUMENTS}
    params_file = args["params_file"] or PathJoinSubstitution(
        [FindPackageShare(PACKAGE), "config", "sam4d.yaml"]
    ).perform(context)
    return [
        Node(
            package=PACKAGE,
            executable=NODE_NAME,
            name=NODE_NAME,
            namespace=args["namespace"],
            output="screen",
            emulate_tty=True,
            # The file first, then the overrides (later entries win).
            parameters=[params_file, parameter_overrides(args)],
            arguments=["--ros-args", "--log-level", f"{NODE_NAME}:={args['log_level']}"],
        )
    ]


def generate_launch_description() -> LaunchDescription:
    declared = [
        DeclareLaunchArgument(name, default_value=default, description=description)
        for name, default, description in ARGUMENTS
    ]
    rviz = Node(
        package="rviz2",
        executable="rviz2",
        name="sam4d_rviz",
        arguments=["-d", PathJoinSubstitution([FindPackageShare(PACKAGE), "rviz", "sam4d.rviz"])],
        parameters=[{"use_sim_time": LaunchConfiguration("use_sim_time")}],
        condition=IfCondition(LaunchConfiguration("rviz")),
    )
    return LaunchDescription([*declared, OpaqueFunction(function=_node), rviz])
