"""The ray caster shared by the camera and the LiDAR: nearest hit of many rays from one origin.

The ground is intersected analytically for all rays. Objects are visited nearest first; for each,
the sensor's cull function proposes the rays that can possibly see it (projected box for a camera,
azimuth/elevation window for a LiDAR), a slab test against the object's bounding box keeps only the
rays that enter it before the current nearest hit (a z-buffer test), and only those are intersected
with the object's primitives. ``cull=None`` tests every object against every ray: slow, the
reference the culled path must agree with exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .scene import Scene
from .shapes import reciprocal, rotate, rotate_inverse, slab

# Candidate rays of an object given its 8 world-frame box corners (8, 3): an index array into the
# rays, or None for "all rays".
Cull = Callable[[np.ndarray], "np.ndarray | None"]
Poses = list[tuple[np.ndarray, np.ndarray]]

EMPTY = np.zeros(0, dtype=np.int64)
# Bounding boxes are inflated a little so that a primitive lying on the box face is never culled by
# rounding.
_BOX_PAD = 1e-5
_CORNERS = np.array([[i & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=np.float64)


@dataclass
class RayHits:
    """Nearest hit per ray.

    Attributes:
        t: (M,) float64 distance along the unit ray; inf = nothing within range.
        object_index: (M,) int32 index into ``scene.objects``; -1 = ground or nothing.
        prim_index: (M,) int32 scene-wide primitive index; -1 = ground or nothing.
        ground_code: (M,) uint8 ground code (see :mod:`.materials`); 0 = an object or nothing.
        normal: (M, 3) float64 world unit normal, facing the ray origin.
        normal_local: (M, 3) the same normal in the object frame (ground: as ``normal``).
        tex: (M, 3) texture coordinates: object-frame hit point, or road (s, d, z) on the ground.
    """

    t: np.ndarray
    object_index: np.ndarray
    prim_index: np.ndarray
    ground_code: np.ndarray
    normal: np.ndarray
    normal_local: np.ndarray
    tex: np.ndarray


def object_corners(lo: np.ndarray, hi: np.ndarray, rot: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """(8, 3) world corners of the local box [lo, hi] under the pose (rot, pos)."""
    local = lo + _CORNERS * (hi - lo)
    return rotate(rot, local) + pos


def cast_rays(
    scene: Scene,
    poses: Poses,
    origin: np.ndarray,
    dirs: np.ndarray,
    max_dist: float,
    cull: Cull | None = None,
) -> RayHits:
    """Cast rays from one origin into the scene.

    Args:
        scene: the scene.
        poses: world <- object (R, p) per object at the time of the sweep / exposure.
        origin: (3,) world origin of all rays.
        dirs: (M, 3) world unit directions.
        max_dist: hits further than this are dropped.
        cull: the sensor's candidate-ray function, or None to test every ray (reference path).
    """
    m = len(dirs)
    ground = scene.road.intersect(origin, dirs, max_dist)
    t = ground.t.copy()
    obj = np.full(m, -1, dtype=np.int32)
    prim = np.full(m, -1, dtype=np.int32)
    all_rays = np.arange(m)

    n_obj = len(scene.objects)
    near = np.empty(n_obj)
    for k, o in enumerate(scene.objects):
        rot, pos = poses[k]
        c_local = 0.5 * (o.lo + o.hi)
        c_world = rot @ c_local + pos
        near[k] = np.linalg.norm(c_world - origin) - 0.5 * np.linalg.norm(o.hi - o.lo)
    cand = np.flatnonzero(near < max_dist)
    cand = cand[np.argsort(near[cand], kind="stable")]

    for k in cand:
        o = scene.objects[k]
        rot, pos = poses[k]
        lo = o.lo - _BOX_PAD
        hi = o.hi + _BOX_PAD
        idx = all_rays if cull is None else cull(object_corners(lo, hi, rot, pos))
        if idx is None:
            idx = all_rays
        if len(idx) == 0:
            continue
        o_local = rot.T @ (origin - pos)
        d_local = rotate_inverse(rot, dirs[idx])
        inv = reciprocal(d_local)
        t_near, t_far = slab(o_local, inv, lo, hi)
        keep = (t_near <= t_far) & (t_far > 0.0) & (t_near < t[idx])
        if not keep.any():
            continue
        idx, d_local, inv = idx[keep], d_local[keep], inv[keep]
        t_obj = np.full(len(idx), np.inf)
        p_obj = np.zeros(len(idx), dtype=np.int32)
        for j, p in enumerate(o.model.primitives):
            tp = p.intersect(o_local, d_local, inv)
            closer = tp < t_obj
            t_obj = np.where(closer, tp, t_obj)
            p_obj = np.where(closer, j, p_obj)
        win = (t_obj < t[idx]) & (t_obj <= max_dist)
        sel = idx[win]
        t[sel] = t_obj[win]
        obj[sel] = k
        prim[sel] = o.prim_offset + p_obj[win]

    normal = ground.normal.copy()
    normal_local = ground.normal.copy()
    tex = ground.tex.copy()
    code = np.where(obj >= 0, 0, ground.code).astype(np.uint8)

    hit_rays = np.flatnonzero(obj >= 0)
    if len(hit_rays):
        hit_rays = hit_rays[np.argsort(obj[hit_rays], kind="stable")]
        ks, starts = np.unique(obj[hit_rays], return_index=True)
        for k, rays in zip(ks, np.split(hit_rays, starts[1:]), strict=True):
            o = scene.objects[k]
            rot, pos = poses[k]
            o_local = rot.T @ (origin - pos)
            pts = o_local + t[rays, None] * rotate_inverse(rot, dirs[rays])
            n_l = np.zeros_like(pts)
            local_prim = prim[rays] - o.prim_offset
            for j in np.unique(local_prim):
                sel = local_prim == j
                n_l[sel] = o.model.primitives[j].normal(pts[sel])
            normal_local[rays] = n_l
            normal[rays] = rotate(rot, n_l)
            tex[rays] = pts

    # Two-sided surfaces: the normal faces the viewer.
    back = (normal * dirs).sum(axis=1) > 0.0
    normal[back] *= -1.0
    normal_local[back] *= -1.0
    return RayHits(
        t=t,
        object_index=obj,
        prim_index=prim,
        ground_code=code,
        normal=normal,
        normal_local=normal_local,
        tex=tex,
    )
