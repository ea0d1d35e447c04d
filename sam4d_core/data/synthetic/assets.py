"""Object models of the synthetic scene, built from primitives with randomized proportions.

Each builder returns an :class:`ObjectModel` in the object frame (x forward, y left, z up, origin
on the ground under the object's centre). Cars are body + cabin (glass) + roof + wheels + lights;
pedestrians legs + torso + arms + head; cyclists a bicycle (wheels, frame, bars) with a rider;
poles, signs, trees, bush clusters and buildings (facade with windows) complete the street.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .materials import MATERIAL_INDEX
from .shapes import Box, Cylinder, Ellipsoid, Primitive

_M = MATERIAL_INDEX

CAR_PAINTS = (
    (0.75, 0.75, 0.75),
    (0.05, 0.05, 0.06),
    (0.55, 0.04, 0.04),
    (0.06, 0.15, 0.45),
    (0.85, 0.85, 0.82),
    (0.30, 0.32, 0.34),
    (0.10, 0.30, 0.12),
    (0.80, 0.55, 0.05),
)
FACADES = (
    (0.62, 0.55, 0.44),
    (0.55, 0.25, 0.18),
    (0.70, 0.70, 0.68),
    (0.42, 0.42, 0.45),
    (0.75, 0.68, 0.52),
    (0.35, 0.30, 0.28),
)
CLOTHES = (
    (0.08, 0.08, 0.10),
    (0.15, 0.20, 0.45),
    (0.55, 0.10, 0.10),
    (0.80, 0.80, 0.78),
    (0.25, 0.40, 0.20),
    (0.60, 0.50, 0.30),
    (0.45, 0.45, 0.48),
)
SKINS = ((0.85, 0.65, 0.52), (0.65, 0.45, 0.32), (0.40, 0.26, 0.18), (0.92, 0.75, 0.62))


@dataclass(frozen=True)
class ObjectModel:
    """A rigid object made of primitives.

    Attributes:
        semantic: semantic class name (see :data:`.materials.SEMANTIC_CLASSES`).
        primitives: primitives in the object frame.
        footprint: (half length along x, half width along y) used to keep objects apart.
    """

    semantic: str
    primitives: tuple[Primitive, ...]
    footprint: tuple[float, float]

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounds (lo, hi), each (3,), of all primitives."""
        los, his = zip(*(p.bounds() for p in self.primitives), strict=True)
        return np.min(los, axis=0), np.max(his, axis=0)


def _pick(rng: np.random.Generator, options: tuple) -> tuple[float, float, float]:
    c = np.asarray(options[int(rng.integers(len(options)))], dtype=np.float64)
    # A little per-object variation so that no two objects share an exact colour.
    return tuple(np.clip(c * rng.uniform(0.85, 1.15), 0.0, 1.0).tolist())


def make_car(rng: np.random.Generator) -> ObjectModel:
    """Sedan, SUV or van: body, glass cabin with roof, four wheels, head and tail lights."""
    kind = rng.choice(3, p=[0.6, 0.28, 0.12])
    length = float(rng.uniform(3.9, 4.8)) + (0.4 if kind == 2 else 0.0)
    width = float(rng.uniform(1.72, 1.92))
    wheel_r = float(rng.uniform(0.30, 0.36)) + (0.03 if kind else 0.0)
    z0 = wheel_r * 0.75
    body_h = float(rng.uniform(0.55, 0.7)) + (0.15 if kind else 0.0)
    cabin_h = float(rng.uniform(0.42, 0.55)) + (0.1 if kind == 2 else 0.0)
    cabin_len = length * (float(rng.uniform(0.48, 0.58)) if kind < 2 else 0.78)
    cabin_x = -0.06 * length if kind < 2 else -0.08 * length
    paint = _pick(rng, CAR_PAINTS)
    glass = (0.10, 0.12, 0.15)
    z1 = z0 + body_h
    prims: list[Primitive] = [
        Box(_M["paint"], paint, (0.0, 0.0, z0 + body_h / 2), (length / 2, width / 2, body_h / 2)),
        Box(
            _M["glass"],
            glass,
            (cabin_x, 0.0, z1 + cabin_h / 2),
            (cabin_len / 2, width * 0.44, cabin_h / 2),
        ),
        Box(
            _M["paint"],
            paint,
            (cabin_x, 0.0, z1 + cabin_h + 0.03),
            (cabin_len / 2 - 0.05, width * 0.44 - 0.02, 0.03),
        ),
    ]
    wheelbase = length * 0.62
    for sx in (-1.0, 1.0):
        for sy in (-1.0, 1.0):
            prims.append(
                Cylinder(
                    _M["rubber"],
                    (0.04, 0.04, 0.04),
                    (sx * wheelbase / 2, sy * (width / 2 - 0.1), wheel_r),
                    wheel_r,
                    0.12,
                    axis=1,
                )
            )
    zl = z0 + body_h * 0.72
    for sy in (-1.0, 1.0):
        y = sy * (width / 2 - 0.25)
        prims.append(Box(_M["lamp"], (0.95, 0.95, 0.85), (length / 2, y, zl), (0.02, 0.13, 0.06)))
        prims.append(Box(_M["lamp"], (0.75, 0.05, 0.03), (-length / 2, y, zl), (0.02, 0.13, 0.06)))
    return ObjectModel("car", tuple(prims), (length / 2, width / 2))


