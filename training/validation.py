"""Validation during training: mIoU on held-out clips tracked from a first-frame prompt.

    python -m training.validation --config sam4d_small_synthetic \
        --checkpoint sam4d_core/weights/sam4d_small_synthetic.pt --clip-length 1 --clips 12

(the same numbers as a run's validation, for any checkpoint; ``--clip-length 1`` scores the
prompted frame alone; ``--prompt mask`` prompts with the ground-truth mask, so the tracked frames
measure propagation through memory alone, apart from how well a click is understood).

Each object of a clip gets one click on the first frame (``"center"`` mode, SAM's evaluation
click) alternately in a camera (even object index) and in the LiDAR (odd), falling back to the
other modality when it is not visible there; no corrections; the rest is propagated by memory.
Per object and modality, the IoU of each frame where the ground truth or the prediction is
non-empty is averaged over frames (frames where both are empty are skipped; the image IoU of a
frame pools the pixels of all cameras with ground truth; the LiDAR IoU excludes ignored points);
mIoU is the mean over objects. Reported overall and by prompt modality (same-modality and
cross-modal cases), over all frames, over the prompted frame alone and over the tracked frames
alone (after the prompted one: a 20-frame mean hides whether the click was understood and whether
anything propagates). This is a monitoring signal; the paper-style
evaluation is separate.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.modeling.sam4d_base import SAM4D

from .clip_forward import FramePrediction, run_clip
from .config import PromptConfig, TrainConfig, load_train_config
from .datasets import ClipDataset, ClipSample, FrameTargets, build_dataset
from .prompt_simulation import LIDAR, ClipPlan, initial_prompt

VALIDATION_PROMPTS = ("click", "mask")
"""First-frame prompts :func:`validate` takes."""


def frame_ious(
    pred: FramePrediction, tg: FrameTargets, b: int
) -> tuple[float | None, float | None]:
    """(image IoU, LiDAR IoU) of object ``b`` on one frame; None where both masks are empty or
    the view has no ground truth."""
    inter = union = 0
    any_gt = False
    for slot, gt in enumerate(tg.camera_masks):
        p = pred.cameras[slot] if slot < len(pred.cameras) else None
        if gt is None or p is None:
            continue
        any_gt = True
        inter += int((gt[b] & p[b]).sum())
        union += int((gt[b] | p[b]).sum())
    img = inter / union if any_gt and union > 0 else None
    lid = None
    if tg.point_masks is not None and pred.points is not None:
        v = tg.point_valid
        g, p = tg.point_masks[b] & v, pred.points[b] & v
        u = int((g | p).sum())
        lid = int((g & p).sum()) / u if u > 0 else None
    return img, lid


def object_frame_ious(
    sample: ClipSample, preds: list[FramePrediction]
) -> list[list[tuple[float | None, float | None]]]:
    """Per object, per frame (image IoU, LiDAR IoU) (:func:`frame_ious`)."""
    pairs = list(zip(preds, sample.targets, strict=True))
    return [[frame_ious(pred, tg, b) for pred, tg in pairs] for b in range(sample.num_objects)]


def mean_ious(
    per_frame: list[list[tuple[float | None, float | None]]],
    first_frame: int = 0,
    end_frame: int | None = None,
) -> list[tuple[float | None, float | None]]:
    """Per object (mean image IoU, mean LiDAR IoU) over frames ``first_frame`` to ``end_frame``
    (exclusive; None: the last) (None: no frame with a score)."""
    out = []
    for frames in per_frame:
        span = frames[first_frame:end_frame]
        imgs = [i for i, _ in span if i is not None]
        lids = [j for _, j in span if j is not None]
        out.append((float(np.mean(imgs)) if imgs else None, float(np.mean(lids)) if lids else None))
    return out


def clip_object_ious(
    sample: ClipSample, preds: list[FramePrediction], first_frame: int = 0
) -> list[tuple[float | None, float | None]]:
    """Per object (mean image IoU, mean LiDAR IoU) over the clip's frames from ``first_frame``
    on (None: no frame)."""
    return mean_ious(object_frame_ious(sample, preds), first_frame)


def validate(
    model: SAM4D,
    dataset: ClipDataset,
    num_clips: int,
    seed: int = 0,
    prompt: str = "click",
) -> dict[str, float]:
    """Runs ``num_clips`` clips (numbers 0..num_clips-1 of ``dataset``) in eval mode.

    Args:
        prompt: ``"click"`` (one centre click, the module docstring) or ``"mask"`` (the
            ground-truth mask in the same view, taken as the prompted frame's output as at
            inference: the tracked frames then show what memory alone propagates from a perfect
            first mask).

    Returns:
        ``image_miou``, ``lidar_miou`` (all prompts), ``{image,lidar}_miou_{img,lidar}_prompt``
        (by prompt modality: e.g. ``lidar_miou_img_prompt`` is the cross-modal 2D -> 3D case),
        ``objects``; for clips of more than one frame the same on the prompted frame alone,
        ``{image,lidar}_miou_prompted[_{img,lidar}_prompt]``, and over the frames after it,
        ``{image,lidar}_miou_tracked[_{img,lidar}_prompt]`` (what memory alone propagates).
    """
    if prompt not in VALIDATION_PROMPTS:
        raise ValueError(f"prompt must be one of {VALIDATION_PROMPTS}, got {prompt!r}")
    cfg = PromptConfig(
        prob_mask=0.0, click_mode="center", num_correction_frames=0, correction_clicks=0
    )
    was_training = model.training
    model.eval()
    rows: dict[str, list[float]] = {}
    n_obj = 0
    try:
        with torch.no_grad():
            for g in range(num_clips):
                sample = dataset.sample(g)
                rng = np.random.default_rng([seed, 3, g])
                initial = [
                    initial_prompt(
                        sample,
                        b,
                        cfg,
                        rng,
                        modality="image" if b % 2 == 0 else "lidar",
                        kind=prompt,
                        num_clicks=1,
                    )
                    for b in range(sample.num_objects)
                ]
                plan = ClipPlan(initial, [], {})
                res = run_clip(model, sample, plan, cfg, None, rng, record=True)
                per_frame = object_frame_ious(sample, res.predictions)
                scores = [("", mean_ious(per_frame))]
                if sample.num_frames > 1:
                    scores.append(("_prompted", mean_ious(per_frame, 0, 1)))
                    scores.append(("_tracked", mean_ious(per_frame, 1)))
                for b, st in enumerate(initial):
                    if st.view is None:
                        continue
                    n_obj += 1
                    src = "lidar" if st.view == LIDAR else "img"
                    for suffix, ious in scores:
                        for name, v in zip(("image", "lidar"), ious[b], strict=True):
                            if v is not None:
                                rows.setdefault(f"{name}_miou{suffix}", []).append(v)
                                rows.setdefault(f"{name}_miou{suffix}_{src}_prompt", []).append(v)
    finally:
        model.train(was_training)
    out = {k: float(np.mean(v)) for k, v in sorted(rows.items())}
    out["objects"] = float(n_obj)
    return out


def validation_dataset(cfg: TrainConfig, clip_length: int | None = None) -> ClipDataset:
    """A run's held-out clips: ``cfg.val.sources`` (else the training sources) cut like the
    training data, ``cfg.val.clip_length`` frames (or ``clip_length``), no augmentation, seeded
    apart from the training clips."""
    data = dataclasses.replace(
        cfg.data,
        clip_length=clip_length or cfg.val.clip_length,
        augment=dataclasses.replace(cfg.data.augment, enabled=False),
    )
    return build_dataset(cfg.val.sources or cfg.data.sources, data, cfg.seed + 1)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.validation",
        description="A training run's validation for any checkpoint: prints (and writes) the "
        "mIoUs as JSON.",
    )
    p.add_argument("--config", required=True, help="a training config (name or YAML)")
    p.add_argument("--checkpoint", required=True, type=Path, help="weights (our format)")
    p.add_argument("--clips", type=int, help="clips to run (default: the config's val.num_clips)")
    p.add_argument(
        "--clip-length", type=int, help="frames per clip (default: the config's val.clip_length)"
    )
    p.add_argument(
        "--prompt",
        choices=VALIDATION_PROMPTS,
        help="first-frame prompt: one centre click or the ground-truth mask (the tracked frames "
        "then measure propagation alone); default: the config's val.prompt (click)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_train_config(args.config)
    dataset = validation_dataset(cfg, args.clip_length)
    model = build_sam4d(checkpoint=str(args.checkpoint), device="cpu")
    out = validate(
        model, dataset, args.clips or cfg.val.num_clips, cfg.seed, args.prompt or cfg.val.prompt
    )
    text = json.dumps({k: round(v, 4) for k, v in out.items()}, indent=2)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


__all__ = [
    "VALIDATION_PROMPTS",
    "clip_object_ious",
    "frame_ious",
    "main",
    "mean_ious",
    "object_frame_ious",
    "validate",
    "validation_dataset",
]


if __name__ == "__main__":
    sys.exit(main())
