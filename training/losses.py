"""SAM2's training losses for SAM4D's two modalities.

Per view (each camera with ground truth, and the LiDAR) and per decoding (the first prediction
of a frame and every corrective round), for B objects with M mask outputs (3 in multimask mode):

- mask: ``focal_w * focal + dice_w * dice`` of each output; in multimask mode only the output with
  the lowest combined loss counts (SAM: the best of the three). Images: the stride-4 logits are
  upsampled bilinearly to the ground truth's resolution (``image_loss_at="gt"``, as SAM2 does with
  its high-resolution masks), or the ground truth is area-downsampled to the logits' grid
  (``"logits"``, soft targets). LiDAR: per point (the decoder's per-point logits), points labelled
  -1 (ignore) excluded from every sum and mean;
- IoU prediction: L1 (SAM2.1) or MSE between each output's predicted IoU and its actual IoU with
  the ground truth (binarized at logit 0); on all outputs (``supervise_all_iou``) or the best;
- presence: BCE of the view's object-score logit against "the object has pixels / points here";
- the mask and IoU terms count only where the object is present in that view (SAM2's
  ``target_obj`` factor): an absent or fully occluded object is supervised by presence alone.

Which masks: by default the decoder's masks before an object predicted absent is given the
constant NO_OBJ_SCORE mask (``mask_loss_on="raw"``, see :class:`~.config.LossConfig`), SAM2 uses
the replaced ones (``"sam2"``).

Normalisation as SAM2: the focal loss is a mean over pixels (points) per object; every term is
summed over objects and divided by the number of objects B; terms add up over decodings and
frames. Cameras are averaged (so that a rig with more cameras does not weigh images more), then
the modalities are weighted (``image_weight``, ``lidar_weight``).

An object whose output on a view was its own mask prompt (taken as output) is excluded on that
view with a zero weight (``weights``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .config import LossConfig


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean focal loss over the last dimension (RetinaNet / SAM2).

    Args:
        logits, targets: (..., P); targets in [0, 1].
        valid: (..., P) or broadcastable bool: elements that count (others are excluded from the
            sum and from the count).

    Returns:
        (...,) per-row mean (0 for a row without valid elements).
    """
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    if valid is None:
        return loss.mean(-1)
    v = valid.to(loss.dtype).expand_as(loss)
    return (loss * v).sum(-1) / v.sum(-1).clamp(min=1.0)


