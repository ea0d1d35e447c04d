"""Where MCMA's tokens are, and how far apart: the geometry of MCMA's optional distance bias.

Not part of the released SAM4D (its memory attention knows places only through the positional
encodings added to the keys, which need not make it attend by place; ``python -m
training.analysis.attention_locality`` probes that). The distance bias puts the place into the
logits directly, under ego motion and across modalities: ``logit -= gain * distance(query place, key
place)`` (see :class:`~sam4d_core.modeling.memory_attention.MemoryAttention`).

A token's place, in the current LiDAR frame:

- LiDAR token: a point, the mean xyz of its stride-16 voxel;
- image token: a ray, from the camera centre through the cell centre (``(j + 0.5) * stride``,
  as UMPE's frustum);
- object pointer (and the no-memory token): no place.

A memory's places are moved into the current frame with ``T_rel`` (``lidar_t <- lidar_t'``),
as UMPE moves its encodings.

Normalised squared distances (dimensionless, the logit penalty at gain 1):

- point to point: ``|p - q|^2 / sigma_m^2``;
- ray to ray: ``2 (1 - cos angle) / sigma_rad^2`` (the squared angle for small angles);
- ray to point (either way): the same with the angle between the ray and the direction from
  the ray's origin to the point (a point behind the camera is far);
- a pair with a token without place: ``unplaced``;

all clamped to ``maximum``. Places are grouped in segments (one LiDAR sweep, one camera of one
frame, a run of pointers) so that a ray segment's single origin keeps every block a matrix
product.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sam4d_core.modeling.umpe import invert_intrinsics, transform_points


@dataclass(eq=False)
class PlaceSegment:
    """The places of a run of consecutive tokens.

    Attributes:
        kind: ``"points"``, ``"rays"`` or ``"none"`` (tokens without a place).
        count: number of tokens.
        xyz: points: (count, 3) float32 positions; rays: (3,) their common origin; none: None.
        directions: rays: (count, 3) float32 unit directions; otherwise None.

    Identity-hashed: distance blocks between segments are computed once per MCMA call and shared
    by every object whose memory holds the segment.
    """

    kind: str
    count: int
    xyz: torch.Tensor | None = None
    directions: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("points", "rays", "none"):
            raise ValueError(f"unknown place kind {self.kind!r}")
        if self.kind == "points" and (self.xyz is None or self.xyz.shape != (self.count, 3)):
            raise ValueError("a points segment needs xyz (count, 3)")
        if self.kind == "rays" and (
            self.xyz is None
            or self.xyz.shape != (3,)
            or self.directions is None
            or self.directions.shape != (self.count, 3)
        ):
            raise ValueError("a rays segment needs an origin (3,) and directions (count, 3)")


@dataclass(frozen=True)
class DistanceScales:
    """Scales of the normalised distances (see the module docstring).

    Attributes:
        sigma_m: point-to-point scale (metres).
        sigma_rad: angular scale (radians).
        unplaced: distance of a pair involving a token without place.
        maximum: clamp of every distance.
    """

    sigma_m: float = 1.0
    sigma_rad: float = 0.026
    unplaced: float = 10.0
    maximum: float = 50.0

    def __post_init__(self) -> None:
        if not (self.sigma_m > 0 and self.sigma_rad > 0):
            raise ValueError("distance scales must be > 0")
        if not (0 <= self.unplaced <= self.maximum):
            raise ValueError("need 0 <= unplaced <= maximum")


def lidar_token_places(token_xyz: torch.Tensor, T_rel: torch.Tensor | None = None) -> PlaceSegment:
    """Places of LiDAR tokens: token_xyz (N, 3) LiDAR frame; ``T_rel`` (4, 4) moves them."""
    xyz = token_xyz.float()
    if T_rel is not None:
        xyz = transform_points(T_rel.float(), xyz)
    return PlaceSegment("points", xyz.shape[0], xyz=xyz)


def image_token_places(
    K: torch.Tensor,
    lidar_from_cam: torch.Tensor,
    grid: tuple[int, int],
    stride: int,
    T_rel: torch.Tensor | None = None,
) -> list[PlaceSegment]:
    """Rays of the stride-``stride`` cells of each camera, one segment per camera.

    Args:
        K: (Ncam, 3, 3) intrinsics at the model input size.
        lidar_from_cam: (Ncam, 4, 4).
        grid: (h, w) cells per camera; cells in row-major order, as the tokens.
        T_rel: optional (4, 4) applied last (a memory made on another frame).
    """
    h, w = grid
    dev = K.device
    v, u = torch.meshgrid(
        (torch.arange(h, device=dev, dtype=torch.float32) + 0.5) * stride,
        (torch.arange(w, device=dev, dtype=torch.float32) + 0.5) * stride,
        indexing="ij",
    )
    uv1 = torch.stack((u, v, torch.ones_like(u)), dim=-1).reshape(-1, 3)  # (h w, 3)
    M = lidar_from_cam.float()
    if T_rel is not None:
        M = T_rel.float() @ M
    Kinv = invert_intrinsics(K.float())
    rot = M[:, :3, :3] @ Kinv  # (Ncam, 3, 3): pixel (u, v, 1) -> LiDAR direction
    dirs = F.normalize(torch.einsum("cij,nj->cni", rot, uv1), dim=-1)
    return [
        PlaceSegment("rays", h * w, xyz=M[c, :3, 3], directions=dirs[c]) for c in range(M.shape[0])
    ]


def unplaced(count: int) -> PlaceSegment:
    """``count`` tokens without place (object pointers, the no-memory token)."""
    return PlaceSegment("none", count)


def segment_distance(q: PlaceSegment, k: PlaceSegment, scales: DistanceScales) -> torch.Tensor:
    """Normalised squared distances between two segments' places: (q.count, k.count)."""
    if q.kind == "none" or k.kind == "none":
        ref = q.xyz if q.xyz is not None else k.xyz
        dev = ref.device if ref is not None else None
        return torch.full((q.count, k.count), scales.unplaced, device=dev)
    # In-place arithmetic on the one (q.count, k.count) result: these blocks are as large as the
    # attention matrix, and every temporary costs an allocation of that size.
    if q.kind == "points" and k.kind == "points":
        assert q.xyz is not None and k.xyz is not None
        d = torch.cdist(q.xyz, k.xyz).square_().mul_(1.0 / scales.sigma_m**2)
    else:
        if q.kind == "rays" and k.kind == "rays":
            assert q.directions is not None and k.directions is not None
            d = q.directions @ k.directions.T
        elif q.kind == "rays":
            assert q.directions is not None and q.xyz is not None and k.xyz is not None
            d = q.directions @ F.normalize(k.xyz - q.xyz, dim=-1).T
        else:
            assert k.directions is not None and k.xyz is not None and q.xyz is not None
            d = F.normalize(q.xyz - k.xyz, dim=-1) @ k.directions.T
        # cos -> 2 (1 - cos) / sigma^2
        inv = 2.0 / scales.sigma_rad**2
        d.mul_(-inv).add_(inv)
    return d.clamp_(0.0, scales.maximum)


