"""Geometric primitives of the synthetic scene and their vectorized ray intersection.

Every scene object is a rigid set of primitives given in the object's own frame (x forward, y left,
z up, origin on the ground under the object's centre). The ray caster moves the rays into that frame
and asks each primitive for the distance along every ray to its first hit. All rays of one sensor
share an origin, so ``origin`` is a single (3,) point and ``dirs`` an (M, 3) array of unit vectors;
the returned ``t`` is then the metric distance (rigid transforms keep lengths).

Only elementwise numpy arithmetic is used (no BLAS), so the result for a ray never depends on the
thread count or on which other rays were cast with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Hits closer than this are ignored: they would be the surface the ray starts on.
EPS = 1e-6


@dataclass(frozen=True)
class Primitive:
    """Base of all primitives: appearance shared by the camera and the LiDAR.

    Attributes:
        material: index into :data:`sam4d_core.data.synthetic.materials.MATERIALS`.
        color: linear RGB albedo in [0, 1].
    """

    material: int
    color: tuple[float, float, float]

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, inv_dirs: np.ndarray) -> np.ndarray:
        """Distance to the first hit per ray, ``inf`` where the ray misses.

        Args:
            origin: (3,) ray origin in the object frame.
            dirs: (M, 3) unit directions in the object frame.
            inv_dirs: (M, 3) ``1 / dirs`` (shared by the primitives of one object).
        Returns:
            (M,) float64.
        """
        raise NotImplementedError

    def normal(self, points: np.ndarray) -> np.ndarray:
        """(M, 3) outward unit normals at (M, 3) surface points (object frame)."""
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds (lo, hi), each (3,), in the object frame."""
        raise NotImplementedError

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        """(M,) unsigned distance from (M, 3) points to the surface (approximate for ellipsoids)."""
        raise NotImplementedError


