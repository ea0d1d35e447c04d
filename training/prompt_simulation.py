"""Interactive prompt simulation for training (SAM2's scheme, in the image or in the point cloud).

Per clip (:func:`plan_clip`):

- first frame: per object one prompt sampled from its ground truth: clicks (positive, taken from
  the object's region) or a box (the ground-truth box with jittered corners), 50/50, in a camera
  or in the LiDAR chosen at random (``prob_lidar``), or, with ``prob_mask``, the ground-truth
  mask itself. The losses supervise both modalities whatever the prompt's modality, so a camera
  prompt trains the LiDAR masks and vice versa (the cross-modal cases);
- correction frames: the first frame (unless the prompt was a mask) plus random other frames
  (SAM2: ``num_frames_to_correct`` 2): after the first prediction, ``correction_clicks`` rounds
  (official: 7) each add one click per object sampled from its error region: a false negative
  gives a positive click, a false positive a negative one. The view (a camera or the LiDAR) is a
  random one with errors;
- every other frame is propagated from memory (no prompt).

Click sampling from a region (:func:`sample_pixel`, :func:`sample_point`): ``"uniform"`` (SAM2's
training) or ``"center"``: the pixel farthest from the region's boundary (exact distance
transform, the image border counts as boundary, as SAM2's ``sample_one_point_from_error_center``)
or the point farthest from any valid point outside the region (3D nearest neighbours). The
``"center"`` click is the evaluation's 1-click prompt, defined once in
:mod:`sam4d_core.evaluation.first_frame_prompts` (:func:`center_pixel`, :func:`center_point`).

Image coordinates are pixels of the camera image as given to the model (x = column, y = row,
pixel centres at integers); LiDAR coordinates are metres in the LiDAR frame of the clip's
(augmented) sweep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from sam4d_core.evaluation.first_frame_prompts import (
    center_pixel,
    center_point,
    distance_to_boundary,
)
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts

from .config import PromptConfig
from .datasets import ClipSample, FrameTargets

LIDAR = -1
"""View id of the LiDAR (cameras are their slot index >= 0)."""

# ---------------------------------------------------------------------------------------------
# Sampling clicks and boxes from regions.


CLICK_MODES = ("uniform", "center", "mixed")
"""How clicks are taken from a region (:class:`~.config.PromptConfig` ``click_mode``)."""


def resolve_click_mode(mode: str, rng: np.random.Generator) -> str:
    """``"uniform"`` or ``"center"`` for one click: ``"mixed"`` draws one of them (50/50), so a
    model learns both the evaluation's centre click and the off-centre clicks of real users."""
    if mode == "mixed":
        return "center" if rng.random() < 0.5 else "uniform"
    if mode not in CLICK_MODES:
        raise ValueError(f"unknown click mode {mode!r} {CLICK_MODES}")
    return mode


def sample_pixel(region: np.ndarray, rng: np.random.Generator, mode: str = "uniform"):
    """A pixel ``(x, y)`` of a non-empty (H, W) bool region, or None when it is empty."""
    if not region.any():
        return None
    mode = resolve_click_mode(mode, rng)
    if mode == "center":
        return center_pixel(region)
    ys, xs = np.nonzero(region)
    k = int(rng.integers(len(ys)))
    return float(xs[k]), float(ys[k])


def sample_point(
    xyz: np.ndarray,
    region: np.ndarray,
    rng: np.random.Generator,
    mode: str = "uniform",
    valid: np.ndarray | None = None,
) -> int | None:
    """Index of a point of ``region`` ((N,) bool), or None when it is empty.

    ``"center"``: the region point farthest from the nearest valid point outside the region.
    """
    idx = np.flatnonzero(region)
    if idx.size == 0:
        return None
    mode = resolve_click_mode(mode, rng)
    if mode == "center":
        return center_point(xyz, region, valid)
    return int(idx[int(rng.integers(idx.size))])


def sample_error_pixel(
    gt: np.ndarray, pred: np.ndarray, rng: np.random.Generator, mode: str = "uniform"
):
    """A corrective click ``((x, y), label)`` from the error of ``pred`` against ``gt`` ((H, W)
    bool), or None without error. Label 1 on a false negative, 0 on a false positive."""
    fn = gt & ~pred
    fp = pred & ~gt
    mode = resolve_click_mode(mode, rng)
    if mode == "center":
        best, label = None, 1
        best_d = -1.0
        for region, lab in ((fn, 1), (fp, 0)):
            if not region.any():
                continue
            dt = distance_to_boundary(region)
            k = int(np.argmax(dt))
            if dt.flat[k] > best_d:
                best_d = float(dt.flat[k])
                y, x = np.unravel_index(k, dt.shape)
                best, label = (float(x), float(y)), lab
        return None if best is None else (best, label)
    xy = sample_pixel(fn | fp, rng, mode)
    if xy is None:
        return None
    return xy, int(gt[int(xy[1]), int(xy[0])])


