"""The in-memory representation of a driving sequence that everything downstream consumes.

One :class:`Frame` is one LiDAR sweep (the master clock) with the camera images synchronized to it,
the calibration, the ego pose and optional ground truth. Conventions used across the project:

- A 4x4 transform named ``a_from_b`` maps homogeneous points from frame ``b`` to frame ``a``:
  ``p_a = a_from_b @ p_b``.
- Object ids are positive integers; ``0`` is background and ``-1`` means "ignore" (LiDAR points
  whose label is unknown, as in Waymo-4DSeg).
- Images are RGB ``uint8`` in memory (converted at the edges, never BGR inside the core).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BACKGROUND_ID = 0
IGNORE_ID = -1


@dataclass
class CameraFrame:
    """One camera image with its calibration and optional ground truth.

    Attributes:
        name: camera name, unique within a frame (e.g. ``"front"``, ``"CAM_FRONT"``).
        image: (H, W, 3) uint8 RGB.
        intrinsics: (3, 3) float64 pinhole matrix K of the (rectified / undistorted) image.
        cam_from_lidar: (4, 4) float64 transform camera <- LiDAR (camera optical frame: x right,
            y down, z forward).
        timestamp: capture time in seconds (may differ from the sweep's), ``None`` if unknown.
        instance_mask: (H, W) int32 object id per pixel (0 background), or ``None``.
    """

    name: str
    image: np.ndarray
    intrinsics: np.ndarray
    cam_from_lidar: np.ndarray
    timestamp: float | None = None
    instance_mask: np.ndarray | None = None

    @property
    def size_wh(self) -> tuple[int, int]:
        return int(self.image.shape[1]), int(self.image.shape[0])


@dataclass
class ObjectInfo:
    """Static facts about one ground-truth object of a sequence."""

    object_id: int
    semantic: str = "unknown"
    score: float = 1.0
    volume: float | None = None


@dataclass
class Frame:
    """One LiDAR sweep with its synchronized cameras, ego pose and optional ground truth.

    Attributes:
        timestamp: sweep time in seconds.
        points: (N, C) float32 with C >= 4: x, y, z (metres, LiDAR frame), intensity, then the
            extra columns named by the sequence's ``point_fields``.
        cameras: camera name -> :class:`CameraFrame` (a camera may be absent in a frame).
        world_from_lidar: (4, 4) float64 ego pose, LiDAR -> world.
        point_labels: (N,) int32 object id per point (0 background, -1 ignore), or ``None``.
        objects: object id -> :class:`ObjectInfo` for the objects labeled in this frame.
        index: position of the frame in its sequence.
    """

    timestamp: float
    points: np.ndarray
    cameras: dict[str, CameraFrame]
    world_from_lidar: np.ndarray
    point_labels: np.ndarray | None = None
    objects: dict[int, ObjectInfo] = field(default_factory=dict)
    index: int = 0

    @property
    def has_ground_truth(self) -> bool:
        return self.point_labels is not None or any(
            c.instance_mask is not None for c in self.cameras.values()
        )


@dataclass
class Sequence:
    """An ordered list of frames sharing the point column layout.

    Attributes:
        name: sequence name (used for file and topic names).
        frames: frames in time order.
        point_fields: names of the columns of ``Frame.points`` (the first four are always
            ``x, y, z, intensity``).
        lidar_frame_id / world_frame_id: TF frame names used when the sequence becomes ROS messages.
    """

    name: str
    frames: list[Frame]
    point_fields: tuple[str, ...] = ("x", "y", "z", "intensity")
    lidar_frame_id: str = "lidar"
    world_frame_id: str = "odom"

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, i: int) -> Frame:
        return self.frames[i]

    @property
    def camera_names(self) -> list[str]:
        names: list[str] = []
        for f in self.frames:
            for n in f.cameras:
                if n not in names:
                    names.append(n)
        return names
