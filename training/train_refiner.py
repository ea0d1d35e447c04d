"""Train the boundary refiner (:class:`~sam4d_core.modeling.mask_refiner.MaskRefiner`).

    python -m training.train_refiner --out .build/refiner [--time-budget-s 1500] [--threads 2]
    cp .build/refiner/mask_refiner.pt sam4d_core/weights/mask_refiner_synthetic.pt

Data: camera images of synthetic drives (``bundled_sample``, training seeds, every other frame)
rendered once per run. A sample is one object's ground-truth mask corrupted the way the decoder
and the geometric refinement get masks wrong (:func:`corrupt_mask`: the mask seen through a
coarse grid and thresholded, spill onto a neighbouring object, blobs added or cut at the
boundary, a pixel or two of dilation, erosion or shift), cropped and resized around the corrupted
mask exactly as the tracker crops (:func:`~sam4d_core.tracking.boundary_refine.refine_window`),
and a ``patch`` x ``patch`` window of that crop, most of them on the boundary. Loss: binary
cross-entropy plus Dice on the window. Validation (validation seeds, fixed corruptions): the IoU
of the corrupted and of the refined masks with the ground truth, on whole crops, through
:func:`~sam4d_core.tracking.boundary_refine.refine_mask`.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from sam4d_core.evaluation.streaming_eval import EvalConfig
from sam4d_core.modeling.mask_refiner import MaskRefiner, MaskRefinerConfig, save_mask_refiner
from sam4d_core.tracking.boundary_refine import (
    BoundaryRefineConfig,
    refine_mask,
    refine_window,
    window_inputs,
)

TRAIN_SEEDS = (1000, 1060)
VAL_SEEDS = (900000, 900004)


@dataclass
class CameraSample:
    """One rendered camera image: ``image`` (H, W, 3) uint8, ``instances`` (H, W) int32 object
    ids (0: none), ``objects`` the ids worth refining (>= 30 pixels, not road-like, < 40 % of
    the image)."""

    image: np.ndarray
    instances: np.ndarray
    objects: list[int]


def render_seed(args: tuple[str, int, int, int]) -> list[CameraSample]:
    """The camera images of one synthetic sequence (every ``step``-th frame)."""
    from sam4d_core.data.synthetic import generate_sequence, make_config

    preset, seed, frames, step = args
    seq = generate_sequence(make_config(preset, seed=seed, num_frames=frames))
    never = EvalConfig()  # the classes never prompted (road, sidewalk, lane markings, ...)
    out = []
    for fr in seq.frames[::step]:
        sem = {i: o.semantic for i, o in fr.objects.items()}
        for cam in fr.cameras.values():
            inst = np.asarray(cam.instance_mask, np.int32)
            ids, counts = np.unique(inst, return_counts=True)
            keep = [
                int(i)
                for i, c in zip(ids, counts, strict=True)
                if i > 0 and 30 <= c < 0.4 * inst.size and not never.blacklisted(sem.get(int(i)))
            ]
            if keep:
                out.append(CameraSample(np.ascontiguousarray(cam.image), inst, keep))
    return out


def render(
    seeds: tuple[int, int], workers: int, frames: int = 20, step: int = 2
) -> list[CameraSample]:
    jobs = [("bundled_sample", s, frames, step) for s in range(*seeds)]
    if workers <= 1:
        return [c for j in jobs for c in render_seed(j)]
    with ProcessPoolExecutor(workers) as ex:
        return [c for part in ex.map(render_seed, jobs) for c in part]


def _disc(shape: tuple[int, int], cy: int, cx: int, r: float) -> np.ndarray:
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def corrupt_mask(instances: np.ndarray, oid: int, rng: np.random.Generator) -> np.ndarray:
    """(H, W) bool: object ``oid``'s mask in ``instances`` ((H, W) ids) made wrong the way a
    stride-4 decoder and its refinement are: seen through a coarse grid (2.5-7 px cells, noisy)
    and thresholded, spilled onto a neighbour within a few pixels, a blob added or cut at the
    boundary, dilated / eroded / shifted by a pixel or two. Never empty."""
    gt = instances == oid
    h, w = gt.shape
    ys, xs = np.nonzero(gt)
    side = max(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)
    out = gt.copy()
    if rng.random() < 0.85:
        f = rng.uniform(2.5, 7.0)
        small = cv2.resize(
            gt.astype(np.float32),
            (max(1, round(w / f)), max(1, round(h / f))),
            interpolation=cv2.INTER_AREA,
        )
        small += rng.normal(0.0, rng.uniform(0.0, 0.2), small.shape).astype(np.float32)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > rng.uniform(0.3, 0.7)
    edge = cv2.morphologyEx(gt.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
    ey, ex = np.nonzero(edge)
    if rng.random() < 0.4:
        ring = cv2.dilate(gt.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        near = np.unique(instances[ring & ~gt])
        near = near[(near > 0) & (near != oid)]
        if len(near):
            other = instances == rng.choice(near)
            d = rng.uniform(2.0, 20.0)
            dist = cv2.distanceTransform((~gt).astype(np.uint8), cv2.DIST_L2, 3)
            out |= other & (dist <= d)
    for add in (True, False):
        if len(ey) and rng.random() < 0.3:
            k = rng.integers(len(ey))
            disc = _disc((h, w), ey[k], ex[k], max(2.0, rng.uniform(0.05, 0.25) * side))
            out = (out | disc) if add else (out & ~disc)
    if rng.random() < 0.25:
        r = int(rng.integers(1, 3))
        kern = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
        op = cv2.dilate if rng.random() < 0.5 else cv2.erode
        out = op(out.astype(np.uint8), kern) > 0
    if rng.random() < 0.15:
        out = np.roll(out, (int(rng.integers(-2, 3)), int(rng.integers(-2, 3))), (0, 1))
    return out if out.any() else gt


def crop_sample(
    cam: CameraSample, oid: int, rng: np.random.Generator, config: BoundaryRefineConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(image (h, w, 3) uint8, corrupted mask (h, w) float32, ground truth (h, w) float32) of one
    object, cropped and resized as the tracker would around the corrupted mask."""
    coarse = corrupt_mask(cam.instances, oid, rng)
    window = refine_window(coarse, config)
    if window is None:
        return None
    img, m = window_inputs(cam.image, coarse, window)
    _, gt = window_inputs(cam.image, cam.instances == oid, window)
    return img, m, (gt >= 0.5).astype(np.float32)


