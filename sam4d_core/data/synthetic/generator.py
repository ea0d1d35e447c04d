"""Public entry of the synthetic driving-scene generator: configuration, presets and generation.

``generate_sequence(config)`` returns a :class:`~sam4d_core.data.sequence.Sequence` whose frames
carry camera images with exact instance masks, LiDAR points with per-point object ids, the
calibration and the ego poses. :class:`SyntheticGenerator` gives frame-by-frame access plus the
extras the Sequence has no slot for (depth maps, semantic maps, the scene with its trajectories).

Everything is a pure function of ``config`` (seed included): the scene from one random stream, the
sensor noise of frame i from a stream keyed by (seed, sensor, i), so a frame can be rendered alone
and identically, and no computation depends on thread count.

Instance labels: every thing (car, pedestrian, cyclist, pole, traffic sign, tree, vegetation
cluster, building) has a stable positive id; road, lane markings, curb, sidewalk and terrain are
background (0). Their semantic classes are in the per-pixel / per-point semantic maps of
:class:`FrameRender` (:data:`~.materials.SEMANTIC_CLASSES`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ..sequence import CameraFrame, Frame, ObjectInfo, Sequence
from .camera import CameraConfig, CameraRender, PinholeCamera
from .lidar import LidarConfig, LidarRender, SpinningLidar
from .scene import Scene, SceneConfig, build_scene

# Random stream ids (the second entry of the seed key).
_STREAM_SCENE = 0
_STREAM_LIDAR = 1
_STREAM_CAMERA = 2


@dataclass
class SyntheticConfig:
    """Everything that defines a synthetic sequence.

    Attributes:
        seed: non-negative integer; same seed and config give bit-identical output.
        num_frames: number of LiDAR sweeps.
        rate_hz: sweep rate.
        start_time: timestamp of the first frame (s).
        cameras: the cameras (names must be unique).
        lidar: the LiDAR.
        scene: the street and its traffic.
        name: sequence name (default ``synthetic_<seed>``).
        lidar_frame_id / world_frame_id: TF frame names for the Sequence.
    """

    seed: int = 0
    num_frames: int = 40
    rate_hz: float = 10.0
    start_time: float = 1_700_000_000.0
    cameras: tuple[CameraConfig, ...] = field(default_factory=lambda: (CameraConfig(),))
    lidar: LidarConfig = field(default_factory=LidarConfig)
    scene: SceneConfig = field(default_factory=SceneConfig)
    name: str | None = None
    lidar_frame_id: str = "lidar"
    world_frame_id: str = "odom"

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"camera names must be unique, got {names}")

    @property
    def sequence_name(self) -> str:
        return self.name or f"synthetic_{self.seed:04d}"

    @property
    def duration(self) -> float:
        """Relative time of the last frame (s)."""
        return (self.num_frames - 1) / self.rate_hz


@dataclass
class FrameRender:
    """One generated frame plus the ground truth the Sequence does not hold.

    Attributes:
        frame: the :class:`~sam4d_core.data.sequence.Frame`.
        cameras: camera name -> :class:`~.camera.CameraRender` (depth, semantic map, raw hits).
        lidar: the :class:`~.lidar.LidarRender` (per-point semantics, ray indices, raw hits).
        timings: seconds spent per stage (``"camera:<name>"``, ``"lidar"``, ``"total"``).
    """

    frame: Frame
    cameras: dict[str, CameraRender]
    lidar: LidarRender
    timings: dict[str, float]


class SyntheticGenerator:
    """Builds the scene once, then renders any frame on demand.

    Attributes:
        config: the configuration.
        scene: the :class:`~.scene.Scene` (road, ego trajectory, objects with trajectories).
        cameras: the :class:`~.camera.PinholeCamera` models, in config order.
        lidar: the :class:`~.lidar.SpinningLidar` model.
    """

    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        rng = np.random.default_rng([config.seed, _STREAM_SCENE])
        self.scene: Scene = build_scene(config.scene, rng, config.duration, config.rate_hz)
        self.scene.ego.lidar_height = config.lidar.mount_height
        self.cameras = [PinholeCamera(c) for c in config.cameras]
        self.lidar = SpinningLidar(config.lidar)

    def __len__(self) -> int:
        return self.config.num_frames

    def relative_time(self, index: int) -> float:
        return index / self.config.rate_hz

    def timestamp(self, index: int) -> float:
        return self.config.start_time + self.relative_time(index)

    def world_from_lidar(self, index: int) -> np.ndarray:
        """(4, 4) ego pose of frame ``index``."""
        return self.scene.ego.world_from_lidar(self.relative_time(index))

    def object_trajectories(self) -> dict[int, np.ndarray]:
        """Object id -> (num_frames, 4, 4) world <- object pose at every frame time."""
        times = [self.relative_time(i) for i in range(len(self))]
        return {
            o.object_id: np.stack([o.world_from_object(t) for t in times])
            for o in self.scene.objects
        }

    def render(self, index: int) -> FrameRender:
        """Render frame ``index`` (0 <= index < num_frames) with all its ground truth."""
        if not 0 <= index < len(self):
            raise IndexError(f"frame index {index} out of range [0, {len(self)})")
        cfg = self.config
        t_rel = self.relative_time(index)
        stamp = self.timestamp(index)
        t_start = time.perf_counter()
        pose = self.world_from_lidar(index)
        poses = self.scene.poses_at(t_rel)
        timings: dict[str, float] = {}

        cam_renders: dict[str, CameraRender] = {}
        cam_frames: dict[str, CameraFrame] = {}
        for ci, cam in enumerate(self.cameras):
            t0 = time.perf_counter()
            rng = np.random.default_rng([cfg.seed, _STREAM_CAMERA, ci, index])
            r = cam.render(self.scene, poses, pose, rng)
            timings[f"camera:{cam.name}"] = time.perf_counter() - t0
            cam_renders[cam.name] = r
            cam_frames[cam.name] = CameraFrame(
                name=cam.name,
                image=r.image,
                intrinsics=cam.K.copy(),
                cam_from_lidar=cam.cam_from_lidar.copy(),
                timestamp=stamp,
                instance_mask=r.instance_mask,
            )

        t0 = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, _STREAM_LIDAR, index])
        lid = self.lidar.render(self.scene, poses, pose, rng)
        timings["lidar"] = time.perf_counter() - t0

        seen = set(np.unique(lid.labels).tolist())
        for r in cam_renders.values():
            seen.update(np.unique(r.instance_mask).tolist())
        seen.discard(0)
        objects = {}
        for oid in sorted(seen):
            o = self.scene.object_by_id(oid)
            objects[oid] = ObjectInfo(
                object_id=oid, semantic=o.semantic, score=1.0, volume=o.volume
            )

        frame = Frame(
            timestamp=stamp,
            points=lid.points,
            cameras=cam_frames,
            world_from_lidar=pose,
            point_labels=lid.labels,
            objects=objects,
            index=index,
        )
        timings["total"] = time.perf_counter() - t_start
        return FrameRender(frame=frame, cameras=cam_renders, lidar=lid, timings=timings)

    def frames(self) -> Iterator[Frame]:
        """Frames in order, rendered lazily (bounded memory for long sequences)."""
        for i in range(len(self)):
            yield self.render(i).frame

    def sequence(self) -> Sequence:
        """All frames as a :class:`~sam4d_core.data.sequence.Sequence`."""
        return Sequence(
            name=self.config.sequence_name,
            frames=list(self.frames()),
            point_fields=self.config.lidar.point_fields,
            lidar_frame_id=self.config.lidar_frame_id,
            world_frame_id=self.config.world_frame_id,
        )


def generate_sequence(config: SyntheticConfig) -> Sequence:
    """Generate a whole synthetic sequence (deterministic in ``config``)."""
    return SyntheticGenerator(config).sequence()


# ---------------------------------------------------------------------------------------------
# Presets

PRESETS: tuple[str, ...] = ("bundled_sample", "tiny", "benchmark")


def make_config(preset: str, **overrides: object) -> SyntheticConfig:
    """A named configuration, with top-level fields overridden by keyword.

    - ``bundled_sample``: 40 frames at 10 Hz; cameras ``front`` and ``front_left`` (480x288,
      90 deg); 32-beam LiDAR (+10..-30 deg) x 512 columns (~15k points), 70 m range. The
      repository's sample: about 10 MB of points and 3 MB of JPEG images (PNG would be ~17 MB).
    - ``tiny``: for tests: 3 frames; cameras ``front`` and ``front_left`` (160x96); 16 beams x 256
      columns; a quieter street.
    - ``benchmark``: the speed target: one 640x384 camera and a 64 x 1024 LiDAR, 10 frames.
    """
    if preset == "bundled_sample":
        cfg = SyntheticConfig(
            seed=7,
            num_frames=40,
            cameras=(
                CameraConfig("front", 480, 288, 90.0, position=(0.3, 0.0, -0.35)),
                CameraConfig(
                    "front_left", 480, 288, 90.0, position=(0.2, 0.3, -0.35), yaw_deg=55.0
                ),
            ),
            lidar=LidarConfig(
                beams=32, columns=512, fov_up_deg=10.0, fov_down_deg=-30.0, max_range=70.0
            ),
            name="synthetic_sample",
        )
    elif preset == "tiny":
        cfg = SyntheticConfig(
            seed=0,
            num_frames=3,
            cameras=(
                CameraConfig("front", 160, 96, 90.0, noise_std=1.0),
                CameraConfig("front_left", 160, 96, 90.0, position=(0.2, 0.3, -0.35), yaw_deg=55.0),
            ),
            lidar=LidarConfig(
                beams=16, columns=256, fov_up_deg=5.0, fov_down_deg=-25.0, max_range=60.0
            ),
            scene=SceneConfig(
                view_ahead=70.0,
                view_behind=20.0,
                moving_cars=5,
                pedestrians=6,
                cyclists=2,
                crossing_pedestrians=1,
            ),
            name="synthetic_tiny",
        )
    elif preset == "benchmark":
        cfg = SyntheticConfig(
            seed=1,
            num_frames=10,
            cameras=(CameraConfig("front", 640, 384, 90.0),),
            lidar=LidarConfig(beams=64, columns=1024),
            name="synthetic_benchmark",
        )
    else:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    return dataclasses.replace(cfg, **overrides) if overrides else cfg
