"""Training clips: label filters, object choice, determinism, sources, and augmentation that keeps
the camera / LiDAR / pose geometry consistent."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

from sam4d_core.data.sequence import ObjectInfo
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.data.waymo4dseg import write_waymo4dseg

sys.path.append(str(Path(__file__).resolve().parents[1]))  # the repository's training/ package

from training.config import AugmentConfig, DataConfig, SourceConfig  # noqa: E402
from training.datasets import (  # noqa: E402
    ClipAugment,
    ClipDataset,
    InMemorySource,
    LabelFilter,
    Waymo4DSegSource,
    augment_frames,
    build_source,
    colour_jitter,
    draw_augment,
    frame_targets,
)


@pytest.fixture(scope="module")
def seq():
    return generate_sequence(make_config("tiny", num_frames=3))


def _project(frame, cam_name, xyz):
    cam = frame.cameras[cam_name]
    T = np.asarray(cam.cam_from_lidar)
    pc = xyz @ T[:3, :3].T + T[:3, 3]
    z = pc[:, 2]
    uvw = pc @ np.asarray(cam.intrinsics).T
    with np.errstate(divide="ignore", invalid="ignore"):
        u = np.round(uvw[:, 0] / z).astype(np.int64)
        v = np.round(uvw[:, 1] / z).astype(np.int64)
    h, w = cam.image.shape[:2]
    inside = (z > 0.5) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    return u, v, inside


def _visible_hits(frame, cam_name, labels, xyz):
    """Per point: the instance id of the pixel it projects on (-2 outside the image)."""
    u, v, inside = _project(frame, cam_name, xyz)
    out = np.full(len(xyz), -2, np.int64)
    mask = frame.cameras[cam_name].instance_mask
    out[inside] = mask[v[inside], u[inside]]
    return out


def test_augmentation_keeps_projections_in_their_masks(seq) -> None:
    f = seq.frames[0]
    cam = "front"
    xyz = f.points[:, :3].astype(np.float64)
    hits = _visible_hits(f, cam, f.point_labels, xyz)
    # Object points that land on their own object's pixels before augmentation.
    good = (f.point_labels > 0) & (hits == f.point_labels)
    assert good.sum() > 50
    cfg = AugmentConfig(prob_crop=1.0, crop_scale=(0.6, 0.8), point_dropout=(0.2, 0.2))
    rng = np.random.default_rng(3)
    sizes = {n: c.size_wh for n, c in f.cameras.items()}
    aug = draw_augment(cfg, sizes, (200, 120), rng)
    assert abs(np.degrees(np.arctan2(aug.rotation[1, 0], aug.rotation[0, 0]))) <= 25
    # Tag each point with its index to follow it through the dropout.
    tagged = dataclasses.replace(
        f, points=np.concatenate([f.points, np.arange(len(f.points))[:, None]], 1)
    )
    (g,) = augment_frames([tagged], aug)
    idx = g.points[:, -1].astype(np.int64)
    assert 0.7 * len(f.points) < len(idx) < 0.9 * len(f.points)  # 20 % dropout
    np.testing.assert_array_equal(g.point_labels, f.point_labels[idx])
    # The points moved (rotation + scale) ...
    np.testing.assert_allclose(
        g.points[:, :3], (aug.scale * f.points[idx, :3] @ aug.rotation.T), rtol=1e-5, atol=1e-4
    )
    # ... yet project into their own (cropped, resized) masks.
    new_hits = _visible_hits(g, cam, g.point_labels, g.points[:, :3].astype(np.float64))
    keep = good[idx] & (new_hits != -2)
    assert keep.sum() > 20
    agree = (new_hits[keep] == g.point_labels[keep]).mean()
    assert agree > 0.9, agree
    assert g.cameras[cam].image.shape == (120, 200, 3)
    assert g.cameras[cam].instance_mask.shape == (120, 200)
    # Rigid calibration and poses; world geometry scaled consistently.
    for T in (g.cameras[cam].cam_from_lidar, g.world_from_lidar):
        R = T[:3, :3]
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-9)
    p_world_old = f.world_from_lidar[:3, :3] @ xyz[idx].T + f.world_from_lidar[:3, 3:4]
    p_world_new = g.world_from_lidar[:3, :3] @ g.points[:, :3].T.astype(np.float64)
    p_world_new += g.world_from_lidar[:3, 3:4]
    np.testing.assert_allclose(p_world_new, aug.scale * p_world_old, rtol=1e-5, atol=1e-3)
    # Inputs untouched.
    assert tagged.points.shape[1] == 6 and f.cameras[cam].image.shape == (96, 160, 3)


def test_relative_motion_is_consistent_across_frames(seq) -> None:
    cfg = AugmentConfig(prob_crop=0.0, point_dropout=(0.0, 0.0))
    aug = draw_augment(cfg, {}, None, np.random.default_rng(1))
    frames = augment_frames(seq.frames[:2], aug)
    # A static world point seen from both frames: p_t = P_t^-1 w; after augmentation the
    # relative motion maps the augmented LiDAR coordinates of frame 1 to those of frame 0.
    rel_old = np.linalg.inv(seq.frames[0].world_from_lidar) @ seq.frames[1].world_from_lidar
    rel_new = np.linalg.inv(frames[0].world_from_lidar) @ frames[1].world_from_lidar
    p = np.array([5.0, -2.0, 0.5, 1.0])
    A = np.eye(4)
    A[:3, :3] = aug.scale * aug.rotation
    np.testing.assert_allclose(rel_new @ (A @ p), A @ (rel_old @ p), atol=1e-6)


def test_colour_jitter_identity_and_range() -> None:
    img = np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(colour_jitter(img, (1.0, 1.0, 1.0, 0.0)), img)
    out = colour_jitter(img, (1.3, 0.7, 1.4, 0.05))
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)
    aug = draw_augment(AugmentConfig(enabled=False), {"a": (9, 8)}, None, np.random.default_rng())
    assert isinstance(aug, ClipAugment) and aug.colour is None and aug.scale == 1.0


def test_label_filter() -> None:
    flt = LabelFilter(0.5, 1.0, ("road", "Lane Line", "crosswalk"))
    assert flt.accepts(ObjectInfo(1, "car", 0.9, 5.0))
    assert flt.accepts(None) and flt.accepts(ObjectInfo(1, "car", 0.9, None))
    assert not flt.accepts(ObjectInfo(1, "car", 0.4, 5.0))
    assert not flt.accepts(ObjectInfo(1, "car", 0.9, 0.5))
    assert not flt.accepts(ObjectInfo(1, "lane_line", 0.9, 5.0))
    assert not flt.accepts(ObjectInfo(1, "Crosswalk", 0.9, 5.0))


def test_clips_are_deterministic_and_objects_appear_first(seq) -> None:
    cfg = DataConfig(sources=[], clip_length=2, max_objects=3, image_size=(96, 64))
    ds = ClipDataset([InMemorySource([seq])], cfg, seed=5)
    assert len(ds) == 2  # windows of 2 frames in 3
    a, b = ds.sample(7), ds.sample(7)
    assert a.name == b.name and a.object_ids == b.object_ids
    np.testing.assert_array_equal(a.frames[1].points, b.frames[1].points)
    assert 1 <= a.num_objects <= 3
    t0 = a.targets[0]
    for k in range(a.num_objects):
        pix = max(int(m[k].sum()) for m in t0.camera_masks if m is not None)
        pts = int((t0.point_masks[k] & t0.point_valid).sum())
        assert pix >= cfg.min_pixels or pts >= cfg.min_points
    assert a.frames[0].cameras["front"].image.shape == (64, 96, 3)
    # Targets agree with the labels.
    ft = frame_targets(a.frames[1], a.camera_names, a.object_ids)
    np.testing.assert_array_equal(ft.point_masks, a.targets[1].point_masks)
    # A blacklist of everything leaves nothing usable.
    classes = tuple({o.semantic for f in seq.frames for o in f.objects.values()})
    bad = dataclasses.replace(cfg, semantic_blacklist=classes)
    with pytest.raises(RuntimeError, match="no usable object"):
        ClipDataset([InMemorySource([seq])], bad, seed=5, max_tries=3).sample(0)


def test_stride_zero_repeats_the_first_frame(seq) -> None:
    """A static clip: every frame is the first one (points, images and targets; augmentation
    off, as point dropout is drawn per frame)."""
    cfg = DataConfig(
        sources=[], clip_length=3, frame_stride=(0, 0), max_objects=3, image_size=(96, 64)
    )
    cfg = dataclasses.replace(cfg, augment=dataclasses.replace(cfg.augment, enabled=False))
    clip = ClipDataset([InMemorySource([seq])], cfg, seed=5).sample(2)
    assert clip.name.endswith("/0")
    for f, tg in zip(clip.frames[1:], clip.targets[1:], strict=True):
        np.testing.assert_array_equal(f.points, clip.frames[0].points)
        for cam in f.cameras:
            np.testing.assert_array_equal(f.cameras[cam].image, clip.frames[0].cameras[cam].image)
        np.testing.assert_array_equal(tg.point_masks, clip.targets[0].point_masks)
        for a, b in zip(tg.camera_masks, clip.targets[0].camera_masks, strict=True):
            np.testing.assert_array_equal(a, b)
    moving = dataclasses.replace(cfg, frame_stride=(1, 1))
    clip = ClipDataset([InMemorySource([seq])], moving, seed=5).sample(2)
    assert not np.array_equal(clip.frames[1].points, clip.frames[0].points)


def test_sources_waymo4dseg_and_synthetic(seq, tmp_path) -> None:
    write_waymo4dseg(seq, tmp_path, image_format="png")
    src = build_source(SourceConfig(kind="waymo4dseg", path=str(tmp_path)))
    assert isinstance(src, Waymo4DSegSource)
    assert src.sequences() == [(seq.name, 3)]
    (fr,) = src.load_frames(seq.name, [2])
    np.testing.assert_array_equal(fr.point_labels, seq.frames[2].point_labels)
    syn = build_source(SourceConfig(kind="synthetic", preset="tiny", seeds=(0, 1), num_frames=3))
    assert syn.sequences() == [("tiny_00000", 3)]
    (s0,) = syn.load_frames("tiny_00000", [1])
    np.testing.assert_array_equal(s0.points, seq.frames[1].points)
    with pytest.raises(ValueError, match="unknown source kind"):
        build_source(SourceConfig(kind="nope"))


def test_bag_source_with_ground_truth() -> None:
    bag = Path(__file__).resolve().parent / "data" / "synthetic_drive"
    src = build_source(SourceConfig(kind="bag", path=str(bag)))
    assert src.sequences() == [("synthetic_drive", 40)]
    cfg = DataConfig(sources=[], clip_length=2, max_objects=2, image_size=(96, 64))
    clip = ClipDataset([src], cfg, seed=0).sample(3)
    assert clip.num_frames == 2 and 1 <= clip.num_objects <= 2
    assert clip.targets[0].point_masks is not None
    assert set(clip.camera_names) == {"front", "front_left"}