def patch_batch(
    cams: list[CameraSample],
    n: int,
    patch: int,
    rng: np.random.Generator,
    config: BoundaryRefineConfig,
) -> tuple[torch.Tensor, ...]:
    """(image (n, 3, P, P), mask (n, 1, P, P), target (n, 1, P, P), valid (n, 1, P, P)) of ``n``
    random samples, windows of ``patch`` pixels, 80 % centred on a boundary pixel."""
    imgs = np.zeros((n, patch, patch, 3), np.float32)
    masks = np.zeros((n, patch, patch), np.float32)
    gts = np.zeros((n, patch, patch), np.float32)
    valid = np.zeros((n, patch, patch), np.float32)
    k = 0
    while k < n:
        cam = cams[rng.integers(len(cams))]
        s = crop_sample(cam, int(rng.choice(cam.objects)), rng, config)
        if s is None:
            continue
        img, m, gt = s
        h, w = gt.shape
        edge = (
            cv2.morphologyEx(gt.astype(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)) > 0
        ) | ((m >= 0.5) != (gt >= 0.5))
        ey, ex = np.nonzero(edge)
        if len(ey) and rng.random() < 0.8:
            j = rng.integers(len(ey))
            cy, cx = int(ey[j]), int(ex[j])
        else:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0 = int(np.clip(cy - patch // 2, 0, max(h - patch, 0)))
        x0 = int(np.clip(cx - patch // 2, 0, max(w - patch, 0)))
        ph, pw = min(patch, h - y0), min(patch, w - x0)
        imgs[k, :ph, :pw] = img[y0 : y0 + ph, x0 : x0 + pw] / 255.0
        masks[k, :ph, :pw] = m[y0 : y0 + ph, x0 : x0 + pw]
        gts[k, :ph, :pw] = gt[y0 : y0 + ph, x0 : x0 + pw]
        valid[k, :ph, :pw] = 1.0
        k += 1
    return (
        torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous(),
        torch.from_numpy(masks)[:, None],
        torch.from_numpy(gts)[:, None],
        torch.from_numpy(valid)[:, None],
    )


def loss_fn(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy plus Dice over the valid pixels."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = (bce * valid).sum() / valid.sum().clamp(min=1)
    p = torch.sigmoid(logits) * valid
    inter = (p * target).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1) / (p.flatten(1).sum(1) + (target * valid).flatten(1).sum(1) + 1)
    return bce + dice.mean()


def validate(
    model: MaskRefiner, cams: list[CameraSample], config: BoundaryRefineConfig, n: int = 400
) -> dict[str, float]:
    """Mean IoU with the ground truth of ``n`` fixed corrupted masks, before and after."""
    rng = np.random.default_rng(123)
    model.eval()
    before, after = [], []
    for _ in range(n):
        cam = cams[rng.integers(len(cams))]
        oid = int(rng.choice(cam.objects))
        gt = cam.instances == oid
        coarse = corrupt_mask(cam.instances, oid, rng)
        ref = refine_mask(model, cam.image, coarse, config)
        before.append((coarse & gt).sum() / max(1, (coarse | gt).sum()))
        after.append((ref & gt).sum() / max(1, (ref | gt).sum()))
    model.train()
    return {"iou_before": float(np.mean(before)), "iou_after": float(np.mean(after))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--out", required=True, help="output folder (mask_refiner.pt, log.jsonl)")
    ap.add_argument("--train-seeds", type=int, nargs=2, default=TRAIN_SEEDS)
    ap.add_argument("--val-seeds", type=int, nargs=2, default=VAL_SEEDS)
    ap.add_argument("--steps", type=int, default=100000, help="upper bound on steps")
    ap.add_argument("--time-budget-s", type=float, default=1500.0, help="training wall clock")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=96)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2, help="rendering processes")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    train = render(tuple(a.train_seeds), a.workers)
    val = render(tuple(a.val_seeds), a.workers)
    print(
        f"rendered {len(train)} training / {len(val)} validation images in {time.time() - t0:.0f} s"
    )
    config = BoundaryRefineConfig()
    model = MaskRefiner(MaskRefinerConfig()).to(a.device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=1e-4)
    rng = np.random.default_rng(a.seed)
    log = open(out / "log.jsonl", "w")
    start, step, losses = time.time(), 0, []
    while step < a.steps and time.time() - start < a.time_budget_s:
        frac = min((time.time() - start) / a.time_budget_s, 1.0)
        for g in opt.param_groups:  # cosine over the wall-clock budget
            g["lr"] = a.lr * 0.5 * (1 + math.cos(math.pi * frac))
        batch = [t.to(a.device) for t in patch_batch(train, a.batch, a.patch, rng, config)]
        loss = loss_fn(model(batch[0], batch[1]), batch[2], batch[3])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % 100 == 0:
            rec = {
                "step": step,
                "s": round(time.time() - start, 1),
                "loss": float(np.mean(losses[-100:])),
            }
            print(json.dumps(rec), flush=True)
            log.write(json.dumps(rec) + "\n")
            log.flush()
        if step % 1000 == 0:
            save_mask_refiner(model, str(out / "mask_refiner.pt"), {"step": step})
    metrics = validate(model, val, config)
    meta = {
        "steps": step,
        "train_s": round(time.time() - start, 1),
        "train_seeds": list(a.train_seeds),
        "val": metrics,
        "threads": a.threads,
        "device": a.device,
    }
    save_mask_refiner(model, str(out / "mask_refiner.pt"), meta)
    print(json.dumps(meta))
    log.write(json.dumps(meta) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
