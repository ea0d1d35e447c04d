"""Deterministic first-frame prompts from ground truth, in a camera image or in the LiDAR sweep.

The evaluation prompts each object once, on the first frame where it appears in the prompt's
modality (:func:`first_appearance`), and never again. Prompt types (:data:`PROMPT_TYPES`):

- ``1click``: SAM's evaluation click (RITM / SAM2 ``sample_one_point_from_error_center``): the
  mask pixel farthest from the mask's boundary (exact Euclidean distance transform; the image
  border counts as boundary; ties: the first pixel in row-major order), :func:`center_pixel`.
  In the LiDAR: the object point farthest from every valid (not ignored) point outside the object,
  i.e. the point deepest inside the object (3D nearest neighbour; the object's point nearest to
  the centroid of its points when no valid point lies outside it), :func:`center_point`.
  Training's ``"center"`` click mode (``training/prompt_simulation.py``) is this definition.
- ``3click``: from the ground truth only (no prediction is needed, so the prompt stays on the
  first frame): the 1-click click plus two more by farthest-point sampling among the object's
  *deep* pixels / points, those at least half as deep as the deepest one
  (:func:`spread_pixels`, :func:`spread_points`). Each new click is the candidate farthest from
  the clicks already chosen (ties: first in row-major / point order). The clicks are spread
  over the object and stay away from its boundary; a thin object gets clicks along its length.
  A mask with fewer distinct candidates gives fewer clicks (all candidates, then any pixel).
- ``box``: image: the tight box of the mask ``[u_min, v_min, u_max, v_max]`` (pixel centres,
  inclusive, as the tracker's :class:`~sam4d_core.tracking.records.ImagePrompt`); LiDAR: the tight
  bird's-eye box ``[x_min, y_min, x_max, y_max]`` (metres) of the object's points, the 3D prompt
  convention of :func:`~sam4d_core.modeling.sam.prompt_encoder.bev_boxes_to_points_3d` (heights
  from the sweep's points inside the box) that training's box prompts use too. No jitter.
- ``mask``: the ground-truth mask itself ((H, W) bool, or (N,) bool over the sweep's points).

Image prompts go to the camera where the object's mask is largest on that frame (ties: the first
camera of the frame), :func:`prompt_camera`. Pixels are ``(x, y)`` = (column, row) of the
camera image as received, pixel centres at integers; LiDAR clicks are the chosen point's
``(x, y, z)`` in metres in the LiDAR frame of that sweep.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import cKDTree

from sam4d_core.data.sequence import IGNORE_ID, Frame, Sequence
from sam4d_core.tracking.records import ImagePrompt, LidarPrompt, ObjectPrompt

PROMPT_TYPES: tuple[str, ...] = ("1click", "3click", "box", "mask")
MODALITIES: tuple[str, ...] = ("img", "pts")
"""Prompt modalities: ``img`` a camera image (2D), ``pts`` the LiDAR sweep (3D)."""

# ---------------------------------------------------------------------------------------------
# Image clicks.


def distance_to_boundary(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> (H, W) float32: each mask pixel's exact Euclidean distance to the nearest
    pixel outside the mask, the image border counting as outside (0 off the mask)."""
    m = np.asarray(mask).astype(np.uint8)
    dt = cv2.distanceTransform(np.pad(m, 1, mode="constant"), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    return dt[1:-1, 1:-1]


def center_pixel(mask: np.ndarray) -> tuple[float, float] | None:
    """SAM's evaluation click ``(x, y)`` of a (H, W) bool mask (module docstring); None when the
    mask is empty."""
    dt = distance_to_boundary(mask)
    k = int(np.argmax(dt))
    if dt.flat[k] <= 0:
        return None
    y, x = np.unravel_index(k, dt.shape)
    return float(x), float(y)


def _spread(
    candidate_sets: list[np.ndarray], coords: Callable[[np.ndarray], np.ndarray], first: int, n: int
) -> list[int]:
    """Farthest-point sampling from ``first``: in the first candidate set (sorted indices) until
    ``n`` clicks or no candidate is at a positive distance, then on in the next set (each set
    contains the clicks already chosen). Ties: the first candidate."""
    clicks = [int(first)]
    for candidates in candidate_sets:
        if len(clicks) >= n:
            break
        xyz = coords(candidates)
        chosen = [int(j) for j in np.searchsorted(candidates, clicks)]
        dmin = np.min(np.linalg.norm(xyz[:, None, :] - xyz[None, chosen, :], axis=2), axis=1)
        while len(chosen) < n:
            j = int(np.argmax(dmin))
            if dmin[j] <= 0:
                break
            chosen.append(j)
            dmin = np.minimum(dmin, np.linalg.norm(xyz - xyz[j], axis=1))
        clicks = [int(candidates[j]) for j in chosen]
    return clicks


def spread_pixels(mask: np.ndarray, n: int = 3) -> list[tuple[float, float]]:
    """``n`` clicks ``(x, y)`` spread over a (H, W) bool mask: the :func:`center_pixel` click,
    then farthest-point sampling among the pixels at least half as deep as the deepest (module
    docstring). Fewer when the mask has fewer pixels; empty for an empty mask."""
    dt = distance_to_boundary(mask)
    k0 = int(np.argmax(dt))
    top = float(dt.flat[k0])
    if top <= 0 or n < 1:
        return []

    def coords(flat: np.ndarray) -> np.ndarray:
        return np.stack(np.unravel_index(flat, dt.shape), axis=1).astype(np.float64)

    deep = np.flatnonzero(dt >= 0.5 * top)
    clicks = _spread([deep, np.flatnonzero(dt > 0)], coords, k0, n)
    out = []
    for k in clicks:
        y, x = np.unravel_index(k, dt.shape)
        out.append((float(x), float(y)))
    return out


def pixel_box(mask: np.ndarray) -> np.ndarray | None:
    """Tight box ``[x_min, y_min, x_max, y_max]`` (pixel centres, inclusive) of a (H, W) bool
    mask; None when empty."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)


# ---------------------------------------------------------------------------------------------
# LiDAR clicks.


def point_depth(
    xyz: np.ndarray, region: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray | None:
    """(M,) distance (m) of each of the M points of ``region`` ((N,) bool) to the nearest valid
    point outside it (``valid``: (N,) bool, None = all); None when no valid point is outside."""
    region = np.asarray(region, bool)
    outside = ~region if valid is None else (~region & np.asarray(valid, bool))
    out_idx = np.flatnonzero(outside)
    if out_idx.size == 0:
        return None
    d, _ = cKDTree(xyz[out_idx, :3]).query(xyz[region, :3], k=1)
    return np.asarray(d, np.float64)


def center_point(
    xyz: np.ndarray, region: np.ndarray, valid: np.ndarray | None = None
) -> int | None:
    """Index of the LiDAR evaluation click among (N, 3+) ``xyz``: the point of ``region`` ((N,)
    bool) deepest inside it (:func:`point_depth`), or nearest the centroid of the region's points
    when no valid point is outside; None for an empty region."""
    idx = np.flatnonzero(region)
    if idx.size == 0:
        return None
    d = point_depth(xyz, region, valid)
    if d is None:
        p = xyz[idx, :3]
        return int(idx[int(np.argmin(np.linalg.norm(p - p.mean(axis=0), axis=1)))])
    return int(idx[int(np.argmax(d))])


def spread_points(
    xyz: np.ndarray, region: np.ndarray, valid: np.ndarray | None = None, n: int = 3
) -> list[int]:
    """Indices of ``n`` clicks spread over the region's points: :func:`center_point`, then
    farthest-point sampling (3D) among the points at least half as deep as the deepest (all the
    region's points when nothing valid is outside). Fewer when the region has fewer distinct
    points."""
    idx = np.flatnonzero(region)
    first = center_point(xyz, region, valid)
    if first is None or n < 1:
        return []
    d = point_depth(xyz, region, valid)
    deep = idx if d is None else idx[d >= 0.5 * float(d.max())]
    return _spread([deep, idx], lambda k: xyz[k, :3].astype(np.float64), first, n)


def bev_box(xyz: np.ndarray, region: np.ndarray) -> np.ndarray | None:
    """Tight bird's-eye box ``[x_min, y_min, x_max, y_max]`` (m) of the region's points; None
    when empty."""
    p = np.asarray(xyz)[np.asarray(region, bool), :2]
    if len(p) == 0:
        return None
    return np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()], np.float64)


# ---------------------------------------------------------------------------------------------
# Where and when an object is prompted.


def camera_pixels(frame: Frame, object_id: int) -> dict[str, int]:
    """Pixels of ``object_id`` per camera of the frame that has ground truth."""
    return {
        name: int(np.count_nonzero(cam.instance_mask == object_id))
        for name, cam in frame.cameras.items()
        if cam.instance_mask is not None
    }


def lidar_points(frame: Frame, object_id: int) -> int:
    """Points of ``object_id`` in the frame's sweep (0 without LiDAR ground truth)."""
    if frame.point_labels is None:
        return 0
    return int(np.count_nonzero(frame.point_labels == object_id))


def prompt_camera(frame: Frame, object_id: int) -> str | None:
    """The camera where the object's mask is largest on the frame (ties: the first camera of the
    frame); None when no camera shows it."""
    pix = camera_pixels(frame, object_id)
    best = max(pix.values(), default=0)
    if best <= 0:
        return None
    return next(name for name, n in pix.items() if n == best)


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r} ({', '.join(MODALITIES)})")


def appears(
    frame: Frame, object_id: int, modality: str, min_pixels: int = 1, min_points: int = 1
) -> bool:
    """The object has at least ``min_pixels`` pixels in some camera (``img``) or ``min_points``
    points (``pts``) on the frame (thresholds below 1 count as 1)."""
    _check_modality(modality)
    if modality == "img":
        return max(camera_pixels(frame, object_id).values(), default=0) >= max(1, min_pixels)
    return lidar_points(frame, object_id) >= max(1, min_points)


class ObjectVisibility:
    """Pixel and point counts of every object on every frame of a sequence (one pass over the
    ground truth; :func:`appears` answered in O(1) per query)."""

    def __init__(self, sequence: Sequence) -> None:
        self.num_frames = len(sequence.frames)
        self.pixels: list[dict[str, np.ndarray]] = []
        self.points: list[np.ndarray | None] = []
        ids: set[int] = set()
        for frame in sequence.frames:
            per_cam = {}
            for name, cam in frame.cameras.items():
                if cam.instance_mask is not None:
                    m = np.asarray(cam.instance_mask).ravel()
                    counts = np.bincount(m[m > 0])
                    per_cam[name] = counts
                    ids.update(np.flatnonzero(counts).tolist())
            self.pixels.append(per_cam)
            if frame.point_labels is None:
                self.points.append(None)
            else:
                lab = np.asarray(frame.point_labels).ravel()
                counts = np.bincount(lab[lab > 0])
                self.points.append(counts)
                ids.update(np.flatnonzero(counts).tolist())
        self.object_ids: list[int] = sorted(int(i) for i in ids)
        """Every labeled object id (> 0) of the sequence, sorted."""
        self.has_image_gt = any(self.pixels)
        self.has_lidar_gt = any(p is not None for p in self.points)

    def camera_pixels(self, t: int, object_id: int) -> dict[str, int]:
        """Pixels of the object per camera with ground truth on frame ``t``."""
        return {
            name: int(c[object_id]) if object_id < len(c) else 0
            for name, c in self.pixels[t].items()
        }

    def lidar_points(self, t: int, object_id: int) -> int:
        c = self.points[t]
        return int(c[object_id]) if c is not None and object_id < len(c) else 0

    def appears(
        self, t: int, object_id: int, modality: str, min_pixels: int = 1, min_points: int = 1
    ) -> bool:
        """:func:`appears` on frame ``t``."""
        _check_modality(modality)
        if modality == "img":
            return max(self.camera_pixels(t, object_id).values(), default=0) >= max(1, min_pixels)
        return self.lidar_points(t, object_id) >= max(1, min_points)

    def first_appearance(
        self, object_id: int, modality: str, min_pixels: int = 1, min_points: int = 1
    ) -> int | None:
        """The first frame where the object appears in ``modality``; None if never."""
        for t in range(self.num_frames):
            if self.appears(t, object_id, modality, min_pixels, min_points):
                return t
        return None


def first_appearance(
    sequence: Sequence,
    object_id: int,
    modality: str,
    min_pixels: int = 1,
    min_points: int = 1,
) -> int | None:
    """Index of the first frame where the object :func:`appears` in ``modality``; None if never."""
    _check_modality(modality)
    for i, frame in enumerate(sequence.frames):
        if appears(frame, object_id, modality, min_pixels, min_points):
            return i
    return None


# ---------------------------------------------------------------------------------------------
# The prompt record.


@dataclass
class FirstFramePrompt:
    """One object's evaluation prompt.

    Attributes:
        object_id: the ground-truth object id (also the tracker's object id).
        frame_index: the prompted frame of the sequence.
        prompt_type: one of :data:`PROMPT_TYPES`. modality: ``img`` or ``pts``.
        camera: the prompted camera (``img``), else None.
        points: (P, 2) pixels ``(x, y)`` or (P, 3) metres; labels: (P,) int64 (all 1).
        box: (4,) pixels or a bird's-eye box in metres, or None.
        mask: (H, W) bool (``img``) or (N,) bool over the sweep (``pts``), or None.
    """

    object_id: int
    frame_index: int
    prompt_type: str
    modality: str
    camera: str | None = None
    points: np.ndarray | None = None
    labels: np.ndarray | None = None
    box: np.ndarray | None = None
    mask: np.ndarray | None = None

    def to_object_prompt(self, stamp: float | None = None) -> ObjectPrompt:
        """The tracker's record (``stamp`` None: the newest frame)."""
        dim = 2 if self.modality == "img" else 3
        points = self.points if self.points is not None else np.zeros((0, dim))
        labels = self.labels if self.labels is not None else np.zeros((0,), np.int64)
        if self.modality == "img":
            assert self.camera is not None
            ip = ImagePrompt(self.camera, points, labels, box=self.box, mask=self.mask)
            return ObjectPrompt(self.object_id, stamp=stamp, image=[ip])
        lp = LidarPrompt(points, labels, box=self.box, point_mask=self.mask)
        return ObjectPrompt(self.object_id, stamp=stamp, lidar=lp)

    def describe(self) -> dict[str, object]:
        """JSON-ready summary: frame, camera, clicks, box, mask size (not the mask)."""
        out: dict[str, object] = {
            "frame": self.frame_index,
            "type": self.prompt_type,
            "modality": self.modality,
            "camera": self.camera,
        }
        if self.points is not None:
            out["points"] = np.round(np.asarray(self.points, np.float64), 4).tolist()
            out["labels"] = np.asarray(self.labels).astype(int).tolist()
        if self.box is not None:
            out["box"] = np.round(np.asarray(self.box, np.float64), 4).tolist()
        if self.mask is not None:
            out["mask_size"] = int(np.count_nonzero(self.mask))
        return out


def make_first_frame_prompt(
    frame: Frame, object_id: int, prompt_type: str, modality: str, frame_index: int | None = None
) -> FirstFramePrompt | None:
    """The prompt of ``object_id`` on ``frame`` (module docstring); None when the object is not
    in that modality's ground truth of the frame."""
    if prompt_type not in PROMPT_TYPES:
        raise ValueError(f"unknown prompt type {prompt_type!r} ({', '.join(PROMPT_TYPES)})")
    idx = frame.index if frame_index is None else int(frame_index)
    rec = FirstFramePrompt(object_id, idx, prompt_type, modality)
    if modality == "img":
        cam = prompt_camera(frame, object_id)
        if cam is None:
            return None
        mask = frame.cameras[cam].instance_mask == object_id
        rec.camera = cam
        if prompt_type in ("1click", "3click"):
            clicks = spread_pixels(mask, 1 if prompt_type == "1click" else 3)
            rec.points = np.asarray(clicks, np.float64).reshape(-1, 2)
            rec.labels = np.ones(len(clicks), np.int64)
        elif prompt_type == "box":
            rec.box = pixel_box(mask)
        else:
            rec.mask = mask
        return rec
    _check_modality(modality)
    labels = frame.point_labels
    if labels is None:
        return None
    region = labels == object_id
    if not region.any():
        return None
    xyz = frame.points[:, :3]
    valid = labels != IGNORE_ID
    if prompt_type in ("1click", "3click"):
        k = spread_points(xyz, region, valid, 1 if prompt_type == "1click" else 3)
        rec.points = xyz[k].astype(np.float64).reshape(-1, 3)
        rec.labels = np.ones(len(k), np.int64)
    elif prompt_type == "box":
        rec.box = bev_box(xyz, region)
    else:
        rec.mask = region
    return rec


__all__ = [
    "MODALITIES",
    "PROMPT_TYPES",
    "FirstFramePrompt",
    "ObjectVisibility",
    "appears",
    "bev_box",
    "camera_pixels",
    "center_pixel",
    "center_point",
    "distance_to_boundary",
    "first_appearance",
    "lidar_points",
    "make_first_frame_prompt",
    "pixel_box",
    "point_depth",
    "prompt_camera",
    "spread_pixels",
    "spread_points",
]