@dataclass(frozen=True)
class Box(Primitive):
    """Axis-aligned box (in the object frame) given by its centre and half extents."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    half: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, inv_dirs: np.ndarray) -> np.ndarray:
        c = np.asarray(self.center)
        h = np.asarray(self.half)
        t_near, t_far = slab(origin, inv_dirs, c - h, c + h)
        hit = (t_near <= t_far) & (t_near > EPS)
        return np.where(hit, t_near, np.inf)

    def normal(self, points: np.ndarray) -> np.ndarray:
        c = np.asarray(self.center)
        h = np.asarray(self.half)
        q = (points - c) / h
        axis = np.argmax(np.abs(q), axis=1)
        n = np.zeros_like(points)
        rows = np.arange(len(points))
        n[rows, axis] = np.sign(q[rows, axis])
        return n

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.center, dtype=np.float64)
        h = np.asarray(self.half, dtype=np.float64)
        return c - h, c + h

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        q = np.abs(points - np.asarray(self.center)) - np.asarray(self.half)
        outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
        inside = np.minimum(q.max(axis=1), 0.0)
        return np.abs(outside + inside)


@dataclass(frozen=True)
class Ellipsoid(Primitive):
    """Axis-aligned ellipsoid (a sphere when the radii are equal)."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radii: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, inv_dirs: np.ndarray) -> np.ndarray:
        r = np.asarray(self.radii)
        oc = (origin - np.asarray(self.center)) / r
        dr = dirs / r
        a = dr[:, 0] * dr[:, 0] + dr[:, 1] * dr[:, 1] + dr[:, 2] * dr[:, 2]
        b = dr[:, 0] * oc[0] + dr[:, 1] * oc[1] + dr[:, 2] * oc[2]
        cc = float(oc @ oc) - 1.0
        disc = b * b - a * cc
        with np.errstate(invalid="ignore"):
            t = (-b - np.sqrt(disc)) / a
        hit = (disc >= 0.0) & (t > EPS)
        return np.where(hit, t, np.inf)

    def normal(self, points: np.ndarray) -> np.ndarray:
        r = np.asarray(self.radii)
        g = (points - np.asarray(self.center)) / (r * r)
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.center, dtype=np.float64)
        r = np.asarray(self.radii, dtype=np.float64)
        return c - r, c + r

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        # First-order estimate |f| / |grad f| of f = |q / r| - 1: exact for spheres.
        r = np.asarray(self.radii)
        q = points - np.asarray(self.center)
        k0 = np.linalg.norm(q / r, axis=1)
        k1 = np.linalg.norm(q / (r * r), axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            d = np.abs(k0 * (k0 - 1.0) / k1)
        return np.where(np.isfinite(d), d, float(r.min()))


@dataclass(frozen=True)
class Cylinder(Primitive):
    """Capped circular cylinder whose axis is the object frame's x (0), y (1) or z (2) axis."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 0.5
    half_length: float = 0.5
    axis: int = 2

    def _axes(self) -> tuple[int, int, int]:
        k = self.axis
        return k, (k + 1) % 3, (k + 2) % 3

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, inv_dirs: np.ndarray) -> np.ndarray:
        k, u, v = self._axes()
        c = np.asarray(self.center)
        o = origin - c
        du, dv, dk = dirs[:, u], dirs[:, v], dirs[:, k]
        r2 = self.radius * self.radius
        h = self.half_length
        # Lateral surface: |(o + t d)_uv| = R.
        a = du * du + dv * dv
        b = o[u] * du + o[v] * dv
        cc = o[u] * o[u] + o[v] * o[v] - r2
        disc = b * b - a * cc
        with np.errstate(invalid="ignore", divide="ignore"):
            t_side = (-b - np.sqrt(disc)) / a
            zk = o[k] + t_side * dk
            side_ok = (disc >= 0.0) & (a > 0.0) & (t_side > EPS) & (np.abs(zk) <= h)
            # The cap facing the ray is the only one that can be an entry point.
            cap = np.where(dk > 0.0, -h, h)
            t_cap = (cap - o[k]) * inv_dirs[:, k]
            pu = o[u] + t_cap * du
            pv = o[v] + t_cap * dv
            cap_ok = (t_cap > EPS) & (pu * pu + pv * pv <= r2)
        t = np.where(side_ok, t_side, np.inf)
        return np.where(cap_ok & (t_cap < t), t_cap, t)

    def normal(self, points: np.ndarray) -> np.ndarray:
        k, u, v = self._axes()
        q = points - np.asarray(self.center)
        radial = np.sqrt(q[:, u] ** 2 + q[:, v] ** 2)
        # Closer to a cap plane than to the lateral surface: the hit is on the cap.
        on_cap = (self.half_length - np.abs(q[:, k])) < (self.radius - radial)
        n = np.zeros_like(points)
        safe = np.maximum(radial, 1e-12)
        n[:, u] = np.where(on_cap, 0.0, q[:, u] / safe)
        n[:, v] = np.where(on_cap, 0.0, q[:, v] / safe)
        n[:, k] = np.where(on_cap, np.sign(q[:, k]), 0.0)
        return n

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        c = np.asarray(self.center, dtype=np.float64)
        ext = np.full(3, self.radius)
        ext[self.axis] = self.half_length
        return c - ext, c + ext

    def surface_distance(self, points: np.ndarray) -> np.ndarray:
        k, u, v = self._axes()
        q = points - np.asarray(self.center)
        dr = np.sqrt(q[:, u] ** 2 + q[:, v] ** 2) - self.radius
        dz = np.abs(q[:, k]) - self.half_length
        outside = np.sqrt(np.maximum(dr, 0.0) ** 2 + np.maximum(dz, 0.0) ** 2)
        inside = np.minimum(np.maximum(dr, dz), 0.0)
        return np.abs(outside + inside)


def slab(
    origin: np.ndarray, inv_dirs: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit distances of rays through an axis-aligned box (the slab method).

    Args:
        origin: (3,) ray origin; inv_dirs: (M, 3) reciprocal directions; lo, hi: (3,) box corners.
    Returns:
        (t_near, t_far), each (M,); the ray meets the box iff ``t_near <= t_far`` and
        ``t_far >= 0``. A ray parallel to a slab and exactly on its plane gives NaN (a miss).
    """
    # Per axis with elementwise minimum/maximum: much faster than reductions over a length-3 axis,
    # and the same numbers (NaN propagates either way).
    t_near = t_far = None
    with np.errstate(invalid="ignore"):
        for a in range(3):
            inv = inv_dirs[:, a]
            t1 = (lo[a] - origin[a]) * inv
            t2 = (hi[a] - origin[a]) * inv
            lo_t = np.minimum(t1, t2)
            hi_t = np.maximum(t1, t2)
            t_near = lo_t if t_near is None else np.maximum(t_near, lo_t)
            t_far = hi_t if t_far is None else np.minimum(t_far, hi_t)
    return t_near, t_far


def reciprocal(dirs: np.ndarray) -> np.ndarray:
    """``1 / dirs`` with ``+-inf`` for zero components (what the slab method expects)."""
    with np.errstate(divide="ignore"):
        return 1.0 / dirs


def rotate(rot: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """``vecs @ rot.T`` for (M, 3) vectors, elementwise so no BLAS thread ever touches it."""
    return vecs[:, 0:1] * rot[:, 0] + vecs[:, 1:2] * rot[:, 1] + vecs[:, 2:3] * rot[:, 2]


def rotate_inverse(rot: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """``vecs @ rot`` (rotation by ``rot.T``) for (M, 3) vectors, elementwise."""
    return vecs[:, 0:1] * rot[0] + vecs[:, 1:2] * rot[1] + vecs[:, 2:3] * rot[2]
