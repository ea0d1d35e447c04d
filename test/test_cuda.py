"""The CUDA paths: the tracker and the training loop on a GPU (skipped where there is none).

Everything else in the suite runs on the CPU. Here the same code runs on CUDA: the bundled
model's streaming tracker gives the CPU's results (fp32 with TF32 off, so the two devices compute
the same arithmetic up to summation order), and training runs AMP steps (bf16 where the GPU
supports it, else fp16 with loss scaling) and resumes from a checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.tracking.records import ImagePrompt, LidarPrompt, ObjectPrompt
from sam4d_core.tracking.streaming_tracker import StreamingTracker
from sam4d_core.weights import bundled_model_path

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT))  # the repository's training/ package

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: torch.cuda.is_available() is False on this machine",
)


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 matmuls and convolutions round to 10 mantissa bits: off, to compare with the CPU."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _prompts(frame) -> list[ObjectPrompt]:
    """A LiDAR click on the object with the most points, an image click on the one with the
    most pixels of the first camera."""
    ids, counts = np.unique(frame.point_labels[frame.point_labels > 0], return_counts=True)
    obj = int(ids[np.argmax(counts)])
    xyz = frame.points[frame.point_labels == obj][:1, :3].astype(np.float64)
    cam_name, cam = next(iter(frame.cameras.items()))
    ids, counts = np.unique(cam.instance_mask[cam.instance_mask > 0], return_counts=True)
    vs, us = np.nonzero(cam.instance_mask == int(ids[np.argmax(counts)]))
    k = len(us) // 2
    click = np.array([[float(us[k]), float(vs[k])]])
    return [
        ObjectPrompt(1, lidar=LidarPrompt(points=xyz, labels=np.array([1]))),
        ObjectPrompt(2, image=[ImagePrompt(cam_name, points=click, labels=np.array([1]))]),
    ]


def test_tracker_on_cuda_gives_the_cpus_results() -> None:
    seq = generate_sequence(make_config("tiny", num_frames=4))
    cpu = StreamingTracker(build_sam4d(checkpoint=bundled_model_path()))
    gpu = StreamingTracker(build_sam4d(checkpoint=bundled_model_path(), device="cuda"))
    assert gpu.device.type == "cuda"
    prompts = _prompts(seq[0])
    for tracker in (cpu, gpu):
        tracker.step(seq[0])
    results = [(cpu.add_prompts(prompts), gpu.add_prompts(prompts))]
    results += [(cpu.step(f), gpu.step(f)) for f in seq.frames[1:]]
    for a, b in results:
        by_id = {o.object_id: o for o in b.objects}
        assert sorted(by_id) == sorted(o.object_id for o in a.objects) == [1, 2]
        for oa in a.objects:
            ob = by_id[oa.object_id]
            np.testing.assert_allclose(oa.point_scores, ob.point_scores, atol=2e-3)
            assert oa.presence_score == pytest.approx(ob.presence_score, abs=2e-3)
            assert oa.image_masks.keys() == ob.image_masks.keys()
            for cam, m in oa.image_masks.items():
                # Thresholded upsampled logits: allow the odd pixel sitting on the threshold.
                assert (m == ob.image_masks[cam]).mean() > 0.999, cam


def test_training_on_cuda_with_amp_resumes(tmp_path) -> None:
    from training.config import apply_overrides, load_train_config
    from training.train import Trainer

    cfg = apply_overrides(load_train_config("tiny_test"), ["steps=3", "ckpt_every=2"])
    a = Trainer(cfg, tmp_path / "a", "cuda", quiet=True)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert a.amp_dtype == expected  # optim.amp: auto
    assert a.scaler.is_enabled() == (expected == torch.float16)
    assert all(p.is_cuda for p in a.model.parameters())
    ra = a.fit()
    assert [r.step for r in ra] == [1, 2, 3]
    assert all(np.isfinite(r.loss) for r in ra), ra
    b = Trainer(cfg, tmp_path / "b", "cuda", quiet=True)
    rb = b.fit(resume=tmp_path / "a" / "checkpoints" / "step_0000002.pt")
    # Same step from the same state; CUDA's atomic scatter-adds may reorder sums.
    assert rb[0].loss == pytest.approx(ra[2].loss, rel=1e-3)
