"""Interactive prompt simulation: initial clicks / boxes inside the object, corrective clicks in
the error region with the right label, in images and in point clouds."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from sam4d_core.data.synthetic import generate_sequence, make_config

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository's training/ package

from training.config import DataConfig, PromptConfig  # noqa: E402
from training.datasets import ClipDataset, InMemorySource  # noqa: E402
from training.prompt_simulation import (  # noqa: E402
    LIDAR,
    PromptState,
    corrective_click,
    initial_prompt,
    plan_clip,
    sample_bev_box,
    sample_error_pixel,
    sample_error_point,
    sample_pixel,
    sample_pixel_box,
    sample_point,
)


def _rect(h=40, w=60, y0=10, y1=30, x0=5, x1=45):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_pixel_clicks_inside_and_center() -> None:
    m = _rect()
    rng = np.random.default_rng(0)
    for _ in range(50):
        x, y = sample_pixel(m, rng, "uniform")
        assert m[int(y), int(x)]
    x, y = sample_pixel(m, rng, "center")
    # Farthest from the boundary: the middle rows of the rectangle (10..29 -> 19 or 20).
    assert 19 <= y <= 20 and 14 <= x <= 35 and m[int(y), int(x)]
    assert sample_pixel(np.zeros((4, 4), bool), rng) is None
    # The image border is a boundary too.
    edge = np.zeros((20, 20), bool)
    edge[:, :6] = True
    x, _ = sample_pixel(edge, rng, "center")
    assert 2 <= x <= 3
    with pytest.raises(ValueError, match="click mode"):
        sample_pixel(m, rng, "nope")


def test_mixed_clicks_are_centre_or_uniform() -> None:
    # "mixed" gives the centre click about half the time and clicks spread over the region
    # otherwise (the centre of this rectangle is rows 19-20).
    m = _rect()
    rng = np.random.default_rng(3)
    clicks = [sample_pixel(m, rng, "mixed") for _ in range(400)]
    assert all(m[int(y), int(x)] for x, y in clicks)
    centre = sum(1 for x, y in clicks if (x, y) == sample_pixel(m, rng, "center"))
    assert 150 <= centre <= 250
    assert len({(x, y) for x, y in clicks}) > 100


@pytest.mark.parametrize("mode", ["uniform", "center", "mixed"])
def test_corrective_pixel_clicks_in_the_error_region(mode) -> None:
    rng = np.random.default_rng(1)
    gt = _rect()
    # Prediction too small: only false negatives -> positive clicks on missed pixels.
    pred = _rect(y0=10, y1=30, x0=5, x1=20)
    for _ in range(20):
        (x, y), label = sample_error_pixel(gt, pred, rng, mode)
        assert label == 1 and gt[int(y), int(x)] and not pred[int(y), int(x)]
    # Prediction too large: false positives -> negative clicks outside the object.
    pred = _rect(y0=0, y1=40, x0=0, x1=60)
    for _ in range(20):
        (x, y), label = sample_error_pixel(gt, pred, rng, mode)
        assert label == 0 and pred[int(y), int(x)] and not gt[int(y), int(x)]
    assert sample_error_pixel(gt, gt.copy(), rng, mode) is None


def test_center_picks_the_larger_error() -> None:
    gt = _rect(y0=0, y1=40, x0=0, x1=30)  # left half
    pred = _rect(y0=0, y1=40, x0=2, x1=60)  # misses 2 columns, adds 30 columns
    (x, y), label = sample_error_pixel(gt, pred, np.random.default_rng(0), "center")
    assert label == 0 and x >= 30


def _cloud():
    rng = np.random.default_rng(2)
    obj = rng.normal([10.0, 0.0, 0.0], 0.5, (200, 3))
    bg = rng.uniform([-20, -20, -2], [20, 20, 2], (800, 3))
    xyz = np.concatenate([obj, bg])
    gt = np.zeros(len(xyz), bool)
    gt[:200] = True
    valid = np.ones(len(xyz), bool)
    valid[-50:] = False
    return xyz, gt, valid


@pytest.mark.parametrize("mode", ["uniform", "center", "mixed"])
def test_lidar_clicks(mode) -> None:
    xyz, gt, valid = _cloud()
    rng = np.random.default_rng(3)
    for _ in range(20):
        k = sample_point(xyz, gt, rng, mode, valid)
        assert gt[k]
    if mode == "center":
        # The object point farthest from every valid point outside it.
        out = xyz[~gt & valid]
        d = np.linalg.norm(xyz[gt][:, None] - out[None], axis=2).min(1)
        assert np.linalg.norm(out - xyz[k], axis=1).min() == pytest.approx(d.max())
    pred = np.zeros_like(gt)
    pred[:100] = True
    pred[300:350] = True  # false positives
    pred[-10:] = True  # ignored points: never a click
    seen = set()
    for _ in range(40):
        k, label = sample_error_point(xyz, gt, pred, valid, rng, mode)
        assert valid[k] and gt[k] != pred[k]
        assert label == int(gt[k])
        seen.add(label)
    assert seen == ({0, 1} if mode != "center" else seen)
    assert sample_error_point(xyz, gt, gt.copy(), valid, rng, mode) is None


def test_boxes_cover_the_object() -> None:
    m = _rect()
    rng = np.random.default_rng(4)
    for _ in range(20):
        x0, y0, x1, y1 = sample_pixel_box(m, rng, noise=0.1, bound=20)
        # Corners within 10 % of the side of the true box (5..44 x 10..29).
        assert abs(x0 - 5) <= 3.9 + 1e-9 and abs(x1 - 44) <= 3.9 + 1e-9
        assert abs(y0 - 10) <= 1.9 + 1e-9 and abs(y1 - 29) <= 1.9 + 1e-9
    xyz, gt, _ = _cloud()
    b = sample_bev_box(xyz, gt, rng, noise=0.1, bound=1.0)
    lo, hi = xyz[gt, :2].min(0), xyz[gt, :2].max(0)
    assert np.all(np.abs(b[:2] - lo) <= 1.0) and np.all(np.abs(b[2:] - hi) <= 1.0)


@pytest.fixture(scope="module")
def sample():
    seq = generate_sequence(make_config("tiny", num_frames=3))
    cfg = DataConfig(sources=[], clip_length=3, max_objects=4)
    return ClipDataset([InMemorySource([seq])], cfg, seed=1).sample(0)


def test_initial_prompts_on_the_object(sample) -> None:
    rng = np.random.default_rng(5)
    cfg = PromptConfig()
    tg = sample.targets[0]
    xyz = sample.frames[0].points[:, :3]
    kinds, views = set(), set()
    for _ in range(30):
        for b in range(sample.num_objects):
            st = initial_prompt(sample, b, cfg, rng)
            kinds.add(st.kind)
            views.add("lidar" if st.view == LIDAR else "image")
            if st.kind == "click":
                (pts,) = st.points.values()
                assert st.labels[st.view] == [1] * len(pts)
                for p in pts:
                    if st.view == LIDAR:
                        k = int(np.argmin(np.linalg.norm(xyz - np.asarray(p), axis=1)))
                        assert tg.point_masks[b, k]
                    else:
                        assert tg.camera_masks[st.view][b, int(p[1]), int(p[0])]
            else:
                assert st.kind == "box" and st.view in st.boxes
    assert kinds == {"click", "box"} and views == {"lidar", "image"}
    st = initial_prompt(sample, 0, cfg, rng, modality="lidar", kind="mask")
    assert st.is_mask_only and st.view == LIDAR
    p = st.to_prompts()
    assert p.lidar is not None and p.lidar.mask is not None and not p.has_clicks


def test_plan_and_corrections(sample) -> None:
    cfg = PromptConfig(num_correction_frames=2, rand_correction_frames=False, correction_clicks=7)
    plan = plan_clip(sample, cfg, np.random.default_rng(6))
    assert plan.correction_frames[0] == 0 and len(plan.correction_frames) == 2
    assert plan.clicks_per_frame == dict.fromkeys(plan.correction_frames, 7)
    none = plan_clip(sample, PromptConfig(num_correction_frames=0), np.random.default_rng(0))
    assert none.correction_frames == [] and none.clicks_per_frame == {}
    # Corrective click against an empty prediction: a positive click on the object.
    tg = sample.targets[1]
    rng = np.random.default_rng(7)
    cfg = PromptConfig(prob_correct_from_gt=0.0)
    empty_cams = [None if m is None else np.zeros_like(m[0]) for m in tg.camera_masks]
    empty_pts = np.zeros(tg.point_masks.shape[1], bool)
    xyz = sample.frames[1].points[:, :3]
    for b in range(sample.num_objects):
        click = corrective_click(sample, 1, b, empty_cams, empty_pts, cfg, rng)
        if click is None:  # absent on frame 1 and nothing predicted: no error
            assert not tg.point_masks[b].any()
            continue
        view, coords, label = click
        assert label == 1
        if view == LIDAR:
            k = int(np.argmin(np.linalg.norm(xyz - coords, axis=1)))
            assert tg.point_masks[b, k]
        else:
            assert tg.camera_masks[view][b, int(coords[1]), int(coords[0])]
    # A perfect prediction: no click.
    perfect = [None if m is None else m[0] for m in tg.camera_masks]
    assert corrective_click(sample, 1, 0, perfect, tg.point_masks[0], cfg, rng) is None


def test_prompt_state_to_model_prompts() -> None:
    st = PromptState()
    assert st.to_prompts() is None
    st.add_click(0, (3.0, 4.0), 1)
    st.add_click(LIDAR, np.array([1.0, 2.0, 3.0]), 0)
    st.boxes[1] = np.array([0.0, 0.0, 5.0, 5.0])
    prev = {0: np.zeros((4, 4)), 1: np.ones((4, 4))}
    p = st.to_prompts(prev, np.zeros(7))
    assert set(p.cameras) == {0, 1} and p.max_points_per_view() == 2
    np.testing.assert_array_equal(p.cameras[0].points, [[3.0, 4.0]])
    assert p.cameras[0].labels.tolist() == [1] and p.cameras[1].mask is prev[1]
    assert p.lidar.labels.tolist() == [0] and p.lidar.voxel_mask.shape == (7,)
    assert st.num_clicks == 2 and not st.is_mask_only
