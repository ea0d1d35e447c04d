"""Regression fixture of the official config in exact-release mode: a seeded random state dict, a
small fixed input (two sweeps of 300 points on a 1 cm grid with ego motion between them, one
48 x 64 image on the first: Hiera-S at 768 x 768 costs ~20 s per image on two CPU cores), and the
LiDAR point logits and image mask logits it produced, stored in
``test/data/official_regression.npz``. The test fails when they change.

If a change is meant to alter these numbers (or the model's initialisation order changes), look
at why, then regenerate: ``test/env/ros_env.sh python test/test_official_regression.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from sam4d_core.modeling.configs import get_config
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.modeling.records import ObjectMemoryInput
from sam4d_core.modeling.sam4d_base import SAM4D

FIXTURE = Path(__file__).parent / "data" / "official_regression.npz"
K = np.array([[40.0, 0.0, 32.0], [0.0, 40.0, 24.0], [0.0, 0.0, 1.0]])
# Camera looking along +x of the LiDAR (camera z forward, x right, y down).
CAM_FROM_LIDAR = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.2], [1.0, 0.0, 0.0, -0.3], [0.0, 0.0, 0.0, 1.0]]
)


def _pose(yaw: float, t: list[float]) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    p = np.eye(4)
    p[:2, :2] = [[c, -s], [s, c]]
    p[:3, 3] = t
    return p


def _inputs(frame: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(100 + frame)
    img = rng.integers(0, 256, (12, 16, 3)).astype(np.float32)
    img = np.kron(img, np.ones((4, 4, 1)))  # blocky, so resizing matters
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    xyz = rng.uniform([2.0, -6.0, -1.5], [14.0, 6.0, 1.0], size=(300, 3))
    xyz[:150] = rng.normal([7.0, 0.5, 0.0], 0.6, size=(150, 3))  # an object to segment
    return img, np.round(xyz, 2).astype(np.float32)  # a 1 cm grid, as stored clouds often are


def run() -> dict[str, np.ndarray]:
    """The two-frame run of the seeded official model (exact-release mode)."""
    cfg = get_config("sam4d_hiera_s_mink34")
    assert cfg.exact_release
    torch.manual_seed(0)
    model = SAM4D(cfg).eval()
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        img0, pts0 = _inputs(0)
        f0 = model.encode_frame([img0], [K], [CAM_FROM_LIDAR], pts0, pose=_pose(0.0, [0, 0, 0]))
        prompt = ObjectPrompts(
            cameras={0: CameraPrompt(points=[[33.0, 22.0]], labels=[1])},
            lidar=LidarPrompt(points=[[7.0, 0.5, 0.0]], labels=[1]),
        )
        o0 = model.track_step(f0, [prompt])
        mem0 = model.encode_memory(f0, o0)[0]
        _, pts1 = _inputs(1)
        f1 = model.encode_frame(
            [None], [K], [CAM_FROM_LIDAR], pts1, pose=_pose(0.05, [0.8, 0.1, 0.0])
        )
        o1 = model.track_step(f1, [None], [ObjectMemoryInput([(mem0, 1)], [(mem0, 1)], 8)])
        for t, o in enumerate((o0, o1)):
            out[f"point_logits_{t}"] = o.lidar.point_logits[0].float().numpy()
            out[f"voxel_logits_{t}"] = o.lidar.voxel_logits[0].float().numpy()
            out[f"object_score_{t}"] = o.lidar.object_score_logits[:1].float().numpy()
        out["image_logits_0"] = o0.image.mask_logits[0, 0].float().numpy()
    return out


def test_official_exact_release_logits_unchanged() -> None:
    expected = np.load(FIXTURE)
    got = run()
    assert sorted(got) == sorted(expected.files)
    for key, value in got.items():
        ref = expected[key]
        assert value.shape == ref.shape, key
        # Summation order differs between CPUs (AVX2 / AVX-512) by ~1e-6 relative.
        scale = float(np.abs(ref).max()) + 1e-6
        err = float(np.abs(value - ref).max())
        assert err <= 1e-4 * scale, f"{key}: max abs difference {err:.3g} (scale {scale:.3g})"


if __name__ == "__main__":
    result = run()
    np.savez_compressed(FIXTURE, **result)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes):", file=sys.stderr)
    for k, v in result.items():
        print(f"  {k} {v.shape} range [{v.min():.4g}, {v.max():.4g}]", file=sys.stderr)
