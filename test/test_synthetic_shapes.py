"""Building blocks of the synthetic generator: primitive intersection and the road geometry."""

from __future__ import annotations

import numpy as np
import pytest

from sam4d_core.data.synthetic.materials import (
    GROUND_CURB,
    GROUND_ROAD,
    GROUND_SIDEWALK,
    value_noise,
)
from sam4d_core.data.synthetic.road import CrossSection, Road
from sam4d_core.data.synthetic.shapes import Box, Cylinder, Ellipsoid, reciprocal


def _inside(prim, pts: np.ndarray) -> np.ndarray:
    q = pts - np.asarray(prim.center)
    if isinstance(prim, Box):
        return (np.abs(q) <= np.asarray(prim.half)).all(axis=1)
    if isinstance(prim, Ellipsoid):
        return ((q / np.asarray(prim.radii)) ** 2).sum(axis=1) <= 1.0
    k = prim.axis
    radial = (q**2).sum(axis=1) - q[:, k] ** 2
    return (radial <= prim.radius**2) & (np.abs(q[:, k]) <= prim.half_length)


PRIMS = [
    Box(0, (1, 1, 1), (0.3, -0.2, 1.0), (1.2, 0.4, 0.7)),
    Ellipsoid(0, (1, 1, 1), (-0.1, 0.2, 0.9), (0.8, 0.5, 1.1)),
    Cylinder(0, (1, 1, 1), (0.2, 0.0, 0.6), 0.5, 0.9, axis=0),
    Cylinder(0, (1, 1, 1), (0.0, 0.3, 0.6), 0.35, 0.2, axis=1),
    Cylinder(0, (1, 1, 1), (0.0, 0.0, 1.5), 0.1, 1.5, axis=2),
]


@pytest.mark.parametrize("prim", PRIMS, ids=lambda p: type(p).__name__)
def test_primitive_hits_are_the_first_surface_point(prim):
    rng = np.random.default_rng(0)
    origin = np.array([4.0, -3.0, 2.5])
    # Aim around the primitive so that about half of the rays hit.
    lo, hi = prim.bounds()
    targets = rng.uniform(lo - 0.5, hi + 0.5, size=(4000, 3))
    dirs = targets - origin
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    t = prim.intersect(origin, dirs, reciprocal(dirs))
    hit = np.isfinite(t)
    assert 0.1 < hit.mean() < 0.95
    pts = origin + t[hit, None] * dirs[hit]
    assert prim.surface_distance(pts).max() < 1e-9
    n = prim.normal(pts)
    assert np.allclose(np.linalg.norm(n, axis=1), 1.0)
    assert ((n * dirs[hit]).sum(axis=1) < 1e-9).all()  # entry points: the normal faces the ray
    # Nothing of the primitive lies before the hit, and missed rays never pass through it.
    steps = np.linspace(0.0, 1.0, 400)[None, :, None]
    far = np.where(hit, t - 1e-6, 12.0)
    samples = origin + steps * (far[:, None, None] * dirs[:, None, :])
    inside = _inside(prim, samples.reshape(-1, 3)).reshape(len(dirs), -1)
    assert not inside.any()


def _road() -> Road:
    return Road(
        origin=np.array([5.0, -2.0]),
        heading0=0.7,
        lengths=np.array([30.0, 80.0, 60.0, 200.0]),
        curvatures=np.array([0.0, 1 / 120.0, -1 / 200.0, 0.0]),
        section=CrossSection(),
    )


def test_road_coordinates_round_trip():
    road = _road()
    rng = np.random.default_rng(1)
    s = rng.uniform(-50.0, 400.0, 2000)
    d = rng.uniform(-25.0, 25.0, 2000)
    xy, _ = road.to_world(s, d)
    s2, d2, _ = road.project(xy)
    assert np.abs(s2 - s).max() < 1e-6 and np.abs(d2 - d).max() < 1e-6
    # The centreline is continuous with a continuous heading at the arc joints.
    ss = np.linspace(0.0, 370.0, 20000)
    c, h = road.pose(ss)
    step = np.linalg.norm(np.diff(c, axis=0), axis=1)
    assert np.allclose(step, ss[1] - ss[0], rtol=1e-6)
    assert np.abs(np.diff(h)).max() < 1e-3


def test_ground_hits_lie_on_road_curb_and_sidewalk():
    road = _road()
    sec = road.section
    rng = np.random.default_rng(2)
    xy, h = road.to_world(100.0, -1.75)
    origin = np.array([xy[0, 0], xy[0, 1], 1.8])
    az = rng.uniform(-np.pi, np.pi, 20000)
    el = rng.uniform(-0.5, -0.01, 20000)
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    g = road.intersect(origin, dirs, 150.0)
    hit = np.isfinite(g.t)
    pts = origin + g.t[hit, None] * dirs[hit]
    code = g.code[hit]
    s, d, _ = road.project(pts[:, :2])
    road_like = code <= 3
    assert np.abs(pts[road_like, 2]).max() < 1e-9
    assert (np.abs(d[road_like]) <= sec.half_width + 1e-6).all()
    raised = code >= GROUND_SIDEWALK
    assert np.abs(pts[raised, 2] - sec.curb_height).max() < 1e-9
    assert (np.abs(d[raised]) >= sec.half_width - 1e-6).all()
    curb = code == GROUND_CURB
    assert curb.sum() > 10
    assert np.abs(np.abs(d[curb]) - sec.half_width).max() < 1e-3
    assert ((pts[curb, 2] >= -1e-9) & (pts[curb, 2] <= sec.curb_height + 1e-9)).all()
    assert (code == GROUND_ROAD).sum() > 1000


def test_value_noise_is_smooth_deterministic_and_spread():
    rng = np.random.default_rng(3)
    p = rng.uniform(-50, 50, size=(5000, 3))
    a = value_noise(p, seed=4)
    assert np.array_equal(a, value_noise(p, seed=4))
    assert not np.array_equal(a, value_noise(p, seed=5))
    assert a.min() >= 0.0 and a.max() < 1.0 and 0.1 < a.std() < 0.4
    # Lipschitz-like: a tiny step changes the value a little.
    b = value_noise(p + 1e-4, seed=4)
    assert np.abs(a - b).max() < 1e-2
