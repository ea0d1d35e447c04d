"""Pinhole cameras of the synthetic generator: configuration, ray casting renderer and shading.

One ray per pixel through the pixel centre (OpenCV convention: pixel (u, v) has its centre at
integer coordinates, so a point projects to pixel ``round(K @ p)``). The instance mask is the id of
the object hit by that ray, exactly; the image is Lambertian shading (sun + sky ambient) of textured
albedo (procedural value noise per material, windows on facades, lane markings and sidewalk tiles
on the ground), distance haze, a sky gradient, gamma and a little sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .materials import (
    GROUND_ALBEDO,
    GROUND_NOISE_AMP,
    GROUND_NOISE_FREQ,
    GROUND_SEMANTIC,
    GROUND_SIDEWALK,
    MATERIALS,
    facade_windows,
    value_noise,
)
from .raycast import EMPTY, Poses, RayHits, cast_rays
from .scene import Scene, rot_zyx
from .shapes import rotate, rotate_inverse

# Optical frame (x right, y down, z forward) expressed in the LiDAR frame (x forward, y left, z up).
LIDAR_FROM_OPTICAL = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

_SKY_HORIZON = np.array([0.78, 0.84, 0.90], dtype=np.float32)
_SKY_ZENITH = np.array([0.32, 0.50, 0.82], dtype=np.float32)
_HAZE = np.array([0.75, 0.80, 0.86], dtype=np.float32)
_WINDOW = np.array([0.12, 0.15, 0.2], dtype=np.float32)
_HAZE_DISTANCE = 500.0


@dataclass
class CameraConfig:
    """One pinhole camera.

    Attributes:
        name: camera name (unique).
        width, height: image size in pixels.
        fov_x_deg: horizontal field of view, used when ``intrinsics`` is None (square pixels,
            principal point at the image centre).
        intrinsics: (fx, fy, cx, cy) in pixels, overrides ``fov_x_deg``.
        position: camera centre in the LiDAR frame (m; x forward, y left, z up).
        yaw_deg: rotation about the LiDAR z axis (positive looks left).
        pitch_deg: positive looks down. roll_deg: about the viewing direction.
        max_distance: nothing further away is rendered (m).
        noise_std: per-pixel Gaussian sensor noise (in 0..255 units).
    """

    name: str = "front"
    width: int = 640
    height: int = 384
    fov_x_deg: float = 90.0
    intrinsics: tuple[float, float, float, float] | None = None
    position: tuple[float, float, float] = (0.3, 0.0, -0.35)
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    max_distance: float = 250.0
    noise_std: float = 2.0


@dataclass
class CameraRender:
    """What one camera produced for one frame.

    Attributes:
        image: (H, W, 3) uint8 RGB.
        instance_mask: (H, W) int32 object id (0 = background: ground or sky).
        depth: (H, W) float32 depth along the optical axis (m); inf where nothing was hit.
        semantic: (H, W) uint8 semantic class code (:data:`.materials.SEMANTIC_CLASSES`).
        hits: the raw ray hits (flattened row-major), for checks.
    """

    image: np.ndarray
    instance_mask: np.ndarray
    depth: np.ndarray
    semantic: np.ndarray
    hits: RayHits


class PinholeCamera:
    """A camera built from a :class:`CameraConfig`; holds K, cam_from_lidar and the pixel rays."""

    def __init__(self, config: CameraConfig) -> None:
        self.config = config
        w, h = config.width, config.height
        if config.intrinsics is not None:
            fx, fy, cx, cy = config.intrinsics
        else:
            fx = fy = (w / 2.0) / np.tan(np.deg2rad(config.fov_x_deg) / 2.0)
            cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        self.K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
        lidar_from_cam = np.eye(4)
        lidar_from_cam[:3, :3] = (
            rot_zyx(
                np.deg2rad(config.yaw_deg),
                np.deg2rad(config.pitch_deg),
                np.deg2rad(config.roll_deg),
            )
            @ LIDAR_FROM_OPTICAL
        )
        lidar_from_cam[:3, 3] = config.position
        self.lidar_from_cam = lidar_from_cam
        self.cam_from_lidar = np.linalg.inv(lidar_from_cam)
        u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
        d = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1).reshape(-1, 3)
        norm = np.sqrt((d * d).sum(axis=1))
        self.dirs_cam = d / norm[:, None]
        # Optical-axis component of each unit ray: depth = distance * z_of_ray.
        self.ray_z = 1.0 / norm

    @property
    def name(self) -> str:
        return self.config.name

    def _cull(self, origin: np.ndarray, rot: np.ndarray):
        cfg = self.config
        fx, fy, cx, cy = self.K[0, 0], self.K[1, 1], self.K[0, 2], self.K[1, 2]
        w, h = cfg.width, cfg.height

        def cull(corners: np.ndarray) -> np.ndarray | None:
            pc = rotate_inverse(rot, corners - origin)
            z = pc[:, 2]
            if z.max() <= 1e-6:
                return EMPTY
            if z.min() <= 0.05:
                return None  # straddles the image plane: let the box test decide
            u = fx * pc[:, 0] / z + cx
            v = fy * pc[:, 1] / z + cy
            c0 = max(int(np.floor(u.min())) - 1, 0)
            c1 = min(int(np.ceil(u.max())) + 1, w - 1)
            r0 = max(int(np.floor(v.min())) - 1, 0)
            r1 = min(int(np.ceil(v.max())) + 1, h - 1)
            if c0 > c1 or r0 > r1:
                return EMPTY
            return (np.arange(r0, r1 + 1)[:, None] * w + np.arange(c0, c1 + 1)[None, :]).ravel()

        return cull

    def cast(
        self, scene: Scene, poses: Poses, world_from_lidar: np.ndarray, culled: bool = True
    ) -> RayHits:
        """Ray hits of every pixel (flattened row-major)."""
        world_from_cam = world_from_lidar @ self.lidar_from_cam
        rot = world_from_cam[:3, :3]
        origin = world_from_cam[:3, 3]
        dirs = rotate(rot, self.dirs_cam)
        cull = self._cull(origin, rot) if culled else None
        return cast_rays(scene, poses, origin, dirs, self.config.max_distance, cull)

    def render(
        self,
        scene: Scene,
        poses: Poses,
        world_from_lidar: np.ndarray,
        rng: np.random.Generator,
    ) -> CameraRender:
        """Render image, instance mask, depth and semantics for one frame."""
        cfg = self.config
        h, w = cfg.height, cfg.width
        hits = self.cast(scene, poses, world_from_lidar)
        world_from_cam = world_from_lidar @ self.lidar_from_cam
        dirs = rotate(world_from_cam[:3, :3], self.dirs_cam)
        rgb = shade(scene, hits, dirs)
        if cfg.noise_std > 0:
            rgb = rgb * 255.0 + rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(
                cfg.noise_std
            )
        else:
            rgb = rgb * 255.0
        image = np.clip(np.rint(rgb), 0, 255).astype(np.uint8).reshape(h, w, 3)

        obj = hits.object_index
        mask = np.where(obj >= 0, scene.object_ids[np.maximum(obj, 0)], 0).astype(np.int32)
        depth = np.where(np.isfinite(hits.t), hits.t * self.ray_z, np.inf).astype(np.float32)
        semantic = np.where(
            obj >= 0, scene.object_semantic[np.maximum(obj, 0)], GROUND_SEMANTIC[hits.ground_code]
        ).astype(np.uint8)
        return CameraRender(
            image=image,
            instance_mask=mask.reshape(h, w),
            depth=depth.reshape(h, w),
            semantic=semantic.reshape(h, w),
            hits=hits,
        )


def shade(scene: Scene, hits: RayHits, dirs: np.ndarray) -> np.ndarray:
    """Linear-light colour per ray, gamma-encoded to [0, 1]: (M, 3) float32."""
    m = len(dirs)
    albedo = np.zeros((m, 3), dtype=np.float32)
    obj = hits.object_index
    on_obj = np.flatnonzero(obj >= 0)
    on_ground = np.flatnonzero(hits.ground_code > 0)

    if len(on_obj):
        prim = hits.prim_index[on_obj]
        mat = scene.prim_material[prim]
        base = scene.prim_color[prim]
        tex = hits.tex[on_obj]
        # Offset the noise per object so that identical models do not share a texture.
        offset = (obj[on_obj] * 37.17)[:, None]
        factor = np.ones(len(on_obj), dtype=np.float32)
        for mi in np.unique(mat):
            sel = np.flatnonzero(mat == mi)
            mdef = MATERIALS[mi]
            p = tex[sel] * mdef.noise_freq + offset[sel]
            n = value_noise(p, seed=int(mi)) + np.float32(0.5) * value_noise(
                p * 4.0, seed=int(mi) + 99
            )
            factor[sel] = 1.0 + mdef.noise_amp * (n / np.float32(1.5) * 2.0 - 1.0)
            if mdef.pattern == "facade":
                win = facade_windows(
                    tex[sel], hits.normal_local[on_obj[sel]], scene.prim_pattern[prim[sel]]
                )
                base[sel[win]] = _WINDOW
        albedo[on_obj] = base * factor[:, None]

    if len(on_ground):
        code = hits.ground_code[on_ground]
        tex = hits.tex[on_ground]
        st = np.stack([tex[:, 0], tex[:, 1] + tex[:, 2]], axis=1)
        freq = GROUND_NOISE_FREQ[code][:, None]
        n = value_noise(st * freq, seed=7) + np.float32(0.5) * value_noise(
            st * (freq * 5.0), seed=8
        )
        factor = 1.0 + GROUND_NOISE_AMP[code] * (n / np.float32(1.5) * 2.0 - 1.0)
        # Sidewalk slabs: darker joints every 1.5 m.
        joints = (code == GROUND_SIDEWALK) & (
            (np.mod(tex[:, 0], 1.5) < 0.04) | (np.mod(tex[:, 1], 1.5) < 0.04)
        )
        factor = np.where(joints, factor * 0.6, factor)
        albedo[on_ground] = GROUND_ALBEDO[code] * factor[:, None]

    hit = np.isfinite(hits.t)
    n_dot_sun = np.maximum((hits.normal * scene.sun).sum(axis=1), 0.0).astype(np.float32)
    sky_fill = (0.75 + 0.25 * hits.normal[:, 2]).astype(np.float32)
    amb = np.float32(scene.ambient)
    light = amb * sky_fill + (np.float32(1.0) - amb) * np.float32(1.6) * n_dot_sun
    color = albedo * light[:, None]
    fog = np.exp(-np.where(hit, hits.t, 0.0) / _HAZE_DISTANCE).astype(np.float32)[:, None]
    color = color * fog + _HAZE * (np.float32(1.0) - fog) * np.float32(0.45)
    color = np.clip(color, 0.0, 1.0) ** np.float32(1.0 / 2.2)

    up = np.clip(dirs[:, 2], 0.0, 1.0).astype(np.float32)[:, None] ** np.float32(0.6)
    sky = _SKY_HORIZON * (np.float32(1.0) - up) + _SKY_ZENITH * up
    return np.where(hit[:, None], color, sky).astype(np.float32)
