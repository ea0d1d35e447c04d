"""Spinning LiDAR of the synthetic generator: beam layout, returns, noise, dropout and intensity.

A sweep is ``beams x columns`` rays: beam elevations (uniform between ``fov_up`` and ``fov_down``
or an explicit list) and azimuths ``2 pi j / columns`` counter-clockwise from the LiDAR's +x. The
sweep is instantaneous (no motion distortion): every ray is cast at the frame's time and ego pose,
the same instant the cameras see, so camera and LiDAR ground truth agree exactly.

Points come out in the LiDAR frame (x forward, y left, z up), in firing order (column by column,
beams from top to bottom), with Gaussian range noise along the ray, random and grazing-angle
dropout, and intensity = material reflectivity x (0.2 + 0.8 cos(incidence)) + noise, clipped to
[0, 1]. The optional ``ring`` column is the beam index, 0 = highest beam.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .materials import (
    GROUND_REFLECTIVITY,
    GROUND_SEMANTIC,
    MATERIAL_DROPOUT,
    MATERIAL_REFLECTIVITY,
)
from .raycast import EMPTY, Poses, RayHits, cast_rays
from .scene import Scene
from .shapes import rotate, rotate_inverse


@dataclass
class LidarConfig:
    """A spinning LiDAR.

    Attributes:
        beams: number of lasers (rows).
        columns: firings per revolution (horizontal resolution).
        fov_up_deg / fov_down_deg: elevation of the highest / lowest beam, beams uniform in between.
        vertical_angles_deg: explicit beam elevations (any order; overrides beams and fov).
        min_range / max_range: returns outside are dropped (m).
        range_noise_std: Gaussian noise along the ray (m).
        dropout: probability of losing any return (materials add their own, e.g. glass).
        grazing_cos: returns with cos(incidence) below this are lost.
        intensity_noise_std: Gaussian intensity noise.
        mount_height: LiDAR height above the road (m).
        ring_field: add a ``ring`` column (beam index, 0 = top) after intensity.
    """

    beams: int = 64
    columns: int = 1024
    fov_up_deg: float = 2.0
    fov_down_deg: float = -24.8
    vertical_angles_deg: tuple[float, ...] | None = None
    min_range: float = 1.0
    max_range: float = 100.0
    range_noise_std: float = 0.02
    dropout: float = 0.01
    grazing_cos: float = 0.02
    intensity_noise_std: float = 0.02
    mount_height: float = 1.85
    ring_field: bool = True

    @property
    def point_fields(self) -> tuple[str, ...]:
        base = ("x", "y", "z", "intensity")
        return (*base, "ring") if self.ring_field else base


@dataclass
class LidarRender:
    """What the LiDAR produced for one frame.

    Attributes:
        points: (N, 4 or 5) float32 x, y, z, intensity[, ring] in the LiDAR frame.
        labels: (N,) int32 object id per point (0 = background).
        semantic: (N,) uint8 semantic class code per point.
        ray_index: (N,) int64 index of the ray in the sweep (column * beams + beam).
        hits: the raw hits of all rays of the sweep, for checks.
    """

    points: np.ndarray
    labels: np.ndarray
    semantic: np.ndarray
    ray_index: np.ndarray
    hits: RayHits


class SpinningLidar:
    """A LiDAR built from a :class:`LidarConfig`; holds the sweep's ray directions."""

    def __init__(self, config: LidarConfig) -> None:
        self.config = config
        if config.vertical_angles_deg is not None:
            elev = np.sort(np.asarray(config.vertical_angles_deg, dtype=np.float64))[::-1]
        else:
            elev = np.linspace(config.fov_up_deg, config.fov_down_deg, config.beams)
        self.elevation = np.deg2rad(elev)
        self.beams = len(elev)
        self.columns = config.columns
        self.azimuth = 2.0 * np.pi * np.arange(config.columns) / config.columns
        ce, se = np.cos(self.elevation), np.sin(self.elevation)
        ca, sa = np.cos(self.azimuth), np.sin(self.azimuth)
        # Column-major: ray index = column * beams + beam.
        self.dirs_lidar = np.stack(
            [
                (ca[:, None] * ce[None, :]).ravel(),
                (sa[:, None] * ce[None, :]).ravel(),
                np.broadcast_to(se[None, :], (config.columns, self.beams)).ravel(),
            ],
            axis=1,
        )
        self.ring = np.tile(np.arange(self.beams), config.columns)

    @property
    def num_rays(self) -> int:
        return len(self.dirs_lidar)

    def _cull(self, origin: np.ndarray, rot: np.ndarray):
        nb, nc = self.beams, self.columns
        elev = self.elevation
        step = 2.0 * np.pi / nc

        def cull(corners: np.ndarray) -> np.ndarray | None:
            pl = rotate_inverse(rot, corners - origin)
            center = pl.mean(axis=0)
            radius = np.sqrt(((pl - center) ** 2).sum(axis=1)).max()
            dist = np.sqrt((center**2).sum())
            if dist <= radius * 1.001:
                return None
            # Elevation window from the bounding sphere (conservative for any shape).
            el_c = np.arcsin(center[2] / dist)
            half = np.arcsin(min(radius / dist, 1.0)) + 1e-3
            beams = np.flatnonzero((elev >= el_c - half) & (elev <= el_c + half))
            if len(beams) == 0:
                return EMPTY
            # Azimuth window: the corners' hull misses the LiDAR's z axis iff the corners' azimuths
            # leave a gap wider than pi; the hull's azimuths are then the complement of that gap.
            az = np.sort(np.arctan2(pl[:, 1], pl[:, 0]))
            gaps = np.diff(np.concatenate([az, [az[0] + 2.0 * np.pi]]))
            g = int(np.argmax(gaps))
            if gaps[g] <= np.pi + 1e-6:
                cols = np.arange(nc)
            else:
                start = az[(g + 1) % 8]
                span = 2.0 * np.pi - gaps[g]
                j0 = int(np.floor(start / step)) - 1
                j1 = int(np.ceil((start + span) / step)) + 1
                cols = np.mod(np.arange(j0, j1 + 1), nc)
            return (cols[:, None] * nb + beams[None, :]).ravel()

        return cull

    def cast(
        self, scene: Scene, poses: Poses, world_from_lidar: np.ndarray, culled: bool = True
    ) -> RayHits:
        """Ray hits of the whole sweep (ray index = column * beams + beam)."""
        rot = world_from_lidar[:3, :3]
        origin = world_from_lidar[:3, 3]
        dirs = rotate(rot, self.dirs_lidar)
        cull = self._cull(origin, rot) if culled else None
        return cast_rays(scene, poses, origin, dirs, self.config.max_range, cull)

    def render(
        self,
        scene: Scene,
        poses: Poses,
        world_from_lidar: np.ndarray,
        rng: np.random.Generator,
    ) -> LidarRender:
        """One sweep: points, per-point ids and semantics."""
        cfg = self.config
        hits = self.cast(scene, poses, world_from_lidar)
        m = self.num_rays
        # Draw for every ray, hit or not, so the noise of a ray does not depend on the others.
        u_drop = rng.random(m)
        n_range = rng.standard_normal(m)
        n_int = rng.standard_normal(m)

        dirs_world = rotate(world_from_lidar[:3, :3], self.dirs_lidar)
        cos_inc = np.abs((hits.normal * dirs_world).sum(axis=1))
        obj = hits.object_index
        on_obj = obj >= 0
        mat = scene.prim_material[np.maximum(hits.prim_index, 0)]
        refl = np.where(on_obj, MATERIAL_REFLECTIVITY[mat], GROUND_REFLECTIVITY[hits.ground_code])
        drop_p = cfg.dropout + np.where(on_obj, MATERIAL_DROPOUT[mat], 0.0)
        keep = (
            np.isfinite(hits.t)
            & (hits.t >= cfg.min_range)
            & (u_drop >= drop_p)
            & (cos_inc > cfg.grazing_cos)
        )
        idx = np.flatnonzero(keep)
        rng_m = hits.t[idx] + cfg.range_noise_std * n_range[idx]
        xyz = self.dirs_lidar[idx] * rng_m[:, None]
        intensity = np.clip(
            refl[idx] * (0.2 + 0.8 * cos_inc[idx]) + cfg.intensity_noise_std * n_int[idx], 0.0, 1.0
        )
        cols = [xyz, intensity[:, None]]
        if cfg.ring_field:
            cols.append(self.ring[idx, None].astype(np.float64))
        points = np.concatenate(cols, axis=1).astype(np.float32)
        o = obj[idx]
        labels = np.where(o >= 0, scene.object_ids[np.maximum(o, 0)], 0).astype(np.int32)
        semantic = np.where(
            o >= 0, scene.object_semantic[np.maximum(o, 0)], GROUND_SEMANTIC[hits.ground_code[idx]]
        ).astype(np.uint8)
        return LidarRender(
            points=points, labels=labels, semantic=semantic, ray_index=idx, hits=hits
        )
