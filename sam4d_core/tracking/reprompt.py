"""Motion-compensated re-prompting: each object's LiDAR segment kept in the fixed frame with a
motion estimate, predicted into the next sweep and turned into prompts for the decoder.

Per object (:class:`ObjectMotion`) the tracker keeps, after every frame the object was decoded
on, its LiDAR segment in the world frame (the points of its mask, moved by the frame's ego pose
``world <- lidar``) and a constant-velocity Kalman filter of the segment's centroid
(:class:`CentroidFilter`, one 2x2 covariance shared by the three axes, as 3D multi-object
trackers such as AB3DMOT use; with ``planar`` its vertical speed is held at 0, as road objects
move on the ground). On the next frame (:meth:`ObjectMotion.predict`) the latest
segment is moved by ``velocity * dt`` (a static object stays exactly where it was in the world;
only the ego motion moves it in the LiDAR frame) and brought into the current LiDAR frame.
:func:`derive_prompts` then looks for support and derives the prompts:

- Search: the velocity's uncertainty (``gate_sigma`` standard deviations times the time since
  the object was last observed: about 1.5 m after one observation, a few cm once the velocity
  is known) is searched for the horizontal shift of the prediction that the sweep covers best;
  an object seen once that drives off is found where it went. A prediction the sweep does not
  support is searched again within ``reacquire_search`` before the object is called lost: the
  kept segment is one sweep's mask, and on a far object of a few points its placement is off by
  decimetres, more than the velocity's uncertainty allows for (the bundled recording's car at
  33 m, 6 points: lost for a sweep with a 0.18 m search, found 0.34 m away on the next).
- LiDAR support: current sweep points within the support radius of the predicted segment
  (``support_radius``, or ``range_factor`` times the segment's range when that is larger: a
  LiDAR's rings spread with range, and the next sweep samples a surface elsewhere). The
  prediction is supported when at least ``min_support_points`` such points exist *and* at least
  ``min_coverage`` of the predicted segment's points have a current point that close (coverage:
  an object that left leaves the ground it stood on within reach of its lowest points, but not
  its body; nor a neighbour its mask spilled onto, which the kept segment then partly holds:
  that covers a minority of the prediction, an object still present most of it).
- Hysteresis: an object lost on the previous frame is found again only with strong support
  (``refind_support_points`` and ``refind_coverage``): the stale segment of an object that left
  is partly covered by what stood beside it, and the search, wide after frames without an
  observation, finds a few points of something else. A far object whose predicted segment has
  fewer points than ``refind_support_points`` needs as many as it has (a car of 4 points at
  35 m, lost for one sweep, was otherwise never found again).
- 3D clicks: up to ``num_points`` positive clicks on the support, the first the support point
  nearest the predicted centroid, the others spread by farthest-point sampling over the support
  points of the predicted segment's core (within half the radius).
- Camera boxes: in each camera where at least ``min_visible_points`` of the predicted segment's
  points project in front of the camera and inside the image, the box of those projections
  (camera pixels), clipped to the image.
- Association: an output updates the motion with its mask points within ``gate_factor`` support
  radii of the prediction only (a mask that spills onto a neighbour moves neither the segment nor
  the velocity estimate); the centroid measured is their median.
- Cross-modal check (``cross_modal_check``): of those, a point that projects into a camera
  image is kept only when it lands inside the object's mask in one of the cameras that see it
  (points no camera sees are kept). A LiDAR mask the image masks disagree with (a cross-modal
  mask from an image click, or a LiDAR click decoded onto the wrong thing) is not re-prompted
  from. The streaming tracker checks against the decoder's stride-4 camera masks, on a
  user-prompted sweep grown by one cell (the edge points of a small object fall just outside
  its coarse cells there, and its refined segment is held to the user's prompt).
- Decoding (``memory``): a re-prompted frame is decoded from its derived prompts alone, as a
  prompted frame is (the object's memory is still written every frame, and an object with no
  derived prompts is decoded from its memory); with ``memory`` the decoder also sees the memory,
  as SAM4D's memory conditioning. Decoding from the prompts alone follows objects better with
  the bundled model (``training/RESULTS.md``: 1 click, 48 held-out objects): memory-conditioned
  tokens pull its masks away from what the prompts show, and the error then feeds the motion.
- Lost: with a LiDAR sweep, no LiDAR support; without one, no camera sees the prediction. A lost
  object gets no prompts; the tracker reports it lost (absent, presence 0) and keeps predicting
  (coasting at most ``max_coast_s`` on its velocity, then standing still) so that it is picked
  up again when support returns.

Everything here is numpy / scipy on the CPU (segments are at most ``max_segment_points`` points) and
knows nothing of the model: the tracker converts :class:`Reprompt` into the decoder's prompts.
Per-frame snapshots (keyed by the tracker's frame index) let a replay after a prompt on a
buffered past frame roll the motion back exactly as it rolls back the memory bank.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from sam4d_core.data.sequence import Frame
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts


@dataclass
class RepromptConfig:
    """Settings of the motion model and of the prompt derivation.

    Attributes:
        num_points: most positive 3D clicks per object and frame (>= 1).
        support_radius: a current point within this distance (m) of the predicted segment
            supports it.
        range_factor: the support radius is at least this times the predicted segment's range
            (m per m: ring spacing).
        gate_factor: an output's mask points farther than this many support radii from the
            prediction do not update the motion.
        min_support_points: fewest supporting points for LiDAR support.
        min_coverage: fewest fraction of the predicted segment's points with a current point
            within ``support_radius`` for LiDAR support.
        refind_support_points / refind_coverage: the same for an object lost (no support) on the
            previous frame (hysteresis, module docstring); an object whose predicted segment
            has fewer points needs as many as it has (at least ``min_support_points``).
        camera_boxes: give the projected box in each camera where the prediction is visible.
        min_visible_points: fewest projected predicted points inside a camera image for a box.
        max_segment_points: a kept segment is subsampled (evenly, deterministically) to this.
        min_observed_points: fewest mask points for an output to update the motion.
        min_presence: lowest presence probability for an output to update the motion.
        meas_std: centroid measurement noise (m): masks vary from sweep to sweep.
        accel_std: process noise, white acceleration (m/s^2).
        init_speed_std: prior spread of an object's speed before its second observation (m/s).
        max_speed: velocity estimates are clamped to this (m/s).
        planar: objects move on the ground: the velocity's vertical component is held at 0.
            The centroid of a partly seen object (a far pole's LiDAR hits move up and down it
            from sweep to sweep) otherwise gives it a vertical speed that sinks its prediction
            under the ground while it coasts through missed sweeps, and it is never found
            again.
        gate_sigma: a centroid farther than this many standard deviations from its prediction
            is an outlier: the filter predicts through it. Also the prediction's search radius:
            this many standard deviations of the velocity times the time since the last
            observation.
        max_search: the search radius is at most this (m).
        reacquire_search: an unsupported prediction is searched again this far (m) before the
            object is lost (module docstring); 0 = no second search.
        cross_modal_check: keep only the mask points the object's camera masks agree with.
        max_coast_s: a prediction moves on its velocity for at most this long after the last
            observation (s), then stands still.
        memory: decode a re-prompted frame with the object's memory beside its prompts (else
            from the prompts alone; module docstring).
    """

    num_points: int = 3
    support_radius: float = 0.4
    range_factor: float = 0.02
    gate_factor: float = 2.0
    min_support_points: int = 3
    min_coverage: float = 0.5
    refind_support_points: int = 6
    refind_coverage: float = 0.7
    camera_boxes: bool = True
    min_visible_points: int = 3
    max_segment_points: int = 512
    min_observed_points: int = 3
    min_presence: float = 0.5
    meas_std: float = 0.3
    accel_std: float = 3.0
    init_speed_std: float = 4.0
    max_speed: float = 40.0
    planar: bool = True
    gate_sigma: float = 3.0
    max_search: float = 3.0
    reacquire_search: float = 0.6
    cross_modal_check: bool = True
    max_coast_s: float = 1.0
    memory: bool = False

    def __post_init__(self) -> None:
        if self.num_points < 1 or self.min_support_points < 1 or self.min_visible_points < 1:
            raise ValueError("num_points, min_support_points and min_visible_points must be >= 1")
        if self.support_radius <= 0 or not 0.0 <= self.min_coverage <= 1.0:
            raise ValueError("support_radius must be > 0 and min_coverage in [0, 1]")
        if self.refind_support_points < self.min_support_points or not (
            self.min_coverage <= self.refind_coverage <= 1.0
        ):
            raise ValueError(
                "refind_support_points must be >= min_support_points and refind_coverage in "
                "[min_coverage, 1]"
            )
        if self.range_factor < 0 or self.gate_factor <= 0:
            raise ValueError("range_factor must be >= 0 and gate_factor > 0")
        if self.max_segment_points < 1 or self.min_observed_points < 1:
            raise ValueError("max_segment_points and min_observed_points must be >= 1")
        if min(self.meas_std, self.accel_std, self.init_speed_std, self.max_speed) <= 0:
            raise ValueError("meas_std, accel_std, init_speed_std and max_speed must be > 0")
        if self.max_coast_s < 0 or self.reacquire_search < 0:
            raise ValueError("max_coast_s and reacquire_search must be >= 0")


# ---------------------------------------------------------------------------------------------
# Geometry.


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(N, 3) points mapped by a (4, 4) rigid transform."""
    T = np.asarray(T, np.float64)
    return np.asarray(points, np.float64) @ T[:3, :3].T + T[:3, 3]