def dice_loss(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """SAM2's dice loss ``1 - (2 |p t| + 1) / (|p| + |t| + 1)`` over the last dimension: (...,)."""
    p = logits.sigmoid()
    if valid is not None:
        v = valid.to(p.dtype).expand_as(p)
        p = p * v
        targets = targets * v
    num = 2 * (p * targets).sum(-1)
    den = p.sum(-1) + targets.sum(-1)
    return 1 - (num + 1) / (den + 1)


def actual_iou(
    logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``targets > 0.5`` over the last dimension (empty union: 0, as
    SAM2's ``area_i / clamp(area_u, 1)``): (...,)."""
    pred = logits > 0
    gt = targets > 0.5
    if valid is not None:
        v = valid.expand_as(pred)
        pred = pred & v
        gt = gt & v
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return inter / union.clamp(min=1.0)


@dataclass
class ViewLossTerms:
    """Losses of B objects on one view for one decoding (already multiplied by presence and
    object weights, summed over objects, not yet divided by B).

    Attributes:
        focal, dice, iou, presence: sums over objects.
        num_objects: B.
    """

    focal: torch.Tensor
    dice: torch.Tensor
    iou: torch.Tensor
    presence: torch.Tensor
    num_objects: int


def view_losses(
    mask_logits: torch.Tensor,
    targets: torch.Tensor,
    pred_ious: torch.Tensor,
    score_logits: torch.Tensor,
    cfg: LossConfig,
    valid: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> ViewLossTerms:
    """Losses of one view and one decoding.

    Args:
        mask_logits: (B, M, P) mask logits of the M outputs, flattened (pixels or points).
        targets: (B, P) float ground truth in [0, 1].
        pred_ious: (B, M) predicted IoUs.
        score_logits: (B,) object-score logits.
        valid: (P,) or (B, P) bool elements that count (LiDAR: label != -1).
        weights: (B,) per-object weight (0 excludes an object entirely).

    Returns:
        :class:`ViewLossTerms`.
    """
    b, m = mask_logits.shape[:2]
    mask_logits = mask_logits.float()
    t = targets.float()[:, None].expand(-1, m, -1)
    v = None
    if valid is not None:
        v = valid if valid.dim() == 1 else valid[:, None]
        v = v.expand_as(t) if v.dim() == t.dim() else v
    focal = sigmoid_focal_loss(mask_logits, t, cfg.focal_alpha, cfg.focal_gamma, v)  # (B, M)
    dice = dice_loss(mask_logits, t, v)  # (B, M)
    with torch.no_grad():
        real_iou = actual_iou(mask_logits, t, v)  # (B, M)
    if cfg.iou_l1:
        iou_l = F.l1_loss(pred_ious.float(), real_iou, reduction="none")
    else:
        iou_l = F.mse_loss(pred_ious.float(), real_iou, reduction="none")
    rows = torch.arange(b, device=mask_logits.device)
    if m > 1:
        combo = focal * cfg.focal + dice * cfg.dice
        best = combo.argmin(dim=-1)
        focal_b, dice_b = focal[rows, best], dice[rows, best]
        iou_b = iou_l.mean(-1) if cfg.supervise_all_iou else iou_l[rows, best]
    else:
        focal_b, dice_b, iou_b = focal[:, 0], dice[:, 0], iou_l[:, 0]
    tgt = targets.float()
    if valid is not None:
        tgt = tgt * (valid if valid.dim() == 2 else valid[None]).float()
    present = (tgt > 0).any(dim=-1).float()  # (B,); soft targets: any coverage counts
    presence = F.binary_cross_entropy_with_logits(score_logits.float(), present, reduction="none")
    w = torch.ones(b, device=mask_logits.device) if weights is None else weights.float()
    return ViewLossTerms(
        focal=(focal_b * present * w).sum(),
        dice=(dice_b * present * w).sum(),
        iou=(iou_b * present * w).sum(),
        presence=(presence * w).sum(),
        num_objects=b,
    )


def image_targets_for_logits(
    logits: torch.Tensor, gt: torch.Tensor, mode: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brings camera logits and ground truth to a common grid.

    Args:
        logits: (B, M, h, w) stride-4 mask logits.
        gt: (B, H, W) bool/float ground truth at the camera's resolution.
        mode: ``"gt"`` (upsample logits bilinearly to (H, W)) or ``"logits"`` (area-downsample
            the ground truth to (h, w): soft targets).

    Returns:
        (B, M, P) logits and (B, P) targets, flattened.
    """
    b, m, h, w = logits.shape
    big_h, big_w = gt.shape[-2:]
    if mode == "gt":
        if (h, w) != (big_h, big_w):
            logits = F.interpolate(
                logits.float(), size=(big_h, big_w), mode="bilinear", align_corners=False
            )
        return logits.flatten(2), gt.float().flatten(1)
    if mode == "logits":
        tgt = gt.float()
        if (h, w) != (big_h, big_w):
            tgt = F.interpolate(tgt[:, None], size=(h, w), mode="area")[:, 0]
        return logits.float().flatten(2), tgt.flatten(1)
    raise ValueError(f"unknown image_loss_at {mode!r} (gt, logits)")


@dataclass
class LossAccumulator:
    """Sums the weighted terms of many views, decodings and frames (SAM2's normalisation).

    ``add_image(...)`` for each camera of a decoding (averaged over the cameras of that decoding
    by :meth:`end_decoding`), ``add_lidar(...)``; :meth:`total` gives the weighted loss and
    :meth:`scalars` the unweighted parts for logging.
    """

    cfg: LossConfig
    parts: dict[str, torch.Tensor] = field(default_factory=dict)
    _cams: list[ViewLossTerms] = field(default_factory=list)
    decodings: int = 0

    def _add(self, key: str, value: torch.Tensor) -> None:
        self.parts[key] = self.parts[key] + value if key in self.parts else value

    def add_image(self, terms: ViewLossTerms) -> None:
        self._cams.append(terms)

    def add_lidar(self, terms: ViewLossTerms) -> None:
        n = max(terms.num_objects, 1)
        for k in ("focal", "dice", "iou", "presence"):
            self._add(f"lidar_{k}", getattr(terms, k) / n)

    def end_decoding(self) -> None:
        """Closes one decoding: the cameras' terms are averaged."""
        if self._cams:
            c = len(self._cams)
            for k in ("focal", "dice", "iou", "presence"):
                s = sum(getattr(t, k) / max(t.num_objects, 1) for t in self._cams)
                self._add(f"image_{k}", s / c)
        self._cams = []
        self.decodings += 1

    def total(self) -> torch.Tensor:
        cfg = self.cfg
        w = {"focal": cfg.focal, "dice": cfg.dice, "iou": cfg.iou, "presence": cfg.presence}
        out = None
        for key, val in self.parts.items():
            modality, term = key.split("_", 1)
            mw = cfg.image_weight if modality == "image" else cfg.lidar_weight
            x = val * (w[term] * mw)
            out = x if out is None else out + x
        if out is None:
            raise ValueError("no loss terms were added")
        return out

    def scalars(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in self.parts.items()}


__all__ = [
    "LossAccumulator",
    "ViewLossTerms",
    "actual_iou",
    "dice_loss",
    "image_targets_for_logits",
    "sigmoid_focal_loss",
    "view_losses",
]
