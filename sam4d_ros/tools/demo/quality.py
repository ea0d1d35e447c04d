"""What the demo report can say about each tracked object without ground truth
(:func:`object_quality`), from the node's recorded outputs alone:

- frames with a non-empty mask in each modality (LiDAR points, pixels per camera);
- cross-modal agreement per camera: the share of the object's labeled LiDAR points that project
  inside its own 2D mask in that camera, among those of its points that project into the image
  (a mask on the sky, or a point segment on another object, scores low);
- mask area (pixels per camera) and point count over time;
- ``lost``: per frame, the tracker's own lost state when its TrackedObject message carries one
  (a ``lost`` field), else derived: listed but with no mask pixel in any camera and no point, or
  not listed at all after the prompt. An object's presence score is not used for it: it stays
  near 1 on masks that are wrong or empty.

The projection uses each camera's CameraInfo K and the bag's static TF chain between the LiDAR
frame and the camera frame (rectified images assumed, as the converters write them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "CameraProjection",
    "ObjectFrame",
    "ObjectQuality",
    "agreement",
    "camera_projections",
    "object_quality",
]


@dataclass
class CameraProjection:
    """A camera for projecting LiDAR points: K (3, 3), cam_from_lidar (4, 4), image size."""

    intrinsics: np.ndarray
    cam_from_lidar: np.ndarray
    width: int
    height: int

    def project(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) LiDAR points -> ((N, 2) int pixel column, row; (N,) bool in the image and in
        front of the camera)."""
        p = xyz @ self.cam_from_lidar[:3, :3].T + self.cam_from_lidar[:3, 3]
        z = p[:, 2]
        front = z > 1e-6
        uvw = p @ self.intrinsics.T
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = uvw[:, :2] / np.where(front, z, 1.0)[:, None]
        px = np.floor(uv).astype(np.int64)
        inside = (
            front
            & (px[:, 0] >= 0)
            & (px[:, 0] < self.width)
            & (px[:, 1] >= 0)
            & (px[:, 1] < self.height)
        )
        return px, inside


def agreement(xyz: np.ndarray, mask: np.ndarray, cam: CameraProjection) -> tuple[float | None, int]:
    """(share of the points that land inside ``mask`` among those that project into the image,
    or None when none does; that number of points). xyz: (N, 3); mask: (H, W) bool."""
    if xyz.shape[0] == 0:
        return None, 0
    px, inside = cam.project(np.asarray(xyz, dtype=np.float64))
    n = int(inside.sum())
    if n == 0:
        return None, 0
    hit = mask[px[inside, 1], px[inside, 0]]
    return float(hit.mean()), n


def _static_chain(static: Mapping[str, tuple[str, np.ndarray]], frame: str) -> tuple[str, Any]:
    """(root, root_from_frame) following the static TF tree up from ``frame``."""
    t = np.eye(4)
    seen = {frame}
    while frame in static:
        parent, parent_from_child = static[frame]
        t = parent_from_child @ t
        frame = parent
        if frame in seen:
            break
        seen.add(frame)
    return frame, t


def camera_projections(
    infos: Mapping[str, Any], lidar_frame: str, static: Mapping[str, tuple[str, np.ndarray]]
) -> dict[str, CameraProjection]:
    """Projections of the cameras whose frame the static TF links to the LiDAR frame.

    infos: camera -> its CameraInfo (any object with ``k``, ``width``, ``height``,
    ``header.frame_id``); static: child frame -> (parent frame, (4, 4) parent_from_child).
    """
    out = {}
    lroot, root_from_lidar = _static_chain(static, lidar_frame)
    for name, info in infos.items():
        frame = str(info.header.frame_id).lstrip("/")
        croot, root_from_cam = _static_chain(static, frame)
        if croot != lroot:
            continue
        out[name] = CameraProjection(
            intrinsics=np.asarray(info.k, dtype=np.float64).reshape(3, 3),
            cam_from_lidar=np.linalg.inv(root_from_cam) @ root_from_lidar,
            width=int(info.width),
            height=int(info.height),
        )
    return out


