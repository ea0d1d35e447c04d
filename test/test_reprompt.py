"""Motion-compensated re-prompting: the motion model (static under ego motion, constant
velocity), prompt derivation (support, clicks, camera boxes, leaving the field of view), lost
objects in the streaming tracker, and a replay after a past-frame prompt equal to live."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.sequence import Frame, Sequence
from sam4d_core.data.synthetic import SyntheticGenerator, generate_sequence, make_config
from sam4d_core.evaluation.first_frame_prompts import (
    FirstFramePrompt,
    ObjectVisibility,
    make_first_frame_prompt,
)
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt
from sam4d_core.tracking.reprompt import (
    CameraGeometry,
    FrameSensors,
    ObjectMotion,
    RepromptConfig,
    Reprompter,
    derive_prompts,
    project_box,
    rigid_inverse,
    to_object_prompts,
    transform_points,
)
from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig

torch.set_num_threads(1)

VOXEL = 0.2  # sam4d_small's LiDAR voxel (m): the tolerance the issue asks for
DT = 0.1  # 10 Hz sweeps


def _pose(x: float, y: float, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = [x, y, 1.8]
    return T


def _ego(k: int) -> np.ndarray:
    """The ego drives at 10 m/s on a gentle left curve: LiDAR -> world at sweep k."""
    return _pose(10.0 * DT * k, 0.02 * k * k, 0.03 * k)


def _car(rng: np.random.Generator, centre: np.ndarray, n: int = 300) -> np.ndarray:
    """(n, 3) points on the surface of a 4.5 x 1.8 x 1.5 m box centred at ``centre`` (the tests
    put it 0.3 m above the ground, its clearance)."""
    u = rng.uniform(-0.5, 0.5, size=(n, 3))
    face = rng.integers(0, 3, n)
    u[np.arange(n), face] = rng.choice([-0.5, 0.5], n)
    return u * [4.5, 1.8, 1.5] + centre


def _ground(rng: np.random.Generator, n: int = 4000) -> np.ndarray:
    """Ground points (world, z = 0) around the drive."""
    return np.c_[rng.uniform(-20, 60, n), rng.uniform(-20, 20, n), np.zeros(n)]


def _track(world_segments: list[np.ndarray], config: RepromptConfig) -> ObjectMotion:
    """An ObjectMotion fed with the segment of each sweep k (seen in LiDAR frame k)."""
    motion = ObjectMotion(config)
    for k, seg in enumerate(world_segments):
        pose = _ego(k)
        motion.observe(k, k * DT, pose, transform_points(rigid_inverse(pose), seg))
    return motion


def _max_error(pred: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(pred - truth, axis=1).max())


def test_static_object_under_ego_motion_is_predicted_within_a_voxel() -> None:
    rng = np.random.default_rng(0)
    car = _car(rng, np.array([25.0, 4.0, 1.05]))
    # The mask of each sweep: the car's points (sampled differently each sweep, as a LiDAR does).
    segs = [car[rng.permutation(300)[:250]] for _ in range(5)]
    motion = _track(segs, RepromptConfig())
    k = 5
    pred, search = motion.predict(k, k * DT, _ego(k))
    assert search < 0.5  # the velocity is known well by now (3 sigma x 0.1 s)
    # The latest segment, moved only by the ego motion: its points where they now are.
    truth = transform_points(rigid_inverse(_ego(k)), segs[-1])
    assert _max_error(pred, truth) < VOXEL
    assert np.linalg.norm(motion.latest().filter.velocity) < 1.0
    # In the LiDAR frame the object moved by metres (ego motion), the prediction followed it.
    seen_before = transform_points(rigid_inverse(_ego(k - 1)), segs[-1])
    assert _max_error(seen_before, truth) > 5 * VOXEL


def test_constant_velocity_object_is_predicted_within_a_voxel() -> None:
    rng = np.random.default_rng(1)
    v = np.array([-8.0, 1.5, 0.0])  # oncoming car, 8 m/s
    base = _car(rng, np.array([40.0, -3.5, 1.05]))
    segs = [base + v * DT * k for k in range(8)]
    motion = _track(segs, RepromptConfig())
    k = 8
    pred, _ = motion.predict(k, k * DT, _ego(k))
    truth = transform_points(rigid_inverse(_ego(k)), base + v * DT * k)
    assert _max_error(pred, truth) < VOXEL
    np.testing.assert_allclose(motion.latest().filter.velocity, v, atol=1.0)
    # Without the velocity the prediction would be 0.8 m off.
    still = transform_points(rigid_inverse(_ego(k)), segs[-1])
    assert _max_error(still, truth) > 3 * VOXEL


def test_a_static_pole_seen_in_parts_keeps_its_height_and_is_found_again() -> None:
    """A far pole: each sweep's LiDAR hits a different stretch of it, so the observed
    centroid moves up and down by a metre. With planar motion (the default) the prediction
    stays on the pole through sweeps that miss it, and the pole is found again when it is hit;
    a filter that learns a vertical speed from those jumps sinks the prediction into the
    ground while it coasts, and the pole is lost for good."""
    pole = np.c_[np.full(12, 30.0), np.full(12, 6.0), np.linspace(0.2, 6.0, 12)]  # world
    for planar in (True, False):
        rep = Reprompter(RepromptConfig(planar=planar))
        for k, seg in enumerate([pole[6:], pole[4:9]]):  # its top, then lower down
            pts = transform_points(rigid_inverse(_ego(k)), seg)
            mask = np.ones(len(seg), bool)
            assert rep.observe(1, FrameSensors(k, k * DT, _ego(k), pts, []), mask, 0.9)
        vz = rep.motions[1].latest().filter.velocity[2]
        for k in range(2, 8):  # sweeps that do not hit it
            rep.miss(1, k, lost=True)
        pts = transform_points(rigid_inverse(_ego(8)), pole)
        rp = rep.plan(1, FrameSensors(8, 8 * DT, _ego(8), pts, []))
        if planar:
            assert vz == 0.0 and not rp.lost, (vz, rp.support, rp.coverage)
        else:
            assert vz < -2.0 and rp.lost, (vz, rp.support, rp.coverage)


def _front_camera() -> CameraGeometry:
    """A 640 x 384 camera looking along the LiDAR's x axis."""
    K = np.array([[400.0, 0, 320], [0, 400.0, 192], [0, 0, 1]])
    cam_from_lidar = np.eye(4)
    cam_from_lidar[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # x fwd -> z, y left -> -x
    return CameraGeometry(3, K, cam_from_lidar, (384, 640))


def test_prompts_on_the_supported_prediction() -> None:
    rng = np.random.default_rng(2)
    car = _car(rng, np.array([20.0, 1.0, -0.75]))  # LiDAR frame (the ground is 1.8 m below)
    ground = _ground(rng) - [0, 0, 1.8]
    sweep = np.concatenate([ground, car])
    cfg = RepromptConfig(num_points=3)
    rp = derive_prompts(car + [0.1, 0.0, 0.0], sweep, [_front_camera()], cfg)
    assert not rp.lost and rp.has_lidar and rp.coverage > 0.9 and rp.support >= 300
    assert rp.lidar_points.shape == (3, 3)
    # The clicks are points of the current sweep, on the car (not on the ground around it).
    d = np.linalg.norm(rp.lidar_points[:, None] - car[None], axis=2).min(axis=1)
    assert (d == 0).all()
    box = rp.camera_boxes[3]
    truth = project_box(car, _front_camera(), 1)
    assert truth is not None
    np.testing.assert_allclose(box, truth, atol=5.0)  # 0.1 m at 20 m is 2 px
    prompts = to_object_prompts(rp)
    assert set(prompts.cameras) == {3} and prompts.cameras[3].box is not None
    assert prompts.lidar is not None and list(prompts.lidar.labels) == [1, 1, 1]


def test_a_moving_object_seen_once_is_found_by_the_search() -> None:
    rng = np.random.default_rng(7)
    ground = _ground(rng, 20000)
    v = np.array([12.0, 0.0, 0.0])  # a car pulling away at 12 m/s: 1.2 m per sweep
    car0 = _car(rng, np.array([20.0, 4.0, 1.05]))
    motion = _track([car0], RepromptConfig())  # one observation: velocity unknown (0 +- 4 m/s)
    pred, search = motion.predict(1, DT, _ego(1))
    assert 1.0 < search < 2.0
    car1 = transform_points(rigid_inverse(_ego(1)), car0 + v * DT)
    sweep = np.concatenate([transform_points(rigid_inverse(_ego(1)), ground), car1])
    cam = _front_camera()
    still = derive_prompts(pred, sweep, [cam], RepromptConfig())  # where it was
    assert _max_error(still.predicted, car1) > 1.0
    rp = derive_prompts(pred, sweep, [cam], RepromptConfig(), search=search)
    assert not rp.lost and rp.coverage > 0.9 > still.coverage
    assert _max_error(rp.predicted, car1) < VOXEL
    d = np.linalg.norm(rp.lidar_points[:, None] - car1[None], axis=2).min(axis=1)
    assert (d == 0).all()  # the clicks are on the car where it is now


def test_object_that_left_the_field_of_view_gets_no_camera_prompt() -> None:
    rng = np.random.default_rng(3)
    cam = _front_camera()
    # Beside the ego (y = 8 m at x = 1 m): outside the camera's field of view, still in the sweep.
    beside = _car(rng, np.array([1.0, 8.0, -0.75]))
    behind = _car(rng, np.array([-15.0, 0.0, -0.75]))
    for car in (beside, behind):
        assert project_box(car, cam, 1) is None
        rp = derive_prompts(car, car, [cam], RepromptConfig())
        assert not rp.lost and rp.camera_boxes == {} and len(rp.lidar_points) > 0
    # Without a LiDAR sweep, an object no camera sees is lost.
    rp = derive_prompts(behind, None, [cam], RepromptConfig())
    assert rp.lost and rp.is_empty
    ahead = _car(rng, np.array([20.0, 0.0, -0.75]))
    rp = derive_prompts(ahead, None, [cam], RepromptConfig())
    assert not rp.lost and set(rp.camera_boxes) == {3} and len(rp.lidar_points) == 0


def test_removed_object_has_no_support() -> None:
    rng = np.random.default_rng(4)
    car = _car(rng, np.array([20.0, 1.0, -0.75]))
    ground = _ground(rng, 20000) - [0, 0, 1.8]
    # The car is gone: the ground where it stood is still there, within reach of its lowest
    # points, but nothing of its body.
    rp = derive_prompts(car, ground, [_front_camera()], RepromptConfig())
    assert rp.support > 0 and rp.coverage < 0.3
    assert rp.lost and rp.is_empty
    rp = derive_prompts(car, np.zeros((0, 3)), [_front_camera()], RepromptConfig())
    assert rp.has_lidar is False and not rp.lost  # an empty sweep: the cameras decide


def _building(rng: np.random.Generator, x0: float, n: int = 400) -> np.ndarray:
    """(n, 3) points on the street face (y = 12 m) of a 6 m wide, 8 m high building from x0
    (LiDAR frame, the ground 1.8 m below)."""
    return np.c_[rng.uniform(x0, x0 + 6.0, n), np.full(n, 12.0), rng.uniform(-1.8, 6.2, n)]


def test_an_object_that_left_is_lost_though_its_neighbour_stays() -> None:
    """The bundled recording's building 13: its mask spilled onto the building beside it, so
    its kept segment holds part of that one; when it leaves the sweep the neighbour still covers
    that part (0.36 of the prediction there). Lost, and not found again on the stale segment
    (hysteresis: an object lost on the previous frame needs strong support)."""
    rng = np.random.default_rng(8)
    ground = _ground(rng, 20000) - [0, 0, 1.8]
    building = _building(rng, 10.0)
    neighbour = _building(rng, 16.0)
    spill = neighbour[neighbour[:, 0] < 18.0][:160]  # 160 of the neighbour's points, 2 m of it
    predicted = np.concatenate([building, spill])
    cam = _front_camera()
    present = derive_prompts(predicted, np.concatenate([ground, building, neighbour]), [cam],
                             RepromptConfig())  # fmt: skip
    assert not present.lost and present.coverage > 0.9
    gone = np.concatenate([ground, neighbour])
    rp = derive_prompts(predicted, gone, [cam], RepromptConfig())
    assert 0.25 < rp.coverage < 0.5 and rp.support > 100  # the neighbour supports the spill
    assert rp.lost and rp.is_empty
    # Lost on the previous frame: a prediction covered 0.6 (above min_coverage) is not enough.
    part = np.concatenate([ground, neighbour, building[building[:, 0] < 11.5]])
    again = derive_prompts(predicted, part, [cam], RepromptConfig(), refind=True)
    assert 0.5 < again.coverage < 0.7 and again.lost
    assert not derive_prompts(predicted, part, [cam], RepromptConfig()).lost
    # Back in full: found again.
    back = np.concatenate([ground, building, neighbour])
    assert not derive_prompts(predicted, back, [cam], RepromptConfig(), refind=True).lost


def _observed_far_object(
    rng: np.random.Generator, centre: list[float], n: int
) -> tuple[Reprompter, np.ndarray, np.ndarray]:
    """A Reprompter that observed object 1, a car of ``n`` points at ``centre`` (world), on
    ground, on sweeps 0-2; with the car's and the ground's points (world frame)."""
    car = _car(rng, np.array(centre), n=n)
    ground = _ground(rng, 20000)
    rep = Reprompter()
    for k in range(3):
        pose = _ego(k)
        pts = transform_points(rigid_inverse(pose), np.concatenate([ground, car]))
        mask = np.r_[np.zeros(len(ground), bool), np.ones(len(car), bool)]
        assert rep.observe(1, FrameSensors(k, k * DT, pose, pts, []), mask, presence=0.9)
    return rep, car, ground


def test_a_lost_object_is_found_again_only_with_strong_support() -> None:
    """The Reprompter remembers a lost frame (rolled back with the history) and asks the next
    prediction for ``refind_support_points`` / ``refind_coverage``."""
    # A far object: a few points (on a truck bed, out of reach of the ground).
    rep, car, ground = _observed_far_object(np.random.default_rng(9), [25.0, 4.0, 1.6], 8)
    sensors = [
        FrameSensors(k, k * DT, _ego(k), transform_points(rigid_inverse(_ego(k)), w), [])
        for k, w in ((3, ground), (4, np.concatenate([ground, car[:5]])))
    ]
    rp0 = rep.plan(1, sensors[0])
    assert rp0.lost and rp0.fresh  # predicted from the previous frame's observation
    rep.miss(1, 3, lost=True)
    assert rep.motions[1].latest().lost == 1
    # 5 of its 8 points: supported for a tracked object, not for one lost on the previous frame.
    rp = rep.plan(1, sensors[1])
    assert rp.support == 5 < RepromptConfig().refind_support_points and rp.lost
    assert not rp.fresh  # a coast through the lost frame
    assert not derive_prompts(rp.predicted, sensors[1].points, [], RepromptConfig()).lost
    rep.motions[1].discard_after(2)
    assert not rep.plan(1, sensors[1]).lost  # the lost frame rolled back


def test_a_far_object_of_few_points_is_found_again_by_as_many_as_it_has() -> None:
    """``refind_support_points`` (6) is more points than a car 35 m away has (4): after one lost
    sweep it must be found again by all of its own, not by 6, or it is lost for good."""
    rep, car, ground = _observed_far_object(np.random.default_rng(12), [35.0, -7.0, 1.6], 4)
    s3 = FrameSensors(3, 3 * DT, _ego(3), transform_points(rigid_inverse(_ego(3)), ground), [])
    assert rep.plan(1, s3).lost
    rep.miss(1, 3, lost=True)
    for n, lost in ((3, True), (4, False)):  # 3 of its 4 points, then all 4
        w = np.concatenate([ground, car[:n]])
        s4 = FrameSensors(4, 4 * DT, _ego(4), transform_points(rigid_inverse(_ego(4)), w), [])
        rp = rep.plan(1, s4)
        assert rp.lost == lost and rp.support == n, (n, rp.support)


def test_a_mask_spilling_onto_a_neighbour_moves_neither_segment_nor_velocity() -> None:
    rng = np.random.default_rng(6)
    car = _car(rng, np.array([25.0, 4.0, 1.05]))
    neighbour = _car(rng, np.array([25.0, 9.0, 1.05]))  # parked 5 m beside it
    rep = Reprompter()
    for k in range(6):
        pose = _ego(k)
        both = np.concatenate([car, neighbour])
        pts = transform_points(rigid_inverse(pose), both)
        mask = np.r_[np.ones(len(car), bool), np.full(len(neighbour), k >= 3)]  # spills from 3 on
        rep.observe(1, FrameSensors(k, k * DT, pose, pts, []), mask, presence=0.9)
    st = rep.motions[1].latest()
    assert np.linalg.norm(st.filter.velocity) < 0.5
    assert np.abs(st.segment[:, 1] - 4.0).max() < 1.0  # only the car's points are kept


def test_a_user_prompted_object_of_two_points_starts_its_motion() -> None:
    """Two points are too few for a tracked output to update the motion, not for the sweep the
    user prompted: without that state the next sweep is decoded from memory alone and its
    output (a building behind) would start the motion instead."""
    rng = np.random.default_rng(11)
    bush = _car(rng, np.array([35.0, -6.0, 0.6]), n=2)
    building = _car(rng, np.array([44.0, -14.0, 3.0]), n=100)
    pose = _ego(0)
    pts = transform_points(rigid_inverse(pose), np.concatenate([bush, building]))
    mask = np.r_[np.ones(len(bush), bool), np.zeros(len(building), bool)]
    s0 = FrameSensors(0, 0.0, pose, pts, [])
    assert not Reprompter().observe(1, s0, mask, presence=0.9)
    rep = Reprompter()
    assert rep.observe(1, s0, mask, presence=0.9, prompted=True)
    # The next sweep's output on the building is far from the prediction: not the object.
    s1 = FrameSensors(1, DT, _ego(1), transform_points(rigid_inverse(_ego(1)), building), [])
    rep.observe(1, s1, np.ones(len(building), bool), presence=0.9)
    assert np.abs(rep.motions[1].latest().segment[:, 0] - 35.0).max() < 2.5


def test_motion_history_rolls_back_and_prunes() -> None:
    rng = np.random.default_rng(5)
    car = _car(rng, np.array([25.0, 4.0, 1.05]))
    rep = Reprompter()
    for k in range(4):
        pose = _ego(k)
        pts = transform_points(rigid_inverse(pose), car)
        s = FrameSensors(k, k * DT, pose, pts, [])
        assert rep.observe(7, s, np.ones(len(pts), bool), presence=0.9)
    s4 = FrameSensors(4, 0.4, _ego(4), transform_points(rigid_inverse(_ego(4)), car), [])
    assert not rep.observe(7, s4, np.zeros(len(car), bool), presence=0.9)  # empty mask: a miss
    m = rep.motions[7]
    assert sorted(m.history) == [0, 1, 2, 3, 4] and m.latest().misses == 1
    m.discard_after(2)
    assert sorted(m.history) == [0, 1, 2]
    rep.prune_before(2)
    assert sorted(m.history) == [1, 2]  # frame 2's prediction needs the state after frame 1
    assert rep.plan(7, s4) is not None and rep.plan(8, s4) is None
    rep.forget(7)
    assert rep.motions == {}


# ---------------------------------------------------------------------------------------------
# The streaming tracker.


@pytest.fixture(scope="module")
def seq() -> Sequence:
    return generate_sequence(make_config("tiny", num_frames=4))


@pytest.fixture(scope="module")
def model() -> SAM4D:
    torch.manual_seed(0)
    return build_sam4d("sam4d_tiny")


def _largest_object(frame: Frame) -> int:
    ids, counts = np.unique(frame.point_labels[frame.point_labels > 0], return_counts=True)
    return int(ids[np.argmax(counts)])


def _without(frame: Frame, obj: int) -> Frame:
    keep = frame.point_labels != obj
    return dataclasses.replace(
        frame, points=frame.points[keep], point_labels=frame.point_labels[keep]
    )


def _mask_prompt(frame: Frame, obj: int, object_id: int = 1, stamp=None) -> ObjectPrompt:
    # A point-mask prompt is taken as the output: the object's observed segment is exact.
    return ObjectPrompt(
        object_id, stamp=stamp, lidar=LidarPrompt(point_mask=frame.point_labels == obj)
    )


def test_removed_object_is_lost_not_tracked(model: SAM4D, seq: Sequence) -> None:
    obj = _largest_object(seq[0])
    tr = StreamingTracker(model, TrackerConfig(reprompt=True))
    memory_only = StreamingTracker(model, TrackerConfig())
    for t in (tr, memory_only):
        t.step(seq[0])
        r = t.add_prompts([_mask_prompt(seq[0], obj)])
        assert r is not None and not r.objects[0].lost
    # Next sweep: the object is still there -> supported, decoded with memory + prompts.
    r = tr.step(seq[1])
    (o,) = r.objects
    assert not o.lost and r.timings_ms["reprompt"] > 0
    # Then it is removed from the scene.
    gone = _without(seq[2], obj)
    (o,) = tr.step(gone).objects
    assert o.lost and o.presence_score < 0.01
    assert not o.point_mask.any() and not any(m.any() for m in o.image_masks.values())
    (o,) = tr.step(_without(seq[3], obj)).objects
    assert o.lost
    # The memory-only tracker has no support check (the SAM4D protocol): lost there means no
    # mask anywhere.
    for f in (seq[1], gone):
        (o,) = memory_only.step(f).objects
        assert o.lost == (
            not o.point_mask.any() and not any(m.any() for m in o.image_masks.values())
        )


@pytest.mark.parametrize("reprompt", [False, True])
def test_an_object_without_a_mask_is_lost_not_tracked(
    model: SAM4D, seq: Sequence, reprompt: bool
) -> None:
    """No pixel in any camera and no point: lost, presence 0 (the bundled model's car 106 had an
    empty mask on frames 1-4 at presence 1.00, reported tracked), in both tracker modes; a mask
    somewhere: not lost."""
    obj = _largest_object(seq[0])
    # Everything above the threshold is the object (nothing empty), or nothing is.
    for threshold, empty in ((1e-6, False), (1.0 - 1e-6, True)):
        tr = StreamingTracker(model, TrackerConfig(reprompt=reprompt, mask_threshold=threshold))
        tr.step(seq[0])
        tr.add_prompts([_mask_prompt(seq[0], obj)])
        (o,) = tr.step(seq[1]).objects
        nothing = not o.point_mask.any() and not any(m.any() for m in o.image_masks.values())
        assert nothing == empty
        assert o.lost == empty
        if empty:
            assert o.presence_score == 0.0 and o.lidar_presence == 0.0
            assert o.image_presence and set(o.image_presence.values()) == {0.0}
        else:
            assert o.presence_score > 0.0


def test_replayed_prompt_equals_live_with_reprompting(model: SAM4D, seq: Sequence) -> None:
    obj = _largest_object(seq[0])
    cfg = TrackerConfig(reprompt=True)
    live = StreamingTracker(model, cfg)
    live.step(seq[0])
    live.add_prompts([_mask_prompt(seq[0], obj)])
    for f in seq.frames[1:3]:
        a = live.step(f)
    late = StreamingTracker(model, cfg)
    for f in seq.frames[:3]:
        late.step(f)
    b = late.add_prompts([_mask_prompt(seq[0], obj, stamp=seq[0].timestamp)])
    assert b is not None and b.replayed_from == 0
    (oa,), (ob,) = a.objects, b.objects
    assert oa.lost == ob.lost
    np.testing.assert_allclose(oa.point_scores, ob.point_scores, atol=1e-4)
    ma, mb = live._reprompter.motions[1], late._reprompter.motions[1]
    assert sorted(ma.history) == sorted(mb.history) == [0, 1, 2]
    for k in ma.history:
        np.testing.assert_allclose(ma.history[k].segment, mb.history[k].segment, atol=1e-5)


@pytest.mark.parametrize("with_memory", [False, True])
def test_reprompted_frames_decode_from_prompts_or_with_memory(
    model: SAM4D, seq: Sequence, with_memory: bool
) -> None:
    """A re-prompted sweep is decoded from its derived prompts alone (RepromptConfig.memory off,
    the default) or beside the object's memory; either way its memory is written, and a
    memory-only tracker always decodes tracked sweeps from the memory."""
    obj = _largest_object(seq[0])
    seen: list[tuple[bool, bool]] = []  # per decoded object: (has prompts, has memory)
    real = model.track_step

    def recording(features, prompts, memories, **kw):
        seen.extend(
            (p is not None and not p.is_empty, m is not None)
            for p, m in zip(prompts, memories, strict=True)
        )
        return real(features, prompts, memories, **kw)

    cfg = TrackerConfig(reprompt=True, reprompt_config=RepromptConfig(memory=with_memory))
    tr = StreamingTracker(model, cfg)
    object.__setattr__(model, "track_step", recording)  # observe the real calls
    try:
        tr.step(seq[0])
        tr.add_prompts([_mask_prompt(seq[0], obj)])
        assert seen == [(True, False)]  # the prompted frame: no memory yet
        seen.clear()
        (o,) = tr.step(seq[1]).objects
        assert not o.lost
        assert seen == [(True, with_memory)]
        assert sorted(tr._objects[1].bank.frames) == [0, 1]
        seen.clear()
        plain = StreamingTracker(model, TrackerConfig())
        plain.step(seq[0])
        plain.add_prompts([_mask_prompt(seq[0], obj)])
        seen.clear()
        plain.step(seq[1])
        assert seen == [(False, True)]
    finally:
        model.__dict__.pop("track_step", None)


def test_an_unsupported_prediction_is_searched_again_before_the_object_is_lost() -> None:
    """A far object of 6 points (33 m: support radius 0.66 m) whose kept segment is 0.9 m off
    (one sweep's mask of a sparse object): the velocity's search (0.18 m) finds no support; the
    second search (``reacquire_search``) finds it, on the object. Without it the object is lost;
    a prediction the first search supports is not moved by the second."""
    rng = np.random.default_rng(11)
    obj = rng.uniform(-0.1, 0.1, (6, 3)) + [33.0, 2.0, -0.3]  # 1.5 m above the ground
    moved = obj + [0.9, 0.0, 0.0]
    ground = _ground(rng, 20000) - [0, 0, 1.8]
    sweep = np.concatenate([ground, moved])
    cam = _front_camera()
    rp = derive_prompts(obj, sweep, [cam], RepromptConfig(), search=0.18)
    assert not rp.lost and rp.coverage == 1.0 and rp.shift[0] > 0.3
    d = np.linalg.norm(rp.lidar_points[:, None] - moved[None], axis=2)
    assert (d.min(axis=1) == 0).all()  # clicks on the object where it is
    once = derive_prompts(obj, sweep, [cam], RepromptConfig(reacquire_search=0.0), search=0.18)
    assert once.lost and once.is_empty
    # Supported where predicted: no second search, no shift.
    here = derive_prompts(obj, np.concatenate([ground, obj]), [cam], RepromptConfig(), search=0.0)
    assert not here.lost and np.allclose(here.shift, 0.0)
    with pytest.raises(ValueError, match="reacquire_search"):
        RepromptConfig(reacquire_search=-1.0)


BUNDLED = Path(__file__).resolve().parents[1] / "sam4d_core/weights/sam4d_small_synthetic.pt"


def _bundled_tracker() -> StreamingTracker:
    """The bundled model in the node's default tracker."""
    model = build_sam4d(checkpoint=str(BUNDLED), device="cpu").eval()
    cfg = TrackerConfig(
        reprompt=True, refine_masks=True, lift_image_clicks=True, zoom=True, boundary_refine=True
    )
    return StreamingTracker(model, cfg)


def _as_object_1(first: FirstFramePrompt | None) -> ObjectPrompt:
    """An evaluation prompt as the tracker's prompt of object 1."""
    assert first is not None
    prompt = first.to_object_prompt()
    prompt.object_id = 1
    return prompt


@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"bundled model missing: {BUNDLED}")
def test_a_small_object_boxed_by_the_user_starts_its_motion() -> None:
    """A held-out tree of 5 LiDAR points boxed in the image (seed 950020, object 53): the
    decoder's stride-4 camera cells on the prompted sweep missed 3 of its points, the cross-modal
    check kept 2 (fewer than ``min_observed_points``), its motion never started and it was gone
    from the next sweep on (LiDAR IoU 0 over 19 sweeps). The check on a user-prompted sweep
    reads those cells grown by one, and the tree is followed."""
    seq = generate_sequence(make_config("bundled_sample", seed=950020, num_frames=4))
    t0 = ObjectVisibility(seq).first_appearance(53, "img", 30, 10)
    prompt = _as_object_1(make_first_frame_prompt(seq.frames[t0], 53, "box", "img", t0))
    tr = _bundled_tracker()
    tr.step(seq.frames[t0])
    tr.add_prompts([prompt])
    for t in (t0 + 1, t0 + 2):
        obj = tr.step(seq.frames[t]).objects[0]
        gt = seq.frames[t].point_labels == 53
        iou = (obj.point_mask & gt).sum() / max(1, (obj.point_mask | gt).sum())
        assert not obj.lost and iou > 0.5, (t, iou, int(obj.point_mask.sum()), int(gt.sum()))


