"""World layout of a synthetic drive: the road, the static street furniture, traffic and the ego.

:func:`build_scene` turns a :class:`SceneConfig` and a random generator into a :class:`Scene`: a
curved road, buildings, poles, signs, trees and bush clusters along it, parked cars, and moving
agents (cars in both directions, cyclists, pedestrians walking along the sidewalks or crossing at a
zebra). Every agent follows a trajectory in road coordinates; agents are placed by rejection
sampling so that no two footprints overlap at any frame time (the ego included). Objects get stable
positive ids in creation order.

Times inside the scene are seconds relative to the first frame.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from . import assets
from .assets import ObjectModel
from .materials import SEMANTIC_INDEX
from .road import CrossSection, Road, random_road


@dataclass
class SceneConfig:
    """What the street looks like and how busy it is.

    Attributes:
        lanes_per_direction, lane_width, parking_width, sidewalk_width, curb_height: road
            cross-section (metres).
        max_curvature: largest |curvature| of the road arcs (1/m); 1/150 gives gentle turns.
        ego_speed: (min, max) mean ego speed (m/s); the speed also oscillates a little.
        view_ahead / view_behind: metres of scenery placed beyond the ego's last / before its first
            position (what the cameras can see).
        moving_cars, cyclists, pedestrians, crossing_pedestrians: number of agents attempted (an
            agent that cannot be placed without overlapping others is dropped).
        parked_car_prob: occupancy of each parking slot.
        tree_spacing, pole_spacing: (min, max) gap between trees / lamp posts along a side (m).
        bushes_per_100m: vegetation clusters per 100 m and side.
        sign_prob: chance of a traffic sign after each lamp post.
        sun_azimuth_deg / sun_elevation_deg: sun direction in the world frame.
        ambient: ambient light fraction for the camera shading.
    """

    lanes_per_direction: int = 2
    lane_width: float = 3.5
    parking_width: float = 2.4
    sidewalk_width: float = 4.0
    curb_height: float = 0.15
    max_curvature: float = 1.0 / 150.0
    ego_speed: tuple[float, float] = (6.0, 11.0)
    view_ahead: float = 140.0
    view_behind: float = 50.0
    moving_cars: int = 10
    cyclists: int = 3
    pedestrians: int = 12
    crossing_pedestrians: int = 2
    parked_car_prob: float = 0.55
    tree_spacing: tuple[float, float] = (9.0, 20.0)
    pole_spacing: tuple[float, float] = (24.0, 34.0)
    bushes_per_100m: float = 5.0
    sign_prob: float = 0.35
    sun_azimuth_deg: float = 35.0
    sun_elevation_deg: float = 40.0
    ambient: float = 0.35

    def cross_section(self) -> CrossSection:
        return CrossSection(
            lanes_per_direction=self.lanes_per_direction,
            lane_width=self.lane_width,
            parking_width=self.parking_width,
            sidewalk_width=self.sidewalk_width,
            curb_height=self.curb_height,
        )


def rot_zyx(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """(3, 3) rotation Rz(yaw) @ Ry(pitch) @ Rx(roll)."""
    cy, sy = np.cos(yaw), np.sin(yaw)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cr, sr = np.cos(roll), np.sin(roll)
    rz = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])
    ry = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    rx = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    return rz @ ry @ rx


@dataclass
class StaticPose:
    """A fixed pose on the ground: world xy, z and yaw."""

    x: float
    y: float
    z: float
    yaw: float

    def pose_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        return rot_zyx(self.yaw), np.array([self.x, self.y, self.z])


@dataclass
class RoadPath:
    """Piecewise-linear motion in road coordinates, held constant outside its key times.

    The object faces its direction of travel (relative to the road tangent); while standing still it
    faces the direction of its next move, or ``rest_yaw`` (relative to the road) if there is none.

    Attributes:
        road: the road.
        times, s, d: (K,) key times (s, relative) and road coordinates.
        rest_yaw: heading relative to the road tangent when the path never moves.
    """

    road: Road
    times: np.ndarray
    s: np.ndarray
    d: np.ndarray
    rest_yaw: float = 0.0
    _yaw_rel: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        ds = np.diff(self.s)
        dd = np.diff(self.d)
        moving = np.hypot(ds, dd) > 1e-6
        yaw = np.where(moving, np.arctan2(dd, ds), np.nan)
        nxt = self.rest_yaw
        # A standing segment takes the heading of the next moving one (face where you will go).
        for i in range(len(yaw) - 1, -1, -1):
            if np.isnan(yaw[i]):
                yaw[i] = nxt
            else:
                nxt = yaw[i]
        self._yaw_rel = np.concatenate([yaw, [yaw[-1] if len(yaw) else self.rest_yaw]])

    def road_coords(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(s, d) at times t (arrays)."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        return np.interp(t, self.times, self.s), np.interp(t, self.times, self.d)

    def pose_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        s, d = self.road_coords(t)
        xy, h = self.road.to_world(s, d)
        k = int(np.clip(np.searchsorted(self.times, t, side="right") - 1, 0, len(self.times) - 1))
        z = float(self.road.section.ground_height(d)[0])
        return rot_zyx(float(h[0] + self._yaw_rel[k])), np.array([xy[0, 0], xy[0, 1], z])


@dataclass
class EgoTrajectory:
    """The ego vehicle: drives in a forward lane with an oscillating speed and a small sway.

    The LiDAR sits ``lidar_height`` above the ground; small pitch/roll oscillations mimic the body
    moving on its suspension, so the poses are full 6-DoF.
    """

    road: Road
    s0: float
    speed: float
    speed_amp: float
    speed_period: float
    speed_phase: float
    d0: float
    sway_amp: float
    sway_period: float
    lidar_height: float = 1.85
    pitch_amp: float = np.deg2rad(0.4)
    roll_amp: float = np.deg2rad(0.3)
    body_period: float = 1.7

    def road_coords(self, t: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(s, d) at times t."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        w = 2.0 * np.pi / self.speed_period
        # s = integral of speed + speed_amp * sin(w t + phase).
        s = (
            self.s0
            + self.speed * t
            - self.speed_amp / w * (np.cos(w * t + self.speed_phase) - np.cos(self.speed_phase))
        )
        d = self.d0 + self.sway_amp * np.sin(2.0 * np.pi * t / self.sway_period)
        return s, d

    def speed_at(self, t: float) -> float:
        w = 2.0 * np.pi / self.speed_period
        return float(self.speed + self.speed_amp * np.sin(w * t + self.speed_phase))

    def world_from_lidar(self, t: float) -> np.ndarray:
        """(4, 4) LiDAR -> world at relative time t."""
        s, d = self.road_coords(t)
        xy, h = self.road.to_world(s, d)
        dd = (
            self.sway_amp
            * 2.0
            * np.pi
            / self.sway_period
            * np.cos(2.0 * np.pi * t / self.sway_period)
        )
        yaw = float(h[0] + np.arctan2(dd, self.speed_at(t)))
        ph = 2.0 * np.pi * t / self.body_period
        out = np.eye(4)
        out[:3, :3] = rot_zyx(
            yaw, self.pitch_amp * np.sin(ph), self.roll_amp * np.sin(1.3 * ph + 1.0)
        )
        out[:3, 3] = [xy[0, 0], xy[0, 1], self.lidar_height]
        return out


@dataclass
class SceneObject:
    """One object of the scene with its stable id.

    Attributes:
        object_id: positive id, stable across frames.
        model: the primitives.
        trajectory: a :class:`StaticPose` or a :class:`RoadPath`.
        lo, hi: (3,) local bounds of the model.
        prim_offset: index of its first primitive in the scene-wide primitive tables.
        pattern: per-object texture parameter (window pitch of buildings, else 0).
    """

    object_id: int
    model: ObjectModel
    trajectory: StaticPose | RoadPath
    lo: np.ndarray
    hi: np.ndarray
    prim_offset: int = 0
    pattern: float = 0.0

    @property
    def semantic(self) -> str:
        return self.model.semantic

    @property
    def is_static(self) -> bool:
        return isinstance(self.trajectory, StaticPose)

    @property
    def volume(self) -> float:
        return float(np.prod(self.hi - self.lo))

    def pose_at(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(R (3, 3), p (3,)) world <- object at relative time t."""
        return self.trajectory.pose_at(t)

    def world_from_object(self, t: float) -> np.ndarray:
        r, p = self.pose_at(t)
        out = np.eye(4)
        out[:3, :3] = r
        out[:3, 3] = p
        return out


