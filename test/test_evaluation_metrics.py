"""Evaluation metrics and first-frame prompt rules against hand-computed cases: IoU (both empty,
absent but predicted, ignored LiDAR points), DAVIS boundaries and F, J&F, aggregation over
frames and objects, the 1-click / 3-click / box / mask prompts and where and when they are given."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from sam4d_core.data.sequence import CameraFrame, Frame, ObjectInfo, Sequence
from sam4d_core.evaluation.first_frame_prompts import (
    ObjectVisibility,
    bev_box,
    center_pixel,
    center_point,
    distance_to_boundary,
    first_appearance,
    make_first_frame_prompt,
    pixel_box,
    prompt_camera,
    spread_pixels,
    spread_points,
)
from sam4d_core.evaluation.metrics import (
    BoundaryCounts,
    FrameScores,
    boundary_counts,
    boundary_f,
    boundary_map,
    boundary_tolerance,
    cell_scores,
    disk,
    j_and_f,
    lidar_iou,
    mask_iou,
    object_scores,
    pooled_iou,
)
from sam4d_core.evaluation.streaming_eval import (
    DEFAULT_SEMANTIC_BLACKLIST,
    EvalConfig,
    FrameGroundTruth,
    candidate_objects,
    pick_demo_object,
    select_objects,
)
from sam4d_core.tracking.records import ObjectResult

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository's training/ package


def _mask(shape, rows, cols):
    m = np.zeros(shape, bool)
    m[rows[0] : rows[1], cols[0] : cols[1]] = True
    return m


# ---------------------------------------------------------------------------------------------
# IoU.


def test_mask_iou_hand_cases() -> None:
    gt = _mask((4, 4), (0, 2), (0, 3))  # 6 pixels
    pred = _mask((4, 4), (0, 2), (1, 4))  # 6 pixels, 4 shared
    assert mask_iou(pred, gt) == pytest.approx(4 / 8)
    assert mask_iou(gt, gt) == 1.0
    empty = np.zeros((4, 4), bool)
    assert mask_iou(empty, empty) is None  # both empty: the frame is skipped
    assert mask_iou(pred, empty) == 0.0  # absent in the ground truth but predicted
    assert mask_iou(empty, gt) == 0.0  # missed
    assert pooled_iou([(4, 8), (0, 0), (1, 2)]) == pytest.approx(5 / 10)
    assert pooled_iou([(0, 0), (0, 0)]) is None
    with pytest.raises(ValueError, match="shape"):
        mask_iou(pred, np.zeros((3, 3), bool))


def test_lidar_iou_ignores_points() -> None:
    labels = np.array([1, 1, -1, 0, 2, 1])
    pred = np.array([True, False, True, True, False, False])
    # Object 1 = points 0, 1, 5; point 2 is ignored (a predicted ignored point is no error);
    # hits {0}, union {0, 1, 3, 5}.
    assert lidar_iou(pred, labels, 1) == pytest.approx(1 / 4)
    assert mask_iou(pred, labels == 1) == pytest.approx(1 / 5)  # what ignoring changes
    # Object 2 is not predicted: 0; object 7 is absent and point 3 is predicted: 0.
    assert lidar_iou(pred, labels, 2) == 0.0
    assert lidar_iou(pred, labels, 7) == 0.0
    assert lidar_iou(np.zeros(6, bool), labels, 7) is None
    # Everything ignored: nothing to score.
    assert lidar_iou(np.ones(3, bool), np.full(3, -1), 1) is None


# ---------------------------------------------------------------------------------------------
# Boundaries.


def test_boundary_map_is_davis_seg2bmap() -> None:
    seg = _mask((5, 5), (1, 3), (1, 3))
    expected = np.array(
        [
            [1, 1, 1, 0, 0],
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    np.testing.assert_array_equal(boundary_map(seg), expected)
    # A full mask has no boundary (the image border is not one in DAVIS); an empty one neither.
    assert not boundary_map(np.ones((4, 6), bool)).any()
    assert not boundary_map(np.zeros((4, 6), bool)).any()
    # Left half of a 10x10 image: the boundary is column 4, every row.
    b = boundary_map(_mask((10, 10), (0, 10), (0, 5)))
    assert np.array_equal(np.argwhere(b), [[r, 4] for r in range(10)])


def test_disk_and_tolerance() -> None:
    np.testing.assert_array_equal(disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    assert disk(2).sum() == 13 and disk(0).tolist() == [[1]]
    assert boundary_tolerance((10, 10)) == 1  # ceil(0.008 * 14.1)
    assert boundary_tolerance((288, 480)) == 5  # ceil(0.008 * 559.8)
    assert boundary_tolerance((375, 1242)) == 11  # ceil(0.008 * 1297.4)
    assert boundary_tolerance((100, 100), bound_th=3) == 3  # >= 1: pixels


def test_boundary_f_hand_cases() -> None:
    gt = _mask((10, 10), (0, 10), (0, 5))  # boundary: column 4 (10 pixels); tolerance 1 pixel
    assert boundary_f(gt, gt) == 1.0
    # Boundary one column off: within the tolerance everywhere.
    assert boundary_f(_mask((10, 10), (0, 10), (0, 6)), gt) == 1.0
    # Two columns off: nothing matches.
    assert boundary_f(_mask((10, 10), (0, 10), (0, 7)), gt) == 0.0
    # Top half one column off, bottom half three: prediction boundary = (0..4, 5), (4, 6),
    # (4, 7), (5..9, 7) = 12 pixels of which the 5 in column 5 match -> precision 5/12; ground
    # truth rows 0..4 have a prediction pixel beside them -> recall 5/10; F = 5/11.
    pred = np.zeros((10, 10), bool)
    pred[:5, :6] = True
    pred[5:, :8] = True
    c = boundary_counts(pred, gt)
    assert (c.pred, c.gt, c.pred_matched, c.gt_matched) == (12, 10, 5, 5)
    assert c.precision_recall() == (pytest.approx(5 / 12), 0.5)
    assert boundary_f(pred, gt) == pytest.approx(5 / 11)
    # Empty cases: both empty -> skipped; one empty -> 0 (DAVIS: precision or recall 0).
    empty = np.zeros((10, 10), bool)
    assert boundary_f(empty, empty) is None
    assert boundary_f(gt, empty) == 0.0 and boundary_f(empty, gt) == 0.0
    # Both full: no boundary on either side, DAVIS scores 1.
    full = np.ones((10, 10), bool)
    assert boundary_f(full, full) == 1.0
    # Counts pool over cameras: (5 + 10) / (12 + 10) precision, (5 + 10) / (10 + 10) recall.
    pooled = c + boundary_counts(gt, gt)
    p, r = 15 / 22, 15 / 20
    assert pooled.f_measure() == pytest.approx(2 * p * r / (p + r))
    assert BoundaryCounts().f_measure() == 1.0  # nothing at all (never scored: both empty)


def test_j_and_f() -> None:
    assert j_and_f(0.5, 5 / 11) == pytest.approx((0.5 + 5 / 11) / 2)
    assert j_and_f(None, 1.0) is None and j_and_f(1.0, None) is None


def test_aggregation_over_frames_and_objects() -> None:
    frames = [
        FrameScores(0.5, 0.4, 1.0),
        FrameScores(None, None, None),  # both empty everywhere: skipped
        FrameScores(0.0, 0.0, None),  # left the image but still predicted; no LiDAR ground truth
        FrameScores(1.0, 1.0, 0.5),
    ]
    s = object_scores(frames)
    assert s.image_miou == pytest.approx(1.5 / 3) and s.j == s.image_miou
    assert s.f == pytest.approx(1.4 / 3)
    assert s.jf == pytest.approx((1.5 / 3 + 1.4 / 3) / 2)
    assert s.lidar_miou == pytest.approx(0.75)
    assert (s.image_frames, s.lidar_frames) == (3, 2)
    never = object_scores([FrameScores(), FrameScores()])
    assert never.image_miou is None and never.lidar_miou is None and never.jf is None
    lidar_only = object_scores([FrameScores(None, None, 0.2)])
    cell = cell_scores([s, never, lidar_only])
    # Objects without a value stay out of that column's mean.
    assert cell.image_miou == pytest.approx(s.image_miou) and cell.image_objects == 1
    assert cell.lidar_miou == pytest.approx((0.75 + 0.2) / 2) and cell.lidar_objects == 2
    assert cell.jf == pytest.approx(j_and_f(s.j, s.f))


# ---------------------------------------------------------------------------------------------
# Scoring frames of a hand-made sequence (absent objects, cameras pooled, ignored points).


def _frame(t, masks: dict[str, np.ndarray], labels, objects=None) -> Frame:
    cams = {
        name: CameraFrame(name, np.zeros(m.shape + (3,), np.uint8), np.eye(3), np.eye(4), None, m)
        for name, m in masks.items()
    }
    labels = np.asarray(labels, np.int32)
    pts = np.zeros((len(labels), 4), np.float32)
    pts[:, 0] = np.arange(len(labels))
    return Frame(0.1 * t, pts, cams, np.eye(4), labels, objects or {}, t)


def _result(masks: dict[str, np.ndarray], point_mask) -> ObjectResult:
    pm = np.asarray(point_mask, bool)
    return ObjectResult(1, 1.0, 1.0, masks, pm, pm.astype(np.float32))


def test_frame_scores_pool_cameras_and_skip_empty_frames() -> None:
    a = np.zeros((10, 10), np.int32)
    a[:, :5] = 5
    b = np.zeros((10, 10), np.int32)
    b[:2, :2] = 5
    seq = Sequence(
        "hand",
        [
            _frame(0, {"a": a, "b": b}, [5, 5, -1, 0]),
            _frame(1, {"a": np.zeros_like(a), "b": np.zeros_like(b)}, [0, 0, -1, 0]),
            _frame(2, {"a": np.zeros_like(a), "b": np.zeros_like(b)}, [0, 0, 0, 0]),
        ],
    )
    # Frame 0: camera a exact (50 / 50), camera b missed (0 / 4): pooled IoU 50 / 54; LiDAR:
    # points 0 hit, 1 missed, 2 ignored (predicted: no error) -> 1 / 2.
    gt0 = FrameGroundTruth(seq, 0, 0.008)
    r0 = _result({"a": a == 5, "b": np.zeros((10, 10), bool)}, [1, 0, 1, 0])
    s0 = gt0.score(5, r0)
    assert s0.image_iou == pytest.approx(50 / 54)
    assert s0.lidar_iou == pytest.approx(0.5)
    assert s0.camera_iou == {"a": 1.0, "b": 0.0}  # per camera, for single-camera comparisons
    counts = boundary_counts(a == 5, a == 5) + boundary_counts(np.zeros((10, 10), bool), b == 5)
    assert s0.boundary_f == pytest.approx(counts.f_measure())
    # Frame 1: the object left every view and nothing is predicted: no score at all.
    s1 = FrameGroundTruth(seq, 1, 0.008).score(5, _result({"a": a < 0, "b": b < 0}, [0, 0, 1, 0]))
    assert s1 == FrameScores(None, None, None, {"a": None, "b": None})
    # Frame 2: absent but predicted in one camera and on one point: 0 everywhere.
    pred = np.zeros((10, 10), bool)
    pred[3, 3] = True
    s2 = FrameGroundTruth(seq, 2, 0.008).score(5, _result({"a": pred, "b": b < 0}, [0, 0, 0, 1]))
    assert s2 == FrameScores(0.0, 0.0, 0.0, {"a": 0.0, "b": None})
    per_object = object_scores([s0, s1, s2])
    assert per_object.image_miou == pytest.approx((50 / 54 + 0.0) / 2)
    assert per_object.lidar_miou == pytest.approx(0.25)


# ---------------------------------------------------------------------------------------------
# Prompt rules.


def test_center_click_is_sams_evaluation_click() -> None:
    m = _mask((40, 60), (10, 30), (5, 45))
    # Depth 10 first reached at row 19 (rows 10..29) and column 14 (columns 5..44): row-major.
    assert center_pixel(m) == (14.0, 19.0)
    assert distance_to_boundary(m)[19, 14] == pytest.approx(10.0)
    # The image border is a boundary.
    assert center_pixel(np.ones((5, 7), bool)) == (2.0, 2.0)
    assert center_pixel(np.zeros((5, 7), bool)) is None
    # Training's "center" click mode is this definition.
    from training.prompt_simulation import sample_pixel, sample_point

    rng = np.random.default_rng(0)
    assert sample_pixel(m, rng, "center") == center_pixel(m)
    xyz, region, valid = _line_cloud()
    assert sample_point(xyz, region, rng, "center", valid) == center_point(xyz, region, valid)


def test_spread_pixels() -> None:
    m = _mask((40, 60), (10, 30), (5, 45))
    clicks = spread_pixels(m, 3)
    assert len(clicks) == 3 and clicks[0] == center_pixel(m)
    # The second: the deep pixel (depth >= 5: rows 14..25, columns 9..40) farthest from the first.
    assert clicks[1] == (40.0, 25.0)
    dt = distance_to_boundary(m)
    for x, y in clicks:
        assert dt[int(y), int(x)] >= 5
    assert spread_pixels(m, 1) == [center_pixel(m)]
    # A one-pixel-wide pole: clicks at its top (first deepest pixel), bottom, middle.
    pole = _mask((30, 10), (5, 25), (4, 5))
    assert spread_pixels(pole, 3) == [(4.0, 5.0), (4.0, 24.0), (4.0, 14.0)]
    # Too few pixels: fewer clicks; none for an empty mask.
    one = _mask((5, 5), (2, 3), (2, 3))
    assert spread_pixels(one, 3) == [(2.0, 2.0)]
    two = _mask((5, 5), (2, 3), (2, 4))
    assert sorted(spread_pixels(two, 3)) == [(2.0, 2.0), (3.0, 2.0)]
    assert spread_pixels(np.zeros((5, 5), bool), 3) == []


def _line_cloud():
    """Object points at x = 0..10 (y = z = 0), background at x = -1 and 11, an ignored point at
    x = 4.5 that must not count as outside."""
    obj = np.stack([np.arange(11.0), np.zeros(11), np.zeros(11)], axis=1)
    other = np.array([[-1.0, 0, 0], [11.0, 0, 0], [4.5, 0, 0]])
    xyz = np.concatenate([obj, other])
    region = np.zeros(len(xyz), bool)
    region[:11] = True
    valid = np.ones(len(xyz), bool)
    valid[-1] = False
    return xyz, region, valid


def test_lidar_clicks() -> None:
    xyz, region, valid = _line_cloud()
    # Depths min(x + 1, 11 - x): deepest x = 5.
    assert center_point(xyz, region, valid) == 5
    # Counting the ignored point as outside would pick the wrong one.
    assert center_point(xyz, region, None) != 5
    # Deep points (depth >= 3): x = 2..8; farthest from x = 5: x = 2 (tie with 8: first), then 8.
    assert spread_points(xyz, region, valid, 3) == [5, 2, 8]
    # Nothing valid outside: the point nearest the centroid (x = 5).
    assert center_point(xyz[:11], region[:11]) == 5
    assert center_point(xyz, np.zeros(len(xyz), bool)) is None
    assert spread_points(xyz, np.zeros(len(xyz), bool), valid) == []
    np.testing.assert_array_equal(bev_box(xyz, region), [0.0, 0.0, 10.0, 0.0])
    assert bev_box(xyz, np.zeros(len(xyz), bool)) is None


def test_pixel_box() -> None:
    np.testing.assert_array_equal(pixel_box(_mask((40, 60), (10, 30), (5, 45))), [5, 10, 44, 29])
    assert pixel_box(np.zeros((3, 3), bool)) is None


def _two_camera_sequence() -> Sequence:
    """Object 3 in cameras a (12 px) and b (20 px) on frame 1, in a only (40 px) on frame 2;
    object 4 only in the LiDAR; ids 3 on points 0-4, one ignored point."""
    frames = []
    for t, (na, nb) in enumerate([(0, 0), (12, 20), (40, 0)]):
        a = np.zeros((10, 10), np.int32)
        b = np.zeros((10, 10), np.int32)
        a.flat[:na] = 3
        b.flat[:nb] = 3
        labels = [3, 3, 3, 3, 3, 4, 4, -1, 0] if t else [0] * 9
        frames.append(_frame(t, {"a": a, "b": b}, labels, {3: ObjectInfo(3, "car")}))
    return Sequence("cams", frames)


def test_where_and_when_prompts_go() -> None:
    seq = _two_camera_sequence()
    assert prompt_camera(seq.frames[1], 3) == "b"  # largest mask
    assert prompt_camera(seq.frames[2], 3) == "a"
    assert prompt_camera(seq.frames[0], 3) is None
    assert first_appearance(seq, 3, "img", min_pixels=1) == 1
    assert first_appearance(seq, 3, "img", min_pixels=30) == 2
    assert first_appearance(seq, 3, "img", min_pixels=41) is None
    assert first_appearance(seq, 3, "pts", min_points=5) == 1
    assert first_appearance(seq, 4, "img") is None
    vis = ObjectVisibility(seq)
    assert vis.object_ids == [3, 4]
    for oid in (3, 4):
        for mod in ("img", "pts"):
            for th in (1, 5, 30):
                assert vis.first_appearance(oid, mod, th, th) == first_appearance(
                    seq, oid, mod, th, th
                )
    with pytest.raises(ValueError, match="modality"):
        first_appearance(seq, 3, "radar")


def test_make_first_frame_prompt() -> None:
    seq = _two_camera_sequence()
    f1 = seq.frames[1]
    p = make_first_frame_prompt(f1, 3, "1click", "img")
    assert p.camera == "b" and p.frame_index == 1
    op = p.to_object_prompt()
    assert op.object_id == 3 and op.lidar is None and op.image[0].camera == "b"
    np.testing.assert_array_equal(
        op.image[0].points, [center_pixel(f1.cameras["b"].instance_mask == 3)]
    )
    assert op.image[0].labels.tolist() == [1]
    box = make_first_frame_prompt(f1, 3, "box", "img").to_object_prompt().image[0]
    np.testing.assert_array_equal(box.box, [0, 0, 9, 1])  # 20 pixels: rows 0-1
    mask = make_first_frame_prompt(f1, 3, "mask", "img").to_object_prompt().image[0]
    assert mask.mask.sum() == 20 and mask.points.shape == (0, 2)
    lp = make_first_frame_prompt(f1, 3, "3click", "pts").to_object_prompt().lidar
    assert lp.points.shape == (3, 3) and lp.labels.tolist() == [1, 1, 1]
    pm = make_first_frame_prompt(f1, 3, "mask", "pts").to_object_prompt().lidar.point_mask
    assert pm.tolist() == [True] * 5 + [False] * 4  # the ignored point is not the object
    bb = make_first_frame_prompt(f1, 3, "box", "pts").to_object_prompt().lidar.box
    np.testing.assert_array_equal(bb, [0, 0, 4, 0])
    d = make_first_frame_prompt(f1, 3, "3click", "pts").describe()
    assert d["frame"] == 1 and len(d["points"]) == 3 and d["camera"] is None
    assert make_first_frame_prompt(seq.frames[0], 3, "1click", "img") is None
    assert make_first_frame_prompt(seq.frames[0], 3, "1click", "pts") is None
    with pytest.raises(ValueError, match="prompt type"):
        make_first_frame_prompt(f1, 3, "scribble", "img")


# ---------------------------------------------------------------------------------------------
# Which objects.


def _demo_sequence() -> Sequence:
    """5 frames, camera "front": object 1 largest (60 px) but visible on 3 frames; object 2
    (50 px, 4 of 5 frames); object 3 "road" (90 px, always); object 4 small (35 px, always)."""
    frames = []
    for t in range(5):
        m = np.zeros((20, 20), np.int32)
        if t < 3:
            m.flat[0:60] = 1
        if t < 4:
            m.flat[100:150] = 2
        m.flat[200:290] = 3
        m.flat[300:335] = 4
        labels = np.repeat([1, 2, 3, 4, 0], 12)
        objs = {i: ObjectInfo(i, s) for i, s in [(1, "car"), (2, "car"), (3, "Road"), (4, "pole")]}
        frames.append(_frame(t, {"front": m}, labels, objs))
    return Sequence("demo", frames)


def test_pick_demo_object() -> None:
    seq = _demo_sequence()
    assert pick_demo_object(seq, "front") == 2
    assert pick_demo_object(seq, "front", min_fraction=0.6) == 1
    # Road users first: the unblacklisted road (90 px) loses to a car, unless no class is preferred.
    assert pick_demo_object(seq, "front", semantic_blacklist=()) == 2
    assert pick_demo_object(seq, "front", semantic_blacklist=(), preferred_classes=()) == 3
    assert pick_demo_object(seq, "front", preferred_classes=("pole",)) == 4
    assert pick_demo_object(seq, "front", min_pixels=51) is None  # object 1: 3 of 5 frames
    assert pick_demo_object(seq, "front", min_pixels=51, min_fraction=0.6) == 1
    assert pick_demo_object(seq, "rear") is None


def test_candidates_and_selection() -> None:
    seq = _demo_sequence()
    cfg = EvalConfig(min_pixels=30, min_points=10)
    assert candidate_objects(seq, cfg) == [1, 2, 4]  # road is blacklisted
    assert candidate_objects(seq, EvalConfig(min_pixels=36)) == [1, 2]
    assert candidate_objects(seq, EvalConfig(min_points=13)) == []  # 12 points each
    one = EvalConfig(max_objects=1)
    picked, n = select_objects(seq, one)
    assert n == 3 and len(picked) == 1 and picked == select_objects(seq, one)[0]
    assert select_objects(seq, one, include=[4])[0] == [4]
    assert select_objects(seq, one, include=[3])[0] != [3]  # not a candidate
    assert "lane marking" in DEFAULT_SEMANTIC_BLACKLIST
