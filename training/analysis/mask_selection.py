"""How much of the prompted frame is lost choosing among the 3 multimask outputs?

    python -m training.analysis.mask_selection \
        --checkpoint sam4d_core/weights/sam4d_small_synthetic.pt --clips 12 48 --gains 0,1

On one click the decoder heads predict 3 masks per view and one is kept. This tool prompts every
object of the validation clips (a run config's held-out frames, :func:`training.validation.
validation_dataset`, one frame per clip) with one centre click, in the camera and separately in
the LiDAR, and scores per prompt modality and per view:

- ``chosen``: the mask the model keeps, for each gain of ``cross_modal_selection`` asked for
  (0: each view's highest predicted IoU, as released; > 0: camera and LiDAR chosen together,
  :mod:`sam4d_core.modeling.cross_modal_selection`);
- ``oracle``: the best of the 3 against the ground truth (what a perfect choice would reach).

IoU as :func:`training.validation.frame_ious` (image at the camera's size, pooled over cameras;
LiDAR without ignored points; objects whose prediction and ground truth are both empty are
skipped), the mean over objects.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.evaluation.metrics import iou_counts
from sam4d_core.modeling.prompts import ObjectPrompts
from sam4d_core.modeling.sam4d_base import SAM4D, upsample_mask_logits
from sam4d_core.modeling.sparse import devoxelize

from ..clip_forward import decode_all_outputs
from ..config import PromptConfig, load_train_config
from ..datasets import ClipDataset, ClipSample
from ..prompt_simulation import LIDAR, initial_prompt
from ..validation import validation_dataset

MODALITIES = ("image", "lidar")


def score_frame(
    model: SAM4D, sample: ClipSample, modality: str, gains: list[float]
) -> list[dict[str, float | None]]:
    """Per object prompted in ``modality`` (one centre click on frame 0): the chosen image /
    LiDAR IoU for every gain and the oracle of the 3 outputs."""
    cfg = PromptConfig(prob_mask=0.0, click_mode="center")
    tg = sample.targets[0]
    rng = np.random.default_rng(0)
    states = [
        initial_prompt(sample, b, cfg, rng, modality=modality, kind="click", num_clicks=1)
        for b in range(sample.num_objects)
    ]
    keep = [
        b
        for b, st in enumerate(states)
        if st.view is not None and (st.view == LIDAR) == (modality == "lidar")
    ]
    prompts = [st.to_prompts(None, None) or ObjectPrompts() for st in states]
    features = model.encode_frame(**sample.model_inputs(0))
    tokens = model.condition_on_memory(features, [None] * sample.num_objects)
    multimask = torch.ones(sample.num_objects, dtype=torch.bool)
    rows: dict[int, dict[str, float | None]] = {b: {} for b in keep}
    saved = model.config.cross_modal_selection
    try:
        for gi, gain in enumerate(gains):
            model.config.cross_modal_selection = gain
            res = decode_all_outputs(
                model, features, *tokens, prompts, multimask, [True] * sample.num_objects
            )
            (group,) = res.groups
            pos = {int(b): r for r, b in enumerate(group.rows.tolist())}
            for b in keep:
                r = pos[b]
                img = [[0, 0] for _ in range(4)]  # (inter, union): chosen, then masks 0..2
                any_gt = False
                assert features.image is not None
                for ci, slot in enumerate(features.image.camera_ids):
                    gt = tg.camera_masks[slot]
                    if gt is None:
                        continue
                    any_gt = True
                    out = group.image[ci]
                    up = upsample_mask_logits(
                        out.low_res_multimasks[r], features.image.camera_sizes[ci]
                    )
                    masks = (up > 0).numpy()
                    for k, m in enumerate([masks[int(out.best_index[r])], *masks]):
                        i, u = iou_counts(m, gt[b])
                        img[k][0] += i
                        img[k][1] += u
                iou_img = [i / u if any_gt and u > 0 else None for i, u in img]
                iou_lid: list[float | None] = [None] * 4
                if group.lidar is not None and tg.point_masks is not None:
                    lid = features.lidar
                    assert lid is not None
                    logits = devoxelize(
                        group.lidar.low_res_multimasks[r].float().t(),
                        lid.devox_rows,
                        lid.devox_weights,
                    ).t()
                    masks = (logits > 0).numpy() & tg.point_valid
                    gt = tg.point_masks[b] & tg.point_valid
                    best = int(group.lidar.best_index[r])
                    for k, m in enumerate([masks[best], *masks]):
                        i, u = iou_counts(m, gt)
                        iou_lid[k] = i / u if u > 0 else None
                rows[b][f"image_chosen_g{gain:g}"] = iou_img[0]
                rows[b][f"lidar_chosen_g{gain:g}"] = iou_lid[0]
                if gi == 0:
                    for name, vals in (("image", iou_img[1:]), ("lidar", iou_lid[1:])):
                        got = [v for v in vals if v is not None]
                        rows[b][f"{name}_oracle"] = max(got) if got else None
    finally:
        model.config.cross_modal_selection = saved
    return [rows[b] for b in keep]


def measure(
    model: SAM4D, dataset: ClipDataset, clips: range, gains: list[float]
) -> dict[str, dict[str, float]]:
    """{prompt modality: {"<view>_<chosen_g<gain>|oracle>": mean IoU, ..., "objects": n}}."""
    model.eval()
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad():
        for modality in MODALITIES:
            per_key: dict[str, list[float]] = {}
            n = 0
            for g in clips:
                for row in score_frame(model, dataset.sample(g), modality, gains):
                    n += 1
                    for k, v in row.items():
                        if v is not None:
                            per_key.setdefault(k, []).append(v)
            out[modality] = {k: float(np.mean(v)) for k, v in sorted(per_key.items())}
            out[modality]["objects"] = float(n)
    return out


def format_table(result: dict[str, dict[str, float]], gains: list[float]) -> str:
    """Markdown: one row per prompt modality and view, the chosen mask per gain and the oracle."""
    head = ["click in", "mask in", *[f"chosen, gain {g:g}" for g in gains], "oracle of 3"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "--:|" * (len(gains) + 1)]
    for modality, vals in result.items():
        for view in ("image", "lidar"):
            cells = [vals.get(f"{view}_chosen_g{g:g}") for g in gains] + [
                vals.get(f"{view}_oracle")
            ]
            text = ["-" if c is None else f"{c:.3f}" for c in cells]
            lines.append(f"| {modality} | {view} | " + " | ".join(text) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.analysis.mask_selection",
        description="Prompted-frame IoU of the chosen multimask output (per cross-modal gain) "
        "against the best of the 3.",
    )
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument(
        "--config",
        default="sam4d_small_synthetic",
        help="training config whose validation clips are used (default: the bundled recipe)",
    )
    p.add_argument(
        "--clips", nargs=2, type=int, default=(0, 12), metavar=("FIRST", "END"), help="clip range"
    )
    p.add_argument("--gains", default="0,1", help="comma-separated cross_modal_selection gains")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    gains = [float(x) for x in args.gains.split(",")]
    if any(g < 0 for g in gains):
        p.error("gains must be >= 0")
    dataset = validation_dataset(load_train_config(args.config), clip_length=1)
    model = build_sam4d(checkpoint=str(args.checkpoint), device="cpu")
    result = measure(model, dataset, range(*args.clips), gains)
    print(format_table(result, gains))
    print("objects: " + ", ".join(f"{m} {int(v['objects'])}" for m, v in result.items()))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


__all__ = ["format_table", "measure", "score_frame"]


if __name__ == "__main__":
    sys.exit(main())