def sample_error_point(
    xyz: np.ndarray,
    gt: np.ndarray,
    pred: np.ndarray,
    valid: np.ndarray,
    rng: np.random.Generator,
    mode: str = "uniform",
):
    """A corrective LiDAR click ``(point index, label)`` from the error of ``pred`` against
    ``gt`` ((N,) bool; ignored points never count), or None without error."""
    fn = gt & ~pred & valid
    fp = pred & ~gt & valid
    mode = resolve_click_mode(mode, rng)
    if mode == "center":
        best, best_d, label = None, -1.0, 1
        for region, lab in ((fn, 1), (fp, 0)):
            idx = np.flatnonzero(region)
            if idx.size == 0:
                continue
            out_idx = np.flatnonzero(~region & valid)
            if out_idx.size == 0:
                return int(idx[0]), lab
            d, _ = cKDTree(xyz[out_idx]).query(xyz[idx], k=1)
            k = int(np.argmax(d))
            if d[k] > best_d:
                best, best_d, label = int(idx[k]), float(d[k]), lab
        return None if best is None else (best, label)
    k = sample_point(xyz, fn | fp, rng, mode)
    return None if k is None else (k, int(gt[k]))


def sample_pixel_box(
    mask: np.ndarray, rng: np.random.Generator, noise: float = 0.1, bound: float = 20.0
) -> np.ndarray | None:
    """``[x0, y0, x1, y1]`` of a (H, W) bool mask with each corner jittered uniformly by up to
    ``min(noise * box side, bound)`` pixels (SAM2's ``sample_box_points``), clipped to the image."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    h, w = mask.shape
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
    size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    d = np.minimum(noise * size, bound)
    box = box + rng.uniform(-1.0, 1.0, 4) * d
    box[[0, 2]] = np.clip(box[[0, 2]], 0, w - 1)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, h - 1)
    x0, x1 = sorted(box[[0, 2]])
    y0, y1 = sorted(box[[1, 3]])
    return np.array([x0, y0, x1, y1])


def sample_bev_box(
    xyz: np.ndarray, mask: np.ndarray, rng: np.random.Generator, noise=0.1, bound=1.0
) -> np.ndarray | None:
    """Bird's-eye ``[x0, y0, x1, y1]`` (metres) of the masked points, jittered like
    :func:`sample_pixel_box` (``bound`` in metres); heights come from the sweep at decoding."""
    p = xyz[mask]
    if len(p) == 0:
        return None
    box = np.array([p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max()], np.float64)
    size = np.array([box[2] - box[0], box[3] - box[1]] * 2)
    d = np.minimum(noise * np.maximum(size, 0.2), bound)
    box = box + rng.uniform(-1.0, 1.0, 4) * d
    x0, x1 = sorted(box[[0, 2]])
    y0, y1 = sorted(box[[1, 3]])
    return np.array([x0, y0, x1, y1])


# ---------------------------------------------------------------------------------------------
# Per-object prompt state on one frame.


@dataclass
class PromptState:
    """Everything one object was given on one frame, by view (camera slot or :data:`LIDAR`).

    Attributes:
        points / labels: clicks per view.
        boxes: per view ``[x0, y0, x1, y1]`` (pixels, or a BEV box in metres for the LiDAR).
        masks: per view a ground-truth mask prompt ((H, W) bool, or (N,) bool for the LiDAR).
        kind: of the initial prompt: ``"click"``, ``"box"``, ``"mask"`` or ``""`` (none).
        view: of the initial prompt.
    """

    points: dict[int, list[list[float]]] = field(default_factory=dict)
    labels: dict[int, list[int]] = field(default_factory=dict)
    boxes: dict[int, np.ndarray] = field(default_factory=dict)
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    kind: str = ""
    view: int | None = None

    def add_click(self, view: int, coords, label: int) -> None:
        self.points.setdefault(view, []).append([float(c) for c in coords])
        self.labels.setdefault(view, []).append(int(label))

    @property
    def num_clicks(self) -> int:
        return sum(len(v) for v in self.labels.values())

    @property
    def is_empty(self) -> bool:
        return not (self.points or self.boxes or self.masks)

    @property
    def is_mask_only(self) -> bool:
        return bool(self.masks) and not (self.points or self.boxes)

    def to_prompts(
        self,
        prev_camera_logits: dict[int, object] | None = None,
        prev_voxel_logits: object | None = None,
    ) -> ObjectPrompts | None:
        """The model's :class:`ObjectPrompts` (None when empty). The previous low-resolution
        logits (camera slot -> (4h, 4w), LiDAR (N4,)) become dense prompts when given (SAM2's
        iterative correction feeds the last prediction back as the mask input)."""
        if self.is_empty:
            return None
        views = set(self.points) | set(self.boxes) | set(self.masks)
        if prev_camera_logits:
            views |= set(prev_camera_logits)
        if prev_voxel_logits is not None:
            views.add(LIDAR)
        cams: dict[int, CameraPrompt] = {}
        lidar = None
        for v in sorted(views):
            pts = np.asarray(self.points[v], np.float32) if v in self.points else None
            lab = np.asarray(self.labels[v], np.int64) if v in self.labels else None
            box = self.boxes.get(v)
            if v == LIDAR:
                lidar = LidarPrompt(
                    points=pts,
                    labels=lab,
                    box=box,
                    mask=self.masks.get(v),
                    voxel_mask=prev_voxel_logits,
                )
            else:
                mask = self.masks.get(v)
                if mask is None and prev_camera_logits is not None:
                    mask = prev_camera_logits.get(v)
                cams[v] = CameraPrompt(points=pts, labels=lab, box=box, mask=mask)
        return ObjectPrompts(cameras=cams, lidar=lidar)


# ---------------------------------------------------------------------------------------------
# Planning a clip.


@dataclass
class ClipPlan:
    """The prompt schedule of a clip.

    Attributes:
        initial: per object its first-frame :class:`PromptState`.
        correction_frames: frames receiving corrective clicks (sorted).
        clicks_per_frame: corrective rounds per correction frame.
    """

    initial: list[PromptState]
    correction_frames: list[int]
    clicks_per_frame: dict[int, int]


def _visible_views(targets: FrameTargets, b: int, min_pixels: int, min_points: int) -> tuple:
    cams = []
    for slot, m in enumerate(targets.camera_masks):
        if m is not None and int(m[b].sum()) >= min_pixels:
            cams.append(slot)
    lidar = (
        targets.point_masks is not None
        and int((targets.point_masks[b] & targets.point_valid).sum()) >= min_points
    )
    return cams, lidar


def initial_prompt(
    sample: ClipSample,
    b: int,
    cfg: PromptConfig,
    rng: np.random.Generator,
    min_pixels: int = 1,
    min_points: int = 1,
    modality: str | None = None,
    kind: str | None = None,
    num_clicks: int | None = None,
) -> PromptState:
    """The first-frame prompt of object ``b`` sampled from its ground truth.

    Args:
        modality: force ``"image"`` or ``"lidar"`` (validation / evaluation); None: random
            (``prob_lidar``), falling back to the other modality when the object is not visible
            in the drawn one.
        kind: force ``"click"``, ``"box"`` or ``"mask"``; None: random.
        num_clicks: force the number of positive clicks of a click prompt.
    """
    tg = sample.targets[0]
    cams, lidar_ok = _visible_views(tg, b, min_pixels, min_points)
    if not cams and not lidar_ok:
        # Barely visible: accept any pixel / point.
        cams, lidar_ok = _visible_views(tg, b, 1, 1)
    use_lidar = rng.random() < cfg.prob_lidar if modality is None else modality == "lidar"
    if use_lidar and not lidar_ok:
        use_lidar = False
    if not use_lidar and not cams:
        use_lidar = lidar_ok
    if not use_lidar and not cams:
        return PromptState()
    if kind is None:
        if rng.random() < cfg.prob_mask:
            kind = "mask"
        else:
            kind = "box" if rng.random() < cfg.prob_box else "click"
    if num_clicks is None:
        lo, hi = cfg.initial_clicks
        num_clicks = int(rng.integers(lo, hi + 1))
    st = PromptState(kind=kind)
    xyz = sample.frames[0].points[:, :3]
    if use_lidar:
        st.view = LIDAR
        region = tg.point_masks[b] & tg.point_valid
        if kind == "mask":
            st.masks[LIDAR] = tg.point_masks[b].copy()
        elif kind == "box":
            st.boxes[LIDAR] = sample_bev_box(xyz, region, rng, cfg.box_noise, cfg.box_noise_m)
        else:
            for _ in range(num_clicks):
                k = sample_point(xyz, region, rng, cfg.click_mode, tg.point_valid)
                st.add_click(LIDAR, xyz[k], 1)
    else:
        slot = int(cams[int(rng.integers(len(cams)))]) if modality is None else int(cams[0])
        st.view = slot
        mask = tg.camera_masks[slot][b]
        if kind == "mask":
            st.masks[slot] = mask.copy()
        elif kind == "box":
            st.boxes[slot] = sample_pixel_box(mask, rng, cfg.box_noise, cfg.box_noise_px)
        else:
            for _ in range(num_clicks):
                st.add_click(slot, sample_pixel(mask, rng, cfg.click_mode), 1)
    return st


def plan_clip(
    sample: ClipSample,
    cfg: PromptConfig,
    rng: np.random.Generator,
    min_pixels: int = 1,
    min_points: int = 1,
) -> ClipPlan:
    """Initial prompts of every object and the correction schedule (module docstring)."""
    initial = [
        initial_prompt(sample, b, cfg, rng, min_pixels, min_points)
        for b in range(sample.num_objects)
    ]
    t = sample.num_frames
    frames: list[int] = []
    n = cfg.num_correction_frames
    if n > 0 and cfg.correction_clicks > 0:
        if cfg.rand_correction_frames:
            n = int(rng.integers(1, n + 1))
        others = rng.permutation(np.arange(1, t))[: max(0, n - 1)].tolist()
        frames = sorted([0, *others])
    clicks = {}
    for f in frames:
        k = cfg.correction_clicks
        clicks[f] = int(rng.integers(1, k + 1)) if cfg.rand_correction_clicks else k
    return ClipPlan(initial, frames, clicks)


def corrective_click(
    sample: ClipSample,
    t: int,
    b: int,
    pred_cameras: list[np.ndarray | None],
    pred_points: np.ndarray | None,
    cfg: PromptConfig,
    rng: np.random.Generator,
    prefer_view: int | None = None,
):
    """One corrective click for object ``b`` on frame ``t``: ``(view, coords, label)`` or None.

    Args:
        pred_cameras: per camera slot the current (H, W) bool prediction at the ground truth's
            resolution (None: camera absent / no ground truth).
        pred_points: (N,) bool current LiDAR prediction (None: no LiDAR).
        prefer_view: with ``correction_modality == "same"``, the initial prompt's view.
    """
    tg = sample.targets[t]
    from_gt = rng.random() < cfg.prob_correct_from_gt
    candidates: list[int] = []
    errors: dict[int, tuple] = {}
    for slot, gt in enumerate(tg.camera_masks):
        pred = pred_cameras[slot] if slot < len(pred_cameras) else None
        if gt is None or pred is None:
            continue
        p = np.zeros_like(gt[b]) if from_gt else pred
        if (gt[b] ^ p).any():
            candidates.append(slot)
            errors[slot] = (gt[b], p)
    if tg.point_masks is not None and pred_points is not None:
        gt = tg.point_masks[b]
        p = np.zeros_like(gt) if from_gt else pred_points
        if ((gt ^ p) & tg.point_valid).any():
            candidates.append(LIDAR)
            errors[LIDAR] = (gt, p)
    if not candidates:
        return None
    if cfg.correction_modality == "same" and prefer_view is not None:
        same = [v for v in candidates if (v == LIDAR) == (prefer_view == LIDAR)]
        candidates = same or candidates
    elif cfg.correction_modality not in ("any", "same"):
        raise ValueError(f"unknown correction_modality {cfg.correction_modality!r}")
    view = candidates[int(rng.integers(len(candidates)))]
    gt, p = errors[view]
    if view == LIDAR:
        xyz = sample.frames[t].points[:, :3]
        hit = sample_error_point(xyz, gt, p, tg.point_valid, rng, cfg.click_mode)
        if hit is None:
            return None
        k, label = hit
        return LIDAR, xyz[k].astype(np.float64), label
    hit = sample_error_pixel(gt, p, rng, cfg.click_mode)
    if hit is None:
        return None
    xy, label = hit
    return view, np.asarray(xy, np.float64), label


__all__ = [
    "CLICK_MODES",
    "LIDAR",
    "ClipPlan",
    "PromptState",
    "corrective_click",
    "initial_prompt",
    "plan_clip",
    "resolve_click_mode",
    "sample_bev_box",
    "sample_error_pixel",
    "sample_error_point",
    "sample_pixel",
    "sample_pixel_box",
    "sample_point",
]