@dataclass
class ObjectFrame:
    """One object in one sweep from its prompt on. status: output (listed), not_listed (the node
    published the sweep without it), no_output (the node dropped or failed the sweep)."""

    frame: int
    status: str
    points: int = 0
    mask_px: dict[str, int] = field(default_factory=dict)
    agreement: dict[str, float | None] = field(default_factory=dict)
    points_in_view: dict[str, int] = field(default_factory=dict)
    presence_score: float | None = None
    lost: bool | None = None  # None where the node published nothing for the sweep


@dataclass
class ObjectQuality:
    """The ground-truth-free quality signals of one object (see the module docstring)."""

    object_id: int
    first_frame: int
    lost_source: str  # "tracker" or "derived: ..."
    frames: list[ObjectFrame]

    def summary(self, cameras: list[str]) -> dict[str, Any]:
        with_output = [f for f in self.frames if f.status != "no_output"]
        lost = [f.frame for f in with_output if f.lost]
        nonempty = {"lidar": sum(1 for f in with_output if f.points > 0)}
        for c in cameras:
            nonempty[c] = sum(1 for f in with_output if f.mask_px.get(c, 0) > 0)
        agree: dict[str, float | None] = {}
        for c in cameras:
            vals = [f.agreement[c] for f in with_output if f.agreement.get(c) is not None]
            agree[c] = float(np.mean(vals)) if vals else None
        last = with_output[-1] if with_output else None
        return {
            "first_frame": self.first_frame,
            "frames_with_output": len(with_output),
            "frames_with_mask": nonempty,
            "frames_lost": len(lost),
            "lost_frames": lost,
            "lost": bool(last.lost) if last is not None else None,
            "lost_source": self.lost_source,
            "cross_modal_agreement": agree,
            "over_time": [
                {
                    "frame": f.frame,
                    "status": f.status,
                    "points": f.points,
                    "mask_px": f.mask_px,
                    "agreement": f.agreement,
                    "points_in_view": f.points_in_view,
                    "presence_score": f.presence_score,
                    "lost": f.lost,
                }
                for f in self.frames
            ],
        }


def object_quality(
    oid: int,
    sweep_stamps_ns: list[int],
    frames: Mapping[int, Any],
    cameras: list[str],
    projections: Mapping[str, CameraProjection],
) -> ObjectQuality:
    """The signals of object ``oid`` per sweep from the first one that lists it.

    frames: sweep stamp -> the demo's FrameOutputs (``objects``, ``labels`` per camera,
    ``cloud_xyz``, ``cloud_labels``).
    """
    first = None
    for i, s in enumerate(sweep_stamps_ns):
        fo = frames.get(s)
        if fo is not None and fo.objects is not None:
            if any(int(o.id) == oid for o in fo.objects.objects):
                first = i
                break
    tracker_lost = False
    rows: list[ObjectFrame] = []
    for i in range(first if first is not None else len(sweep_stamps_ns), len(sweep_stamps_ns)):
        fo = frames.get(sweep_stamps_ns[i])
        if fo is None or fo.objects is None:
            rows.append(ObjectFrame(i, "no_output"))
            continue
        obj = next((o for o in fo.objects.objects if int(o.id) == oid), None)
        if obj is None:
            rows.append(ObjectFrame(i, "not_listed", lost=True))
            continue
        row = ObjectFrame(i, "output", presence_score=float(obj.presence_score))
        xyz = np.zeros((0, 3))
        if fo.cloud_labels is not None and fo.cloud_xyz is not None:
            sel = fo.cloud_labels == oid
            row.points = int(sel.sum())
            xyz = fo.cloud_xyz[sel]
        for c in cameras:
            lab = fo.labels.get(c)
            if lab is None:
                continue
            mask = lab == oid
            row.mask_px[c] = int(mask.sum())
            if c in projections:
                row.agreement[c], row.points_in_view[c] = agreement(xyz, mask, projections[c])
        if hasattr(obj, "lost"):  # the tracker's own state (a newer TrackedObject message)
            tracker_lost = True
            row.lost = bool(obj.lost)
        else:
            row.lost = row.points == 0 and not any(row.mask_px.values())
        rows.append(row)
    source = (
        "tracker"
        if tracker_lost
        else "derived: no mask pixel in any camera and no LiDAR point (or not listed)"
    )
    return ObjectQuality(oid, first if first is not None else -1, source, rows)