@dataclass
class Scene:
    """The whole world: road, ego, objects and scene-wide primitive tables.

    Attributes:
        road, ego, objects: the content (objects ordered by id).
        sun: (3,) unit vector towards the sun (world).
        ambient: ambient light fraction.
        prim_color: (P, 3) float32 albedo per primitive; prim_material: (P,) int16;
        prim_object: (P,) int32 object index; prim_pattern: (P,) float32.
        object_semantic: (O,) uint8 semantic class code per object index.
        object_ids: (O,) int32 id per object index.
    """

    road: Road
    ego: EgoTrajectory
    objects: list[SceneObject]
    sun: np.ndarray
    ambient: float
    prim_color: np.ndarray = field(init=False)
    prim_material: np.ndarray = field(init=False)
    prim_object: np.ndarray = field(init=False)
    prim_pattern: np.ndarray = field(init=False)
    object_semantic: np.ndarray = field(init=False)
    object_ids: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        colors, mats, objs, pats = [], [], [], []
        for k, obj in enumerate(self.objects):
            obj.prim_offset = len(colors)
            for p in obj.model.primitives:
                colors.append(p.color)
                mats.append(p.material)
                objs.append(k)
                pats.append(obj.pattern)
        self.prim_color = np.asarray(colors, dtype=np.float32).reshape(-1, 3)
        self.prim_material = np.asarray(mats, dtype=np.int16)
        self.prim_object = np.asarray(objs, dtype=np.int32)
        self.prim_pattern = np.asarray(pats, dtype=np.float32)
        self.object_semantic = np.asarray(
            [SEMANTIC_INDEX[o.semantic] for o in self.objects], dtype=np.uint8
        )
        self.object_ids = np.asarray([o.object_id for o in self.objects], dtype=np.int32)

    def poses_at(self, t: float) -> list[tuple[np.ndarray, np.ndarray]]:
        """World <- object (R, p) of every object at relative time t."""
        return [o.pose_at(t) for o in self.objects]

    def object_by_id(self, object_id: int) -> SceneObject:
        return self.objects[int(np.flatnonzero(self.object_ids == object_id)[0])]


