"""LiDAR mask refinement: the prompt's segment is kept and spill metres away dropped, a partial
mask is completed to its object without the ground or a neighbour, anchors from every prompt
kind, and the streaming tracker's results and motion model use the refined masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic_cases import camera_seen

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.tracking import mask_refine as pr
from sam4d_core.tracking.mask_refine import (
    HeightMemory,
    MaskRefineConfig,
    PixelPoints,
    SegmentAnchor,
    anchor_from_prompts,
    box_lifted_row,
    ceiling_points,
    complete_segment,
    gate_to_prediction,
    grabcut_image_mask,
    ground_points,
    guide_camera_masks,
    guided_image_mask,
    height_over_wide_ground,
    lifted_clicks,
    mask_lifted_row,
    pixel_points,
    prompt_constrained_mask,
    refine_point_mask,
    select_segment,
    supported_image_mask,
    unseen_pixels,
)
from sam4d_core.tracking.records import ImagePrompt, ObjectPrompt
from sam4d_core.tracking.records import LidarPrompt as RecordLidarPrompt
from sam4d_core.tracking.reprompt import CameraGeometry, camera_geometry, transform_points
from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig

torch.set_num_threads(1)


def _box(rng: np.random.Generator, centre, size=(4.5, 1.8, 1.5), n: int = 400) -> np.ndarray:
    """(n, 3) points on the surface of a box of ``size`` 0.3 m above the ground (z = 0, a car's
    clearance) with its footprint centred at ``centre`` (x, y)."""
    u = rng.uniform(-0.5, 0.5, size=(n, 3))
    face = rng.integers(0, 3, n)
    u[np.arange(n), face] = rng.choice([-0.5, 0.5], n)
    p = u * np.asarray(size)
    p[:, 2] += size[2] / 2 + 0.3
    return p + [centre[0], centre[1], 0.0]


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """Ground (label 0), a car at 12 m (1), a car 1.5 m beside it (2), a car 15 m further (3)."""
    rng = np.random.default_rng(0)
    g = np.c_[rng.uniform(0, 40, 6000), rng.uniform(-15, 15, 6000), rng.normal(0, 0.02, 6000)]
    parts = [g, _box(rng, (12, 0)), _box(rng, (12, 3.3)), _box(rng, (27, -2))]
    xyz = np.concatenate(parts)
    labels = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    return xyz, labels


def _front_camera() -> CameraGeometry:
    """A 640 x 384 camera looking along the LiDAR's x axis from 1.5 m above the ground."""
    K = np.array([[400.0, 0, 320], [0, 400.0, 192], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    T[:3, 3] = T[:3, :3] @ np.array([0.0, 0.0, -1.5])
    return CameraGeometry(0, K, T, (384, 640))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_the_prompted_segment_is_kept_and_spill_far_away_dropped() -> None:
    xyz, lab = _scene()
    mask = (lab == 1) | (lab == 3)  # the car and a car 15 m away
    click = xyz[np.flatnonzero(lab == 1)[0]]
    out = select_segment(xyz, mask, SegmentAnchor(points=click[None]), radius=4.0)
    assert np.array_equal(out, lab == 1)
    far = select_segment(xyz, mask, SegmentAnchor(points=xyz[lab == 3][:1]), radius=4.0)
    assert np.array_equal(far, lab == 3)
    # Without an anchor the largest segment stays.
    mask3 = mask & ~((lab == 1) & (np.arange(len(lab)) % 2 == 0))
    assert np.array_equal(select_segment(xyz, mask3, SegmentAnchor(), 4.0), lab == 3)


def test_an_image_click_anchors_the_segment_it_sees() -> None:
    xyz, lab = _scene()
    cam = _front_camera()
    mask = (lab == 1) | (lab == 3)
    uv, seen = pr._project(xyz, cam)
    for obj in (1, 3):
        click = np.median(uv[(lab == obj) & seen], axis=0)
        out = select_segment(xyz, mask, SegmentAnchor(pixels=click[None], camera=cam), 4.0)
        assert np.array_equal(out, lab == obj), obj


def test_a_partial_mask_is_completed_without_ground_or_neighbour() -> None:
    xyz, lab = _scene()
    rng = np.random.default_rng(1)
    car = lab == 1
    partial = car & (rng.random(len(lab)) < 0.55)  # the decoder's mask caught half the car
    spill = (lab == 0) & (np.linalg.norm(xyz[:, :2] - [12, 0], axis=1) < 3.5)  # and the road
    mask = partial | (spill & (rng.random(len(lab)) < 0.3))
    anchor = SegmentAnchor(points=xyz[np.flatnonzero(partial)[:1]])
    out = refine_point_mask(xyz, mask, anchor, MaskRefineConfig())
    assert _iou(mask, car) < 0.6
    assert not (out & (lab == 2)).any()  # the neighbour 1.5 m away stays out
    assert (out & (lab == 0)).sum() <= (mask & (lab == 0)).sum()  # the road does not grow
    assert (out & car).sum() >= 0.95 * car.sum()
    assert _iou(out, car) > 0.9
    # Completion off: only the selection.
    only = refine_point_mask(xyz, mask, anchor, MaskRefineConfig(complete=False))
    assert np.array_equal(only, select_segment(xyz, mask, anchor, 4.0))


def _bush_before_a_building() -> tuple[np.ndarray, np.ndarray]:
    """Ground (label 0), a 1.2 m bush (its foliage from 0.3 m up) at 19 m (1) and a building's
    wall 3.5 m behind it (2)."""
    rng = np.random.default_rng(3)
    g = np.c_[rng.uniform(0, 40, 6000), rng.uniform(0, 40, 6000), rng.normal(0, 0.02, 6000)]
    bush = _box(rng, (10, 16), size=(1.2, 1.2, 1.2), n=40)
    wall = _box(rng, (10, 20.5), size=(12.0, 0.5, 6.0), n=1500)
    xyz = np.concatenate([g, bush, wall])
    return xyz, np.repeat([0, 1, 2], [len(g), len(bush), len(wall)])


def test_a_clicked_object_is_kept_when_the_mask_chose_its_neighbour() -> None:
    xyz, lab = _bush_before_a_building()
    bush, wall = lab == 1, lab == 2
    click = xyz[np.flatnonzero(bush & (xyz[:, 2] > 0.5))[0]]
    near_click = (lab == 0) & (np.linalg.norm(xyz - click, axis=1) < 0.6)
    for mask in (wall | near_click, wall):  # the wall and the road under the click, the wall
        anchor = SegmentAnchor(points=click[None], prompted=True)
        out = refine_point_mask(xyz, mask, anchor, MaskRefineConfig())
        assert not (out & wall).any()
        assert (out & bush).sum() >= 0.9 * bush.sum(), int((out & bush).sum())
    # Without the click rule the bush is lost and the wall kept (what it fixes).
    old = MaskRefineConfig(clicks_held=False)
    out = refine_point_mask(xyz, wall | near_click, SegmentAnchor(points=click[None]), old)
    assert not (out & bush).any() and (out & wall).sum() > 0.9 * wall.sum()


def test_an_empty_mask_under_clicks_starts_from_the_clicked_object() -> None:
    """The decoder's LiDAR mask is empty although the object is clicked (a car on real KITTI
    frames tracked by the re-prompting clicks: its camera mask then had no segment to follow
    and spilt over 100,000 pixels): the segment is the clicked cluster; without clicks an
    empty mask stays empty."""
    xyz, lab = _bush_before_a_building()
    bush = lab == 1
    click = xyz[np.flatnonzero(bush & (xyz[:, 2] > 0.5))[0]]
    empty = np.zeros(len(xyz), bool)
    for prompted in (True, False):  # a user's click, the tracker's
        anchor = SegmentAnchor(points=click[None], prompted=prompted)
        out = refine_point_mask(xyz, empty, anchor, MaskRefineConfig())
        assert (out & bush).sum() >= 0.9 * bush.sum() and not (out & ~bush).any()
    assert not refine_point_mask(xyz, empty, SegmentAnchor(), MaskRefineConfig()).any()
    old = MaskRefineConfig(clicks_held=False)
    assert not refine_point_mask(xyz, empty, SegmentAnchor(points=click[None]), old).any()


def test_a_clicked_object_keeps_its_parts_and_drops_a_neighbour_behind() -> None:
    xyz, lab = _bush_before_a_building()
    rng = np.random.default_rng(4)
    # The mask holds most of the bush and half the wall 3.5 m behind it.
    mask = ((lab == 1) & (rng.random(len(lab)) < 0.7)) | ((lab == 2) & (rng.random(len(lab)) < 0.5))
    click = xyz[np.flatnonzero(mask & (lab == 1))[0]]
    anchor = SegmentAnchor(points=click[None], prompted=True)
    assert _iou(refine_point_mask(xyz, mask, anchor, MaskRefineConfig()), lab == 1) > 0.9
    # The tracker's clicks do not bound the segment (a facade with gaps stays whole): the
    # wall, mostly covered, stays with the bush.
    tracked = refine_point_mask(xyz, mask, SegmentAnchor(points=click[None]), MaskRefineConfig())
    assert (tracked & (lab == 2)).sum() > 0.9 * (lab == 2).sum()
    # A car in two clusters (its hood and its cabin, 0.9 m apart) clicked on one: both stay.
    xyz2, lab2 = _scene()
    car = lab2 == 1
    cut = car & (np.abs(xyz2[:, 0] - 12.0) < 0.45)
    keep = ~cut
    xyz2, lab2, car = xyz2[keep], lab2[keep], car[keep]
    click = xyz2[np.flatnonzero(car & (xyz2[:, 0] > 12.5))[0]]
    anchor = SegmentAnchor(points=click[None], prompted=True)
    assert _iou(refine_point_mask(xyz2, car.copy(), anchor, MaskRefineConfig()), car) > 0.95


def test_ground_points_are_the_local_ground() -> None:
    xyz, lab = _scene()
    g = ground_points(xyz, 1.0, 0.25)
    assert g[lab == 0].mean() > 0.99
    assert g[lab > 0].mean() < 0.2  # the cars' lowest band only


def _road_and_car(step: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """A flat road (z = 0, 16 x 12 m, a point every ``step`` m) and a car on it at 9 m
    (:func:`_box`); (N, 3) points and (N,) bool: the car's."""
    rng = np.random.default_rng(3)
    xs, ys = np.meshgrid(np.arange(0.0, 16.0, step), np.arange(-6.0, 6.0, step), indexing="ij")
    road = np.c_[xs.ravel(), ys.ravel(), rng.normal(0, 0.01, xs.size)]
    car = _box(rng, (9.0, 0.0))
    return np.concatenate([road, car]), np.r_[np.zeros(len(road), bool), np.ones(len(car), bool)]


def test_a_reflection_under_the_road_does_not_lift_the_road_off_the_ground() -> None:
    """The LiDAR's multipath image of a shiny car, 27 points 1.4 m under the road behind it
    (seen on KITTI): the road around them is still ground, and so are they."""
    xyz, car = _road_and_car()
    rng = np.random.default_rng(4)
    sink = np.c_[rng.uniform(6.2, 6.8, 27), rng.uniform(-0.7, 0.5, 27), np.full(27, -1.4)]
    pts = np.concatenate([xyz, sink])
    g = ground_points(pts, 1.0, 0.25)
    assert g[: len(xyz)][~car].all() and g[len(xyz) :].all()
    assert not g[: len(xyz)][car].any() or g[: len(xyz)][car].mean() < 0.2  # the car's sill


def test_a_mask_spread_over_the_road_is_completed_around_the_object() -> None:
    """The decoder's mask of a car ahead takes the road 3 m around it, more points in its
    bounds than the completion clusters: the completion then looks around the mask's points
    above their own ground, and returns the car and the road within one link of it, not the
    road 3 m away (before, the mask as it was)."""
    xyz, car = _road_and_car()
    spread = car | ((np.abs(xyz[:, 0] - 9.0) < 5.0) & (np.abs(xyz[:, 1]) < 4.0))
    cfg = MaskRefineConfig(max_points=3000)
    lo, hi = xyz[spread].min(0) - cfg.margin, xyz[spread].max(0) + cfg.margin
    assert np.all((xyz >= lo) & (xyz <= hi), axis=1).sum() > cfg.max_points
    out = complete_segment(xyz, spread, cfg)
    assert out[car].all()
    far = (np.abs(xyz[:, 0] - 9.0) > 2.25 + 1.0) | (np.abs(xyz[:, 1]) > 0.9 + 1.0)
    assert not (out & far).any() and (spread & far).sum() > 500


def test_a_far_cars_lowest_ring_is_completed_though_taken_for_ground() -> None:
    """A car 28-31 m out (the LiDAR's ground rings at 25 m and, beside the car, 30.5 m), next to
    a kerb 0.15 m high: no cell within 1 m of the car holds the ground, so the local ground is
    the car's own sill and the ring across its lower body (0.3-0.5 m up) is taken for ground;
    the completion left it out of the car's segment. It stands 0.4 m over the rings' ground
    nearby and touches the car: it is taken back; the kerb is not."""
    rng = np.random.default_rng(3)
    y = rng.uniform(-6, 6, 600)
    beside = np.abs(y) > 1.6  # the car hides its own ring's middle
    road = np.concatenate(
        [
            np.c_[np.full(600, 25.0), y, np.full(600, -1.9)],
            np.c_[np.full(600, 30.5), y, np.full(600, -1.9)][beside],
        ]
    )
    kerb = np.c_[rng.uniform(20, 36, 2000), rng.uniform(3.5, 8, 2000), np.full(2000, -1.75)]
    # The car's rings: one across its lower body (the rear), others on its sides and roof.
    low = np.c_[np.full(12, 28.0), np.linspace(-0.9, 0.9, 12), np.full(12, -1.5)]
    side = np.c_[
        rng.uniform(28.2, 31, 60), np.repeat([-0.9, 0.9], 30), rng.uniform(-1.45, -0.6, 60)
    ]
    roof = np.c_[rng.uniform(29, 30.5, 20), rng.uniform(-0.9, 0.9, 20), np.full(20, -0.45)]
    xyz = np.concatenate([road, kerb, low, side, roof])
    n_bg = len(road) + len(kerb)
    car = np.r_[np.zeros(n_bg, bool), np.ones(len(low) + len(side) + len(roof), bool)]
    assert ground_points(xyz, 1.0, 0.25)[n_bg : n_bg + len(low)].all()  # the sill as the ground
    over = height_over_wide_ground(xyz, 1.0, 3)
    assert (over[n_bg : n_bg + len(low)] > 0.35).all() and (over[len(road) : n_bg] < 0.2).all()
    seg = np.zeros(len(xyz), bool)
    seg[n_bg + len(low) :] = True  # the decoder found the side and the roof
    done = complete_segment(xyz, seg, MaskRefineConfig())
    assert np.array_equal(done, car), (int(done[car].sum()), int(car.sum()), int(done[~car].sum()))
    off = complete_segment(xyz, seg, MaskRefineConfig(ground_rise=0.0))
    assert not off[n_bg : n_bg + len(low)].any()


def test_camera_masks_follow_the_segment_where_the_lidar_sees() -> None:
    xyz, lab = _scene()
    cam = _front_camera()
    pix = pixel_points(xyz, cam, radius_px=6.0)
    uv, seen = pr._project(xyz, cam)
    assert np.array_equal(pix.seen, seen)
    car = lab == 1
    # The decoder's mask: the car's and its neighbour's bounding rectangle, plus a patch of sky
    # (no point projects there).
    both = (lab == 1) | (lab == 2)
    lo, hi = uv[both & seen].min(0).astype(int), uv[both & seen].max(0).astype(int)
    mask = np.zeros(cam.size, bool)
    mask[lo[1] : hi[1] + 1, lo[0] : hi[0] + 1] = True
    mask[5:25, 5:25] = True
    assert (pix.index[5:25, 5:25] == -1).all()
    out = guided_image_mask(mask, car, pix, min_points=5)
    assert out[5:25, 5:25].all()  # where the LiDAR does not see, the decoder's mask stays
    q = np.round(uv[seen]).astype(int)
    labels_at = {(v, u): obj for (u, v), obj in zip(q, lab[seen], strict=True)}
    on_car = [out[v, u] for (v, u), obj in labels_at.items() if obj == 1 and pix.index[v, u] >= 0]
    on_neighbour = [out[v, u] for (v, u), obj in labels_at.items() if obj == 2]
    assert np.mean(on_car) > 0.9 and not np.any(on_neighbour)
    # Too few of the segment's points in the camera: the mask as it is.
    few = np.zeros(len(lab), bool)
    few[np.flatnonzero(car & seen)[:3]] = True
    assert np.array_equal(guided_image_mask(mask, few, pix, min_points=5), mask)
    # Through the per-camera entry point, with its cache; a camera without calibration stays.
    # (The scene's points are scattered, not a LiDAR's scan: no free space is read from them.)
    cfg = MaskRefineConfig(free_space_deg=0.0)
    cache: dict = {}
    got = guide_camera_masks({"front": mask, "rear": mask}, car, xyz, {"front": cam}, cfg, cache)
    assert got["rear"] is mask and set(cache) == {"front"}
    # ... and only the parts of the mask holding one of the car's points: the sky patch goes.
    assert np.array_equal(got["front"], supported_image_mask(out, car, pix))
    assert not got["front"][5:25, 5:25].any() and not (got["front"] & ~out).any()
    kept_on_car = [got["front"][v, u] for (v, u), obj in labels_at.items() if obj == 1]
    assert np.mean(kept_on_car) >= np.mean([out[v, u] for (v, u), o in labels_at.items() if o == 1])
    kept = guide_camera_masks(
        {"front": mask},
        car,
        xyz,
        {"front": cam},
        MaskRefineConfig(image_support=False, free_space_deg=0.0),
        {},
    )
    assert np.array_equal(kept["front"], out)


def test_only_the_parts_of_a_camera_mask_under_the_objects_points_are_kept() -> None:
    h, w = 60, 80
    hit = np.full((h, w), -1, np.int64)
    hit[30, 10], hit[30, 60] = 0, 1  # point 0 (the object) under blob A, point 1 beside blob C
    pix = PixelPoints(np.full((h, w), -1, np.int64), np.ones(2, bool), hit)
    mask = np.zeros((h, w), bool)
    mask[25:36, 5:16] = True  # A: holds the object's point
    mask[5:12, 30:40] = True  # B: no point under it (a window, the sky)
    mask[25:36, 50:59] = True  # C: ends two pixels before the other object's point
    segment = np.array([True, False])
    out = supported_image_mask(mask, segment, pix)
    assert out[25:36, 5:16].all() and not out[5:12, 30:40].any() and not out[25:36, 50:59].any()
    # Diagonal neighbours are one part (8-connected); a point one pixel off the mask still holds.
    mask2 = mask.copy()
    mask2[12, 40] = mask2[13, 41] = True
    hit2 = np.full((h, w), -1, np.int64)
    hit2[14, 42] = 0
    out2 = supported_image_mask(mask2, segment, PixelPoints(pix.index, pix.seen, hit2))
    assert out2[5:12, 30:40].all() and out2[13, 41] and not out2[25:36, 5:16].any()
    # No part holds one of the object's points: the mask as it is.
    assert supported_image_mask(mask, np.array([False, True]), pix) is mask


def test_a_prompted_camera_mask_is_held_to_the_users_box_and_clicks() -> None:
    h, w = 60, 80
    mask = np.zeros((h, w), bool)
    mask[10:40, 10:30] = True  # the clicked object, spilling below the box
    mask[10:20, 50:70] = True  # another blob
    boxed = prompt_constrained_mask(mask, CameraPrompt(box=np.array([8.0, 8, 40, 30])), 2)
    assert boxed[10:33, 10:30].all() and not boxed[33:].any() and boxed[10:20, 50:70].sum() == 0
    clicked = prompt_constrained_mask(
        mask, CameraPrompt(points=np.array([[20.0, 15], [60, 15]]), labels=np.array([1, 0]))
    )
    assert clicked[10:40, 10:30].all() and not clicked[:, 45:].any()
    both = prompt_constrained_mask(
        mask,
        CameraPrompt(
            points=np.array([[60.0, 15]]), labels=np.array([1]), box=np.array([45.0, 5, 75, 25])
        ),
    )
    assert both[10:20, 50:70].all() and both.sum() == 200
    # A click on no part of the mask: nothing dropped for it.
    off = CameraPrompt(points=np.array([[40.0, 50]]), labels=np.array([1]))
    assert np.array_equal(prompt_constrained_mask(mask, off), mask)


def test_grabcut_moves_a_blocky_mask_onto_the_image_edges() -> None:
    """A red car on grey road, seen by points every 8 pixels: the guided mask is blocky (each
    pixel takes the label of the nearest point); GrabCut seeded by the points' pixels puts the
    boundary on the car's edges."""
    h, w = 120, 200
    rng = np.random.default_rng(0)
    image = np.clip(rng.normal(120, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    car = np.zeros((h, w), bool)
    car[43:81, 61:143] = True
    image[car] = np.clip(rng.normal([200, 30, 30], 6, (car.sum(), 3)), 0, 255).astype(np.uint8)
    vs, us = np.mgrid[2:h:8, 2:w:8]
    rows = np.arange(vs.size)
    hit = np.full((h, w), -1, np.int64)
    hit[vs.ravel(), us.ravel()] = rows
    # Nearest point per pixel (within 6 px): the blocky labelling the guidance gives.
    vv, uu = np.mgrid[0:h, 0:w]
    nv, nu = (
        np.clip((vv - 2 + 4) // 8, 0, vs.shape[0] - 1),
        np.clip((uu - 2 + 4) // 8, 0, vs.shape[1] - 1),
    )
    index = nv * vs.shape[1] + nu
    pix = PixelPoints(index, np.ones(vs.size, bool), hit)
    segment = car[vs.ravel(), us.ravel()]
    guided = guided_image_mask(np.zeros((h, w), bool), segment, pix, min_points=1)
    out = grabcut_image_mask(image, guided, segment, pix, MaskRefineConfig())
    assert _iou(guided, car) < 0.9
    assert _iou(out, car) > 0.97
    # An image that does not fit the mask: the mask as it is.
    assert grabcut_image_mask(image[:10], guided, segment, pix, MaskRefineConfig()) is guided


def test_a_pixel_takes_the_label_of_the_nearest_point_in_depth() -> None:
    cam = _front_camera()
    # Two points on one ray: the near one (the object) hides the far one, whichever comes first.
    ray = np.array([1.0, 0.2, 0.1])
    for order in ([0, 1], [1, 0]):
        xyz = np.stack([ray * 10, ray * 30])[order]
        seg = np.array([True, False])[order]
        pix = pixel_points(xyz, cam, 3.0)
        out = guided_image_mask(np.zeros(cam.size, bool), seg, pix, min_points=1)
        assert out.sum() > 0 and (pix.index[out] == order.index(0)).all()


def test_anchors_of_every_prompt_kind() -> None:
    cam = _front_camera()
    lid = ObjectPrompts(lidar=LidarPrompt(np.array([[1.0, 2, 3], [4, 5, 6]]), np.array([0, 1])))
    assert np.array_equal(anchor_from_prompts(lid, [cam]).points, [[4.0, 5, 6]])
    box = ObjectPrompts(lidar=LidarPrompt(box=np.array([0.0, 2, 4, 6])))
    assert np.array_equal(anchor_from_prompts(box, [cam]).bev, [2.0, 4])
    click = ObjectPrompts(cameras={0: CameraPrompt(np.array([[10.0, 20]]), np.array([1]))})
    a = anchor_from_prompts(click, [cam])
    assert a.camera is cam and np.array_equal(a.pixels, [[10.0, 20]])
    ibox = ObjectPrompts(cameras={0: CameraPrompt(box=np.array([0.0, 0, 10, 20]))})
    assert np.array_equal(anchor_from_prompts(ibox, [cam]).pixels, [[5.0, 10]])
    # A camera the frame lacks, a mask prompt or no prompt: no anchor (the largest segment).
    other = ObjectPrompts(cameras={5: CameraPrompt(box=np.array([0.0, 0, 10, 20]))})
    for p in (other, ObjectPrompts(lidar=LidarPrompt(mask=np.ones(4, bool))), None):
        a = anchor_from_prompts(p, [cam])
        assert a.points is None and a.bev is None and a.pixels is None


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="segment_radius"):
        MaskRefineConfig(segment_radius=0)
    with pytest.raises(ValueError, match="min_overlap"):
        MaskRefineConfig(min_overlap=1.5)


@pytest.fixture(scope="module")
def seq():
    return generate_sequence(make_config("tiny", num_frames=3))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam4d("sam4d_tiny")


def test_tracker_results_and_motion_use_the_refined_mask(model, seq) -> None:
    """With ``refine_masks`` the tracker's point masks are the refinement of the decoder's
    (anchored on the click), its probabilities agree with them, and the motion model observes
    the refined segment."""
    f0 = seq[0]
    ids, counts = np.unique(f0.point_labels[f0.point_labels > 0], return_counts=True)
    obj = int(ids[np.argmax(counts)])
    raw = StreamingTracker(model, TrackerConfig(reprompt=True))
    # A click on a point a camera sees: the clicked part's segment then guides that camera.
    raw.step(f0)
    seen = camera_seen(f0.points, raw._buffer[-1].cameras)
    click = f0.points[np.flatnonzero((f0.point_labels == obj) & seen)[0], :3].astype(np.float64)
    prompt = ObjectPrompt(1, lidar=RecordLidarPrompt(points=click[None], labels=np.array([1])))
    raw.reset()
    # The random tiny model's segment is small: a camera seeing one point of it is covered.
    cfg = MaskRefineConfig(image_min_points=1)
    ref = StreamingTracker(
        model, TrackerConfig(reprompt=True, refine_masks=True, mask_refine_config=cfg)
    )
    results = []
    for tr in (raw, ref):
        tr.step(f0)
        results.append(tr.add_prompts([prompt]).objects[0])
    (r0,), (r1,) = [results[0:1], results[1:2]]
    xyz = ref._buffer[-1].features.lidar.points_xyz.numpy()
    anchor = SegmentAnchor(points=click[None], prompted=True)  # the user's click
    expected = refine_point_mask(xyz, r0.point_mask, anchor, cfg)
    assert r0.point_mask.any()
    assert np.array_equal(r1.point_mask, expected)
    assert np.array_equal(r1.point_mask, r1.point_scores > 0.5)
    # The camera masks follow the refined segment (the decoder's mask where the LiDAR is blind).
    cams = {c.slot: c for c in ref._buffer[-1].cameras}
    geometry = {name: cams[slot] for name, slot in ref._camera_slots.items()}
    images = {n: c.image for n, c in f0.cameras.items()}
    guided = guide_camera_masks(r0.image_masks, expected, xyz, geometry, cfg, {}, images)
    assert set(r1.image_masks) == set(guided)
    assert any(not np.array_equal(guided[n], r0.image_masks[n]) for n in guided), "nothing guided"
    for name in guided:
        assert np.array_equal(r1.image_masks[name], guided[name]), name
    if np.array_equal(r0.point_mask, expected):
        pytest.fail("the decoder's mask needed no refinement: the test checks nothing")
    seg = ref._reprompter.motions[1].history[0].segment  # world frame
    inside = {
        tuple(p) for p in np.round(transform_points(f0.world_from_lidar, xyz[r1.point_mask]), 3)
    }
    assert all(tuple(p) in inside for p in np.round(seg, 3))
    # The next sweep is refined too (anchored on the derived prompts) and stays consistent.
    (o,) = ref.step(seq[1]).objects
    assert np.array_equal(o.point_mask, o.point_scores > 0.5)


def test_a_replayed_prompt_gives_the_live_refined_masks(model, seq) -> None:
    """A click on a past sweep replayed to the newest gives the masks the live tracker gave
    (the refinement, GrabCut included, is deterministic)."""
    f0 = seq[0]
    ids, counts = np.unique(f0.point_labels[f0.point_labels > 0], return_counts=True)
    obj = int(ids[np.argmax(counts)])
    click = f0.points[np.flatnonzero(f0.point_labels == obj)[0], :3].astype(np.float64)

    def prompt(stamp=None) -> ObjectPrompt:
        lp = RecordLidarPrompt(points=click[None], labels=np.array([1]))
        return ObjectPrompt(1, stamp=stamp, lidar=lp)

    cfg = TrackerConfig(
        reprompt=True, refine_masks=True, mask_refine_config=MaskRefineConfig(image_min_points=1)
    )
    live = StreamingTracker(model, cfg)
    live.step(f0)
    live.add_prompts([prompt()])
    for f in seq.frames[1:3]:
        a = live.step(f)
    late = StreamingTracker(model, cfg)
    for f in seq.frames[:3]:
        late.step(f)
    b = late.add_prompts([prompt(f0.timestamp)])
    assert b is not None and b.replayed_from == 0
    (oa,), (ob,) = a.objects, b.objects
    assert np.array_equal(oa.point_mask, ob.point_mask)
    assert set(oa.image_masks) == set(ob.image_masks)
    for name in oa.image_masks:
        assert np.array_equal(oa.image_masks[name], ob.image_masks[name]), name


def test_image_clicks_are_lifted_to_the_point_seen_under_them() -> None:
    xyz, lab = _scene()
    cam = _front_camera()
    uv, seen = pr._project(xyz, cam)
    row = np.flatnonzero((lab == 1) & seen)[7]
    # A positive click on that point's pixel, a negative one beside it, one in the sky.
    clicks = np.array([uv[row], uv[row] + 1, [10.0, 10.0]])
    p = ObjectPrompts(cameras={0: CameraPrompt(clicks, np.array([1, 0, 1]))})
    lifted = lifted_clicks(p, xyz, [cam])
    assert lifted.shape == (1, 3)
    seen_there = pixel_points(xyz, cam, 4.0).index[int(round(uv[row, 1])), int(round(uv[row, 0]))]
    assert np.allclose(lifted[0], xyz[seen_there]) and lab[seen_there] == 1
    assert lifted_clicks(p, xyz, []).shape == (0, 3)  # no calibration: nothing lifted
    # A box without a click: its centre.
    box = np.r_[uv[row] - 5, uv[row] + 5]
    boxed = lifted_clicks(ObjectPrompts(cameras={0: CameraPrompt(box=box)}), xyz, [cam])
    assert np.allclose(boxed, lifted)


def test_the_tracker_lifts_an_image_click_to_a_lidar_click(model, seq) -> None:
    f0 = seq[0]
    name = next(iter(f0.cameras))
    geo = camera_geometry(f0, {n: k for k, n in enumerate(f0.cameras)})[0]
    xyz0 = f0.points[:, :3].astype(np.float64)
    uv0, seen0 = pr._project(xyz0, geo)
    ids, counts = np.unique(f0.point_labels[seen0 & (f0.point_labels > 0)], return_counts=True)
    row = np.flatnonzero(seen0 & (f0.point_labels == ids[np.argmax(counts)]))[0]
    u, v = np.round(uv0[row])
    click = ImagePrompt(name, points=np.array([[u, v]]), labels=np.array([1]))
    for lift in (False, True):
        tr = StreamingTracker(model, TrackerConfig(lift_image_clicks=lift))
        tr.step(f0)
        tr.add_prompts([ObjectPrompt(1, image=[click])])
        lidar = tr._objects[1].inputs[0].lidar
        if not lift:
            assert lidar is None
            continue
        assert lidar is not None and len(lidar.points) == 1 and list(lidar.labels) == [1]
        geo = {c.slot: c for c in tr._buffer[-1].cameras}[tr._camera_slots[name]]
        xyz = tr._buffer[-1].features.lidar.points_xyz.numpy().astype(np.float64)
        uv, seen = pr._project(np.asarray(lidar.points, np.float64), geo)
        assert seen.all() and np.linalg.norm(uv[0] - [u, v]) <= 4.0 + 1e-6
        assert np.isclose(np.linalg.norm(xyz - lidar.points[0], axis=1).min(), 0.0, atol=1e-5)


def test_the_tracker_holds_the_prompted_camera_mask_to_the_users_box(model, seq) -> None:
    """On the frame a box is drawn, the prompted camera's mask stays inside it (the decoder's
    reaches past it); the next sweep, prompted by nobody, is not clipped to it."""
    f0 = seq[0]
    name = next(iter(f0.cameras))
    inst = f0.cameras[name].instance_mask
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    ys, xs = np.nonzero(inst == ids[np.argmax(counts)])
    box = np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64)
    prompt = ObjectPrompt(1, image=[ImagePrompt(name, box=box)])
    cfg = MaskRefineConfig()
    masks = {}
    for refine in (False, True):
        tr = StreamingTracker(model, TrackerConfig(refine_masks=refine, mask_refine_config=cfg))
        tr.step(f0)
        masks[refine] = tr.add_prompts([prompt]).objects[0].image_masks[name]
    x0, y0, x1, y1 = box.astype(int)
    m = cfg.prompt_box_margin_px
    inside = np.zeros_like(masks[True])
    inside[max(y0 - m, 0) : y1 + m + 1, max(x0 - m, 0) : x1 + m + 1] = True
    if not (masks[False] & ~inside).any():
        pytest.fail("the decoder's mask stays in the box: the test checks nothing")
    assert masks[True].any() and not (masks[True] & ~inside).any()


def test_a_box_is_lifted_to_the_object_it_frames_not_what_its_centre_sees() -> None:
    """A gate (two posts and a beam) at 10 m before a wall at 14 m: through the gate the box's
    centre sees the wall; the lifted click is on the gate."""
    rng = np.random.default_rng(0)

    def plane(n, x, y, z):
        return np.c_[rng.uniform(*x, n), rng.uniform(*y, n), rng.uniform(*z, n)]

    gate = np.concatenate(
        [
            plane(300, (9.95, 10.05), (-1.1, -0.9), (0.0, 2.5)),
            plane(300, (9.95, 10.05), (0.9, 1.1), (0.0, 2.5)),
            plane(300, (9.95, 10.05), (-1.1, 1.1), (2.4, 2.6)),
        ]
    )
    wall = plane(6000, (14.0, 14.05), (-6, 6), (0.0, 4.0))
    ground = plane(4000, (2, 20), (-8, 8), (-0.02, 0.02))
    xyz = np.concatenate([gate, wall, ground])
    on_gate = np.r_[np.ones(len(gate), bool), np.zeros(len(wall) + len(ground), bool)]
    cam = _front_camera()
    uv, seen = pr._project(xyz, cam)
    q = uv[on_gate & seen]
    box = np.array([q[:, 0].min(), q[:, 1].min(), q[:, 0].max(), q[:, 1].max()])
    pix = pixel_points(xyz, cam, 4.0)
    centre = pix.index[int(round((box[1] + box[3]) / 2)), int(round((box[0] + box[2]) / 2))]
    assert centre >= 0 and not on_gate[centre]  # the centre sees the wall
    row = box_lifted_row(xyz, cam, box, pix, MaskRefineConfig())
    assert row is not None and on_gate[row]
    prompts = ObjectPrompts(cameras={0: CameraPrompt(box=box)})
    (lifted,) = lifted_clicks(prompts, xyz, [cam])
    assert np.allclose(lifted, xyz[row])
    # A box where no point is seen: nothing to lift.
    assert box_lifted_row(xyz, cam, np.array([0.0, 0, 5, 5]), pix, MaskRefineConfig()) is None


def test_a_mask_is_lifted_to_the_point_seen_deepest_inside_it() -> None:
    """A post 0.3 m wide at 10 m before a wall at 11 m, seen by a camera 0.5 m beside the LiDAR:
    the post's mask (its true outline in the image) holds wall points at its edge (the LiDAR sees
    past the post from beside the camera); the lifted click is a post point, and a mask the
    LiDAR sees nothing in lifts to none."""
    rng = np.random.default_rng(1)

    def plane(n, x, y, z):
        return np.c_[rng.uniform(*x, n), rng.uniform(*y, n), rng.uniform(*z, n)]

    post = plane(400, (9.95, 10.0), (-0.15, 0.15), (0.0, 2.5))
    wall = plane(8000, (11.0, 11.05), (-4, 4), (0.0, 4.0))
    xyz = np.concatenate([post, wall])
    on_post = np.r_[np.ones(len(post), bool), np.zeros(len(wall), bool)]
    cam = _front_camera()
    cam = CameraGeometry(0, cam.intrinsics, cam.cam_from_lidar.copy(), cam.size)
    cam.cam_from_lidar[0, 3] -= 0.5  # the camera 0.5 m to the LiDAR's right
    uv, seen = pr._project(xyz, cam)
    q = uv[on_post & seen]
    mask = np.zeros(cam.size, bool)
    mask[
        int(np.floor(q[:, 1].min())) : int(np.ceil(q[:, 1].max())) + 1,
        int(np.floor(q[:, 0].min())) : int(np.ceil(q[:, 0].max())) + 1,
    ] = True
    pix = pixel_points(xyz, cam, 4.0)
    in_mask = np.unique(pix.hit[mask & (pix.hit >= 0)])
    assert (~on_post[in_mask]).any()  # wall points are seen inside the post's outline
    row = mask_lifted_row(xyz, cam, mask, pix)
    assert row is not None and on_post[row]
    prompts = ObjectPrompts(cameras={0: CameraPrompt(mask=mask)})
    (lifted,) = lifted_clicks(prompts, xyz, [cam])
    assert np.allclose(lifted, xyz[row])
    empty = np.zeros(cam.size, bool)
    empty[:5, :5] = True
    assert mask_lifted_row(xyz, cam, empty, pix) is None


def test_a_camera_mask_is_guided_by_an_object_of_two_points() -> None:
    """A pedestrian 30 m away is hit by 2 LiDAR points, the wall 6 m behind it by many; the
    decoder's mask covers both. Guided by its 2 points (``image_guide_min_points`` 1, the
    default) the wall's pixels leave the mask and the pedestrian's stay; requiring 5 points,
    the decoder's spill stays whole."""
    rng = np.random.default_rng(2)
    person = np.array([[30.0, 0.0, 1.0], [30.0, 0.0, 1.4]])
    wall = np.c_[np.full(3000, 36.0), rng.uniform(-4, 4, 3000), rng.uniform(0.0, 4.0, 3000)]
    xyz = np.concatenate([person, wall])
    segment = np.r_[np.ones(2, bool), np.zeros(len(wall), bool)]
    cam = _front_camera()
    uv, _ = pr._project(xyz, cam)
    mask = np.zeros(cam.size, bool)
    q = uv[2:]
    mask[int(q[:, 1].min()) : int(q[:, 1].max()), int(q[:, 0].min()) : int(q[:, 0].max())] = True
    for least, cut in ((1, True), (5, False)):
        config = MaskRefineConfig(image_guide_min_points=least)
        out = guide_camera_masks({"front": mask}, segment, xyz, {"front": cam}, config, {})
        got = out["front"]
        on_person = [got[int(round(v)), int(round(u))] for u, v in uv[:2]]
        assert all(on_person)
        assert (got.sum() < 0.05 * mask.sum()) == cut, (least, got.sum(), mask.sum())


def test_a_click_above_the_lidar_beams_is_lifted_onto_the_points_below_it() -> None:
    """A far pole whose LiDAR hits stop below its lamp: a click on the lamp has no point within
    4 px, and is lifted onto the pole's nearest point (not onto the ground) within
    ``click_lift_radius_px``; with it 0 nothing is lifted, and a click in the empty sky stays
    unlifted."""
    rng = np.random.default_rng(5)
    pole = np.c_[np.full(8, 40.0), np.full(8, 2.0), np.linspace(0.3, 3.5, 8)]  # hits to 3.5 m
    ground = np.c_[rng.uniform(5, 60, 8000), rng.uniform(-15, 15, 8000), rng.normal(0, 0.02, 8000)]
    xyz = np.concatenate([pole, ground])
    cam = _front_camera()
    uv, _ = pr._project(xyz, cam)
    top = uv[7]  # the pole's highest hit
    lamp = top + [3.0, -9.0]  # the lamp: above and beside it
    assert pixel_points(xyz, cam, 4.0).index[int(round(lamp[1])), int(round(lamp[0]))] < 0
    p = ObjectPrompts(cameras={0: CameraPrompt(lamp[None], np.array([1]))})
    (lifted,) = lifted_clicks(p, xyz, [cam])
    assert np.allclose(lifted, pole[7])
    off = MaskRefineConfig(click_lift_radius_px=0.0)
    assert lifted_clicks(p, xyz, [cam], config=off).shape == (0, 3)
    sky = ObjectPrompts(cameras={0: CameraPrompt(np.array([[320.0, 20.0]]), np.array([1]))})
    assert lifted_clicks(sky, xyz, [cam]).shape == (0, 3)


def test_a_tracked_mask_is_kept_near_the_prediction() -> None:
    """A pole 2 m before a wall; on a tracked sweep the decoder's mask spreads onto the wall
    (linked to the pole within the select radius). Gated by the predicted pole, the refinement
    keeps the pole only; without the prediction the wall stays."""
    rng = np.random.default_rng(0)
    pole = np.c_[rng.normal(10.0, 0.05, 200), rng.normal(0.0, 0.05, 200), rng.uniform(0, 4, 200)]
    wall = np.c_[rng.uniform(12.0, 12.05, 3000), rng.uniform(-5, 5, 3000), rng.uniform(0, 4, 3000)]
    ground = np.c_[rng.uniform(2, 20, 4000), rng.uniform(-8, 8, 4000), rng.normal(0, 0.02, 4000)]
    xyz = np.concatenate([pole, wall, ground])
    is_pole = np.r_[np.ones(len(pole), bool), np.zeros(len(wall) + len(ground), bool)]
    is_wall = np.r_[
        np.zeros(len(pole), bool), np.ones(len(wall), bool), np.zeros(len(ground), bool)
    ]
    mask = is_pole | (is_wall & (np.abs(xyz[:, 1]) < 3))
    click = pole[:1]
    predicted = pole[::4] + [0.2, 0.1, 0.0]  # last sweep's segment, moved by the filter
    cfg = MaskRefineConfig()
    without = refine_point_mask(xyz, mask, SegmentAnchor(points=click), cfg)
    assert (without & is_wall).any()
    gated = refine_point_mask(xyz, mask, SegmentAnchor(points=click, predicted=predicted), cfg)
    assert gated[is_pole].mean() > 0.95 and not (gated & is_wall).any()
    # Off, or a prediction nothing of the mask is near: the mask as the decoder gave it.
    off = MaskRefineConfig(predicted_gate=0.0)
    anchored = SegmentAnchor(points=click, predicted=predicted)
    assert np.array_equal(refine_point_mask(xyz, mask, anchored, off), without)
    assert gate_to_prediction(xyz, mask, predicted + [50.0, 0, 0], 1.5) is mask


def _ray_cast_wall(
    x: float, half_width: float, top: float, occluder: tuple | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) hits of a 32-beam LiDAR (10 to -30 degrees, 1024 columns over the front half; z
    up, the ground 1.8 m below it, nothing returns beyond 60 m) on a wall facing it ``x`` m
    ahead, ``half_width`` m either side, from the ground to ``top``; on a 30 m tower 50 m
    ahead, 8-20 m to the left; on ``occluder`` (x, y_min, y_max, z_min, z_max), a panel facing
    it; and on the ground. Also (N,) bool: the hits on the wall."""
    el = np.deg2rad(np.linspace(10.0, -30.0, 32))
    az = np.deg2rad(np.linspace(-89.0, 89.0, 1024))
    e, a = (g.ravel() for g in np.meshgrid(el, az, indexing="ij"))
    r = np.where(e < 0, -1.8 / np.tan(np.minimum(e, -1e-9)), np.inf)  # the ground
    wall = np.zeros(len(e), bool)
    walls = [(x, -half_width, half_width, -1.8, top), (50.0, 8, 20, -1.8, 30)]
    for i, (wx, y0, y1, z0, z1) in enumerate(walls + ([occluder] if occluder else [])):
        rw = wx / np.cos(a)
        y, z = rw * np.sin(a), rw * np.tan(e)
        hit = (y >= y0) & (y <= y1) & (z >= z0) & (z <= z1) & (rw < r)
        r = np.where(hit, rw, r)
        wall = np.where(hit, i == 0, wall)
    keep = r < 60.0
    z = np.where(np.isfinite(r), r * np.tan(e), 0.0)
    return np.c_[r * np.cos(a), r * np.sin(a), z][keep], wall[keep]


def _wall_pixels(cam: CameraGeometry, x: float, half_width: float, top: float) -> np.ndarray:
    """(H, W) bool: the pixels whose ray meets that wall (LiDAR frame, ground at -1.8 m)."""
    h, w = cam.size
    v, u = np.mgrid[0:h, 0:w]
    rays = np.linalg.inv(cam.intrinsics) @ np.stack([u.ravel(), v.ravel(), np.ones(h * w)])
    lidar_from_cam = np.linalg.inv(cam.cam_from_lidar)
    origin = lidar_from_cam[:3, 3]
    d = lidar_from_cam[:3, :3] @ rays
    t = (x - origin[0]) / np.where(np.abs(d[0]) > 1e-9, d[0], 1e-9)
    p = origin[:, None] + d * t
    hit = (t > 0) & (np.abs(p[1]) <= half_width) & (p[2] >= -1.8) & (p[2] <= top)
    return hit.reshape(h, w)


def test_a_mask_climbing_above_the_object_where_the_lidar_saw_nothing_is_cut() -> None:
    """A low building 40 m away (6 m tall) before a taller one out of the LiDAR's range: the
    beams above the low one's roof return nothing, so no point labels the decoder's mask
    climbing the tall one. The pixels above the roof's beams (``above_margin_deg``) leave the
    mask and the building's stay; with the margin 0 the climb stays. A building the highest
    beam hits gives no ceiling (what is above it may be it), nor one near the LiDAR's reach,
    nor one whose roof the beams above cannot see past a tree's crown."""
    cam = _front_camera()
    xyz, segment = _ray_cast_wall(40.0, 5.0, 4.2)
    truth = _wall_pixels(cam, 40.0, 5.0, 4.2)
    climb = truth.copy()
    cols = np.flatnonzero(truth.any(axis=0))
    climb[: int(np.flatnonzero(truth.any(axis=1)).max()), cols] = True  # up to the image's top
    assert _iou(climb, truth) < 0.5
    on = MaskRefineConfig()
    assert ceiling_points(segment, xyz, on) is not None
    got = guide_camera_masks({"front": climb}, segment, xyz, {"front": cam}, on, {})["front"]
    assert _iou(got, truth) > 0.85, _iou(got, truth)
    assert got[truth].mean() > 0.97  # the building itself is kept
    # The beams over the roof got nothing back, so the climb is also where the LiDAR saw
    # nothing (:func:`unseen_pixels`); with both off it stays.
    off = MaskRefineConfig(above_margin_deg=0.0, free_space_deg=0.0)
    kept = guide_camera_masks({"front": climb}, segment, xyz, {"front": cam}, off, {})["front"]
    assert _iou(kept, truth) < 0.5
    tall_xyz, tall_seg = _ray_cast_wall(40.0, 5.0, 30.0)
    assert ceiling_points(tall_seg, tall_xyz, on) is None
    # 55 m away, near the LiDAR's 60 m reach, the beam over the roof may have met the wall
    # beyond its reach: no return there is no free space.
    far_xyz, far_seg = _ray_cast_wall(55.0, 5.0, 4.2)
    assert ceiling_points(far_seg, far_xyz, on) is None
    # A tree's crown 25 m away takes the beams just over the roof: they did not pass over the
    # building, which may go on behind the crown.
    crown = (25.0, -4.0, 4.0, 2.0, 6.0)
    hid_xyz, hid_seg = _ray_cast_wall(40.0, 5.0, 4.2, occluder=crown)
    assert hid_seg.sum() > 100
    assert ceiling_points(hid_seg, hid_xyz, on) is None


def test_a_mask_spilling_where_the_lidar_got_nothing_back_is_cut() -> None:
    """A post 30 m ahead (0.6 m wide) before nothing the LiDAR reaches: the decoder's mask
    spills 80 px to its right, where no point labels the pixels. The LiDAR looked there (between
    its lowest and highest returns) and got nothing back, so the spill farther than
    ``free_space_deg`` from every projected point leaves the mask and the post stays; with the
    angle 0 the spill stays. An object near the LiDAR's reach keeps it (nothing returns from
    beyond the reach either)."""
    cam = _front_camera()
    xyz, segment = _ray_cast_wall(30.0, 0.3, 6.0)
    truth = _wall_pixels(cam, 30.0, 0.3, 6.0)
    ys, xs = np.nonzero(truth)
    horizon = 192 - 2  # above it the beams beside the post meet nothing within 60 m
    spill = truth.copy()
    spill[ys.min() : horizon, xs.max() : xs.max() + 80] = True
    assert _iou(spill, truth) < 0.3
    on = MaskRefineConfig()
    pix = pixel_points(xyz, cam, on.image_radius_px)
    unseen = unseen_pixels(xyz, cam, pix, on.free_space_deg)
    assert not unseen[truth].any() and unseen[ys.min() : horizon, xs.max() + 20 :].mean() > 0.9
    assert not unseen[horizon + 20 :].any()  # the road returns
    got = guide_camera_masks({"front": spill}, segment, xyz, {"front": cam}, on, {})["front"]
    assert got[truth].mean() > 0.97
    assert got[ys.min() : horizon, xs.max() + 20 :].sum() == 0
    off = MaskRefineConfig(free_space_deg=0.0)
    kept = guide_camera_masks({"front": spill}, segment, xyz, {"front": cam}, off, {})["front"]
    assert kept[ys.min() : horizon, xs.max() + 20 : xs.max() + 80].mean() > 0.9
    # 55 m away, near the 60 m reach: the beams beside it may have met something beyond.
    far_xyz, far_seg = _ray_cast_wall(55.0, 0.3, 6.0)
    far_truth = _wall_pixels(cam, 55.0, 0.3, 6.0)
    fy, fx = np.nonzero(far_truth)
    far_spill = far_truth.copy()
    far_spill[fy.min() : horizon, fx.max() : fx.max() + 80] = True
    far = guide_camera_masks({"front": far_spill}, far_seg, far_xyz, {"front": cam}, on, {})
    assert far["front"][fy.min() : horizon, fx.max() + 20 : fx.max() + 80].mean() > 0.9


def test_a_users_box_reaching_above_the_ceiling_keeps_the_mask() -> None:
    """On the frame a user boxes a tall building whose lifted segment is the low one before it,
    the box says the object reaches above the low one's ceiling: that camera is not cut."""
    cam = _front_camera()
    xyz, segment = _ray_cast_wall(40.0, 5.0, 4.2)
    truth = _wall_pixels(cam, 40.0, 5.0, 4.2)
    ys, xs = np.nonzero(truth)
    climb = truth.copy()
    climb[: ys.max(), xs.min() : xs.max() + 1] = True
    cut = guide_camera_masks({"front": climb}, segment, xyz, {"front": cam}, MaskRefineConfig(), {})
    tall_box = CameraPrompt(box=np.array([xs.min(), 0.0, xs.max(), ys.max()], np.float64))
    low_box = CameraPrompt(box=np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64))
    for prompt, whole in ((tall_box, True), (low_box, False)):
        got = guide_camera_masks(
            {"front": climb},
            segment,
            xyz,
            {"front": cam},
            MaskRefineConfig(),
            {},
            prompts={"front": prompt},
        )["front"]
        assert (got.sum() > 0.9 * climb.sum()) == whole
        assert whole or np.array_equal(got, cut["front"])


def test_an_objects_height_is_remembered_when_the_highest_beam_reaches_it() -> None:
    """The low building seen from 40 m shows free space above it; from 20 m the highest beam
    (10 degrees) hits its roof and the sweep shows none. :class:`HeightMemory` keeps the
    height seen from 40 m (world frame: the ego drove 20 m) and cuts the climb from 20 m too;
    a segment point above that height makes it forget."""
    cam = _front_camera()
    memory, config = HeightMemory(), MaskRefineConfig()
    far_xyz, far_seg = _ray_cast_wall(40.0, 5.0, 4.2)
    world_from_far = np.eye(4)
    first = memory.ceiling(7, far_seg, far_xyz, world_from_far, config)
    assert first is not None and 4.2 < memory.tops[7] < 4.2 + 40.0 * np.tan(np.deg2rad(1.4))
    near_xyz, near_seg = _ray_cast_wall(20.0, 5.0, 4.2)
    assert ceiling_points(near_seg, near_xyz, config) is None
    world_from_near = np.eye(4)
    world_from_near[0, 3] = 20.0
    ceiling = memory.ceiling(7, near_seg, near_xyz, world_from_near, config)
    assert ceiling is not None and np.allclose(ceiling[:, 2], memory.tops[7])
    truth = _wall_pixels(cam, 20.0, 5.0, 4.2)
    ys, xs = np.nonzero(truth)
    climb = truth.copy()
    climb[: ys.max(), xs.min() : xs.max() + 1] = True
    got = guide_camera_masks(
        {"front": climb}, near_seg, near_xyz, {"front": cam}, config, {}, ceiling=ceiling
    )["front"]
    assert _iou(got, truth) > 0.85 > _iou(climb, truth)
    # From 30 m the highest beam hits 5.3 m up a 9 m wall: above the height kept, so the
    # height seen before was not this object's whole.
    taller_xyz, taller_seg = _ray_cast_wall(30.0, 5.0, 9.0)
    world_from_mid = np.eye(4)
    world_from_mid[0, 3] = 10.0
    assert memory.ceiling(7, taller_seg, taller_xyz, world_from_mid, config) is None
    assert 7 not in memory.tops
    assert memory.ceiling(8, near_seg, near_xyz, world_from_near, config) is None


def test_a_users_lidar_box_gives_the_object_it_frames() -> None:
    """A bird's-eye box drawn tight around a car (under a tree's canopy, the decoder's mask on
    the car beside it, or empty) gives that car's points, not the canopy over it; a loose box
    around both cars keeps the one the decoder's mask is on. Only on the sweep the user
    prompted (``prompted``), and not with ``box_held`` off."""
    xyz, labels = _scene()
    rng = np.random.default_rng(3)
    canopy = np.c_[rng.normal(12, 2.0, 500), rng.normal(0, 2.0, 500), rng.uniform(3.2, 5.0, 500)]
    xyz = np.concatenate([xyz, canopy])
    labels = np.r_[labels, np.full(len(canopy), 9)]
    car = labels == 1
    lo, hi = xyz[car, :2].min(axis=0), xyz[car, :2].max(axis=0)
    tight = np.r_[lo, hi]
    config = MaskRefineConfig()
    for decoder in (labels == 2, np.zeros(len(xyz), bool), car | (labels == 9)):
        anchor = SegmentAnchor(bev=(lo + hi) / 2, box=tight, prompted=True)
        got = refine_point_mask(xyz, decoder, anchor, config)
        assert _iou(got, car) > 0.95, _iou(got, car)
    both = np.r_[lo - 0.5, xyz[labels == 2, :2].max(axis=0) + 0.5]
    anchor = SegmentAnchor(box=both, prompted=True)
    got = refine_point_mask(xyz, labels == 2, anchor, config)
    assert _iou(got, labels == 2) > 0.95
    tracked = SegmentAnchor(bev=(lo + hi) / 2, box=tight, prompted=False)
    assert _iou(refine_point_mask(xyz, labels == 2, tracked, config), car) < 0.05
    off = MaskRefineConfig(box_held=False)
    assert _iou(refine_point_mask(xyz, labels == 2, anchor, off), car) < 0.05
