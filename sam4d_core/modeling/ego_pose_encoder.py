"""Ego-pose encoder of SAM4D's object pointers, and a numerically stable SO(3) log map.

Each object pointer in the memory bank comes from a past frame t'. Besides its temporal encoding
(frame gap, see :meth:`~.sam_head.SAMHead.pointer_temporal_pe`), SAM4D adds an encoding of how the
vehicle moved since then: the relative pose ``T_rel = A P_t^-1 P_t' A^-1`` (ego poses P are
LiDAR -> world; A is the LiDAR augmentation matrix, identity at inference) becomes the 6-vector
``(so3_log(R_rel) / pi, t_rel / |d_max|)`` with a learnable scale ``d_max`` (a 0-d parameter,
official key ``ego_pose_encoder.d_max``), mapped to the memory width by an MLP.

Layer sizes (as in the released code): Linear(6, C) -> ReLU -> Linear(C, C), C = 256, keys
``ego_pose_encoder.fc.0.*`` and ``ego_pose_encoder.fc.2.*``; ``d_max`` initialised to 1 m.

The released log map takes ``arccos`` of the clamped trace and divides the skew part by
``sin(theta)``; it loses the axis near pi and clamps theta >= 1.4e-3. :func:`so3_log` agrees with it
for ordinary inter-frame rotations and stays exact near 0 and near pi.
"""

from __future__ import annotations

import math

import torch
from torch import nn

_SMALL_ANGLE = 1e-3  # below: theta / sin(theta) by its series (error ~ theta^4 / 120)
_NEAR_PI_COS = -0.9  # below (theta > ~2.69 rad): axis from the symmetric part


def so3_log(rot: torch.Tensor) -> torch.Tensor:
    """Rotation matrices -> axis-angle vectors ``omega = theta * axis``, theta in [0, pi].

    Stable everywhere: near 0 the vector comes from the skew part with the series of
    theta / sin(theta); near pi, where the skew part vanishes, the axis comes from the symmetric
    part ``(R + R^T) / 2 = cos(theta) I + (1 - cos(theta)) a a^T`` and its sign from the skew part.
    At exactly pi, omega and -omega are the same rotation; either may be returned.

    Args:
        rot: (..., 3, 3) rotation matrices.

    Returns:
        (..., 3) axis-angle vectors in ``rot``'s dtype. Gradients are finite everywhere.
    """
    r = rot
    dtype = r.dtype
    trace = r[..., 0, 0] + r[..., 1, 1] + r[..., 2, 2]
    cos = ((trace - 1) * 0.5).clamp(-1.0, 1.0)
    # v = sin(theta) * axis
    v = 0.5 * torch.stack(
        [r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]],
        dim=-1,
    )
    # clamp_min before sqrt keeps the gradient finite at v = 0 (identity).
    sin = (v * v).sum(dim=-1).clamp_min(torch.finfo(dtype).tiny).sqrt()
    theta = torch.atan2(sin, cos)

    # Ordinary and small angles: omega = v * theta / sin(theta).
    series = 1.0 + theta * theta / 6.0
    factor = torch.where(theta < _SMALL_ANGLE, series, theta / sin.clamp_min(1e-6))
    omega_regular = v * factor.unsqueeze(-1)

    # Near pi: a a^T = (sym - cos I) / (1 - cos); take the best-conditioned column.
    sym = 0.5 * (r + r.transpose(-1, -2))
    eye = torch.eye(3, dtype=dtype, device=r.device)
    aat = (sym - cos[..., None, None] * eye) / (1.0 - cos).clamp_min(1e-6)[..., None, None]
    diag = torch.diagonal(aat, dim1=-2, dim2=-1).clamp_min(0.0)
    best = diag.argmax(dim=-1, keepdim=True)  # (..., 1)
    col = torch.gather(aat, -1, best.unsqueeze(-2).expand(*aat.shape[:-1], 1)).squeeze(-1)
    norm = torch.gather(diag, -1, best).clamp_min(1e-12).sqrt()
    axis = col / norm
    # a a^T fixes the axis up to sign; v = sin(theta) a with sin > 0 below pi gives it.
    sign = torch.where((axis * v).sum(dim=-1, keepdim=True) < 0, -1.0, 1.0).to(dtype)
    omega_pi = axis * sign * theta.unsqueeze(-1)

    return torch.where((cos < _NEAR_PI_COS).unsqueeze(-1), omega_pi, omega_regular)


