"""A prompted camera's mask carried into an overlapping camera (``sam4d_core.tracking.overlap``):
the synthetic rig's ``front`` and ``front_left`` cameras (0.32 m apart, 55 degrees of yaw), a
wall patch in their overlap; the tracker carrying a held-out object's mask across."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.data.synthetic.camera import CameraConfig, PinholeCamera
from sam4d_core.evaluation.first_frame_prompts import make_first_frame_prompt
from sam4d_core.tracking.mask_refine import MaskRefineConfig
from sam4d_core.tracking.overlap import carry_mask, mask_depth
from sam4d_core.tracking.reprompt import CameraGeometry, project_points, transform_points
from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig


def _geometry(slot: int, cfg: CameraConfig) -> CameraGeometry:
    cam = PinholeCamera(cfg)
    return CameraGeometry(slot, cam.K, cam.cam_from_lidar, (cfg.height, cfg.width))


FRONT = _geometry(0, CameraConfig("front", 480, 288, 90.0, position=(0.3, 0.0, -0.35)))
LEFT = _geometry(
    1, CameraConfig("front_left", 480, 288, 90.0, position=(0.2, 0.3, -0.35), yaw_deg=55.0)
)


def _seen(points: np.ndarray, cam: CameraGeometry) -> np.ndarray:
    """(H, W) bool: pixels a dense set of (M, 3) LiDAR-frame points lands on."""
    uv, front = project_points(points, cam)
    h, w = cam.size
    uv = np.round(uv[front]).astype(int)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < w) & (uv[:, 1] >= 0) & (uv[:, 1] < h)
    out = np.zeros((h, w), bool)
    out[uv[ok, 1], uv[ok, 0]] = True
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_a_wall_in_the_overlap_is_carried_to_the_other_camera() -> None:
    # A 3 m x 4 m patch 30 m away at 25 degrees left: inside both cameras (10-45 degrees).
    yaw = np.deg2rad(25.0)
    centre = 30.0 * np.array([np.cos(yaw), np.sin(yaw), 0.0])
    side = np.array([-np.sin(yaw), np.cos(yaw), 0.0])
    s, t = np.meshgrid(np.linspace(-1.5, 1.5, 300), np.linspace(-1.0, 3.0, 400))
    wall = centre + s.reshape(-1, 1) * side + t.reshape(-1, 1) * np.array([0.0, 0.0, 1.0])
    in_left, in_front = _seen(wall, LEFT), _seen(wall, FRONT)
    assert in_left.sum() > 200 and in_front.sum() > 200
    depth = mask_depth(in_left, LEFT, wall[::50], default=50.0)
    z = transform_points(LEFT.cam_from_lidar, centre[None])[0, 2]  # 30 m at 30 deg off its axis
    assert abs(depth - z) < 0.5
    assert _iou(carry_mask(in_left, LEFT, FRONT, depth), in_front) > 0.85
    # A wrong depth moves it by a pixel or two at this range, not off the object.
    assert _iou(carry_mask(in_left, LEFT, FRONT, 60.0), in_front) > 0.6
    # Nothing to carry, or a camera that does not see the place: empty.
    assert not carry_mask(np.zeros_like(in_left), LEFT, FRONT, depth).any()
    behind = CameraGeometry(2, FRONT.intrinsics, FRONT.cam_from_lidar @ _yaw(np.pi), FRONT.size)
    assert not carry_mask(in_left, LEFT, behind, depth).any()
    assert mask_depth(in_left, LEFT, np.zeros((0, 3)), default=50.0) == 50.0


def _yaw(a: float) -> np.ndarray:
    T = np.eye(4)
    T[:2, :2] = [[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]
    return T


BUNDLED = Path(__file__).resolve().parents[1] / "sam4d_core/weights/sam4d_small_synthetic.pt"


@pytest.mark.skipif(not BUNDLED.is_file(), reason=f"bundled model missing: {BUNDLED}")
def test_a_building_clicked_at_one_cameras_edge_is_masked_in_the_other() -> None:
    """A held-out distant building clicked at the right edge of ``front_left`` (seed 950023,
    object 19): the LiDAR sees 4 points of it in ``front``, where the decoder's mask is empty.
    Guided by 5 points or more only, ``front`` has no mask; carried across from ``front_left``
    it covers the part both cameras see; so it does with the default settings (guided by any
    point, then carried across, fewer than ``image_min_points`` being seen)."""
    seq = generate_sequence(make_config("bundled_sample", seed=950023, num_frames=20))
    first = make_first_frame_prompt(seq.frames[0], 19, "1click", "img", frame_index=0)
    assert first.camera == "front_left"
    prompt = first.to_object_prompt()
    prompt.object_id = 1
    model = build_sam4d(checkpoint=str(BUNDLED), device="cpu").eval()
    gt = seq.frames[0].cameras["front"].instance_mask == 19
    masks = {}
    for name, refine in (
        ("alone", MaskRefineConfig(carry_across=False, image_guide_min_points=5)),
        ("carried", MaskRefineConfig(image_guide_min_points=5)),
        ("default", MaskRefineConfig()),
    ):
        cfg = TrackerConfig(
            reprompt=True,
            refine_masks=True,
            lift_image_clicks=True,
            zoom=True,
            boundary_refine=True,
            mask_refine_config=refine,
        )
        tr = StreamingTracker(model, cfg)
        tr.step(seq.frames[0])
        masks[name] = tr.add_prompts([prompt]).objects[0].image_masks["front"]
    assert gt.sum() > 1000 and not masks["alone"].any()
    for name in ("carried", "default"):
        m = masks[name]
        assert (m & gt).sum() > 0.3 * gt.sum() and (m & gt).sum() > 0.85 * m.sum(), name