def make_pedestrian(rng: np.random.Generator) -> ObjectModel:
    """Standing or walking person: two legs, torso, two arms, head."""
    height = float(rng.uniform(1.55, 1.92))
    leg_h = 0.47 * height
    torso_h = 0.32 * height
    pants = _pick(rng, CLOTHES)
    shirt = _pick(rng, CLOTHES)
    skin = _pick(rng, SKINS)
    stride = float(rng.uniform(0.0, 0.12))
    prims: list[Primitive] = []
    for sy, sx in ((-1.0, stride), (1.0, -stride)):
        prims.append(Cylinder(_M["cloth"], pants, (sx, sy * 0.1, leg_h / 2), 0.075, leg_h / 2, 2))
    prims.append(
        Ellipsoid(
            _M["cloth"], shirt, (0.0, 0.0, leg_h + torso_h / 2), (0.14, 0.21, torso_h / 2 + 0.03)
        )
    )
    arm_len = 0.34 * height
    for sy in (-1.0, 1.0):
        prims.append(
            Cylinder(
                _M["cloth"],
                shirt,
                (0.0, sy * 0.27, leg_h + torso_h - arm_len / 2),
                0.05,
                arm_len / 2,
                2,
            )
        )
    prims.append(Ellipsoid(_M["skin"], skin, (0.0, 0.0, height - 0.12), (0.1, 0.09, 0.12)))
    return ObjectModel("pedestrian", tuple(prims), (0.3, 0.35))


def make_cyclist(rng: np.random.Generator) -> ObjectModel:
    """A bicycle (two thin wheels, frame, seat post, handlebar) and a rider leaning forward."""
    bike = _pick(rng, CAR_PAINTS)
    shirt = _pick(rng, CLOTHES)
    pants = _pick(rng, CLOTHES)
    skin = _pick(rng, SKINS)
    r = 0.34
    prims: list[Primitive] = [
        Cylinder(_M["rubber"], (0.05, 0.05, 0.05), (0.52, 0.0, r), r, 0.03, axis=1),
        Cylinder(_M["rubber"], (0.05, 0.05, 0.05), (-0.52, 0.0, r), r, 0.03, axis=1),
        Box(_M["metal"], bike, (0.0, 0.0, 0.58), (0.45, 0.025, 0.03)),
        Box(_M["metal"], bike, (-0.18, 0.0, 0.78), (0.025, 0.025, 0.2)),
        Box(_M["metal"], bike, (0.42, 0.0, 0.8), (0.025, 0.025, 0.2)),
        Box(_M["metal"], (0.1, 0.1, 0.1), (0.42, 0.0, 1.0), (0.025, 0.27, 0.02)),
    ]
    for sy in (-1.0, 1.0):
        prims.append(Cylinder(_M["cloth"], pants, (-0.08, sy * 0.11, 0.72), 0.07, 0.28, 2))
    prims.append(Ellipsoid(_M["cloth"], shirt, (-0.02, 0.0, 1.28), (0.26, 0.19, 0.3)))
    for sy in (-1.0, 1.0):
        prims.append(Cylinder(_M["cloth"], shirt, (0.24, sy * 0.22, 1.2), 0.045, 0.2, 0))
    prims.append(Ellipsoid(_M["skin"], skin, (0.14, 0.0, 1.68), (0.11, 0.1, 0.12)))
    return ObjectModel("cyclist", tuple(prims), (0.9, 0.35))


