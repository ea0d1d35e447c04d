"""Synthetic driving scenes: a deterministic camera + LiDAR sequence generator with ground truth.

Typical use::

    from sam4d_core.data.synthetic import generate_sequence, make_config

    seq = generate_sequence(make_config("bundled_sample"))

Modules: :mod:`.shapes` (primitives, ray intersection), :mod:`.materials` (textures, reflectivity,
semantic classes), :mod:`.road` (road geometry and ground surface), :mod:`.assets` (object models),
:mod:`.scene` (layout, trajectories, ego motion), :mod:`.raycast` (culled nearest-hit ray casting),
:mod:`.camera` (pinhole renderer), :mod:`.lidar` (spinning LiDAR), :mod:`.generator` (configs,
presets, entry points), :mod:`.benchmark` (speed measurement command).
"""

from .camera import CameraConfig, CameraRender, PinholeCamera
from .generator import (
    PRESETS,
    FrameRender,
    SyntheticConfig,
    SyntheticGenerator,
    generate_sequence,
    make_config,
)
from .lidar import LidarConfig, LidarRender, SpinningLidar
from .materials import BACKGROUND_CLASSES, SEMANTIC_CLASSES
from .scene import Scene, SceneConfig, SceneObject

__all__ = [
    "BACKGROUND_CLASSES",
    "PRESETS",
    "SEMANTIC_CLASSES",
    "CameraConfig",
    "CameraRender",
    "FrameRender",
    "LidarConfig",
    "LidarRender",
    "PinholeCamera",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "SpinningLidar",
    "SyntheticConfig",
    "SyntheticGenerator",
    "generate_sequence",
    "make_config",
]