def rigid_inverse(T: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) rigid transform."""
    T = np.asarray(T, np.float64)
    out = np.eye(4)
    out[:3, :3] = T[:3, :3].T
    out[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return out


@dataclass
class CameraGeometry:
    """One camera of a frame, as the prompts need it.

    Attributes:
        slot: the tracker's camera slot (the key of the decoder's camera prompts).
        intrinsics: (3, 3) pinhole K of the image as received.
        cam_from_lidar: (4, 4) camera (optical: z forward) <- LiDAR.
        size: (H, W) of the image.
    """

    slot: int
    intrinsics: np.ndarray
    cam_from_lidar: np.ndarray
    size: tuple[int, int]


def camera_geometry(frame: Frame, slots: Mapping[str, int]) -> list[CameraGeometry]:
    """The present cameras of a frame (``slots``: camera name -> the tracker's slot)."""
    return [
        CameraGeometry(
            slots[name],
            np.asarray(cam.intrinsics, np.float64),
            np.asarray(cam.cam_from_lidar, np.float64),
            (int(cam.image.shape[0]), int(cam.image.shape[1])),
        )
        for name, cam in frame.cameras.items()
    ]


def project_points(
    points_lidar: np.ndarray, camera: CameraGeometry, min_depth: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) pixels (u, v) of (M, 3) LiDAR-frame points in ``camera`` and (M,) bool: in front of
    it (depth > ``min_depth``); the pixels of the others are meaningless."""
    pc = transform_points(camera.cam_from_lidar, np.asarray(points_lidar, np.float64))
    front = pc[:, 2] > min_depth
    uvw = pc @ np.asarray(camera.intrinsics, np.float64).T
    return uvw[:, :2] / np.where(front, uvw[:, 2], 1.0)[:, None], front


def project_box(
    points_lidar: np.ndarray, camera: CameraGeometry, min_points: int, min_depth: float = 0.1
) -> np.ndarray | None:
    """(4,) ``[u_min, v_min, u_max, v_max]`` camera pixels of the points (M, 3) (LiDAR frame)
    that project in front of the camera and inside its image, or None when fewer than
    ``min_points`` do."""
    if len(points_lidar) == 0:
        return None
    uv, front = project_points(points_lidar, camera, min_depth)
    if int(front.sum()) < min_points:
        return None
    uv = uv[front]
    h, w = camera.size
    inside = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    if int(inside.sum()) < min_points:
        return None
    uv = uv[inside]
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    box = np.array([lo[0], lo[1], hi[0], hi[1]], np.float64)
    return np.clip(box, 0.0, [w - 1, h - 1, w - 1, h - 1])


def support_radius(predicted: np.ndarray, config: RepromptConfig) -> float:
    """The support radius (m) of a predicted segment (M, 3) in the LiDAR frame."""
    if len(predicted) == 0:
        return config.support_radius
    rng = float(np.linalg.norm(np.median(predicted, axis=0)))
    return max(config.support_radius, config.range_factor * rng)


def _agreeing(
    points: np.ndarray, cameras: list[CameraGeometry], masks: Mapping[int, np.ndarray]
) -> np.ndarray:
    """(N,) bool: points (N, 3) (LiDAR frame) that no camera of ``masks`` sees, or that land
    inside the object's mask (slot -> (h, w) bool at any resolution of the camera image) of a
    camera that sees them."""
    seen = np.zeros(len(points), bool)
    inside = np.zeros(len(points), bool)
    for cam in cameras:
        m = masks.get(cam.slot)
        if m is None or len(points) == 0:
            continue
        uv, front = project_points(points, cam)
        h, w = cam.size
        ok = front & (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
        mh, mw = m.shape
        col = np.clip((uv[ok, 0] * mw / w).astype(np.int64), 0, mw - 1)
        row = np.clip((uv[ok, 1] * mh / h).astype(np.int64), 0, mh - 1)
        seen[ok] = True
        inside[np.flatnonzero(ok)[m[row, col]]] = True
    return ~seen | inside


def _near(
    points: np.ndarray, segment: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which current points are within ``radius`` of the segment and how far.

    Returns:
        indices (K,) of the points within ``radius`` of some segment point, their distances (K,)
        to the nearest segment point, and (M,) bool: segment points with a current point within
        ``radius``.
    """
    m = len(segment)
    if m == 0 or len(points) == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(m, bool)
    dist, _ = cKDTree(segment).query(points, distance_upper_bound=radius)
    idx = np.flatnonzero(np.isfinite(dist))
    covered = np.zeros(m, bool)
    if len(idx):
        d_seg, _ = cKDTree(points[idx]).query(segment, distance_upper_bound=radius)
        covered = np.isfinite(d_seg)
    return idx, dist[idx], covered


def _best_shift(
    predicted: np.ndarray, points: np.ndarray, radius: float, search: float
) -> np.ndarray:
    """(3,) the horizontal shift within ``search`` (m) of the predicted segment (M, 3) that
    covers most of its points with current points (within ``radius``); zero when none helps
    (ties: the closest fit, then the smallest shift). The velocity's uncertainty, searched on a
    radius/2 grid."""
    step = 0.5 * radius
    k = int(search // step)
    if k < 1 or len(predicted) == 0 or len(points) == 0:
        return np.zeros(3)
    lo = predicted.min(axis=0) - radius - search
    hi = predicted.max(axis=0) + radius + search
    near = points[np.all((points >= lo) & (points <= hi), axis=1)]
    if len(near) == 0:
        return np.zeros(3)
    tree = cKDTree(near)
    g = np.arange(-k, k + 1) * step
    shifts = np.array([(x, y, 0.0) for x in g for y in g if x * x + y * y <= search * search])
    shifts = shifts[np.argsort(np.linalg.norm(shifts, axis=1), kind="stable")]
    moved = predicted[None] + shifts[:, None]  # (S, M, 3)
    d, _ = tree.query(moved.reshape(-1, 3), distance_upper_bound=radius)
    d = d.reshape(len(shifts), -1)
    cover = np.isfinite(d).mean(axis=1)
    # Most coverage first, then the closest fit (distances capped at the radius): within the
    # plateau of full coverage the fit finds the shift between grid steps' worth of slack.
    fit = np.minimum(d, radius).mean(axis=1)
    return shifts[int(np.lexsort((fit, -cover))[0])]


def _farthest_points(points: np.ndarray, first: int, k: int) -> list[int]:
    """Indices of ``k`` points by farthest-point sampling starting at ``first``."""
    chosen = [first]
    d = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < min(k, len(points)):
        nxt = int(np.argmax(d))
        if d[nxt] <= 0:
            break
        chosen.append(nxt)
        d = np.minimum(d, np.linalg.norm(points - points[nxt], axis=1))
    return chosen


# ---------------------------------------------------------------------------------------------
# Prompts.


@dataclass
class Reprompt:
    """The prompts derived from one object's prediction on one frame.

    Attributes:
        predicted: (M, 3) the predicted segment in the current LiDAR frame (m).
        lidar_points: (P, 3) positive 3D clicks (current sweep points, LiDAR frame), P may be 0.
        camera_boxes: camera slot -> (4,) ``[u_min, v_min, u_max, v_max]`` camera pixels.
        support: current points within the support radius of the prediction.
        coverage: fraction of the predicted points with a current point that close.
        has_lidar: the frame has a LiDAR sweep (support was looked for).
        lost: no support (module docstring): nothing to prompt with.
        shift: (3,) how far the sweep moved the prediction (m, LiDAR frame; the velocity's
            uncertainty searched).
        fresh: the prediction extrapolates an observation of the previous frame (not a coast
            through missed or lost frames).
    """

    predicted: np.ndarray
    lidar_points: np.ndarray
    camera_boxes: dict[int, np.ndarray]
    support: int
    coverage: float
    has_lidar: bool
    lost: bool
    shift: np.ndarray = field(default_factory=lambda: np.zeros(3))
    fresh: bool = False

    @property
    def is_empty(self) -> bool:
        return len(self.lidar_points) == 0 and not self.camera_boxes


def derive_prompts(
    predicted: np.ndarray,
    points: np.ndarray | None,
    cameras: list[CameraGeometry],
    config: RepromptConfig,
    search: float = 0.0,
    refind: bool = False,
) -> Reprompt:
    """Prompts from a predicted segment on the current frame (module docstring).

    Args:
        predicted: (M, 3) predicted segment, current LiDAR frame (m).
        points: (N, 3) current sweep (LiDAR frame), or None / empty without LiDAR.
        cameras: the frame's present cameras.
        config: settings.
        search: the prediction's position uncertainty (m): with a sweep, the horizontal shift
            within it that the sweep supports best is applied first.
        refind: the object was lost on the previous frame: LiDAR support needs
            ``refind_support_points`` and ``refind_coverage`` (hysteresis).
    """
    predicted = np.asarray(predicted, np.float64).reshape(-1, 3)
    has_lidar = points is not None and len(points) > 0
    clicks = np.zeros((0, 3))
    support, coverage = 0, 0.0
    supported = False
    shift = np.zeros(3)
    if has_lidar:
        pts = np.asarray(points, np.float64)[:, :3]
        r = support_radius(predicted, config)
        need_points = config.min_support_points
        if refind:
            # An object of fewer points than that is refound by as many as it has.
            need_points = min(config.refind_support_points, max(need_points, len(predicted)))
        need_coverage = config.refind_coverage if refind else config.min_coverage

        def fit(radius: float):
            shift = _best_shift(predicted, pts, r, radius)
            idx, dist, covered = _near(pts, predicted + shift, r)
            coverage = float(covered.mean()) if len(covered) else 0.0
            ok = len(idx) >= need_points and coverage >= need_coverage
            return ok, shift, idx, dist, coverage

        first_search = min(search, config.max_search)
        supported, shift, idx, dist, coverage = fit(first_search)
        second = min(config.reacquire_search, config.max_search)
        if not supported and second > first_search:
            again = fit(second)
            if again[0]:
                supported, shift, idx, dist, coverage = again
        predicted = predicted + shift
        support = len(idx)
        if supported:
            sup = pts[idx]
            centre = predicted.mean(axis=0)
            first = int(np.argmin(np.linalg.norm(sup - centre, axis=1)))
            core = np.flatnonzero(dist <= 0.5 * r)
            if first not in set(core.tolist()):
                core = np.concatenate([[first], core])
            pos = int(np.flatnonzero(core == first)[0])
            chosen = _farthest_points(sup[core], pos, config.num_points)
            clicks = sup[core[chosen]]
    boxes: dict[int, np.ndarray] = {}
    if config.camera_boxes and (supported or not has_lidar):
        for cam in cameras:
            b = project_box(predicted, cam, config.min_visible_points)
            if b is not None:
                boxes[cam.slot] = b
    lost = not supported if has_lidar else not boxes
    return Reprompt(predicted, clicks, boxes, support, coverage, has_lidar, lost, shift)


def to_object_prompts(rp: Reprompt) -> ObjectPrompts:
    """The decoder's prompts of a :class:`Reprompt`: positive 3D clicks and camera boxes
    (cross-modal prompting shows them to both decoders)."""
    cameras = {slot: CameraPrompt(box=b) for slot, b in rp.camera_boxes.items()}
    lidar = None
    if len(rp.lidar_points):
        lidar = LidarPrompt(points=rp.lidar_points, labels=np.ones(len(rp.lidar_points), np.int64))
    return ObjectPrompts(cameras=cameras, lidar=lidar)


# ---------------------------------------------------------------------------------------------
# Motion.


@dataclass
class CentroidFilter:
    """Constant-velocity Kalman filter of a 3D centroid (world frame); the three axes share one
    (2, 2) covariance of (position, velocity) since they share the noise model and the times.

    Attributes:
        position: (3,) filtered centroid (m). velocity: (3,) m/s.
        cov: (2, 2) covariance of (position, velocity) per axis.
        timestamp: time of the last measurement (s).
    """

    position: np.ndarray
    velocity: np.ndarray
    cov: np.ndarray
    timestamp: float

    @classmethod
    def start(cls, z: np.ndarray, t: float, config: RepromptConfig) -> CentroidFilter:
        cov = np.diag([config.meas_std**2, config.init_speed_std**2])
        return cls(np.asarray(z, np.float64).copy(), np.zeros(3), cov, float(t))

    def update(self, z: np.ndarray, t: float, config: RepromptConfig) -> CentroidFilter:
        """The filter after a measurement ``z`` (3,) at time ``t`` (a new object)."""
        dt = float(t) - self.timestamp
        if dt <= 0:
            return dataclasses.replace(self, position=np.asarray(z, np.float64).copy())
        F = np.array([[1.0, dt], [0.0, 1.0]])
        qa = config.accel_std**2
        Q = qa * np.array([[dt**4 / 4, dt**3 / 2], [dt**3 / 2, dt**2]])
        P = F @ self.cov @ F.T + Q
        p_pred = self.position + self.velocity * dt
        s = P[0, 0] + config.meas_std**2
        gain = P[:, 0] / s  # (2,): position and velocity gains
        resid = np.asarray(z, np.float64) - p_pred
        if float(np.linalg.norm(resid)) > config.gate_sigma * math.sqrt(s):
            # An outlier (the mask jumped, e.g. onto a neighbour): predict, do not learn from it.
            return CentroidFilter(p_pred, self.velocity.copy(), P, float(t))
        pos = p_pred + gain[0] * resid
        vel = self.velocity + gain[1] * resid
        if config.planar:
            vel[2] = 0.0
        speed = float(np.linalg.norm(vel))
        if speed > config.max_speed:
            vel = vel * (config.max_speed / speed)
        cov = P - np.outer(gain, P[0, :])
        return CentroidFilter(pos, vel, 0.5 * (cov + cov.T), float(t))


@dataclass
class MotionState:
    """One object's motion after one frame.

    Attributes:
        segment: (M, 3) its last observed LiDAR segment, world frame (m).
        filter: the centroid filter (its timestamp: when ``segment`` was observed).
        misses: frames since that observation.
        lost: consecutive frames, up to this one, the object was lost (no support) on.
    """

    segment: np.ndarray
    filter: CentroidFilter
    misses: int = 0
    lost: int = 0


def _subsample(points: np.ndarray, k: int) -> np.ndarray:
    if len(points) <= k:
        return points
    return points[np.linspace(0, len(points) - 1, k).round().astype(np.int64)]


@dataclass
class ObjectMotion:
    """One object's motion history: frame index -> :class:`MotionState` after that frame."""

    config: RepromptConfig
    history: dict[int, MotionState] = field(default_factory=dict)

    def latest(self, before: int | None = None) -> MotionState | None:
        """The state after the newest frame (before frame ``before`` when given)."""
        keys = [k for k in self.history if before is None or k < before]
        return self.history[max(keys)] if keys else None

    def predict(
        self, frame_index: int, timestamp: float, world_from_lidar: np.ndarray
    ) -> tuple[np.ndarray, float] | None:
        """The predicted segment (M, 3) in the LiDAR frame of a frame and its search radius (m:
        ``gate_sigma`` standard deviations of the velocity times the time since the last
        observation), or None (never observed)."""
        st = self.latest(before=frame_index)
        if st is None:
            return None
        dt_obs = max(float(timestamp) - st.filter.timestamp, 0.0)
        dt = min(dt_obs, self.config.max_coast_s)
        world = st.segment + st.filter.velocity * dt
        search = self.config.gate_sigma * math.sqrt(max(st.filter.cov[1, 1], 0.0)) * dt_obs
        return transform_points(rigid_inverse(world_from_lidar), world), search

    def observe(
        self,
        frame_index: int,
        timestamp: float,
        world_from_lidar: np.ndarray,
        segment_lidar: np.ndarray,
    ) -> None:
        """Records the object's segment (M, 3) (LiDAR frame) observed on a frame."""
        seg = transform_points(world_from_lidar, _subsample(np.asarray(segment_lidar), 4 * 4096))
        # The median: robust to a mask that spills a little beyond the object.
        z = np.median(seg, axis=0)
        seg = _subsample(seg, self.config.max_segment_points)
        prev = self.latest(before=frame_index)
        if prev is None:
            flt = CentroidFilter.start(z, timestamp, self.config)
        else:
            flt = prev.filter.update(z, timestamp, self.config)
        self.history[frame_index] = MotionState(seg, flt)

    def miss(self, frame_index: int, lost: bool = False) -> None:
        """Records a frame without an observation (the prediction coasts); ``lost``: the object
        was lost on it (no support)."""
        prev = self.latest(before=frame_index)
        if prev is None:
            self.history.pop(frame_index, None)
            return
        self.history[frame_index] = dataclasses.replace(
            prev, misses=prev.misses + 1, lost=prev.lost + 1 if lost else 0
        )

    def discard_after(self, frame_index: int) -> None:
        """Back to the state after ``frame_index`` (a replay re-runs the later frames)."""
        for k in [k for k in self.history if k > frame_index]:
            del self.history[k]

    def prune_before(self, frame_index: int) -> None:
        """Drops states older than needed for frames >= ``frame_index``."""
        keep = self.latest(before=frame_index)
        for k in [k for k in self.history if k < frame_index]:
            if keep is None or self.history[k] is not keep:
                del self.history[k]


# ---------------------------------------------------------------------------------------------
# The tracker's side.


@dataclass
class FrameSensors:
    """What prediction and prompt derivation need of one frame.

    Attributes:
        index: the tracker's frame index. timestamp: sweep time (s).
        world_from_lidar: (4, 4) ego pose.
        points: (N, 3) the sweep (LiDAR frame), or None without LiDAR.
        cameras: the present cameras.
    """

    index: int
    timestamp: float
    world_from_lidar: np.ndarray
    points: np.ndarray | None
    cameras: list[CameraGeometry]


class Reprompter:
    """Every object's :class:`ObjectMotion`, for the streaming tracker.

    Args:
        config: settings.
    """

    def __init__(self, config: RepromptConfig | None = None) -> None:
        self.config = config or RepromptConfig()
        self.motions: dict[int, ObjectMotion] = {}
        self._planned: dict[int, tuple[int, np.ndarray]] = {}

    def plan(self, object_id: int, sensors: FrameSensors) -> Reprompt | None:
        """The object's prompts on a frame from its prediction, or None when it has none yet."""
        motion = self.motions.get(object_id)
        if motion is None:
            return None
        p = motion.predict(sensors.index, sensors.timestamp, sensors.world_from_lidar)
        if p is None:
            return None
        prev = motion.latest(before=sensors.index)
        refind = prev is not None and prev.lost > 0
        rp = derive_prompts(
            p[0], sensors.points, sensors.cameras, self.config, search=p[1], refind=refind
        )
        rp.fresh = prev is not None and prev.lost == 0 and prev.misses == 0
        # What the sweep made of the prediction gates this frame's observation.
        self._planned[object_id] = (sensors.index, rp.predicted)
        return rp

    def observe(
        self,
        object_id: int,
        sensors: FrameSensors,
        point_mask: np.ndarray | None,
        presence: float,
        camera_masks: Mapping[int, np.ndarray] | None = None,
        prompted: bool = False,
    ) -> bool:
        """Updates the object's motion with its output on a frame: its mask points (N,) bool
        when present enough and large enough, else a miss. ``camera_masks``: camera slot ->
        (h, w) bool mask of the object in that camera (any resolution), for the cross-modal
        check. ``prompted``: a frame the user prompted, whose segment is held to the prompt:
        one point starts the motion (an object of two points would otherwise start it on
        the next sweep's output, which the memory alone decoded). Returns whether it was
        observed."""
        motion = self.motions.setdefault(object_id, ObjectMotion(self.config))
        pts = sensors.points
        if (
            pts is not None
            and point_mask is not None
            and len(point_mask) == len(pts)
            and presence >= self.config.min_presence
        ):
            seg = np.asarray(pts, np.float64)[np.asarray(point_mask, bool), :3]
            planned = self._planned.get(object_id)
            if planned is not None and planned[0] == sensors.index:
                pred, search = planned[1], 0.0
            else:  # e.g. a prompted frame: the prediction as it stood
                p = motion.predict(sensors.index, sensors.timestamp, sensors.world_from_lidar)
                pred, search = (None, 0.0) if p is None else p
            if pred is not None and len(seg):
                gate = self.config.gate_factor * support_radius(pred, self.config) + search
                idx, _, _ = _near(seg, pred, gate)
                seg = seg[np.sort(idx)]
            if self.config.cross_modal_check and camera_masks and len(seg):
                seg = seg[_agreeing(seg, sensors.cameras, camera_masks)]
            if len(seg) >= (1 if prompted else self.config.min_observed_points):
                motion.observe(sensors.index, sensors.timestamp, sensors.world_from_lidar, seg)
                return True
        motion.miss(sensors.index)
        return False

    def miss(self, object_id: int, frame_index: int, lost: bool = False) -> None:
        """A frame without an observation; ``lost``: the object was lost on it (no support)."""
        motion = self.motions.get(object_id)
        if motion is not None:
            motion.miss(frame_index, lost)

    def discard_after(self, object_id: int, frame_index: int) -> None:
        motion = self.motions.get(object_id)
        if motion is not None:
            motion.discard_after(frame_index)

    def forget(self, object_id: int) -> None:
        self.motions.pop(object_id, None)
        self._planned.pop(object_id, None)

    def clear(self) -> None:
        self.motions.clear()
        self._planned.clear()

    def prune_before(self, frame_index: int) -> None:
        for m in self.motions.values():
            m.prune_before(frame_index)


__all__ = [
    "CameraGeometry",
    "CentroidFilter",
    "FrameSensors",
    "MotionState",
    "ObjectMotion",
    "camera_geometry",
    "Reprompt",
    "RepromptConfig",
    "Reprompter",
    "derive_prompts",
    "project_box",
    "project_points",
    "rigid_inverse",
    "support_radius",
    "to_object_prompts",
    "transform_points",
]