def make_streetlight(rng: np.random.Generator) -> ObjectModel:
    """Lamp post: base, pole, an arm reaching over the road (local +y) and the lamp head."""
    h = float(rng.uniform(6.5, 8.5))
    arm = float(rng.uniform(1.2, 2.2))
    grey = (0.35, 0.36, 0.38)
    prims = (
        Cylinder(_M["metal"], grey, (0.0, 0.0, 0.35), 0.17, 0.35, 2),
        Cylinder(_M["metal"], grey, (0.0, 0.0, h / 2), 0.1, h / 2, 2),
        Box(_M["metal"], grey, (0.0, arm / 2, h - 0.1), (0.05, arm / 2, 0.05)),
        Box(_M["lamp"], (0.9, 0.9, 0.8), (0.0, arm, h - 0.2), (0.18, 0.3, 0.07)),
    )
    return ObjectModel("pole", prims, (0.3, 0.3))


def make_sign(rng: np.random.Generator) -> ObjectModel:
    """Traffic sign: a thin pole with a round or square plate facing local +x."""
    h = float(rng.uniform(2.2, 2.8))
    plate = ((0.8, 0.05, 0.05), (0.05, 0.2, 0.6), (0.9, 0.9, 0.9), (0.9, 0.7, 0.05))[
        int(rng.integers(4))
    ]
    prims: list[Primitive] = [
        Cylinder(_M["metal"], (0.5, 0.5, 0.52), (0.0, 0.0, h / 2), 0.04, h / 2, 2)
    ]
    if rng.random() < 0.5:
        prims.append(Cylinder(_M["sign"], plate, (0.06, 0.0, h), 0.33, 0.015, 0))
    else:
        prims.append(Box(_M["sign"], plate, (0.06, 0.0, h), (0.015, 0.32, 0.32)))
    return ObjectModel("traffic_sign", tuple(prims), (0.25, 0.4))


def make_tree(rng: np.random.Generator) -> ObjectModel:
    """Trunk plus a canopy of 2-4 overlapping ellipsoids."""
    trunk_h = float(rng.uniform(2.3, 3.6))
    trunk_r = float(rng.uniform(0.12, 0.24))
    bark = (0.28, 0.2, 0.13)
    leaf = tuple((np.array([0.13, 0.3, 0.08]) * rng.uniform(0.7, 1.3, 3)).clip(0, 1).tolist())
    prims: list[Primitive] = [
        Cylinder(_M["bark"], bark, (0.0, 0.0, trunk_h / 2), trunk_r, trunk_h / 2, 2)
    ]
    for _ in range(int(rng.integers(2, 5))):
        rad = rng.uniform(1.0, 2.0, 3) * np.array([1.0, 1.0, 0.85])
        off = rng.uniform(-0.7, 0.7, 3) * np.array([1.0, 1.0, 0.5])
        cz = trunk_h + rad[2] * 0.7 + off[2]
        prims.append(
            Ellipsoid(
                _M["foliage"], leaf, (float(off[0]), float(off[1]), float(cz)), tuple(rad.tolist())
            )
        )
    return ObjectModel("tree", tuple(prims), (0.5, 0.5))


def make_bush(rng: np.random.Generator) -> ObjectModel:
    """Vegetation clutter: a cluster of 3-7 spheres near the ground."""
    leaf = tuple((np.array([0.1, 0.24, 0.07]) * rng.uniform(0.7, 1.4, 3)).clip(0, 1).tolist())
    prims: list[Primitive] = []
    for _ in range(int(rng.integers(3, 8))):
        r = float(rng.uniform(0.3, 0.75))
        x, y = rng.uniform(-1.0, 1.0, 2)
        prims.append(Ellipsoid(_M["foliage"], leaf, (float(x), float(y), r * 0.8), (r, r, r)))
    return ObjectModel("vegetation", tuple(prims), (1.6, 1.6))


def make_building(
    rng: np.random.Generator, width: float, depth: float, height: float
) -> tuple[ObjectModel, float]:
    """Block along local x (width) and y (depth) with windows, sometimes a set-back top floor.

    Returns the model and its window pitch (m), which the facade texture needs.
    """
    color = _pick(rng, FACADES)
    prims: list[Primitive] = [
        Box(_M["facade"], color, (0.0, 0.0, height / 2), (width / 2, depth / 2, height / 2))
    ]
    if rng.random() < 0.35 and height > 8.0:
        top = float(rng.uniform(2.5, 3.5))
        prims.append(
            Box(
                _M["facade"],
                color,
                (0.0, 0.0, height + top / 2),
                (width / 2 - 1.5, depth / 2 - 1.5, top / 2),
            )
        )
    else:
        # A low parapet so that roofs are not perfectly flat to the LiDAR.
        prims.append(
            Box(_M["concrete"], color, (0.0, depth / 2 - 0.2, height + 0.4), (width / 2, 0.2, 0.4))
        )
    return ObjectModel("building", tuple(prims), (width / 2, depth / 2)), float(
        rng.uniform(2.2, 3.6)
    )
