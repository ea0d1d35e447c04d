"""Synthetic generator output: images, exact masks, LiDAR returns, scene content, configs."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from synthetic_cases import generator, renders

from sam4d_core.data.synthetic import (
    PRESETS,
    SEMANTIC_CLASSES,
    CameraConfig,
    LidarConfig,
    SyntheticConfig,
    SyntheticGenerator,
    make_config,
)
from sam4d_core.data.synthetic.raycast import cast_rays
from sam4d_core.data.synthetic.shapes import rotate


def test_images_are_textured_not_flat_colours():
    textured = flat = 0
    for r in renders("geometry"):
        for cam in r.frame.cameras.values():
            assert cam.image.dtype == np.uint8 and cam.image.shape == (*cam.instance_mask.shape, 3)
            gray = cam.image.astype(np.float64).mean(axis=2)
            for oid in np.unique(cam.instance_mask):
                sel = cam.instance_mask == oid
                if oid == 0 or sel.sum() < 200:
                    continue
                if gray[sel].std() > 4.0:
                    textured += 1
                else:
                    flat += 1
            # The road too (background, bottom rows of a forward-looking camera).
            road = r.cameras[cam.name].semantic == SEMANTIC_CLASSES.index("road")
            assert road.sum() > 500 and gray[road].std() > 4.0
    assert textured >= 20 and flat / (textured + flat) < 0.05, (textured, flat)


def test_masks_equal_the_unculled_reference_renderer():
    gen = generator("tiny")
    scene = gen.scene
    for r in renders("tiny"):
        i = r.frame.index
        poses = scene.poses_at(gen.relative_time(i))
        pose = r.frame.world_from_lidar
        for cam in gen.cameras:
            ref = cam.cast(scene, poses, pose, culled=False)
            mask = r.frame.cameras[cam.name].instance_mask.ravel()
            ref_ids = np.where(ref.object_index >= 0, scene.object_ids[ref.object_index], 0)
            assert np.array_equal(mask, ref_ids)
            assert np.array_equal(r.cameras[cam.name].hits.t, ref.t)
        ref = gen.lidar.cast(scene, poses, pose, culled=False)
        assert np.array_equal(r.lidar.hits.object_index, ref.object_index)
        assert np.array_equal(r.lidar.hits.t, ref.t)


def test_masks_of_a_larger_camera_match_the_reference_on_sampled_pixels():
    # The culling of a bigger image, checked on every 7th pixel (the full reference is slow).
    gen = generator("geometry")
    scene = gen.scene
    r = renders("geometry")[3]
    poses = scene.poses_at(gen.relative_time(3))
    for cam in gen.cameras:
        world_from_cam = r.frame.world_from_lidar @ cam.lidar_from_cam
        pix = np.arange(0, len(cam.dirs_cam), 7)
        dirs = rotate(world_from_cam[:3, :3], cam.dirs_cam[pix])
        ref = cast_rays(scene, poses, world_from_cam[:3, 3], dirs, cam.config.max_distance)
        ref_ids = np.where(ref.object_index >= 0, scene.object_ids[ref.object_index], 0)
        assert np.array_equal(r.frame.cameras[cam.name].instance_mask.ravel()[pix], ref_ids)


def test_frame_ground_truth_is_consistent():
    gen = generator("geometry")
    for r in renders("geometry"):
        f = r.frame
        ids = set(np.unique(f.point_labels).tolist())
        for cam in f.cameras.values():
            ids |= set(np.unique(cam.instance_mask).tolist())
        assert ids - {0} == set(f.objects), "Frame.objects lists exactly the visible objects"
        for oid, info in f.objects.items():
            assert oid > 0 and info.object_id == oid
            assert info.semantic == gen.scene.object_by_id(oid).semantic
        assert f.point_labels.dtype == np.int32 and len(f.point_labels) == len(f.points)
        # Semantic maps agree with the instance labels: things have ids, stuff is background.
        stuff = np.isin(r.lidar.semantic, [SEMANTIC_CLASSES.index(n) for n in ("road", "curb")])
        assert (f.point_labels[stuff] == 0).all()
        for name, cam in f.cameras.items():
            assert cam.instance_mask.dtype == np.int32
            assert np.allclose(
                cam.intrinsics, gen.cameras[[c.name for c in gen.cameras].index(name)].K
            )
            depth = r.cameras[name].depth
            assert (np.isfinite(depth) | (cam.instance_mask == 0)).all()
            assert cam.timestamp == f.timestamp


def test_lidar_returns_are_plausible():
    gen = generator("geometry")
    cfg = gen.config.lidar
    for r in renders("geometry"):
        p = r.frame.points
        assert p.dtype == np.float32 and p.shape[1] == len(gen.config.lidar.point_fields)
        rng = np.linalg.norm(p[:, :3], axis=1)
        assert rng.min() > cfg.min_range - 0.2 and rng.max() < cfg.max_range + 0.2
        assert (p[:, 3] >= 0).all() and (p[:, 3] <= 1).all()
        ring = p[:, 4]
        assert np.array_equal(ring, np.rint(ring)) and ring.min() >= 0 and ring.max() < cfg.beams
        # Lane markings return stronger than asphalt.
        sem = r.lidar.semantic
        road = sem == SEMANTIC_CLASSES.index("road")
        mark = sem == SEMANTIC_CLASSES.index("lane_marking")
        if mark.sum() > 10:
            assert np.median(p[mark, 3]) > 2 * np.median(p[road, 3])
        # Dropout and grazing losses: fewer points than rays that hit something.
        assert len(p) < np.isfinite(r.lidar.hits.t).sum()


def test_scene_has_the_street_content():
    gen = SyntheticGenerator(make_config("bundled_sample"))
    objs = gen.scene.objects
    kinds = {o.semantic for o in objs}
    assert {"car", "pedestrian", "cyclist", "pole", "building", "tree", "vegetation"} <= kinds
    cars = [o for o in objs if o.semantic == "car"]
    assert all(len(o.model.primitives) >= 7 for o in cars)  # body, cabin, roof, 4 wheels, lights
    assert any(not o.is_static for o in cars) and any(o.is_static for o in cars)
    assert any(not o.is_static for o in objs if o.semantic == "pedestrian")
    assert sorted(o.object_id for o in objs) == list(range(1, len(objs) + 1))
    # The road curves somewhere within the driven stretch and beyond.
    assert np.abs(gen.scene.road.curvatures).max() > 0


def test_objects_enter_and_leave_the_view():
    # LiDAR only (cheap): over 3 s the set of labeled objects changes in both directions.
    cfg = dataclasses.replace(
        make_config("tiny"), num_frames=31, cameras=(), lidar=LidarConfig(beams=16, columns=256)
    )
    gen = SyntheticGenerator(cfg)
    first = set(np.unique(gen.render(0).frame.point_labels).tolist())
    last = set(np.unique(gen.render(30).frame.point_labels).tolist())
    assert first - last and last - first


def test_configs_and_presets():
    assert set(PRESETS) == {"bundled_sample", "tiny", "benchmark"}
    s = make_config("bundled_sample")
    assert s.num_frames == 40 and s.rate_hz == 10.0 and len(s.cameras) == 2
    assert s.lidar.beams in (32, 64)
    b = make_config("benchmark")
    assert (b.cameras[0].width, b.cameras[0].height) == (640, 384)
    assert (b.lidar.beams, b.lidar.columns) == (64, 1024)
    assert make_config("tiny", seed=5).seed == 5
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("nope")
    with pytest.raises(ValueError, match="seed"):
        SyntheticConfig(seed=-1)
    with pytest.raises(ValueError, match="unique"):
        SyntheticConfig(cameras=(CameraConfig("a"), CameraConfig("a")))


def test_camera_intrinsics_and_mounting():
    cam = SyntheticGenerator(
        dataclasses.replace(
            make_config("tiny", num_frames=1),
            cameras=(
                CameraConfig("k", 200, 100, intrinsics=(150.0, 140.0, 90.0, 45.0)),
                CameraConfig("left", 64, 48, yaw_deg=90.0, position=(0.0, 0.5, 0.0)),
            ),
        )
    ).cameras
    assert np.allclose(cam[0].K, [[150, 0, 90], [0, 140, 45], [0, 0, 1]])
    # A camera turned 90 deg left looks along the LiDAR's +y; its centre sits at y = 0.5.
    lidar_from_cam = np.linalg.inv(cam[1].cam_from_lidar)
    assert np.allclose(lidar_from_cam[:3, 2], [0, 1, 0], atol=1e-12)
    assert np.allclose(lidar_from_cam[:3, 0], [1, 0, 0], atol=1e-12)  # image x = LiDAR forward
    assert np.allclose(lidar_from_cam[:3, 3], [0, 0.5, 0])
