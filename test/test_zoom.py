"""Zoomed decoding: the window around a prompt, prompts moved into it, the window decoded as a
camera of its own with the sweep's features reused, the tracker using it on the prompted frame
only (image prompts: the prompted camera; LiDAR prompts: the cameras seeing the segment), and the
bundled model segmenting a small held-out object it loses without it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_cases import camera_seen

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.evaluation.first_frame_prompts import ObjectVisibility, make_first_frame_prompt
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.modeling.sam4d_base import upsample_mask_logits
from sam4d_core.tracking.mask_refine import MaskRefineConfig
from sam4d_core.tracking.records import ImagePrompt, ObjectPrompt
from sam4d_core.tracking.records import LidarPrompt as RecordLidarPrompt
from sam4d_core.tracking.reprompt import CameraGeometry, project_box, project_points
from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig
from sam4d_core.tracking.zoom import (
    ZoomConfig,
    ZoomWindow,
    prompt_extent,
    prompt_in_window,
    zoom_window,
    zoomed_camera_logits,
)

torch.set_num_threads(1)

BUNDLED = Path(__file__).resolve().parents[1] / "sam4d_core/weights/sam4d_small_synthetic.pt"


def test_the_window_is_centred_on_the_object_and_kept_in_the_image() -> None:
    cfg = ZoomConfig(factor=2.0, margin=2.0, min_factor=1.3)
    # A small object: the largest zoom, the camera's aspect, centred on it.
    w = zoom_window(np.array([230.0, 140.0, 249.0, 149.0]), (288, 480), cfg)
    assert w == ZoomWindow(120, 72, 240, 144)
    # Near a corner: moved inside the image, not cut.
    w = zoom_window(np.array([0.0, 280.0, 10.0, 287.0]), (288, 480), cfg)
    assert w == ZoomWindow(0, 144, 240, 144)
    # Wider than a half-width window allows: the window grows to margin x its extent.
    w = zoom_window(np.array([100.0, 100.0, 249.0, 120.0]), (288, 480), cfg)
    assert w is not None and w.width == 300 and w.height == 180
    # An object needing a window that zooms less than min_factor: no zoom.
    assert zoom_window(np.array([100.0, 100.0, 299.0, 120.0]), (288, 480), cfg) is None
    with pytest.raises(ValueError):
        ZoomConfig(factor=0.5)


def test_the_extent_and_prompts_in_the_window() -> None:
    box = CameraPrompt(box=np.array([10.0, 20.0, 30.0, 40.0]))
    assert np.array_equal(prompt_extent(box, None), [10, 20, 30, 40])
    mask = np.zeros((100, 200), bool)
    mask[50:60, 70:90] = True
    clicks = CameraPrompt(np.array([[100.0, 55.0], [5.0, 5.0]]), np.array([1, 0]))
    # The negative click is not the object; the first mask is.
    assert np.array_equal(prompt_extent(clicks, mask), [70, 50, 100, 59])
    assert prompt_extent(CameraPrompt(np.array([[5.0, 5.0]]), np.array([0])), mask) is None
    moved = prompt_in_window(
        CameraPrompt(np.array([[100.0, 55.0]]), np.array([1]), np.array([60, 40, 110, 70]), mask),
        ZoomWindow(50, 30, 100, 60),
    )
    assert np.allclose(moved.points, [[50.0, 25.0]]) and np.allclose(moved.box, [10, 10, 60, 40])
    assert moved.mask is None
    # Resized to the camera's size (a zoom of 2 here), pixels scale with it.
    scaled = prompt_in_window(
        CameraPrompt(np.array([[100.0, 55.0]]), np.array([1])),
        ZoomWindow(50, 30, 100, 60),
        (120, 200),
    )
    assert np.allclose(scaled.points, [[100.0, 50.0]])
    # A point's pixel in the camera is its pixel in the window's view, shifted and scaled.
    K = np.array([[400.0, 0, 240], [0, 400.0, 144], [0, 0, 1]])
    window = ZoomWindow(50, 30, 240, 144)
    xyz = np.array([[1.0, -0.5, 10.0]])
    uv, _ = project_points(xyz, CameraGeometry(0, K, np.eye(4), (288, 480)))
    Kv = window.intrinsics(K, (288, 480))
    uvw, _ = project_points(xyz, CameraGeometry(0, Kv, np.eye(4), (288, 480)))
    assert np.allclose(window.to_view(uv, (288, 480)), uvw)
    # Pasting back: a view mask covering the window's left half.
    view_mask = np.zeros((288, 480), bool)
    view_mask[:, :240] = True
    pasted = window.paste(np.ones((288, 480), bool), view_mask)
    assert pasted[30:174, 50:170].all() and not pasted[30:174, 170:290].any()
    assert pasted[:30].all() and pasted[:, 290:].all()


@pytest.fixture(scope="module")
def seq():
    return generate_sequence(make_config("tiny", num_frames=2))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam4d("sam4d_tiny")


def _object_click(frame) -> tuple[str, np.ndarray]:
    name = next(iter(frame.cameras))
    inst = frame.cameras[name].instance_mask
    ids, counts = np.unique(inst[inst > 0], return_counts=True)
    ys, xs = np.nonzero(inst == ids[np.argmin(counts)])  # the smallest object: zoomed
    k = len(ys) // 2
    return (
        name,
        np.array([[float(xs[k]), float(ys[k])]]),
        np.array([xs.min(), ys.min(), xs.max(), ys.max()], np.float64),
    )


def test_the_window_is_decoded_as_a_camera_with_the_sweeps_features(model, seq) -> None:
    """Reusing the frame's sweep features gives the logits of a frame whose only camera is the
    window, encoded from scratch."""
    f0 = seq[0]
    name, uv, _ = _object_click(f0)
    cam = f0.cameras[name]
    window = zoom_window(np.r_[uv[0], uv[0]], cam.image.shape[:2], ZoomConfig())
    assert window is not None
    cp = CameraPrompt(uv, np.array([1]))
    prompts = ObjectPrompts(
        cameras={0: cp}, lidar=LidarPrompt(f0.points[:1, :3].astype(np.float64), np.array([1]))
    )
    size = cam.image.shape[:2]
    view = window.view(cam.image, size)
    Kv = window.intrinsics(cam.intrinsics, size)
    vp = prompt_in_window(cp, window, size)
    with torch.inference_mode():
        full = model.encode_frame(
            [cam.image], [cam.intrinsics], [cam.cam_from_lidar], f0.points, f0.world_from_lidar
        )
        got = zoomed_camera_logits(model, full, view, Kv, cam.cam_from_lidar, vp, prompts)
        alone = model.encode_frame(
            [view], [Kv], [cam.cam_from_lidar], f0.points, f0.world_from_lidar
        )
        zp = ObjectPrompts(cameras={0: vp}, lidar=prompts.lidar)
        out = model.track_step(alone, [zp], None)
        want = upsample_mask_logits(out.image.mask_logits[0, 0], size)
    assert got.shape == size
    assert torch.allclose(got, want, atol=1e-4)


def test_the_tracker_zooms_the_prompted_camera_on_the_prompted_frame_only(model, seq) -> None:
    """With ``zoom`` (refinement off) the prompted camera's mask is the zoomed decode inside the
    window and the first decode outside; the next sweep (tracked) is what it is without zoom
    (memory and pointers are the first decode's)."""
    f0, f1 = seq[0], seq[1]
    name, _, box = _object_click(f0)
    # A box: the window is the box's (a click's would grow to the random model's wide mask).
    prompt = ObjectPrompt(1, image=[ImagePrompt(name, box=box)])
    res = {}
    for zoom in (False, True):
        tr = StreamingTracker(model, TrackerConfig(zoom=zoom))
        tr.step(f0)
        first = tr.add_prompts([prompt]).objects[0]
        res[zoom] = (first, tr.step(f1).objects[0], tr)
    plain, zoomed = res[False][0].image_masks[name], res[True][0].image_masks[name]
    tr = res[True][2]
    bf = tr._buffer[0]
    cp = tr._objects[1].inputs[bf.index].cameras[tr._camera_slots[name]]
    window = zoom_window(prompt_extent(cp, plain), f0.cameras[name].image.shape[:2], ZoomConfig())
    assert window is not None
    cam = f0.cameras[name]
    size = cam.image.shape[:2]
    with torch.inference_mode():
        logits = zoomed_camera_logits(
            model,
            bf.features,
            window.view(cam.image, size),
            window.intrinsics(cam.intrinsics, size),
            cam.cam_from_lidar,
            prompt_in_window(cp, window, size),
            tr._objects[1].inputs[bf.index],
        )
    assert np.array_equal(zoomed, window.paste(plain, logits.numpy() > 0))
    inside = np.zeros_like(plain)
    inside[window.slices()] = True
    assert np.array_equal(zoomed[~inside], plain[~inside])
    if np.array_equal(zoomed, plain):
        pytest.fail("the zoomed decode equals the first: the test checks nothing")
    # The other camera and the tracked sweep are unchanged.
    for other in set(res[False][0].image_masks) - {name}:
        assert np.array_equal(res[True][0].image_masks[other], res[False][0].image_masks[other])
    assert np.array_equal(res[True][0].point_mask, res[False][0].point_mask)
    for cam_name in res[False][1].image_masks:
        assert np.array_equal(
            res[True][1].image_masks[cam_name], res[False][1].image_masks[cam_name]
        )


def test_a_lidar_prompt_zooms_the_cameras_seeing_its_segment(model, seq) -> None:
    """Prompted in the LiDAR only, a camera seeing the object's refined segment is zoomed on
    the segment's projected box: its mask changes inside that window only; the sweep's mask is
    the same with and without zoom."""
    f0 = seq[0]
    labels = f0.point_labels
    probe = StreamingTracker(model, TrackerConfig())
    probe.step(f0)
    seen = camera_seen(f0.points, probe._buffer[-1].cameras)
    # The smallest object a camera sees, clicked on a point the camera sees.
    ids, counts = np.unique(labels[(labels > 0) & seen], return_counts=True)
    obj = int(ids[np.argmin(counts)])
    rows = np.flatnonzero((labels == obj) & seen)[:1]
    click = f0.points[rows, :3].astype(np.float64)
    prompt = ObjectPrompt(1, lidar=RecordLidarPrompt(points=click, labels=np.array([1])))
    # The random tiny model's segment is small: a camera seeing one point of it is zoomed.
    refine = MaskRefineConfig(image_min_points=1)
    res, trackers = {}, {}
    for zoom in (False, True):
        tr = StreamingTracker(
            model, TrackerConfig(refine_masks=True, mask_refine_config=refine, zoom=zoom)
        )
        tr.step(f0)
        res[zoom] = tr.add_prompts([prompt]).objects[0]
        trackers[zoom] = tr
    assert np.array_equal(res[True].point_mask, res[False].point_mask)
    seg = res[True].point_mask
    bf = trackers[True]._buffer[-1]
    xyz = bf.features.lidar.points_xyz.numpy()
    zoomed = 0
    for cg in bf.cameras:
        name = next(n for n, s in trackers[True]._camera_slots.items() if s == cg.slot)
        plain, got = res[False].image_masks[name], res[True].image_masks[name]
        box = project_box(xyz[seg], cg, refine.image_min_points)
        window = None if box is None else zoom_window(box, cg.size, ZoomConfig())
        if window is None:
            assert np.array_equal(got, plain), name
            continue
        inside = np.zeros_like(plain)
        inside[window.slices()] = True
        assert np.array_equal(got[~inside], plain[~inside]), name
        zoomed += int(not np.array_equal(got, plain))
    if not zoomed:
        pytest.fail("no camera was zoomed: the test checks nothing")


@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"bundled model missing: {BUNDLED}")
def test_the_bundled_model_segments_a_small_object_when_zoomed() -> None:
    """A held-out car of ~520 pixels clicked once: one decode covers part of it (0.65), the
    zoomed decode covers it (the node's defaults otherwise)."""
    seq = generate_sequence(make_config("bundled_sample", seed=950022, num_frames=20))
    oid = 62
    t0 = ObjectVisibility(seq).first_appearance(oid, "img", 30, 10)
    frame = seq.frames[t0]
    p = make_first_frame_prompt(frame, oid, "1click", "img", frame_index=t0)
    model = build_sam4d(checkpoint=BUNDLED, device="cpu").eval()
    ious = {}
    for zoom in (False, True):
        cfg = TrackerConfig(reprompt=True, refine_masks=True, lift_image_clicks=True, zoom=zoom)
        tr = StreamingTracker(model, cfg)
        tr.step(frame)
        op = p.to_object_prompt()
        op.object_id = 1
        m = tr.add_prompts([op]).objects[0].image_masks[p.camera]
        gt = frame.cameras[p.camera].instance_mask == oid
        ious[zoom] = float((m & gt).sum() / (m | gt).sum())
    assert ious[True] > 0.85 and ious[True] - ious[False] > 0.2, ious