@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"bundled model missing: {BUNDLED}")
@pytest.mark.parametrize(("seed", "oid", "modality"), [(950003, 64, "pts"), (950002, 52, "img")])
def test_a_users_mask_is_the_answer_and_the_object_is_followed(
    seed: int, oid: int, modality: str
) -> None:
    """A mask drawn by the user (held-out trees: seed 950003's 64 in the LiDAR, 950002's 52 in
    an image) is the answer where it was drawn, as SAM 2 takes a mask without clicks as the output,
    at the sensor's resolution. The other modality gets the object too (an image mask is lifted
    to a 3D click on the point seen deepest inside it), and the object is followed. Before, the
    decoder's camera masks (empty without memory) failed the LiDAR mask's cross-modal check, so
    the first tree's motion never started (LiDAR IoU 0.05 over 20 sweeps), and an image mask
    gave no LiDAR mask at all (the second: 0.00)."""
    # The held-out sequence's first sweeps as evaluated (its objects depend on its length).
    gen = SyntheticGenerator(
        make_config("bundled_sample", seed=seed, num_frames=20, name=f"bundled_sample_{seed}")
    )
    frames = [gen.render(t).frame for t in range(3)]
    prompt = _as_object_1(make_first_frame_prompt(frames[0], oid, "mask", modality, 0))
    tr = _bundled_tracker()
    tr.step(frames[0])
    (obj,) = tr.add_prompts([prompt]).objects
    gt = frames[0].point_labels == oid
    if modality == "pts":
        assert np.array_equal(obj.point_mask, np.asarray(prompt.lidar.point_mask, bool))
    else:
        (ip,) = prompt.image
        assert np.array_equal(obj.image_masks[ip.camera], np.asarray(ip.mask, bool))
        iou = (obj.point_mask & gt).sum() / max(1, (obj.point_mask | gt).sum())
        assert iou > 0.8, (iou, int(obj.point_mask.sum()), int(gt.sum()))
    for t in (1, 2):
        obj = tr.step(frames[t]).objects[0]
        gt = frames[t].point_labels == oid
        iou = (obj.point_mask & gt).sum() / max(1, (obj.point_mask | gt).sum())
        assert not obj.lost and iou > 0.7, (t, iou, int(obj.point_mask.sum()), int(gt.sum()))
