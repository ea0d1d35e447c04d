"""Segmentation metrics of the paper-style evaluation: mask IoU, DAVIS J (region) and F
(boundary), J&F, per-point LiDAR IoU, and their aggregation over frames and objects.

Conventions (every aggregate below follows them):

- A frame where both the ground truth and the prediction are empty says nothing about the
  object: its IoU / J / F are ``None`` and the frame is skipped by the means. An object absent
  from the ground truth but predicted scores 0 on that frame; an object present but not
  predicted scores 0 too.
- Image scores of a frame pool all cameras that have ground truth: IoU = sum of intersections /
  sum of unions; F from the pooled boundary counts (:class:`BoundaryCounts`). With one camera
  both are exactly the per-image values.
- LiDAR IoU counts only points that are not ignored (ground-truth label -1): an ignored point is
  neither a hit nor a false positive.
- J is the region similarity, i.e. the IoU itself; F is DAVIS's boundary F-measure
  (:func:`boundary_f`); J&F = (J + F) / 2. Since both-empty frames are skipped, the J of a frame
  equals its image IoU (DAVIS scores such a frame 1 instead).
- Per object: the mean over its frames with a value (``None`` when it has none); per table cell:
  the mean over objects with a value (mIoU). J&F of a cell is the mean of the objects' J and F
  means.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np

DAVIS_BOUND_TH = 0.008
"""DAVIS boundary tolerance: a fraction of the image diagonal (``db_eval_boundary``)."""


# ---------------------------------------------------------------------------------------------
# Region (IoU, J).


def _bool(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    return a if a.dtype == bool else a.astype(bool)


def iou_counts(
    pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None
) -> tuple[int, int]:
    """(intersection, union) of two masks of the same shape; ``ignore`` (same shape, True =
    not counted) removes elements from both."""
    pred = _bool(pred)
    gt = _bool(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in shape")
    if ignore is not None:
        keep = ~_bool(ignore)
        if keep.shape != gt.shape:
            raise ValueError(f"ignore mask {keep.shape} does not match {gt.shape}")
        pred = pred & keep
        gt = gt & keep
    return int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))


def mask_iou(pred: np.ndarray, gt: np.ndarray, ignore: np.ndarray | None = None) -> float | None:
    """IoU of ``pred`` and ``gt`` (any equal shapes, e.g. (H, W) or (N,) bool); None when both are
    empty (after removing ``ignore``d elements)."""
    inter, union = iou_counts(pred, gt, ignore)
    return None if union == 0 else inter / union


def pooled_iou(counts: Iterable[tuple[int, int]]) -> float | None:
    """IoU pooled over views from their (intersection, union) counts; None when every union is
    0."""
    inter = union = 0
    for i, u in counts:
        inter += i
        union += u
    return None if union == 0 else inter / union


def lidar_iou(
    pred: np.ndarray, gt_labels: np.ndarray, object_id: int, ignore_id: int = -1
) -> float | None:
    """Per-point IoU of ``pred`` ((N,) bool) against the points labeled ``object_id`` in
    ``gt_labels`` ((N,) int); points labeled ``ignore_id`` are not counted."""
    labels = np.asarray(gt_labels)
    return mask_iou(pred, labels == object_id, labels == ignore_id)


# ---------------------------------------------------------------------------------------------
# Boundary (F).


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """DAVIS's ``seg2bmap`` at the mask's own size: (H, W) bool -> (H, W) bool boundary.

    A pixel is on the boundary when it differs from its right, bottom or bottom-right neighbour
    (outside the image counts as background); the last row compares only to the right, the
    last column only downwards, and the bottom-right pixel is never a boundary, exactly as the
    DAVIS code.
    """
    seg = _bool(mask)
    if seg.ndim != 2:
        raise ValueError(f"a boundary needs a (H, W) mask, got {seg.shape}")
    h, w = seg.shape
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = (seg ^ e) | (seg ^ s) | (seg ^ se)
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    if h and w:
        b[-1, -1] = False
    return b


def disk(radius: int) -> np.ndarray:
    """(2r+1, 2r+1) uint8 disk: 1 where ``dx^2 + dy^2 <= r^2`` (skimage.morphology.disk)."""
    r = int(radius)
    if r < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    y, x = np.mgrid[-r : r + 1, -r : r + 1]
    return ((x * x + y * y) <= r * r).astype(np.uint8)


def boundary_tolerance(shape: tuple[int, ...], bound_th: float = DAVIS_BOUND_TH) -> int:
    """The matching distance (pixels) of DAVIS: ``bound_th`` itself when >= 1, else
    ``ceil(bound_th * image diagonal)``."""
    if bound_th >= 1:
        return int(bound_th)
    return int(math.ceil(bound_th * math.hypot(shape[0], shape[1])))


@dataclass
class BoundaryCounts:
    """Boundary pixels of a prediction and a ground truth, and how many of each lie within the
    tolerance of the other's boundary (summable over cameras).

    Attributes:
        pred: boundary pixels of the prediction.
        gt: boundary pixels of the ground truth.
        pred_matched: prediction boundary pixels within the tolerance of the ground truth's.
        gt_matched: ground-truth boundary pixels within the tolerance of the prediction's.
    """

    pred: int = 0
    gt: int = 0
    pred_matched: int = 0
    gt_matched: int = 0

    def __add__(self, other: BoundaryCounts) -> BoundaryCounts:
        return BoundaryCounts(
            self.pred + other.pred,
            self.gt + other.gt,
            self.pred_matched + other.pred_matched,
            self.gt_matched + other.gt_matched,
        )

    def precision_recall(self) -> tuple[float, float]:
        """DAVIS's special cases: no predicted boundary -> precision 1; no ground-truth boundary
        -> recall 1; and recall 0 / precision 0 when only the other one is empty."""
        if self.pred == 0 and self.gt > 0:
            return 1.0, 0.0
        if self.pred > 0 and self.gt == 0:
            return 0.0, 1.0
        if self.pred == 0 and self.gt == 0:
            return 1.0, 1.0
        return self.pred_matched / self.pred, self.gt_matched / self.gt

    def f_measure(self) -> float:
        p, r = self.precision_recall()
        return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _dilate(boundary: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return boundary
    return cv2.dilate(boundary.astype(np.uint8), disk(radius)).astype(bool)


@dataclass
class GroundTruthBoundary:
    """A ground-truth mask's boundary and its dilation, computed once and reused for every
    prediction compared with it (several prompt types track the same object)."""

    boundary: np.ndarray
    dilated: np.ndarray
    radius: int

    @classmethod
    def of(cls, gt: np.ndarray, bound_th: float = DAVIS_BOUND_TH) -> GroundTruthBoundary:
        b = boundary_map(gt)
        r = boundary_tolerance(b.shape, bound_th)
        return cls(b, _dilate(b, r), r)


def boundary_counts(
    pred: np.ndarray,
    gt: np.ndarray | GroundTruthBoundary,
    bound_th: float = DAVIS_BOUND_TH,
) -> BoundaryCounts:
    """DAVIS's boundary matching of two (H, W) masks: boundaries by :func:`boundary_map`, each
    dilated by a disk of radius :func:`boundary_tolerance`; a boundary pixel matches when the
    other boundary's dilation covers it."""
    g = gt if isinstance(gt, GroundTruthBoundary) else GroundTruthBoundary.of(gt, bound_th)
    pb = boundary_map(pred)
    if pb.shape != g.boundary.shape:
        raise ValueError(f"prediction {pb.shape} and ground truth {g.boundary.shape} differ")
    n_pred = int(np.count_nonzero(pb))
    n_gt = int(np.count_nonzero(g.boundary))
    pred_matched = int(np.count_nonzero(pb & g.dilated)) if n_pred and n_gt else 0
    gt_matched = int(np.count_nonzero(g.boundary & _dilate(pb, g.radius))) if n_pred and n_gt else 0
    return BoundaryCounts(n_pred, n_gt, pred_matched, gt_matched)


