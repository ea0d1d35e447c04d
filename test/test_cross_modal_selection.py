"""Choosing an object's camera and LiDAR multimask outputs together
(sam4d_core/modeling/cross_modal_selection.py) and its wiring into the model's decoding."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from sam4d_core.modeling.configs import get_config
from sam4d_core.modeling.cross_modal_selection import (
    PointPixels,
    lidar_point_logits,
    mask_agreement,
    point_pixels,
    select_jointly,
)
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.modeling.records import ImageFeatures
from sam4d_core.modeling.sam4d_base import SAM4D

torch.set_num_threads(1)

# LiDAR x forward, y left, z up -> camera x right, y down, z forward.
CAM_FROM_LIDAR = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
K = np.array([[50.0, 0.0, 63.5], [0.0, 50.0, 31.5], [0.0, 0.0, 1.0]])  # a 128 x 64 input


def _image_features(num_cameras: int = 1) -> ImageFeatures:
    lidar_from_cam = torch.from_numpy(np.linalg.inv(CAM_FROM_LIDAR)).float()
    return ImageFeatures(
        camera_ids=tuple(range(num_cameras)),
        camera_sizes=((64, 128),) * num_cameras,
        tokens=torch.zeros(num_cameras, 8, 4, 8),
        high_res=[],
        pe=torch.zeros(num_cameras, 8, 4, 8),
        K=torch.from_numpy(K).float()[None].repeat(num_cameras, 1, 1),
        lidar_from_cam=lidar_from_cam[None].repeat(num_cameras, 1, 1),
    )


@dataclasses.dataclass
class _Points:
    points_xyz: torch.Tensor


def test_points_project_to_grid_coordinates() -> None:
    pts = torch.tensor(
        [
            [10.0, 0.0, 0.0],  # straight ahead: the principal point, the image centre
            [10.0, 10.0, 0.0],  # left: u = 63.5 - 50 -> column 13.5
            [-10.0, 0.0, 0.0],  # behind the camera
            [10.0, -40.0, 0.0],  # far right, outside the image
        ]
    )
    (seen,) = point_pixels(_Points(pts), _image_features(), (64, 128))  # type: ignore[arg-type]
    assert seen.rows.tolist() == [0, 1]
    torch.testing.assert_close(seen.grid[0], torch.tensor([0.0, 0.0]))
    # Column 13.5 of 128 (pixel centres at integers): (13.5 + 0.5) / 128 * 2 - 1.
    torch.testing.assert_close(seen.grid[1], torch.tensor([14.0 / 64.0 - 1.0, 0.0]))


def test_agreement_is_the_iou_over_the_points_a_camera_sees() -> None:
    # 4 points: 2 on the left half of the image, 2 on the right half.
    seen = PointPixels(
        rows=torch.tensor([0, 1, 2, 3]),
        grid=torch.tensor([[-0.6, 0.0], [-0.4, 0.2], [0.4, 0.0], [0.6, -0.2]]),
    )
    cam = torch.full((1, 2, 4, 8), -5.0)
    cam[0, 0, :, :4] = 5.0  # camera mask 0: the left half
    cam[0, 1, :, 4:] = 5.0  # camera mask 1: the right half
    lid = torch.full((1, 3, 5), -5.0)
    lid[0, 0, [0, 1]] = 5.0  # LiDAR mask 0: the left points
    lid[0, 1, [2, 3, 4]] = 5.0  # LiDAR mask 1: the right points and one the camera does not see
    lid[0, 2, [1, 2]] = 5.0  # LiDAR mask 2: one of each
    a = mask_agreement(cam, lid, seen)[0]
    torch.testing.assert_close(
        a, torch.tensor([[1.0, 0.0, 1.0 / 3.0], [0.0, 1.0, 1.0 / 3.0]]), atol=1e-6, rtol=0
    )
    # A camera that sees no point agrees with nothing.
    empty = PointPixels(torch.zeros(0, dtype=torch.int64), torch.zeros(0, 2))
    assert mask_agreement(cam, lid, empty).abs().sum() == 0


def test_agreement_overrules_a_wrong_iou_ranking() -> None:
    camera_ious = [torch.tensor([[0.5, 0.4, 0.1]])]
    lidar_ious = torch.tensor([[0.45, 0.5, 0.1]])
    agree = torch.zeros(1, 3, 3)
    agree[0, 1, 0] = 0.8  # camera mask 1 and LiDAR mask 0 are the same object
    agree[0, 0, 1] = 0.1
    (cam,), lid = select_jointly(camera_ious, lidar_ious, [agree], gain=1.0)
    assert (int(cam), int(lid)) == (1, 0)
    # Without the agreement: each view's own best predicted IoU (the released rule).
    (cam,), lid = select_jointly(camera_ious, lidar_ious, [agree], gain=0.0)
    assert (int(cam), int(lid)) == (0, 1)


def test_several_cameras_choose_the_lidar_mask_together() -> None:
    lidar_ious = torch.tensor([[0.6, 0.5, 0.1]])
    camera_ious = [torch.tensor([[0.3, 0.3, 0.3]]), torch.tensor([[0.3, 0.3, 0.3]])]
    a0 = torch.zeros(1, 3, 3)
    a1 = torch.zeros(1, 3, 3)
    a0[0, 2, 1] = 0.6  # camera 0 mask 2 agrees with LiDAR mask 1
    a1[0, 0, 1] = 0.5  # camera 1 mask 0 too
    a0[0, 1, 0] = 0.5  # only camera 0 backs LiDAR mask 0
    (c0, c1), lid = select_jointly(camera_ious, lidar_ious, [a0, a1], gain=1.0)
    assert (int(c0), int(c1), int(lid)) == (2, 0, 1)


@pytest.fixture(scope="module")
def tiny() -> SAM4D:
    torch.manual_seed(0)
    return SAM4D(get_config("sam4d_tiny")).eval()


def _frame(model: SAM4D):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 128, 3), dtype=np.uint8)
    xyz = rng.uniform([3.0, -6.0, -1.0], [15.0, 6.0, 1.0], size=(800, 3))
    pts = np.concatenate([xyz, rng.uniform(size=(800, 1))], axis=1).astype(np.float32)
    return model.encode_frame([img], [K], [CAM_FROM_LIDAR], pts)


def test_decoding_uses_the_joint_choice(tiny: SAM4D) -> None:
    prompts = [
        ObjectPrompts(cameras={0: CameraPrompt(points=[[60, 30]], labels=[1])}),
        ObjectPrompts(lidar=LidarPrompt(points=[[8.0, 1.0, 0.0]], labels=[1])),
        ObjectPrompts(cameras={0: CameraPrompt(points=[[20, 40]], labels=[1])}),
    ]
    cfg = tiny.config
    with torch.inference_mode():
        f = _frame(tiny)
        tokens = tiny.condition_on_memory(f, [None] * 3)
        try:
            cfg.cross_modal_selection = 0.0
            released = tiny._decode_group(f, *tokens, prompts, [True] * 3, True)
            cfg.cross_modal_selection = 1.0
            joint = tiny._decode_group(f, *tokens, prompts, [True] * 3, True)
            single = tiny._decode_group(f, *tokens, prompts, [True] * 3, False)
        finally:
            cfg.cross_modal_selection = 0.0
    r_img, r_lid = released["img"][0], released["pts"][0]
    # The released rule: the highest predicted IoU per view.
    assert r_img.best_index.tolist() == r_img.ious.argmax(-1).tolist()
    assert r_lid.best_index.tolist() == r_lid.ious.argmax(-1).tolist()
    # The joint rule, recomputed here from the same decoder outputs.
    seen = point_pixels(f.lidar, f.image, cfg.image_size)
    per_point = lidar_point_logits(f.lidar, r_lid.raw_multimasks)
    agree = mask_agreement(r_img.raw_multimasks, per_point, seen[0])
    (want_img,), want_lid = select_jointly([r_img.ious], r_lid.ious, [agree], 1.0)
    j_img, j_lid = joint["img"][0], joint["pts"][0]
    assert j_img.best_index.tolist() == want_img.tolist()
    assert j_lid.best_index.tolist() == want_lid.tolist()
    rows = torch.arange(3)
    # The selected mask and the object pointer follow the choice.
    torch.testing.assert_close(j_img.low_res_masks[:, 0], j_img.low_res_multimasks[rows, want_img])
    torch.testing.assert_close(j_lid.low_res_masks[:, 0], j_lid.low_res_multimasks[rows, want_lid])
    # The object pointer comes from the chosen mask's token: where the choice is the released
    # one, the pointer is too; elsewhere it differs.
    # (With these weights the agreement changes two camera choices and no LiDAR one.)
    assert want_img.tolist() != r_img.best_index.tolist()
    for b in range(3):
        same = int(want_lid[b]) == int(r_lid.best_index[b])
        assert torch.equal(j_lid.obj_ptr[b], r_lid.obj_ptr[b]) == same
        same = int(want_img[b]) == int(r_img.best_index[b])
        assert torch.equal(j_img.obj_ptr[b], r_img.obj_ptr[b]) == same
    # Single-mask decoding has nothing to choose: unchanged by the switch.
    assert single["img"][0].best_index.tolist() == [0, 0, 0]


def test_official_config_keeps_the_released_rule() -> None:
    assert get_config("sam4d_hiera_s_mink34").cross_modal_selection == 0.0
    assert get_config("sam4d_small").cross_modal_selection == 1.0
    cfg = get_config("sam4d_tiny")
    cfg.cross_modal_selection = -1.0
    with pytest.raises(ValueError, match="cross_modal_selection"):
        cfg.validate()
