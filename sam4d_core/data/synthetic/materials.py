"""Materials of the synthetic scene: albedo texture for the camera, reflectivity for the LiDAR.

A primitive carries a material index and its own base colour; the material says how the colour is
modulated (procedural value noise, building facades with windows) and how strongly the surface
returns LiDAR pulses. The ground (road, lane markings, curb, sidewalk, terrain) has its own small
table keyed by a ground code. Also here: the semantic class table shared by all the renderers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Material:
    """How a surface looks to the camera and to the LiDAR.

    Attributes:
        name: material name.
        reflectivity: LiDAR intensity at normal incidence, in [0, 1].
        noise_freq: spatial frequency (1/m) of the albedo noise.
        noise_amp: relative albedo modulation of the noise (0 = flat colour).
        pattern: ``"plain"`` or ``"facade"`` (window grid on vertical faces).
        extra_dropout: added probability that a LiDAR return is lost (glass, dark rubber).
    """

    name: str
    reflectivity: float
    noise_freq: float
    noise_amp: float
    pattern: str = "plain"
    extra_dropout: float = 0.0


MATERIALS: tuple[Material, ...] = (
    Material("paint", 0.35, 1.5, 0.10),
    Material("glass", 0.08, 0.8, 0.25, extra_dropout=0.3),
    Material("rubber", 0.04, 9.0, 0.35, extra_dropout=0.1),
    Material("lamp", 0.90, 6.0, 0.05),
    Material("skin", 0.30, 7.0, 0.12),
    Material("cloth", 0.22, 11.0, 0.30),
    Material("metal", 0.45, 2.5, 0.20),
    Material("facade", 0.28, 1.3, 0.22, pattern="facade"),
    Material("concrete", 0.30, 3.0, 0.25),
    Material("bark", 0.18, 5.0, 0.40),
    Material("foliage", 0.42, 2.2, 0.60),
    Material("sign", 0.95, 3.0, 0.05),
)
MATERIAL_INDEX: dict[str, int] = {m.name: i for i, m in enumerate(MATERIALS)}

# Ground codes (the road surface model); 0 means "no ground hit".
GROUND_NONE = 0
GROUND_ROAD = 1
GROUND_MARKING_WHITE = 2
GROUND_MARKING_YELLOW = 3
GROUND_CURB = 4
GROUND_SIDEWALK = 5
GROUND_TERRAIN = 6

# Per ground code: albedo, noise frequency, noise amplitude, LiDAR reflectivity.
GROUND_ALBEDO = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.11, 0.11, 0.12],
        [0.80, 0.80, 0.78],
        [0.80, 0.62, 0.12],
        [0.45, 0.44, 0.42],
        [0.36, 0.35, 0.33],
        [0.16, 0.24, 0.08],
    ],
    dtype=np.float32,
)
GROUND_NOISE_FREQ = np.array([1.0, 3.0, 4.0, 4.0, 3.0, 2.0, 0.9], dtype=np.float32)
GROUND_NOISE_AMP = np.array([0.0, 0.35, 0.10, 0.10, 0.20, 0.25, 0.55], dtype=np.float32)
GROUND_REFLECTIVITY = np.array([0.0, 0.12, 0.65, 0.60, 0.28, 0.22, 0.30], dtype=np.float32)

# Semantic classes for per-pixel / per-point semantic maps (index = class code).
SEMANTIC_CLASSES: tuple[str, ...] = (
    "none",
    "road",
    "lane_marking",
    "curb",
    "sidewalk",
    "terrain",
    "building",
    "pole",
    "traffic_sign",
    "tree",
    "vegetation",
    "car",
    "pedestrian",
    "cyclist",
)
SEMANTIC_INDEX: dict[str, int] = {n: i for i, n in enumerate(SEMANTIC_CLASSES)}
# Background ("stuff") classes: never objects, always id 0 in the instance labels.
BACKGROUND_CLASSES: tuple[str, ...] = ("road", "lane_marking", "curb", "sidewalk", "terrain")
GROUND_SEMANTIC = np.array(
    [
        SEMANTIC_INDEX["none"],
        SEMANTIC_INDEX["road"],
        SEMANTIC_INDEX["lane_marking"],
        SEMANTIC_INDEX["lane_marking"],
        SEMANTIC_INDEX["curb"],
        SEMANTIC_INDEX["sidewalk"],
        SEMANTIC_INDEX["terrain"],
    ],
    dtype=np.uint8,
)

MATERIAL_REFLECTIVITY = np.array([m.reflectivity for m in MATERIALS], dtype=np.float32)
MATERIAL_DROPOUT = np.array([m.extra_dropout for m in MATERIALS], dtype=np.float32)


def _hash(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray, seed: int) -> np.ndarray:
    """Uniform [0, 1) pseudo-random value per integer lattice point (pure integer arithmetic)."""
    h = (
        ix.astype(np.uint32) * np.uint32(0x8DA6B343)
        ^ iy.astype(np.uint32) * np.uint32(0xD8163841)
        ^ iz.astype(np.uint32) * np.uint32(0xCB1AB31F)
        ^ np.uint32(seed & 0xFFFFFFFF)
    )
    h ^= h >> np.uint32(15)
    h *= np.uint32(0x2C1B3C6D)
    h ^= h >> np.uint32(12)
    h *= np.uint32(0x297A2D39)
    h ^= h >> np.uint32(15)
    return (h >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / (1 << 24))


def value_noise(points: np.ndarray, seed: int = 0) -> np.ndarray:
    """Smooth value noise in [0, 1) at (M, 2) or (M, 3) coordinates (one lattice cell = 1 unit).

    Deterministic: the value at a point depends only on its coordinates and ``seed``.
    Returns (M,) float32.
    """
    p = np.asarray(points, dtype=np.float64)
    if p.shape[1] == 2:
        p = np.concatenate([p, np.zeros((len(p), 1))], axis=1)
        dims = 2
    else:
        dims = 3
    cell = np.floor(p)
    f = (p - cell).astype(np.float32)
    w = f * f * (np.float32(3.0) - np.float32(2.0) * f)
    # int64 first: negative coordinates wrap consistently when cast to uint32 in _hash.
    i = cell.astype(np.int64)
    ix, iy, iz = i[:, 0], i[:, 1], i[:, 2]
    out = np.zeros(len(p), dtype=np.float32)
    zs = (0,) if dims == 2 else (0, 1)
    for dz in zs:
        wz = np.float32(1.0) if dims == 2 else (w[:, 2] if dz else np.float32(1.0) - w[:, 2])
        for dy in (0, 1):
            wy = w[:, 1] if dy else np.float32(1.0) - w[:, 1]
            for dx in (0, 1):
                wx = w[:, 0] if dx else np.float32(1.0) - w[:, 0]
                out += wx * wy * wz * _hash(ix + dx, iy + dy, iz + dz, seed)
    return out


def facade_windows(local: np.ndarray, normal_local: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """Where a building facade shows a window.

    Args:
        local: (M, 3) hit points in the building frame (z up from the building's base).
        normal_local: (M, 3) normals in the building frame.
        spacing: (M,) horizontal window pitch in metres (per building).
    Returns:
        (M,) bool, True on window glass.
    """
    vertical = np.abs(normal_local[:, 2]) < 0.5
    u = np.where(np.abs(normal_local[:, 1]) > np.abs(normal_local[:, 0]), local[:, 0], local[:, 1])
    floor_h = 3.1
    zf = np.mod(local[:, 2], floor_h)
    uf = np.mod(u, spacing) / spacing
    return vertical & (local[:, 2] > 0.6) & (zf > 0.95) & (zf < 2.35) & (uf > 0.22) & (uf < 0.78)