class _Occupancy:
    """Footprints of placed agents in road coordinates over the sample times (to avoid overlaps)."""

    def __init__(self, times: np.ndarray, margin: float = 0.4) -> None:
        self.times = times
        self.margin = margin
        self.s: list[np.ndarray] = []
        self.d: list[np.ndarray] = []
        self.hs: list[float] = []
        self.hd: list[float] = []

    def free(self, s: np.ndarray, d: np.ndarray, hs: float, hd: float) -> bool:
        for s2, d2, hs2, hd2 in zip(self.s, self.d, self.hs, self.hd, strict=True):
            hit = (np.abs(s - s2) < hs + hs2 + self.margin) & (
                np.abs(d - d2) < hd + hd2 + self.margin
            )
            if hit.any():
                return False
        return True

    def add(self, s: np.ndarray, d: np.ndarray, hs: float, hd: float) -> None:
        self.s.append(np.broadcast_to(s, self.times.shape).copy())
        self.d.append(np.broadcast_to(d, self.times.shape).copy())
        self.hs.append(hs)
        self.hd.append(hd)


def build_scene(
    config: SceneConfig, rng: np.random.Generator, duration: float, rate_hz: float
) -> Scene:
    """Lay out a street and its traffic for a drive of ``duration`` seconds.

    Args:
        config: what to build.
        rng: the only source of randomness (the scene is a pure function of its state).
        duration: time of the last frame (s, relative to the first).
        rate_hz: frame rate; footprints are checked at twice this rate.
    """
    sec = config.cross_section()
    ego_speed = float(rng.uniform(*config.ego_speed))
    s_start = config.view_behind + 60.0
    s_end_est = s_start + (ego_speed + 1.5) * duration
    road = random_road(
        rng,
        length=s_end_est + config.view_ahead + 50.0,
        section=sec,
        max_curvature=config.max_curvature,
        straight_start=s_start - 20.0,
    )
    ego = EgoTrajectory(
        road=road,
        s0=s_start,
        speed=ego_speed,
        speed_amp=float(rng.uniform(0.3, 1.2)),
        speed_period=float(rng.uniform(6.0, 14.0)),
        speed_phase=float(rng.uniform(0.0, 2.0 * np.pi)),
        d0=sec.lane_center(int(rng.integers(sec.lanes_per_direction)), forward=True),
        sway_amp=float(rng.uniform(0.0, 0.25)),
        sway_period=float(rng.uniform(5.0, 10.0)),
    )
    times = np.arange(0.0, duration + 1e-9, 0.5 / rate_hz)
    ego_s, ego_d = ego.road_coords(times)
    s_lo = float(ego_s[0]) - config.view_behind
    s_hi = float(ego_s[-1]) + config.view_ahead
    # Zebra crossings ahead of where the ego stops, so crossing pedestrians stay safe.
    crosswalks = []
    if config.crossing_pedestrians > 0:
        crosswalks.append(float(ego_s[-1] + rng.uniform(8.0, 30.0)))
    road.crosswalks = tuple(crosswalks)

    models: list[tuple[ObjectModel, StaticPose | RoadPath, float]] = []
    occ = _Occupancy(times)
    occ.add(ego_s, ego_d, 2.6, 1.1)
    w = sec.half_width
    side_signs = (-1.0, 1.0)

    def static_at(s: float, d: float, yaw_rel: float) -> StaticPose:
        xy, h = road.to_world(s, d)
        z = float(sec.ground_height(d))
        return StaticPose(float(xy[0, 0]), float(xy[0, 1]), z, float(h[0] + yaw_rel))

    # Buildings: a row per side, set back from the sidewalk.
    for side in side_signs:
        s = s_lo - float(rng.uniform(0.0, 10.0))
        while s < s_hi:
            width = float(rng.uniform(8.0, 24.0))
            depth = float(rng.uniform(8.0, 18.0))
            height = float(rng.choice([rng.uniform(5.0, 9.0), rng.uniform(9.0, 28.0)]))
            setback = float(rng.uniform(2.8, 7.0))
            model, pitch = assets.make_building(rng, width, depth, height)
            d = side * (w + sec.sidewalk_width + setback + depth / 2)
            # Local +y points away from the road (the parapet sits at the back).
            yaw = 0.0 if side > 0 else np.pi
            models.append((model, static_at(s + width / 2, d, yaw), pitch))
            s += width + float(
                rng.uniform(0.5, 3.0) if rng.random() < 0.7 else rng.uniform(5.0, 14.0)
            )

    # Lamp posts (arm over the road) and traffic signs near the curb.
    for side in side_signs:
        s = s_lo + float(rng.uniform(0.0, 15.0))
        while s < s_hi:
            yaw = 0.0 if side < 0 else np.pi  # local +y towards the road centre
            model = assets.make_streetlight(rng)
            models.append((model, static_at(s, side * (w + 0.5), yaw), 0.0))
            occ.add(np.full_like(times, s), np.full_like(times, side * (w + 0.5)), *model.footprint)
            if rng.random() < config.sign_prob:
                ss = s + float(rng.uniform(4.0, 10.0))
                # The plate (local +x) faces the traffic arriving on this side.
                yaw_s = np.pi if side < 0 else 0.0
                model = assets.make_sign(rng)
                models.append((model, static_at(ss, side * (w + 0.4), yaw_s), 0.0))
                occ.add(np.full_like(times, ss), np.full_like(times, side * (w + 0.4)), 0.4, 0.25)
            s += float(rng.uniform(*config.pole_spacing))

    # Trees at the outer edge of the sidewalk.
    for side in side_signs:
        s = s_lo + float(rng.uniform(0.0, 10.0))
        while s < s_hi:
            d = side * (w + sec.sidewalk_width - 1.0)
            model = assets.make_tree(rng)
            models.append((model, static_at(s, d, float(rng.uniform(0, 2 * np.pi))), 0.0))
            occ.add(np.full_like(times, s), np.full_like(times, d), 0.3, 0.3)
            s += float(rng.uniform(*config.tree_spacing))

    # Bush clusters just beyond the sidewalk.
    n_bush = int(round(config.bushes_per_100m * (s_hi - s_lo) / 100.0))
    for _ in range(2 * n_bush):
        side = side_signs[int(rng.integers(2))]
        s = float(rng.uniform(s_lo, s_hi))
        d = side * (w + sec.sidewalk_width + float(rng.uniform(0.95, 1.05)))
        models.append(
            (assets.make_bush(rng), static_at(s, d, float(rng.uniform(0, 2 * np.pi))), 0.0)
        )

    # Parked cars in the parking strips, parallel to the traffic of their side; not on a zebra.
    for side in side_signs:
        s = s_lo + float(rng.uniform(0.0, 6.0))
        d = side * (sec.carriageway_half_width + sec.parking_width / 2)
        while s < s_hi:
            slot = float(rng.uniform(5.8, 7.5))
            near_zebra = any(abs(s - c) < 6.0 for c in crosswalks)
            if rng.random() < config.parked_car_prob and not near_zebra:
                model = assets.make_car(rng)
                ds = float(rng.uniform(-0.3, 0.3))
                dd = float(rng.uniform(-0.15, 0.15))
                yaw = float(rng.uniform(-0.03, 0.03)) + (0.0 if side < 0 else np.pi)
                occ.add(np.full_like(times, s + ds), np.full_like(times, d + dd), *model.footprint)
                models.append((model, static_at(s + ds, d + dd, yaw), 0.0))
            s += slot

    far = 200.0

    def place(model: ObjectModel, make: Callable[[], RoadPath], tries: int = 40) -> RoadPath | None:
        for _ in range(tries):
            path = make()
            s, d = path.road_coords(times)
            if occ.free(s, d, *model.footprint):
                occ.add(s, d, *model.footprint)
                return path
        return None

    # Crossing pedestrians: stand at the curb, cross on the zebra, walk on.
    for _ in range(config.crossing_pedestrians):
        model = assets.make_pedestrian(rng)
        side = side_signs[int(rng.integers(2))]

        def make_cross(side: float = side) -> RoadPath:
            sc = crosswalks[0] + float(rng.uniform(-1.5, 1.5))
            d_from = side * (w + float(rng.uniform(0.4, 1.5)))
            d_to = -side * (w + float(rng.uniform(0.4, 1.5)))
            speed = float(rng.uniform(1.0, 1.6))
            t0 = float(rng.uniform(-8.0, duration))
            t1 = t0 + abs(d_to - d_from) / speed
            return RoadPath(
                road,
                np.array([-far, t0, t1, t1 + far]),
                np.array([sc, sc, sc, sc + side * speed * far]),
                np.array([d_from, d_from, d_to, d_to]),
            )

        path = place(model, make_cross)
        if path is not None:
            models.append((model, path, 0.0))

    # Moving cars in all lanes (forward lanes move +s, oncoming lanes -s).
    for _ in range(config.moving_cars):
        model = assets.make_car(rng)

        def make_car() -> RoadPath:
            forward = rng.random() < 0.5
            lane = int(rng.integers(sec.lanes_per_direction))
            d = sec.lane_center(lane, forward) + float(rng.uniform(-0.2, 0.2))
            if forward:
                v = float(rng.uniform(5.0, 14.0))
                s0 = float(rng.uniform(ego_s[0] - 40.0, ego_s[0] + 90.0))
            else:
                v = -float(rng.uniform(6.0, 14.0))
                s0 = float(rng.uniform(ego_s[0] + 10.0, s_hi + 20.0))
            return RoadPath(
                road,
                np.array([-far, far]),
                np.array([s0 - v * far, s0 + v * far]),
                np.array([d, d]),
            )

        path = place(model, make_car)
        if path is not None:
            models.append((model, path, 0.0))

    # Cyclists near the outer edge of the outer lane of either direction.
    for _ in range(config.cyclists):
        model = assets.make_cyclist(rng)

        def make_bike() -> RoadPath:
            forward = rng.random() < 0.6
            d = (-1.0 if forward else 1.0) * (sec.carriageway_half_width - 0.8)
            v = float(rng.uniform(3.5, 6.5)) * (1.0 if forward else -1.0)
            s0 = float(rng.uniform(ego_s[0] - 10.0, s_hi - 30.0))
            return RoadPath(
                road,
                np.array([-far, far]),
                np.array([s0 - v * far, s0 + v * far]),
                np.array([d, d]),
            )

        path = place(model, make_bike)
        if path is not None:
            models.append((model, path, 0.0))

    # Pedestrians on the sidewalks, walking either way or standing.
    for _ in range(config.pedestrians):
        model = assets.make_pedestrian(rng)

        def make_walker() -> RoadPath:
            side = side_signs[int(rng.integers(2))]
            d = side * (w + float(rng.uniform(1.0, sec.sidewalk_width - 1.6)))
            v = (
                0.0
                if rng.random() < 0.25
                else float(rng.uniform(0.8, 1.6)) * rng.choice([-1.0, 1.0])
            )
            s0 = float(rng.uniform(ego_s[0] - 15.0, s_hi - 40.0))
            return RoadPath(
                road,
                np.array([-far, far]),
                np.array([s0 - v * far, s0 + v * far]),
                np.array([d, d]),
                rest_yaw=float(rng.uniform(-np.pi, np.pi)),
            )

        path = place(model, make_walker)
        if path is not None:
            models.append((model, path, 0.0))

    objects = []
    for i, (model, traj, pattern) in enumerate(models):
        lo, hi = model.bounds()
        objects.append(SceneObject(i + 1, model, traj, lo, hi, pattern=pattern))

    az = np.deg2rad(config.sun_azimuth_deg)
    el = np.deg2rad(config.sun_elevation_deg)
    sun = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    return Scene(road=road, ego=ego, objects=objects, sun=sun, ambient=config.ambient)


__all__ = [
    "EgoTrajectory",
    "RoadPath",
    "Scene",
    "SceneConfig",
    "SceneObject",
    "StaticPose",
    "build_scene",
    "rot_zyx",
]
