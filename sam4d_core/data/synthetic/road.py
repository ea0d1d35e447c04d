"""The road of the synthetic scene: a curved centreline, road coordinates and the ground surface.

The centreline is a chain of constant-curvature arcs (straight at both ends, so that it can be
extended forever), evaluated in closed form. Road coordinates are ``(s, d)``: ``s`` the arc length
along the centreline, ``d`` the signed lateral offset, positive to the left of the driving direction
(right-hand traffic: the forward lanes have ``d < 0``).

Cross-section, from the centre outwards on each side: driving lanes, a parking strip, the curb
(a vertical step of ``curb_height`` at ``|d| = half_width``), the sidewalk and then terrain at the
sidewalk's height. The ground is flat (z = 0 on the carriageway, z = curb_height beyond it), which
makes its ray intersection two plane hits plus the curb face in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .materials import (
    GROUND_CURB,
    GROUND_MARKING_WHITE,
    GROUND_MARKING_YELLOW,
    GROUND_ROAD,
    GROUND_SIDEWALK,
    GROUND_TERRAIN,
)


@dataclass(frozen=True)
class CrossSection:
    """Lateral layout of the road (metres)."""

    lanes_per_direction: int = 2
    lane_width: float = 3.5
    parking_width: float = 2.4
    sidewalk_width: float = 4.0
    curb_height: float = 0.15

    @property
    def carriageway_half_width(self) -> float:
        """|d| of the edge line (end of the driving lanes, start of the parking strip)."""
        return self.lanes_per_direction * self.lane_width

    @property
    def half_width(self) -> float:
        """|d| of the curb."""
        return self.carriageway_half_width + self.parking_width

    def lane_center(self, lane: int, forward: bool) -> float:
        """d of a lane centre; lane 0 is next to the centre line."""
        d = (lane + 0.5) * self.lane_width
        return -d if forward else d

    def ground_height(self, d: np.ndarray | float) -> np.ndarray:
        """Height of the ground at lateral offset d (0 on the carriageway, curb height beyond)."""
        return np.where(np.abs(d) >= self.half_width, self.curb_height, 0.0)


@dataclass
class Road:
    """Centreline made of arcs: ``lengths[i]`` metres of constant curvature ``curvatures[i]``.

    Attributes:
        origin: (2,) world xy of s = 0.
        heading0: world heading (rad, from +x towards +y) at s = 0.
        lengths, curvatures: (K,) per arc.
        section: the cross-section.
        crosswalks: s of the zebra crossings' centres.
    """

    origin: np.ndarray
    heading0: float
    lengths: np.ndarray
    curvatures: np.ndarray
    section: CrossSection
    crosswalks: tuple[float, ...] = ()
    _starts: np.ndarray = field(init=False, repr=False)
    _xy0: np.ndarray = field(init=False, repr=False)
    _h0: np.ndarray = field(init=False, repr=False)
    _tree: cKDTree = field(init=False, repr=False)
    _tree_s: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.lengths = np.asarray(self.lengths, dtype=np.float64)
        self.curvatures = np.asarray(self.curvatures, dtype=np.float64)
        k = len(self.lengths)
        self._starts = np.concatenate([[0.0], np.cumsum(self.lengths)[:-1]])
        self._xy0 = np.zeros((k, 2))
        self._h0 = np.zeros(k)
        xy = np.asarray(self.origin, dtype=np.float64)
        h = float(self.heading0)
        for i in range(k):
            self._xy0[i] = xy
            self._h0[i] = h
            xy, h = _arc(xy, h, float(self.curvatures[i]), float(self.lengths[i]))
        # Coarse samples (2 m) give the initial guess for projecting points onto the centreline;
        # they extend beyond both ends because the end arcs are straight and extend forever.
        self._tree_s = np.arange(-400.0, self.length + 400.0, 2.0)
        pts, _ = self.pose(self._tree_s)
        self._tree = cKDTree(pts)

    @property
    def length(self) -> float:
        return float(self.lengths.sum())

    def pose(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Centreline xy (M, 2) and heading (M,) at arc lengths s (M,)."""
        xy, heading, _ = self._eval(s)
        return xy, heading

    def _eval(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        s = np.atleast_1d(np.asarray(s, dtype=np.float64))
        i = np.clip(np.searchsorted(self._starts, s, side="right") - 1, 0, len(self.lengths) - 1)
        ds = s - self._starts[i]
        kappa = self.curvatures[i]
        h0 = self._h0[i]
        half = 0.5 * kappa * ds
        # Chord of an arc: length ds * sinc(kappa ds / 2) at heading h0 + kappa ds / 2 (exact,
        # and smooth through kappa = 0).
        chord = ds * np.sinc(half / np.pi)
        x = self._xy0[i, 0] + chord * np.cos(h0 + half)
        y = self._xy0[i, 1] + chord * np.sin(h0 + half)
        return np.stack([x, y], axis=1), h0 + kappa * ds, kappa

    def to_world(
        self, s: np.ndarray | float, d: np.ndarray | float
    ) -> tuple[np.ndarray, np.ndarray]:
        """World xy (M, 2) and centreline heading (M,) of road coordinates (s, d)."""
        c, h = self.pose(s)
        d = np.atleast_1d(np.asarray(d, dtype=np.float64))
        xy = c + d[:, None] * np.stack([-np.sin(h), np.cos(h)], axis=1)
        return xy, h

    def project(
        self, xy: np.ndarray, s_init: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Road coordinates of world points.

        Args:
            xy: (M, 2) world xy.
            s_init: (M,) a guess of s within a few metres (skips the nearest-sample search).
        Returns:
            s (M,), d (M,), heading (M,) of the centreline at s. Within a few tens of metres of the
            road, exact to micrometres (Newton steps from the nearest 2 m sample).
        """
        xy = np.asarray(xy, dtype=np.float64)
        if len(xy) == 0:
            z = np.zeros(0)
            return z, z.copy(), z.copy()
        if s_init is None:
            _, nn = self._tree.query(xy, k=1, workers=1)
            s = self._tree_s[nn]
        else:
            s = np.asarray(s_init, dtype=np.float64)
        for _ in range(3):
            c, h, kappa = self._eval(s)
            dx = xy[:, 0] - c[:, 0]
            dy = xy[:, 1] - c[:, 1]
            along = dx * np.cos(h) + dy * np.sin(h)
            across = -dx * np.sin(h) + dy * np.cos(h)
            # Newton on the foot point of an arc: the offset shrinks the step by 1 - kappa d.
            s = s + along / np.maximum(1.0 - kappa * across, 0.2)
        c, h = self.pose(s)
        d = -(xy[:, 0] - c[:, 0]) * np.sin(h) + (xy[:, 1] - c[:, 1]) * np.cos(h)
        return s, d, h

    def marking_code(self, s: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Ground code (road or lane marking) at carriageway points (M,) s, d."""
        sec = self.section
        ad = np.abs(d)
        code = np.full(len(s), GROUND_ROAD, dtype=np.uint8)
        # Double solid yellow centre line.
        code[np.abs(ad - 0.15) < 0.06] = GROUND_MARKING_YELLOW
        white = np.abs(ad - sec.carriageway_half_width) < 0.075
        dash = np.mod(s, 12.0) < 4.0
        for k in range(1, sec.lanes_per_direction):
            white |= (np.abs(ad - k * sec.lane_width) < 0.075) & dash
        for sc in self.crosswalks:
            zebra = (np.abs(s - sc) < 2.0) & (ad < sec.carriageway_half_width - 0.3)
            white |= zebra & (np.mod(d, 1.2) < 0.6)
        code[white] = GROUND_MARKING_WHITE
        return code

    def intersect(self, origin: np.ndarray, dirs: np.ndarray, max_dist: float) -> GroundHits:
        """First hit of rays from ``origin`` (3,) along unit ``dirs`` (M, 3) with the ground.

        The origin must be above the sidewalk level (every sensor is). Returns a
        :class:`GroundHits` for all M rays (``t = inf`` where there is no hit within max_dist).
        """
        sec = self.section
        w = sec.half_width
        hc = sec.curb_height
        m = len(dirs)
        t = np.full(m, np.inf)
        code = np.zeros(m, dtype=np.uint8)
        normal = np.zeros((m, 3))
        normal[:, 2] = 1.0
        tex = np.zeros((m, 3))

        idx = np.flatnonzero(dirs[:, 2] < -1e-9)
        dz = dirs[idx, 2]
        t_low = -origin[2] / dz  # plane z = 0
        t_high = (hc - origin[2]) / dz  # plane z = curb height (reached first)
        keep = t_high <= max_dist
        idx, t_low, t_high = idx[keep], t_low[keep], t_high[keep]
        dxy = dirs[idx, :2]
        p_low = origin[:2] + t_low[:, None] * dxy
        s0, d0, h0 = self.project(p_low)
        # |d| is 1-Lipschitz near the road: if the low hit is further inside the carriageway than
        # the horizontal run between the two planes, the ray never meets the raised part.
        run = (t_low - t_high) * np.sqrt(dxy[:, 0] ** 2 + dxy[:, 1] ** 2)
        sure_road = np.abs(d0) < w - run

        road = sure_road.copy()
        rest = np.flatnonzero(~sure_road)
        if len(rest):
            p_high = origin[:2] + t_high[rest, None] * dxy[rest]
            s1, d1, _ = self.project(p_high, s_init=s0[rest])
            raised = np.abs(d1) >= w
            r = rest[raised]
            gi = idx[r]
            t[gi] = t_high[r]
            code[gi] = np.where(
                np.abs(d1[raised]) < w + sec.sidewalk_width, GROUND_SIDEWALK, GROUND_TERRAIN
            )
            tex[gi] = np.stack([s1[raised], d1[raised], np.full(len(r), hc)], axis=1)

            low_raised = ~raised & (np.abs(d0[rest]) >= w)
            c = rest[low_raised]
            # The curb face lies where |d| = w between the two plane hits: regula falsi on the
            # fraction lam of the way from the upper to the lower hit.
            lam1 = np.zeros(len(c))
            lam0 = np.ones(len(c))
            a1 = np.abs(d1[low_raised])
            a0 = np.abs(d0[c])
            seg = p_low[c] - p_high[low_raised]
            for _ in range(3):
                lam = lam1 + (w - a1) * (lam0 - lam1) / np.maximum(a0 - a1, 1e-12)
                s_c, d_c, h_c = self.project(
                    p_high[low_raised] + lam[:, None] * seg, s_init=s1[low_raised]
                )
                below = np.abs(d_c) < w
                lam1 = np.where(below, lam, lam1)
                a1 = np.where(below, np.abs(d_c), a1)
                lam0 = np.where(below, lam0, lam)
                a0 = np.where(below, a0, np.abs(d_c))
            lam = np.clip(lam, 0.0, 1.0)
            gi = idx[c]
            t[gi] = t_high[c] + lam * (t_low[c] - t_high[c])
            code[gi] = GROUND_CURB
            sgn = np.sign(d0[c])
            # The curb face looks towards the road centre.
            normal[gi] = np.stack([sgn * np.sin(h_c), -sgn * np.cos(h_c), np.zeros(len(c))], axis=1)
            tex[gi] = np.stack([s_c, sgn * w, hc * (1.0 - lam)], axis=1)
            road[rest[~raised & ~low_raised]] = True

        r = np.flatnonzero(road)
        gi = idx[r]
        t[gi] = t_low[r]
        code[gi] = self.marking_code(s0[r], d0[r])
        tex[gi] = np.stack([s0[r], d0[r], np.zeros(len(r))], axis=1)

        far = t > max_dist
        t[far] = np.inf
        code[far] = 0
        return GroundHits(t=t, code=code, normal=normal, tex=tex)


@dataclass
class GroundHits:
    """Ground hits of M rays.

    Attributes:
        t: (M,) distance, inf = no ground hit.
        code: (M,) uint8 ground code (see :mod:`.materials`), 0 = none.
        normal: (M, 3) world normal (up, or horizontal on the curb face).
        tex: (M, 3) road coordinates (s, d, z) of the hit, used for texturing.
    """

    t: np.ndarray
    code: np.ndarray
    normal: np.ndarray
    tex: np.ndarray


def _arc(xy: np.ndarray, h: float, kappa: float, length: float) -> tuple[np.ndarray, float]:
    half = 0.5 * kappa * length
    chord = length * float(np.sinc(half / np.pi))
    return xy + chord * np.array([np.cos(h + half), np.sin(h + half)]), h + kappa * length


def random_road(
    rng: np.random.Generator,
    length: float,
    section: CrossSection,
    max_curvature: float,
    straight_start: float,
) -> Road:
    """A road of at least ``length`` metres: straight for ``straight_start`` m, then random arcs
    (40-120 m, |curvature| <= max_curvature, some straight), then straight again. The world origin
    is the road's start and its initial heading is random."""
    lengths = [straight_start]
    curvs = [0.0]
    total = straight_start
    while total < length:
        seg = float(rng.uniform(40.0, 120.0))
        kappa = 0.0 if rng.random() < 0.3 else float(rng.uniform(-max_curvature, max_curvature))
        lengths.append(seg)
        curvs.append(kappa)
        total += seg
    lengths.append(200.0)
    curvs.append(0.0)
    heading0 = float(rng.uniform(-np.pi, np.pi))
    return Road(
        origin=np.zeros(2),
        heading0=heading0,
        lengths=np.array(lengths),
        curvatures=np.array(curvs),
        section=section,
    )
