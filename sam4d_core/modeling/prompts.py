"""Prompts of one object on one frame, and their conversion to the prompt encoders' clicks.

A camera prompt is in that camera's original pixels, a LiDAR prompt in the LiDAR frame (metres).
Box corners become clicks with labels 2 / 3 (as SAM2 encodes boxes); clicks have labels 1
(positive) / 0 (negative).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sam4d_core.modeling.records import ArrayLike, as_tensor
from sam4d_core.modeling.sam import (
    NEGATIVE_LABEL,
    NOT_A_POINT_LABEL,
    PAD_LABEL,
    bev_boxes_to_points_3d,
)


@dataclass
class CameraPrompt:
    """Prompts of one object on one camera, in that camera's original pixel coordinates.

    Attributes:
        points: (N, 2) click positions (x, y) in pixels, or None.
        labels: (N,) 1 positive, 0 negative (required with ``points``).
        box: (4,) ``[x0, y0, x1, y1]`` in pixels, or None.
        mask: (H, W) bool / 0-1 float mask or logits, or None. Without clicks it is taken as the
            output (``use_mask_input_as_output_without_sam``; thresholded at 0.5 after resizing
            to the model input); with clicks it is a dense prompt, resized to the stride-4 grid
            (any size: a camera-resolution mask, or the previous :attr:`ImageOutput.mask_logits`
            of this camera to refine with more clicks, SAM2's ``prev_sam_mask_logits``).
    """

    points: ArrayLike | None = None
    labels: ArrayLike | None = None
    box: ArrayLike | None = None
    mask: ArrayLike | None = None


@dataclass
class LidarPrompt:
    """Prompts of one object on the LiDAR sweep (LiDAR frame, metres).

    Attributes:
        points: (N, 3) click positions, or None.
        labels: (N,) 1 positive, 0 negative (required with ``points``).
        box: (6,) ``[x_min, y_min, z_min, x_max, y_max, z_max]``, or (4,) a BEV box
            ``[x_min, y_min, x_max, y_max]`` (heights from the sweep's points inside it), or None.
        mask: (N_points,) per-point bool / 0-1 float mask (or logits), or None. Without clicks
            it is taken as the output (``use_mask_input_as_output_without_sam``); with clicks it
            is a dense prompt (averaged into the stride-4 voxels).
        voxel_mask: (N4,) a dense prompt per stride-4 voxel, e.g. the previous
            :attr:`LidarOutput.voxel_logits` when more clicks refine an object on the same frame
            (SAM2's ``prev_sam_mask_logits``; clamp to +-32 as SAM2 does). Never taken as output.
    """

    points: ArrayLike | None = None
    labels: ArrayLike | None = None
    box: ArrayLike | None = None
    mask: ArrayLike | None = None
    voxel_mask: ArrayLike | None = None


@dataclass
class ObjectPrompts:
    """All prompts of one object on the current frame (any may be absent).

    Attributes:
        cameras: camera index (in the frame's camera list) -> :class:`CameraPrompt`.
        lidar: :class:`LidarPrompt` or None.
    """

    cameras: dict[int, CameraPrompt] = field(default_factory=dict)
    lidar: LidarPrompt | None = None

    def _views(self) -> list[CameraPrompt | LidarPrompt]:
        views: list[CameraPrompt | LidarPrompt] = list(self.cameras.values())
        if self.lidar is not None:
            views.append(self.lidar)
        return views

    @property
    def has_clicks(self) -> bool:
        """Any point or box in any view."""
        return any(v.points is not None or v.box is not None for v in self._views())

    @property
    def has_masks(self) -> bool:
        """Any mask prompt that can be taken as output (camera masks, per-point LiDAR masks)."""
        return any(v.mask is not None for v in self._views())

    @property
    def is_empty(self) -> bool:
        """No clicks, box, mask or voxel mask on any view: plain tracking."""
        voxel = self.lidar is not None and self.lidar.voxel_mask is not None
        return not (self.has_clicks or self.has_masks or voxel)

    def max_points_per_view(self) -> int:
        """Clicks plus box corners (2 per box) of the view with the most of them."""
        best = 0
        for v in self._views():
            n = 0 if v.points is None else int(np.prod(np.shape(v.points)[:-1]))
            n += 2 if v.box is not None else 0
            best = max(best, n)
        return best


def lidar_prompt_is_empty(p: LidarPrompt) -> bool:
    return p.points is None and p.box is None and p.mask is None


def _labels_for(points: ArrayLike, labels: ArrayLike | None, dev: torch.device) -> torch.Tensor:
    """(N,) int64 click labels of ``points`` (N, 2 or 3), checked to be 0 or 1."""
    if labels is None:
        raise ValueError("point prompts need labels (1 positive, 0 negative)")
    lab = as_tensor(labels, torch.int64, dev).reshape(-1)
    if lab.numel() != len(points):
        raise ValueError(f"{lab.numel()} labels for {len(points)} points")
    if bool(((lab != NEGATIVE_LABEL) & (lab != 1)).any()):
        raise ValueError("click labels must be 0 (negative) or 1 (positive)")
    return lab


def camera_prompt_points(
    cp: CameraPrompt | None, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Box corners (labels 2, 3) first, then clicks (as SAM2 orders them): (n, 2), (n,)."""
    coords = [torch.zeros(0, 2, device=dev)]
    labels = [torch.zeros(0, dtype=torch.int64, device=dev)]
    if cp is not None:
        if cp.box is not None:
            box = as_tensor(cp.box, torch.float32, dev).reshape(2, 2)
            coords.append(box)
            labels.append(torch.tensor([2, 3], dtype=torch.int64, device=dev))
        if cp.points is not None:
            pts = as_tensor(cp.points, torch.float32, dev).reshape(-1, 2)
            coords.append(pts)
            labels.append(_labels_for(pts, cp.labels, dev))
    return torch.cat(coords), torch.cat(labels)


def lidar_prompt_points(
    lp: LidarPrompt | None, sweep_xyz: torch.Tensor, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D box corners first (labels 2, 3), then clicks: (n, 3), (n,)."""
    coords = [torch.zeros(0, 3, device=dev)]
    labels = [torch.zeros(0, dtype=torch.int64, device=dev)]
    if lp is not None:
        if lp.box is not None:
            box = as_tensor(lp.box, torch.float32, dev).reshape(-1)
            if box.numel() == 4:
                c, lab = bev_boxes_to_points_3d(box[None], points=sweep_xyz)
            elif box.numel() == 6:
                c = box.reshape(1, 2, 3)
                lab = torch.tensor([[2, 3]], dtype=torch.int64, device=dev)
            else:
                raise ValueError("a LiDAR box is (4,) BEV [x0, y0, x1, y1] or (6,) 3D")
            coords.append(c[0])
            labels.append(lab[0].to(torch.int64))
        if lp.points is not None:
            pts = as_tensor(lp.points, torch.float32, dev).reshape(-1, 3)
            coords.append(pts)
            labels.append(_labels_for(pts, lp.labels, dev))
    return torch.cat(coords), torch.cat(labels)


def pad_prompt_points(
    rows: list[tuple[torch.Tensor, torch.Tensor]], dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object (coords (n, dim), labels (n,)) -> (B, N, dim) and (B, N) padded with PAD_LABEL.

    An object without points gets one "not a point" (label -1), as the released head pads a
    modality without clicks.
    """
    filled = []
    for coords, labels in rows:
        if labels.numel() == 0:
            coords = torch.zeros(1, dim, device=device)
            labels = torch.full((1,), NOT_A_POINT_LABEL, dtype=torch.int64, device=device)
        filled.append((coords, labels))
    n = max(c.shape[0] for c, _ in filled)
    b = len(filled)
    out_c = torch.zeros(b, n, dim, device=device)
    out_l = torch.full((b, n), PAD_LABEL, dtype=torch.int64, device=device)
    for i, (c, lab) in enumerate(filled):
        out_c[i, : c.shape[0]] = c
        out_l[i, : lab.shape[0]] = lab
    return out_c, out_l


__all__ = [
    "CameraPrompt",
    "LidarPrompt",
    "ObjectPrompts",
    "camera_prompt_points",
    "lidar_prompt_is_empty",
    "lidar_prompt_points",
    "pad_prompt_points",
]