class DistanceTable:
    """Distances between query segments and key segments, each block computed once."""

    def __init__(self, scales: DistanceScales) -> None:
        self.scales = scales
        self._blocks: dict[tuple[int, int], torch.Tensor] = {}

    def block(self, q: PlaceSegment, k: PlaceSegment) -> torch.Tensor:
        key = (id(q), id(k))
        if key not in self._blocks:
            self._blocks[key] = segment_distance(q, k, self.scales)
        return self._blocks[key]

    def fill(
        self,
        out: torch.Tensor,
        queries: Sequence[PlaceSegment],
        keys: Sequence[PlaceSegment],
        start: int = 0,
    ) -> int:
        """Writes the distances of ``queries`` (rows) to ``keys`` into ``out`` (Nq, N) from
        column ``start`` on; returns the column after the last key."""
        col = start
        for k in keys:
            row = 0
            for q in queries:
                out[row : row + q.count, col : col + k.count] = self.block(q, k)
                row += q.count
            col += k.count
        return col

    def matrix(
        self,
        queries: Sequence[PlaceSegment],
        keys: Sequence[PlaceSegment],
        length: int,
        extra: Sequence[PlaceSegment] = (),
    ) -> torch.Tensor:
        """(Nq, length + extra's count): the keys' columns, ``maximum`` for padding columns up to
        ``length`` (they are masked out of attention anyway), then the ``extra`` keys."""
        n = segments_count(keys)
        if n > length:
            raise ValueError(f"{n} placed keys for a key length of {length}")
        ref = next((s.xyz for s in (*queries, *keys, *extra) if s.xyz is not None), None)
        dev = ref.device if ref is not None else None
        nq = segments_count(queries)
        out = torch.empty(nq, length + segments_count(extra), device=dev)
        self.fill(out, queries, keys)
        out[:, n:length] = self.scales.maximum
        self.fill(out, queries, extra, length)
        return out


def segments_count(segments: Sequence[PlaceSegment]) -> int:
    return sum(s.count for s in segments)


__all__ = [
    "DistanceScales",
    "DistanceTable",
    "PlaceSegment",
    "image_token_places",
    "lidar_token_places",
    "segment_distance",
    "segments_count",
    "unplaced",
]