def boundary_f(pred: np.ndarray, gt: np.ndarray, bound_th: float = DAVIS_BOUND_TH) -> float | None:
    """DAVIS boundary F-measure of two (H, W) masks; None when both masks are empty."""
    if not np.any(pred) and not np.any(gt):
        return None
    return boundary_counts(pred, gt, bound_th).f_measure()


def j_and_f(j: float | None, f: float | None) -> float | None:
    """(J + F) / 2, None when either is None."""
    return None if j is None or f is None else 0.5 * (j + f)


# ---------------------------------------------------------------------------------------------
# Aggregation.


def mean_or_none(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    v = [float(x) for x in values if x is not None]
    return float(np.mean(v)) if v else None


@dataclass
class FrameScores:
    """One object on one frame (None: both masks empty in that modality, or no ground truth).

    Attributes:
        image_iou: IoU pooled over the cameras with ground truth (= J).
        boundary_f: boundary F from the pooled boundary counts.
        lidar_iou: per-point IoU without ignored points.
        camera_iou: per camera with ground truth its own IoU (None: both empty there); not used
            by the aggregates, for comparing with a tool that looks at one camera.
    """

    image_iou: float | None = None
    boundary_f: float | None = None
    lidar_iou: float | None = None
    camera_iou: dict[str, float | None] = field(default_factory=dict)


@dataclass
class ObjectScores:
    """One object's means over its frames (module docstring); None where no frame has a value.

    Attributes:
        image_miou / j: mean image IoU (the same number: J is the IoU).
        f: mean boundary F. jf: (j + f) / 2.
        lidar_miou: mean LiDAR IoU.
        image_frames / lidar_frames: frames that entered each mean.
    """

    image_miou: float | None
    f: float | None
    lidar_miou: float | None
    image_frames: int
    lidar_frames: int

    @property
    def j(self) -> float | None:
        return self.image_miou

    @property
    def jf(self) -> float | None:
        return j_and_f(self.j, self.f)


def object_scores(frames: Iterable[FrameScores]) -> ObjectScores:
    """Per-object means over frames, both-empty frames skipped."""
    frames = list(frames)
    img = [s.image_iou for s in frames if s.image_iou is not None]
    lid = [s.lidar_iou for s in frames if s.lidar_iou is not None]
    return ObjectScores(
        image_miou=mean_or_none(img),
        f=mean_or_none(s.boundary_f for s in frames),
        lidar_miou=mean_or_none(lid),
        image_frames=len(img),
        lidar_frames=len(lid),
    )


@dataclass
class CellScores:
    """A table cell: the means over objects (mIoU) and how many objects entered each."""

    image_miou: float | None
    j: float | None
    f: float | None
    jf: float | None
    lidar_miou: float | None
    image_objects: int
    lidar_objects: int


def cell_scores(objects: Iterable[ObjectScores]) -> CellScores:
    """Mean over objects of their per-object means (objects without a value are left out)."""
    objects = list(objects)
    j = mean_or_none(o.j for o in objects)
    f = mean_or_none(o.f for o in objects)
    return CellScores(
        image_miou=j,
        j=j,
        f=f,
        jf=j_and_f(j, f),
        lidar_miou=mean_or_none(o.lidar_miou for o in objects),
        image_objects=sum(o.image_miou is not None for o in objects),
        lidar_objects=sum(o.lidar_miou is not None for o in objects),
    )


__all__ = [
    "DAVIS_BOUND_TH",
    "BoundaryCounts",
    "CellScores",
    "FrameScores",
    "GroundTruthBoundary",
    "ObjectScores",
    "boundary_counts",
    "boundary_f",
    "boundary_map",
    "boundary_tolerance",
    "cell_scores",
    "disk",
    "iou_counts",
    "j_and_f",
    "lidar_iou",
    "mask_iou",
    "mean_or_none",
    "object_scores",
    "pooled_iou",
]
