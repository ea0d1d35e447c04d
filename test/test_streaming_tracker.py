"""The streaming tracker on the tiny config and the tiny synthetic drive: result shapes, missing
sensors, batching, prompts on buffered past frames (the offline predictor as the reference),
world-frame invariance, removal / reset, errors and bounded memory."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.sequence import Frame, Sequence
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.modeling.ego_pose_encoder import so3_exp
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.tracking.offline_predictor import SAM4DPredictor
from sam4d_core.tracking.records import (
    ImagePrompt,
    LidarPrompt,
    ObjectPrompt,
    ObjectResult,
    StepResult,
)
from sam4d_core.tracking.streaming_tracker import (
    PromptError,
    PromptOutOfBufferError,
    StreamingTracker,
    TrackerConfig,
)

torch.set_num_threads(1)

STAGES = {"image_encoder", "lidar_encoder", "memory_attention", "decoder", "memory_encoder"}


@pytest.fixture(scope="module")
def seq() -> Sequence:
    return generate_sequence(make_config("tiny", num_frames=6))


@pytest.fixture(scope="module")
def model() -> SAM4D:
    torch.manual_seed(0)
    m = build_sam4d("sam4d_tiny")
    # Non-trivial BatchNorm statistics (random init leaves them at 0 / 1).
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _object_xyz(frame: Frame, obj: int) -> np.ndarray:
    return frame.points[frame.point_labels == obj][:, :3].astype(np.float64)


def _object_pixel(frame: Frame, camera: str, obj: int) -> np.ndarray:
    vs, us = np.nonzero(frame.cameras[camera].instance_mask == obj)
    k = len(us) // 2
    return np.array([[float(us[k]), float(vs[k])]])


def _lidar_click(frame: Frame, obj: int, stamp: float | None = None, **kw) -> ObjectPrompt:
    xyz = _object_xyz(frame, obj)
    return ObjectPrompt(
        obj, stamp=stamp, lidar=LidarPrompt(points=xyz[:1], labels=np.array([1])), **kw
    )


def _image_click(
    frame: Frame, camera: str, obj_id: int, stamp: float | None = None, gt: int = 8
) -> ObjectPrompt:
    """A click on ground-truth object ``gt`` (8: a building seen by both cameras all along)."""
    return ObjectPrompt(
        obj_id,
        stamp=stamp,
        image=[ImagePrompt(camera, points=_object_pixel(frame, camera, gt), labels=np.array([1]))],
    )


def _assert_results_close(a: ObjectResult, b: ObjectResult, atol: float = 1e-4) -> None:
    assert a.object_id == b.object_id
    np.testing.assert_allclose(a.point_scores, b.point_scores, atol=atol)
    assert a.presence_score == pytest.approx(b.presence_score, abs=atol)
    assert a.predicted_iou == pytest.approx(b.predicted_iou, abs=atol)
    assert a.image_masks.keys() == b.image_masks.keys()
    for cam, m in a.image_masks.items():
        # Thresholded upsampled logits: allow the odd pixel sitting on the threshold.
        assert (m == b.image_masks[cam]).mean() > 0.999, cam


def _by_id(r: StepResult) -> dict[int, ObjectResult]:
    return {o.object_id: o for o in r.objects}


def test_step_results_at_sensor_resolution(model: SAM4D, seq: Sequence) -> None:
    tr = StreamingTracker(model)
    empty = tr.step(seq[0])
    assert empty.objects == [] and {"image_encoder", "lidar_encoder", "total"} <= set(
        empty.timings_ms
    )
    r = tr.add_prompts(
        [
            _lidar_click(seq[0], 1),
            ObjectPrompt(
                2,
                image=[
                    ImagePrompt(
                        "front",
                        points=np.array([[80.0, 50.0], [10.0, 10.0]]),
                        labels=np.array([1, 0]),
                        box=np.array([60.0, 30.0, 110.0, 70.0]),
                    )
                ],
            ),
        ]
    )
    assert r is not None and r.frame_index == 0 and r.replayed_from == 0
    assert [o.object_id for o in r.objects] == [1, 2] and tr.object_ids == [1, 2]
    r = tr.step(seq[1])
    assert r.frame_index == 1 and r.timestamp == seq[1].timestamp
    assert STAGES | {"postprocess", "total"} <= set(r.timings_ms)
    assert all(v >= 0 for v in r.timings_ms.values())
    n = len(seq[1].points)
    for o in r.objects:
        assert set(o.image_masks) == {"front", "front_left"}
        for m in o.image_masks.values():
            assert m.shape == (96, 160) and m.dtype == bool
        assert o.point_mask.shape == (n,) and o.point_mask.dtype == bool
        assert o.point_scores.shape == (n,) and o.point_scores.dtype == np.float32
        assert ((o.point_scores >= 0) & (o.point_scores <= 1)).all()
        np.testing.assert_array_equal(o.point_mask, o.point_scores > 0.5)
        assert 0 <= o.presence_score <= 1 and 0 <= o.predicted_iou <= 1
        assert set(o.image_presence) == set(o.image_ious) == {"front", "front_left"}
        assert o.lidar_presence is not None and o.lidar_iou is not None
        assert not o.prompted
    # Buffered frames keep what re-running needs, not the backbone's submanifold kernel maps.
    kmaps = tr._buffer[-1].features.lidar.sparse_s16.cache.kmaps
    assert kmaps and all(k[2] != (1, 1, 1) or k[0] == (16, 16, 16) for k in kmaps)


def test_missing_camera_and_single_modality_frames(model: SAM4D, seq: Sequence) -> None:
    tr = StreamingTracker(model)
    tr.step(seq[0])
    tr.add_prompts([_lidar_click(seq[0], 1), _image_click(seq[0], "front", 2)])
    # One camera missing.
    f1 = dataclasses.replace(seq[1], cameras={"front_left": seq[1].cameras["front_left"]})
    r = tr.step(f1)
    assert all(set(o.image_masks) == {"front_left"} for o in r.objects)
    # No LiDAR: empty point outputs.
    f2 = dataclasses.replace(seq[2], points=np.zeros((0, 5), np.float32), point_labels=None)
    r = tr.step(f2)
    assert all(o.point_mask.shape == (0,) and o.lidar_presence is None for o in r.objects)
    assert "lidar_encoder" not in r.timings_ms
    # No camera.
    r = tr.step(dataclasses.replace(seq[3], cameras={}))
    assert all(o.image_masks == {} for o in r.objects)
    assert r.objects[0].point_mask.shape == (len(seq[3].points),)
    # Back to everything; a prompt on a camera absent from its frame is refused.
    r = tr.step(seq[4])
    assert all(set(o.image_masks) == {"front", "front_left"} for o in r.objects)
    with pytest.raises(PromptError, match="camera 'front' is not in that frame"):
        tr.add_prompts([_image_click(seq[1], "front", 1, stamp=seq[1].timestamp)])
    with pytest.raises(PromptError, match="no LiDAR points"):
        tr.add_prompts([_lidar_click(seq[2], 1, stamp=seq[2].timestamp)])
    with pytest.raises(ValueError, match="at least one camera image or a non-empty sweep"):
        tr.step(dataclasses.replace(seq[5], cameras={}, points=np.zeros((0, 5), np.float32)))


def test_batched_objects_equal_one_at_a_time(model: SAM4D, seq: Sequence) -> None:
    prompts = [
        _lidar_click(seq[0], 1),
        _image_click(seq[0], "front", 2),
        ObjectPrompt(
            3,
            image=[ImagePrompt("front_left", box=np.array([20.0, 20.0, 90.0, 80.0]))],
            lidar=LidarPrompt(points=_object_xyz(seq[0], 1)[:1], labels=np.array([0])),
        ),
    ]
    together = StreamingTracker(model)
    alone = [StreamingTracker(model) for _ in prompts]
    for t in (together, *alone):
        t.step(seq[0])
    together.add_prompts(prompts)
    for t, p in zip(alone, prompts, strict=True):
        t.add_prompts([p])
    for f in seq.frames[1:4]:
        batched = _by_id(together.step(f))
        for t, p in zip(alone, prompts, strict=True):
            single = _by_id(t.step(f))
            _assert_results_close(batched[p.object_id], single[p.object_id])


def test_past_frame_prompts_match_the_offline_predictor(model: SAM4D, seq: Sequence) -> None:
    """Object 1 clicked live on frame 0; at frame 3 a correction for it on frame 2 and a new
    object 2 on frame 1 arrive late (an image stamp 20 ms off the sweep). The predictor, prompted
    on those frames in the same order and propagated, is the reference."""
    tr = StreamingTracker(model)
    tr.step(seq[0])
    tr.add_prompts([_lidar_click(seq[0], 1)])
    for k in (1, 2, 3):
        tr.step(seq[k])
    negative = ObjectPrompt(
        1,
        stamp=seq[2].timestamp,
        image=[ImagePrompt("front", points=np.array([[30.0, 60.0]]), labels=np.array([0]))],
    )
    late = tr.add_prompts(
        [negative, _image_click(seq[1], "front", 2, stamp=seq[1].timestamp + 0.02)]
    )
    assert late is not None and late.frame_index == 3 and late.replayed_from == 1
    live = {3: _by_id(late)}
    for k in (4, 5):
        live[k] = _by_id(tr.step(seq[k]))

    pred = SAM4DPredictor(model)
    st = pred.init_state_from_sequence(seq)
    xyz = _object_xyz(seq[0], 1)[:1]
    pred.add_new_points_or_box(
        st, 0, 1, point_prompts={"pts": {"point_coords": xyz[None], "point_labels": [[1]]}}
    )
    list(pred.propagate_in_video(st))
    pred.add_new_points_or_box(
        st,
        2,
        1,
        point_prompts={"img": {"point_coords": [[[30.0, 60.0]]], "point_labels": [[0]]}},
        clear_old_points=False,
    )
    pix = _object_pixel(seq[1], "front", 8)
    pred.add_new_points_or_box(
        st, 1, 2, point_prompts={"img/front": {"point_coords": pix[None], "point_labels": [[1]]}}
    )
    offline = {f: (ids, m) for f, ids, m in pred.propagate_in_video(st, start_frame_idx=1)}
    for k in (3, 4, 5):
        ids, masks = offline[k]
        assert ids == [1, 2]
        for b, oid in enumerate(ids):
            got = live[k][oid]
            np.testing.assert_allclose(
                got.point_scores, torch.sigmoid(masks["pts"][b, 0, :, 0]).numpy(), atol=1e-4
            )
            for cam in ("front", "front_left"):
                ref = (masks[f"img/{cam}"][b, 0] > 0).numpy()
                assert (got.image_masks[cam] == ref).mean() > 0.999
    # The late prompt really changed object 1 (the negative click) and created object 2 in the past.
    assert tr.memory_stats()["inputs_kept"] == {1: 2, 2: 1}


def _pose(yaw: float, t: list[float]) -> np.ndarray:
    p = np.eye(4)
    p[:3, :3] = so3_exp(torch.tensor([0.0, 0.0, yaw], dtype=torch.float64)).numpy()
    p[:3, 3] = t
    return p


def test_world_frame_translation_leaves_outputs_unchanged(model: SAM4D, seq: Sequence) -> None:
    """What holds: only relative ego motion enters the model (memory PEs use P_t^-1 P_t'), so
    moving the world frame, i.e. translating (here also rotating) the ego trajectory with the
    scene as a whole, leaves every output unchanged, past-frame prompts included.

    What does not hold, by design of the release: translating the points inside the LiDAR frame
    (UMPE's random Fourier features and ray MLP take absolute LiDAR-frame metres); see
    test_sam4d_model.test_world_frame_invariance."""
    world = _pose(0.7, [2.5e5, -1.2e5, 40.0])
    moved = [dataclasses.replace(f, world_from_lidar=world @ f.world_from_lidar) for f in seq]
    runs = []
    for frames in (seq.frames, moved):
        tr = StreamingTracker(model)
        tr.step(frames[0])
        tr.add_prompts([_lidar_click(frames[0], 1)])
        out = [tr.step(frames[k]) for k in (1, 2, 3)]
        out.append(tr.add_prompts([_image_click(frames[1], "front", 2, stamp=frames[1].timestamp)]))
        out.append(tr.step(frames[4]))
        runs.append(out)
    for a, b in zip(*runs, strict=True):
        for oa, ob in zip(a.objects, b.objects, strict=True):
            _assert_results_close(oa, ob, atol=2e-4)


def test_refinement_remove_and_reset(model: SAM4D, seq: Sequence) -> None:
    tr = StreamingTracker(model)
    tr.step(seq[0])
    first = _by_id(tr.add_prompts([_lidar_click(seq[0], 1)]))[1]
    assert first.prompted
    # More clicks on the same frame accumulate and refine (previous logits as dense prompt).
    xyz = _object_xyz(seq[0], 1)
    more = ObjectPrompt(1, lidar=LidarPrompt(points=xyz[-1:], labels=np.array([0])))
    refined = _by_id(tr.add_prompts([more]))[1]
    assert not np.allclose(refined.point_scores, first.point_scores)
    state = tr._objects[1]
    assert len(state.inputs[0].lidar.points) == 2
    # clear_previous restarts from the new prompt alone: the first result again.
    again = _by_id(tr.add_prompts([_lidar_click(seq[0], 1, clear_previous=True)]))[1]
    np.testing.assert_allclose(again.point_scores, first.point_scores, atol=1e-6)
    tr.add_prompts([_image_click(seq[0], "front", 2)])
    tr.step(seq[1])
    assert tr.remove_objects([2, 99]) == [2] and tr.object_ids == [1]
    assert [o.object_id for o in tr.step(seq[2]).objects] == [1]
    tr.reset()
    assert tr.object_ids == [] and tr.buffered_stamps == [] and tr.newest_timestamp is None
    assert tr.step(seq[0]).frame_index == 0  # indices and stamps restart after a reset


def test_prompt_errors_leave_the_tracker_unchanged(model: SAM4D, seq: Sequence) -> None:
    cfg = TrackerConfig(frame_buffer_s=0.25, stamp_tolerance_s=0.02, max_objects=2)
    tr = StreamingTracker(model, cfg)
    with pytest.raises(PromptOutOfBufferError, match="no frame"):
        tr.add_prompts([_lidar_click(seq[0], 1)])
    for k in range(5):
        tr.step(seq[k])
    assert tr.buffered_stamps == [seq[k].timestamp for k in (2, 3, 4)]
    with pytest.raises(PromptOutOfBufferError, match="frame buffer keeps 0.25 s") as e:
        tr.add_prompts([_lidar_click(seq[0], 1, stamp=seq[0].timestamp)])
    assert isinstance(e.value, ValueError)
    with pytest.raises(PromptOutOfBufferError, match="no buffered frame within"):
        tr.add_prompts([_lidar_click(seq[3], 1, stamp=seq[3].timestamp - 0.05)])
    bad = [
        (ObjectPrompt(0, lidar=LidarPrompt(points=np.zeros((1, 3)), labels=np.ones(1))), "outside"),
        (ObjectPrompt(1, lidar=LidarPrompt(points=np.zeros((1, 3)), labels=[2])), "labels"),
        (ObjectPrompt(1, image=[ImagePrompt("rear", points=np.zeros((1, 2)), labels=[1])]), "rear"),
        (ObjectPrompt(1), "no points, box or mask"),
        (ObjectPrompt(1, lidar=LidarPrompt(point_mask=np.ones(3, bool))), "point_mask of 3"),
        (ObjectPrompt(1, stamp=seq[4].timestamp + 5.0, lidar=LidarPrompt(box=np.ones(4))), "after"),
    ]
    for p, match in bad:
        # A valid prompt in the same request is not applied either (all or nothing).
        with pytest.raises(PromptError, match=match):
            tr.add_prompts([_lidar_click(seq[4], 1), p])
        assert tr.object_ids == []
    tr.add_prompts([_lidar_click(seq[4], 1), _lidar_click(seq[4], 2)])
    with pytest.raises(PromptError, match="max_objects"):
        tr.add_prompts([_lidar_click(seq[4], 3)])
    with pytest.raises(ValueError, match="not after the newest frame"):
        tr.step(seq[4])


def test_future_stamp_is_applied_when_its_frame_arrives(model: SAM4D, seq: Sequence) -> None:
    tr = StreamingTracker(model)
    tr.step(seq[0])
    assert tr.add_prompts([_image_click(seq[1], "front", 2, stamp=seq[1].timestamp)]) is None
    assert tr.object_ids == [] and tr.memory_stats()["pending_prompts"] == 1
    r = tr.step(seq[1])
    assert [o.object_id for o in r.objects] == [2] and r.objects[0].prompted
    # The same as a prompt given on that frame once it is the newest.
    ref = StreamingTracker(model)
    ref.step(seq[0])
    ref.step(seq[1])
    _assert_results_close(
        _by_id(ref.add_prompts([_image_click(seq[1], "front", 2)]))[2], r.objects[0], 1e-6
    )


def test_memory_is_bounded(model: SAM4D, seq: Sequence) -> None:
    """Many steps (frames reused with advancing stamps and poses), prompts now and then: the
    buffer, banks and kept predictions stay within their bounds."""
    cfg = TrackerConfig(frame_buffer_s=0.35, max_buffer_frames=3)
    tr = StreamingTracker(model, cfg)
    cap = tr.bank_config.capacity
    assert cap == tr.bank_config.recent_window + 3 + max(
        0, tr.bank_config.max_cond_frame_diff - tr.bank_config.recent_window
    )
    for k in range(16):
        f = seq[k % len(seq)]
        pose = f.world_from_lidar.copy()
        pose[0, 3] += 3.0 * k
        tr.step(dataclasses.replace(f, timestamp=100.0 + 0.1 * k, world_from_lidar=pose))
        if k in (0, 7):
            tr.add_prompts([_lidar_click(f, 1), _image_click(f, "front", 2)])
        if k == 11:  # a prompt on the oldest buffered frame
            tr.add_prompts([_lidar_click(seq[(k - 2) % len(seq)], 1, stamp=100.0 + 0.1 * (k - 2))])
        s = tr.memory_stats()
        assert s["buffer_frames"] <= 3
        assert all(n <= cap for n in s["bank_entries"].values())
        assert all(n <= s["buffer_frames"] for n in s["outputs_kept"].values())
        assert all(n <= s["buffer_frames"] for n in s["inputs_kept"].values())
    assert s["objects"] == 2 and s["pending_prompts"] == 0
    with pytest.raises(ValueError, match="num_maskmem"):
        StreamingTracker(model, TrackerConfig(num_maskmem=model.config.memory.num_maskmem + 1))