def so3_exp(omega: torch.Tensor) -> torch.Tensor:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3) (Rodrigues; used by tests and data
    augmentation)."""
    theta = omega.norm(dim=-1, keepdim=True)
    small = theta < _SMALL_ANGLE
    safe = torch.where(small, torch.ones_like(theta), theta)
    a = torch.where(small, 1.0 - theta**2 / 6.0, torch.sin(safe) / safe)  # sin(t)/t
    b = torch.where(small, 0.5 - theta**2 / 24.0, (1.0 - torch.cos(safe)) / safe**2)  # (1-cos)/t^2
    x, y, z = omega.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*omega.shape, 3)
    eye = torch.eye(3, dtype=omega.dtype, device=omega.device).expand_as(k)
    return eye + a[..., None] * k + b[..., None] * (k @ k)


class EgoPoseEncoder(nn.Module):
    """Encode the ego motion between a past frame and the current one (``ego_pose_encoder``).

    Args:
        dim: output width (the memory width, 256).
        d_max: initial translation scale in metres (learnable; its absolute value is used).
    """

    def __init__(self, dim: int = 256, d_max: float = 1.0) -> None:
        super().__init__()
        self.dim = dim
        self.d_max = nn.Parameter(torch.tensor(float(d_max)))
        self.fc = nn.Sequential(nn.Linear(6, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))

    @staticmethod
    def relative_pose(
        cur_pose: torch.Tensor,
        prev_pose: torch.Tensor,
        lidar_aug: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``T_rel = A P_cur^-1 P_prev A^-1``: the past LiDAR frame expressed in the current one.

        Args:
            cur_pose: (..., 4, 4) current LiDAR -> world.
            prev_pose: (..., 4, 4) past LiDAR -> world.
            lidar_aug: optional (4, 4) or (..., 4, 4) LiDAR augmentation matrix.

        Returns:
            (..., 4, 4) in float64: world poses are kilometres from the origin, and float32 would
            leave centimetre errors in their difference.
        """
        p_cur = cur_pose.to(torch.float64)
        p_prev = prev_pose.to(torch.float64)
        rel = torch.linalg.solve(p_cur, p_prev)  # P_cur^-1 P_prev without forming the inverse
        if lidar_aug is not None:
            a = lidar_aug.to(device=rel.device, dtype=torch.float64)
            rel = a @ rel @ torch.linalg.inv(a)
        return rel

    def encode(self, t_rel: torch.Tensor) -> torch.Tensor:
        """(..., 4, 4) relative poses -> (..., dim) encodings."""
        rot = so3_log(t_rel[..., :3, :3]) / math.pi  # in [-1, 1]
        d_max = self.d_max.abs() + 1e-6  # abs keeps the learned scale positive; 1e-6: no div by 0
        trans = t_rel[..., :3, 3].to(d_max.dtype) / d_max
        x = torch.cat([rot.to(trans.dtype), trans], dim=-1)
        return self.fc(x.to(self.fc[0].weight.dtype))

    def forward(
        self,
        cur_pose: torch.Tensor,
        prev_pose: torch.Tensor,
        lidar_aug: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(..., 4, 4) current and past LiDAR -> world poses -> (..., dim) pose encodings."""
        return self.encode(self.relative_pose(cur_pose, prev_pose, lidar_aug))


__all__ = ["EgoPoseEncoder", "so3_exp", "so3_log"]
