"""Choosing an object's multimask outputs in the cameras and in the LiDAR together.

In multimask mode (one click, and the tracked frames) each decoder head predicts 3 masks and the
released model keeps, per view, the one with the highest predicted IoU. The two heads see the
same object, so their choices can be checked against each other: a camera mask and a LiDAR mask
of the same object cover the same LiDAR points once those are projected into the camera.
With ``SAM4DConfig.cross_modal_selection`` = g > 0 the pair (camera mask i, LiDAR mask j) is chosen
by

    predicted IoU_camera[i] + predicted IoU_LiDAR[j] + g * agreement[i, j]

where the agreement is the IoU, over the LiDAR points that project in front of the camera and inside
its image, of "the point's pixel is in camera mask i" (the stride-4 logits sampled bilinearly
there, as the masks are upsampled for output) and "the point is in LiDAR mask j" (its
devoxelized logit).
With several cameras the LiDAR mask is chosen on the sum over cameras (each camera taking its best
mask for that LiDAR mask), then each camera's mask given it. An object that no camera sees in the
LiDAR gets agreements of 0 and keeps the released choice.

Why: the IoU head of a small model trained on a CPU ranks its three masks poorly, while the
geometry linking the two sensors is exact (measurements: ``python -m
training.analysis.mask_selection`` and ``training/RESULTS.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam4d_core.modeling.records import ImageFeatures, LidarFeatures
from sam4d_core.modeling.sparse import devoxelize

_MIN_DEPTH = 0.1
"""Metres in front of a camera for a point to count as seen by it."""


@dataclass
class PointPixels:
    """The LiDAR points one camera sees.

    Attributes:
        rows: (P,) int64 rows of the points that project inside the camera image.
        grid: (P, 2) float32 their image positions as ``grid_sample`` coordinates (x, y in
            [-1, 1] across the image, ``align_corners=False``): valid at any mask resolution.
    """

    rows: torch.Tensor
    grid: torch.Tensor


def point_pixels(
    lidar: LidarFeatures, image: ImageFeatures, input_size: tuple[int, int]
) -> list[PointPixels]:
    """Per present camera (``image.camera_ids`` order), the points it sees.

    Args:
        input_size: (H, W) model input size, the one ``image.K`` refers to.
    """
    xyz = lidar.points_xyz.float()
    big_h, big_w = input_size
    cam_from_lidar = torch.linalg.inv(image.lidar_from_cam.float())
    out = []
    for ci in range(image.num_cameras):
        pc = xyz @ cam_from_lidar[ci, :3, :3].T + cam_from_lidar[ci, :3, 3]
        uvw = pc @ image.K[ci].float().T
        z = uvw[:, 2].clamp(min=1e-6)
        # Pixel centres are at integers: the image spans [-0.5, W - 0.5).
        gx = (uvw[:, 0] / z + 0.5) * (2.0 / big_w) - 1.0
        gy = (uvw[:, 1] / z + 0.5) * (2.0 / big_h) - 1.0
        seen = (pc[:, 2] > _MIN_DEPTH) & (gx >= -1) & (gx < 1) & (gy >= -1) & (gy < 1)
        rows = torch.nonzero(seen).flatten()
        out.append(PointPixels(rows, torch.stack([gx[rows], gy[rows]], dim=-1)))
    return out


def lidar_point_logits(lidar: LidarFeatures, voxel_logits: torch.Tensor) -> torch.Tensor:
    """(B, M, N) per-point logits of (B, M, N4) stride-4 voxel logits (the model's
    devoxelization)."""
    b, m, n4 = voxel_logits.shape
    flat = voxel_logits.reshape(b * m, n4).float()
    return devoxelize(flat.t(), lidar.devox_rows, lidar.devox_weights).t().reshape(b, m, -1)


def mask_agreement(
    camera_logits: torch.Tensor, point_logits: torch.Tensor, seen: PointPixels
) -> torch.Tensor:
    """(B, Mc, Ml) IoU over the points a camera sees between each camera mask and each LiDAR
    mask (0 where both are empty there).

    Args:
        camera_logits: (B, Mc, h4, w4) camera mask logits.
        point_logits: (B, Ml, N) per-point LiDAR logits (:func:`lidar_point_logits`).
        seen: that camera's :class:`PointPixels`.
    """
    b, mc, h4, w4 = camera_logits.shape
    if seen.rows.numel() == 0:
        return camera_logits.new_zeros(b, mc, point_logits.shape[1]).float()
    grid = seen.grid[None, None].expand(b * mc, 1, -1, 2)
    sampled = F.grid_sample(
        camera_logits.reshape(b * mc, 1, h4, w4).float(),
        grid,
        mode="bilinear",
        align_corners=False,
    )
    cam = (sampled.reshape(b, mc, -1) > 0).float()  # (B, Mc, P)
    lid = (point_logits[:, :, seen.rows] > 0).float()  # (B, Ml, P)
    inter = torch.einsum("bcp,blp->bcl", cam, lid)
    union = cam.sum(-1)[:, :, None] + lid.sum(-1)[:, None, :] - inter
    return inter / union.clamp(min=1.0)


def select_jointly(
    camera_ious: list[torch.Tensor],
    lidar_ious: torch.Tensor,
    agreements: list[torch.Tensor],
    gain: float,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The chosen mask of every camera and of the LiDAR (module docstring).

    Args:
        camera_ious: per camera (B, Mc) predicted IoUs.
        lidar_ious: (B, Ml) predicted IoUs.
        agreements: per camera (B, Mc, Ml) from :func:`mask_agreement`.
        gain: weight of the agreement.

    Returns:
        (per camera (B,) int64 index, (B,) int64 LiDAR index).
    """
    scores = [
        ci.float()[:, :, None] + gain * a for ci, a in zip(camera_ious, agreements, strict=True)
    ]
    # For every LiDAR mask, each camera's best camera mask; the LiDAR mask on the total.
    total = lidar_ious.float() + sum(s.amax(dim=1) for s in scores)  # (B, Ml)
    best_lidar = total.argmax(dim=-1)
    rows = torch.arange(lidar_ious.shape[0], device=lidar_ious.device)
    best_cameras = [s[rows, :, best_lidar].argmax(dim=-1) for s in scores]
    return best_cameras, best_lidar


__all__ = [
    "PointPixels",
    "lidar_point_logits",
    "mask_agreement",
    "point_pixels",
    "select_jointly",
]
