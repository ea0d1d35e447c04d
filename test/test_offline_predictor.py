"""The offline predictor with the official method names and formats, on the tiny config and the
tiny synthetic drive: init_state from files (official flat meta and Waymo-4DSeg cams_info) and from
a Sequence, prompt dictionaries, return formats, propagation forward / reverse, masks, removal."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.sequence import Sequence
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.tracking.offline_predictor import NO_OBJ_SCORE, SAM4DPredictor

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def seq() -> Sequence:
    return generate_sequence(make_config("tiny", num_frames=5))


@pytest.fixture(scope="module")
def model() -> SAM4D:
    torch.manual_seed(1)
    return build_sam4d("sam4d_tiny")


def _pts_prompt(seq: Sequence, frame: int, obj: int, label: int = 1) -> dict:
    xyz = seq[frame].points[seq[frame].point_labels == obj][:1, :3]
    return {"pts": {"point_coords": torch.from_numpy(xyz)[None], "point_labels": [[label]]}}


def _write_files(seq: Sequence, root: Path) -> tuple[list, list, list, list]:
    """The sequence as the official notebook gives it: one camera (flat metas), plus the
    Waymo-4DSeg meta form with both cameras."""
    img_front, pts, flat, full = [], [], [], []
    for i, f in enumerate(seq):
        paths = {}
        for name, cam in f.cameras.items():
            p = root / f"{i}_{name}.png"
            cv2.imwrite(str(p), cv2.cvtColor(cam.image, cv2.COLOR_RGB2BGR))
            paths[name] = p
        img_front.append(str(paths["front"]))
        npz = root / f"{i}.npz"
        np.savez(npz, data=f.points)
        pts.append(npz)
        cam = f.cameras["front"]
        k4 = np.eye(4)
        k4[:3, :3] = cam.intrinsics
        c2l = np.linalg.inv(cam.cam_from_lidar)
        flat.append({"pose": f.world_from_lidar, "camera_intrinsics": k4, "camera2lidar": c2l})
        full.append(
            {
                "lidar2world": f.world_from_lidar,
                "cams_info": {
                    n: {
                        "data_path": paths[n].name,
                        "camera_intrinsics": c.intrinsics,
                        "camera2lidar": np.linalg.inv(c.cam_from_lidar),
                    }
                    for n, c in f.cameras.items()
                },
                "path": {"pcd": npz.name},
            }
        )
    return img_front, pts, flat, full


def test_init_state_from_files_matches_the_sequence(
    model: SAM4D, seq: Sequence, tmp_path: Path
) -> None:
    img_front, pts, flat, full = _write_files(seq, tmp_path)
    pred = SAM4DPredictor(model)
    # The official notebook's form: one camera ('img'), flat metas.
    st = pred.init_state(img_paths=img_front, pts_paths=pts, metas=flat)
    assert st["num_frames"] == 5 and st.primary_camera == "img" and "images" in st
    assert st["video_height"][0] == {"img": 96, "pts": len(seq[0].points)}
    assert st["video_width"][0] == {"img": 160, "pts": 1}
    # The same click on the file-based and the in-memory one-camera sequence: same masks.
    one_cam = [
        dataclasses.replace(f, cameras={"img": dataclasses.replace(f.cameras["front"], name="img")})
        for f in seq
    ]
    ref = pred.init_state_from_sequence(one_cam)
    prompt = {"img": {"point_coords": [[[80.0, 40.0]]], "point_labels": [[1]]}}
    _, ids, m_files = pred.add_new_points_or_box(st, 1, 5, point_prompts=prompt)
    _, _, m_mem = pred.add_new_points_or_box(ref, 1, 5, point_prompts=prompt)
    assert ids == [5] and set(m_files) == {"img", "pts"}
    for k in m_files:
        torch.testing.assert_close(m_files[k], m_mem[k], atol=1e-5, rtol=0)
    # Waymo-4DSeg meta_infos frames: both cameras, images from cams_info data_path.
    st2 = pred.init_state(pts_paths=None, metas=full, data_root=tmp_path)
    assert st2.camera_names == ["front", "front_left"] and st2.primary_camera == "front"
    assert len(st2.frames[0].points) == len(seq[0].points)
    with pytest.raises(ValueError, match="differ in length"):
        pred.init_state(img_paths=img_front[:2], pts_paths=pts, metas=flat)


def test_prompt_formats_and_return_shapes(model: SAM4D, seq: Sequence) -> None:
    pred = SAM4DPredictor(model)
    st = pred.init_state_from_sequence(seq)
    n = len(seq[2].points)
    # A LiDAR click (tensors, as released).
    fi, ids, masks = pred.add_new_points_or_box(st, 2, 7, point_prompts=_pts_prompt(seq, 2, 1))
    assert fi == 2 and ids == [7]
    assert set(masks) == {"img", "img/front", "img/front_left", "pts"}
    assert masks["img"].shape == (1, 1, 96, 160) and masks["img"].dtype == torch.float32
    assert masks["pts"].shape == (1, 1, n, 1)
    torch.testing.assert_close(masks["img"], masks["img/front"])
    # A box in the release's form (corners labelled 2, 3) equals the plain [x0, y0, x1, y1] box,
    # and relative coordinates (normalize_coords=False) equal pixels. (Fresh states: a second
    # prompt on the same frame is a refinement fed with the previous logits.)
    corners = {"img": {"point_coords": [[[40.0, 20.0], [120.0, 70.0]]], "point_labels": [[2, 3]]}}
    rel = [[[40.0 / 160, 20.0 / 96], [120.0 / 160, 70.0 / 96]]]
    calls = [
        {"box_prompts": corners},
        {"box_prompts": {"img": [40.0, 20.0, 120.0, 70.0]}},
        {
            "point_prompts": {"img": {"point_coords": rel, "point_labels": [[2, 3]]}},
            "normalize_coords": False,
        },
    ]
    outs = [
        pred.add_new_points_or_box(pred.init_state_from_sequence(seq), 2, 8, **kw)[2]
        for kw in calls
    ]
    for k in outs[0]:
        torch.testing.assert_close(outs[0][k], outs[1][k])
        torch.testing.assert_close(outs[0][k], outs[2][k], atol=1e-5, rtol=0)
    # An object without a prediction on a frame is NO_OBJ_SCORE there.
    _, _, other = pred.add_new_points_or_box(
        st,
        4,
        9,
        point_prompts={"img/front_left": {"point_coords": [[[5, 5]]], "point_labels": [[1]]}},
    )
    assert bool((other["pts"][0] == NO_OBJ_SCORE).all()) and other["pts"].shape[0] == 2
    with pytest.raises(ValueError, match="at least one of points or box"):
        pred.add_new_points_or_box(st, 0, 1)
    with pytest.raises(ValueError, match="without clearing old points"):
        pred.add_new_points_or_box(st, 0, 1, box_prompts=corners, clear_old_points=False)
    with pytest.raises(ValueError, match="'img', 'img/<camera>' or 'pts'"):
        pred.add_new_points_or_box(
            st, 0, 1, point_prompts={"cam": {"point_coords": [[[1, 1]]], "point_labels": [[1]]}}
        )
    with pytest.raises(IndexError):
        pred.add_new_points_or_box(st, 9, 1, point_prompts=_pts_prompt(seq, 0, 1))


def test_propagate_forward_reverse_and_masks(model: SAM4D, seq: Sequence) -> None:
    pred = SAM4DPredictor(model, non_overlap_masks=True)
    st = pred.init_state_from_sequence(seq)
    with pytest.raises(RuntimeError, match="No input points or masks"):
        list(pred.propagate_in_video(st))
    # A mask prompt without clicks is the output on its frame (LiDAR logits +-10).
    pts_mask = (seq[2].point_labels == 1)[:, None]
    cam_mask = seq[2].cameras["front"].instance_mask == 8
    _, _, m = pred.add_new_mask(st, 2, 1, {"pts": torch.from_numpy(pts_mask), "img": cam_mask})
    torch.testing.assert_close(
        m["pts"][0, 0, :, 0], torch.where(torch.from_numpy(pts_mask[:, 0]), 10.0, -10.0)
    )
    assert ((m["img"][0, 0] > 0).numpy() == cam_mask).mean() > 0.97
    pred.add_new_points_or_box(st, 2, 2, point_prompts=_pts_prompt(seq, 2, 2))
    forward = list(pred.propagate_in_video(st))
    assert [f for f, _, _ in forward] == [2, 3, 4]
    assert all(ids == [1, 2] and m["pts"].shape[:2] == (2, 1) for _, ids, m in forward)
    # The prompted frame keeps its output.
    torch.testing.assert_close(forward[0][2]["pts"][0, 0, :, 0], m["pts"][0, 0, :, 0])
    # Non-overlap: no point is positive for both objects.
    for _, _, masks in forward:
        assert not bool(((masks["pts"] > 0).sum(dim=0) > 1).any())
    backward = list(pred.propagate_in_video(st, reverse=True))
    assert [f for f, _, _ in backward] == [2, 1, 0]
    limited = list(pred.propagate_in_video(st, start_frame_idx=1, max_frame_num_to_track=2))
    assert [f for f, _, _ in limited] == [1, 2, 3]
    assert st.tracked_reverse[1][0] is True and st.tracked_reverse[1][3] is False
    # Objects are batched in propagation: one object alone gives the same masks.
    solo = SAM4DPredictor(model, non_overlap_masks=False)
    s1 = solo.init_state_from_sequence(seq)
    s2 = solo.init_state_from_sequence(seq)
    solo.add_new_mask(s1, 2, 1, {"pts": torch.from_numpy(pts_mask), "img": cam_mask})
    solo.add_new_points_or_box(s1, 2, 2, point_prompts=_pts_prompt(seq, 2, 2))
    solo.add_new_points_or_box(s2, 2, 2, point_prompts=_pts_prompt(seq, 2, 2))
    both = {f: m for f, _, m in solo.propagate_in_video(s1)}
    alone = {f: m for f, _, m in solo.propagate_in_video(s2)}
    for f in (3, 4):
        torch.testing.assert_close(both[f]["pts"][1], alone[f]["pts"][0], atol=1e-4, rtol=0)


def test_corrections_clear_remove_and_reset(model: SAM4D, seq: Sequence) -> None:
    pred = SAM4DPredictor(model)
    st = pred.init_state_from_sequence(seq)
    pred.add_new_points_or_box(st, 0, 1, point_prompts=_pts_prompt(seq, 0, 1))
    pred.add_new_points_or_box(st, 0, 2, point_prompts=_pts_prompt(seq, 0, 2))
    tracked = {f: m for f, _, m in pred.propagate_in_video(st)}
    # A correction on a tracked frame (previous logits + memory) becomes a conditioning frame.
    neg = _pts_prompt(seq, 3, 2, label=0)
    _, _, corrected = pred.add_new_points_or_box(st, 3, 1, point_prompts=neg)
    assert not torch.allclose(corrected["pts"][0], tracked[3]["pts"][0])
    torch.testing.assert_close(corrected["pts"][1], tracked[3]["pts"][1])
    assert st.objects[1].cond_frames == [0, 3]
    again = {f: m for f, _, m in pred.propagate_in_video(st)}
    torch.testing.assert_close(again[3]["pts"][0], corrected["pts"][0])
    # Clearing the prompts of a frame downgrades it: the next propagation re-tracks it.
    pred.clear_all_prompts_in_frame(st, 3, 1)
    assert st.objects[1].cond_frames == [0]
    cleared = {f: m for f, _, m in pred.propagate_in_video(st)}
    torch.testing.assert_close(cleared[3]["pts"][0], tracked[3]["pts"][0], atol=1e-5, rtol=0)
    ids, updated = pred.remove_object(st, 1)
    assert ids == [2] and [f for f, _ in updated] == [0]
    assert updated[0][1]["pts"].shape[0] == 1
    assert pred.remove_object(st, 42) == ([2], [])
    with pytest.raises(RuntimeError, match="doesn't exist"):
        pred.remove_object(st, 42, strict=True)
    pred.reset_state(st)
    assert st["obj_ids"] == []
