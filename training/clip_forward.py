"""One clip through SAM4D with gradients: SAM2's training ``forward_tracking`` for SAM4D.

Frames are processed in order. On each frame: encode (images of every camera, the sweep), select
each object's memories (:func:`~sam4d_core.modeling.memory_bank.select_memory_frames` with the
training rules: stride 1, pointers of future conditioning frames allowed), condition the tokens on
them (MCMA, once per frame), decode with the frame's prompts (first frame: the simulated initial
prompt; correction frames: then ``correction_clicks`` rounds that each add one corrective click
per object and decode again on the same memory-conditioned tokens, with the previous logits as
the dense mask prompt, as SAM2's ``_iter_correct_pt_sampling``), and encode the final prediction
into the object's memory (a conditioning memory on the first frame and on corrected frames).
Gradients flow through everything, memories included (back-propagation through time within the
clip, as SAM2).

The model's own :meth:`~sam4d_core.modeling.sam4d_base.SAM4D.track_step` keeps only the selected
mask of each view; the losses need all multimask outputs, so decoding here calls the model's
per-group decoder (``SAM4D._decode_group``) and assembles the same
:class:`~sam4d_core.modeling.records.TrackOutput` as ``SAM4D.decode`` from it (and uses
``SAM4D._apply_mask_as_output`` for ground-truth mask prompts). These are private methods of the
model: a change of their signatures must be mirrored here (the tests exercise the path).

Differences from SAM2 (documented choices): the previous logits fed back as dense prompts during
corrections are detached (less memory; SAM2 keeps them in the graph); corrective clicks are drawn
on the CPU from numpy copies of the predictions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from sam4d_core.modeling.decoding import allocate_decode_outputs
from sam4d_core.modeling.memory_bank import select_memory_frames
from sam4d_core.modeling.prompts import ObjectPrompts
from sam4d_core.modeling.records import (
    FrameFeatures,
    ImageOutput,
    LidarOutput,
    ObjectMemory,
    ObjectMemoryInput,
    TrackOutput,
)
from sam4d_core.modeling.sam import HeadOutput
from sam4d_core.modeling.sam4d_base import SAM4D, upsample_mask_logits
from sam4d_core.modeling.sparse import devoxelize

from .config import LossConfig, PromptConfig
from .datasets import ClipSample, FrameTargets
from .losses import LossAccumulator, ViewLossTerms, image_targets_for_logits, view_losses
from .prompt_simulation import ClipPlan, PromptState, corrective_click

# Dense mask prompts from previous logits are clamped as SAM2 does.
_PREV_LOGIT_CLAMP = 32.0


@dataclass
class DecodeGroup:
    """Decoder outputs of the objects ``rows`` (one multimask setting).

    Attributes:
        rows: (R,) int64 object indices.
        image: per present camera (``features.image.camera_ids`` order) the head output with all
            M masks.
        lidar: the LiDAR head output, or None.
        multimask: M == 3.
    """

    rows: torch.Tensor
    image: list[HeadOutput]
    lidar: HeadOutput | None
    multimask: bool


@dataclass
class DecodeResult:
    """A decoding of B objects: every output (for the losses) and the selected ones."""

    track: TrackOutput
    groups: list[DecodeGroup]


def decode_all_outputs(
    model: SAM4D,
    features: FrameFeatures,
    image_tokens: torch.Tensor | None,
    lidar_tokens: torch.Tensor | None,
    prompts: list[ObjectPrompts],
    multimask: torch.Tensor,
    dense: list[bool],
) -> DecodeResult:
    """``SAM4D.decode`` keeping every multimask output (see the module docstring).

    Args:
        image_tokens: (B, Ncam, C, h, w) memory-conditioned tokens or None; lidar_tokens:
            (B, N16, C) or None.
        prompts: per object (empty prompts for none).
        multimask: (B,) bool.
        dense: per object, give its mask prompts to the prompt encoders as dense prompts.
    """
    b = len(prompts)
    img, lid = features.image, features.lidar
    dev = model.device
    groups: list[DecodeGroup] = []
    (img_masks, img_ious, img_scores, img_ptrs, pts_vox, pts_ious, pts_scores, pts_ptr) = (
        allocate_decode_outputs(features, b, model.hidden_dim, dev)
    )
    for flag in (False, True):
        rows = [i for i in range(b) if bool(multimask[i]) == flag]
        if not rows:
            continue
        idx = torch.tensor(rows, device=dev)
        res = model._decode_group(
            features,
            None if image_tokens is None else image_tokens[idx],
            None if lidar_tokens is None else lidar_tokens[idx],
            [prompts[i] for i in rows],
            [dense[i] for i in rows],
            flag,
        )
        if img is not None:
            for ci, out in enumerate(res["img"]):
                img_masks[idx, ci] = out.low_res_masks[:, 0].float()  # type: ignore[index]
                sel = out.ious[torch.arange(len(rows), device=dev), out.best_index]
                img_ious[idx, ci] = sel.float()  # type: ignore[index]
                img_scores[idx, ci] = out.object_score_logits[:, 0].float()  # type: ignore[index]
                img_ptrs[idx, ci] = out.obj_ptr.to(img_ptrs.dtype)  # type: ignore[union-attr]
        lid_out = None
        if lid is not None:
            lid_out = res["pts"][0]
            pts_vox[idx] = lid_out.low_res_masks[:, 0].float()  # type: ignore[index]
            sel = lid_out.ious[torch.arange(len(rows), device=dev), lid_out.best_index]
            pts_ious[idx] = sel.float()  # type: ignore[index]
            pts_scores[idx] = lid_out.object_score_logits[:, 0].float()  # type: ignore[index]
            pts_ptr[idx] = lid_out.obj_ptr.to(pts_ptr.dtype)  # type: ignore[union-attr]
        groups.append(DecodeGroup(idx, list(res["img"]), lid_out, flag))

    image_out = lidar_out = None
    scores = []
    if img is not None:
        image_out = ImageOutput(img.camera_ids, img_masks, img_ious, img_scores, img_ptrs)  # type: ignore[arg-type]
        scores.append(img_scores.amax(dim=1))  # type: ignore[union-attr]
    if lid is not None:
        point_logits = devoxelize(pts_vox.t(), lid.devox_rows, lid.devox_weights).t()  # type: ignore[union-attr]
        lidar_out = LidarOutput(pts_vox, point_logits.contiguous(), pts_ious, pts_scores, pts_ptr)  # type: ignore[arg-type]
        scores.append(pts_scores)
    track = TrackOutput(
        image=image_out,
        lidar=lidar_out,
        object_score_logits=torch.stack(scores, dim=0).amax(dim=0),
        multimask=multimask.clone(),
        mask_as_output=torch.zeros(b, dtype=torch.bool),
    )
    return DecodeResult(track, groups)


# ---------------------------------------------------------------------------------------------
# Losses of one decoding.


def _sum_terms(parts: list[ViewLossTerms], num_objects: int) -> ViewLossTerms:
    return ViewLossTerms(
        focal=sum(p.focal for p in parts),  # type: ignore[arg-type]
        dice=sum(p.dice for p in parts),  # type: ignore[arg-type]
        iou=sum(p.iou for p in parts),  # type: ignore[arg-type]
        presence=sum(p.presence for p in parts),  # type: ignore[arg-type]
        num_objects=num_objects,
    )


def add_decoding_losses(
    acc: LossAccumulator,
    model: SAM4D,
    features: FrameFeatures,
    res: DecodeResult,
    targets: FrameTargets,
    weights: torch.Tensor,
    cfg: LossConfig,
) -> None:
    """Adds the losses of one decoding of B objects on one frame to ``acc``.

    ``weights``: (B,) 0 for objects whose output here was their own mask prompt.
    """
    dev = model.device
    b = res.track.num_objects
    img, lid = features.image, features.lidar
    if cfg.mask_loss_on not in ("raw", "sam2"):
        raise ValueError(f"unknown mask_loss_on {cfg.mask_loss_on!r} (raw, sam2)")

    def masks_of(out: HeadOutput) -> torch.Tensor:
        if cfg.mask_loss_on == "raw" and out.raw_multimasks is not None:
            return out.raw_multimasks
        return out.low_res_multimasks

    if img is not None:
        for ci, slot in enumerate(img.camera_ids):
            gt_np = targets.camera_masks[slot]
            if gt_np is None:
                continue
            gt = torch.from_numpy(gt_np).to(dev)
            parts = []
            for g in res.groups:
                out = g.image[ci]
                logits, tgt = image_targets_for_logits(masks_of(out), gt[g.rows], cfg.image_loss_at)
                parts.append(
                    view_losses(
                        logits,
                        tgt,
                        out.ious,
                        out.object_score_logits[:, 0],
                        cfg,
                        weights=weights[g.rows],
                    )
                )
            acc.add_image(_sum_terms(parts, b))
    if lid is not None and targets.point_masks is not None:
        gt = torch.from_numpy(targets.point_masks).to(dev)
        valid = torch.from_numpy(targets.point_valid).to(dev)
        parts = []
        for g in res.groups:
            out = g.lidar
            assert out is not None
            raw = masks_of(out)
            r, m, n4 = raw.shape
            vox = raw.reshape(r * m, n4).float()
            per_point = devoxelize(vox.t(), lid.devox_rows, lid.devox_weights).t()
            parts.append(
                view_losses(
                    per_point.reshape(r, m, -1),
                    gt[g.rows].float(),
                    out.ious,
                    out.object_score_logits[:, 0],
                    cfg,
                    valid=valid,
                    weights=weights[g.rows],
                )
            )
        acc.add_lidar(_sum_terms(parts, b))
    acc.end_decoding()


# ---------------------------------------------------------------------------------------------
# Predictions as numpy (corrective clicks, metrics).


@dataclass
class FramePrediction:
    """Binary predictions of B objects on one frame.

    Attributes:
        cameras: per camera slot (B, H, W) bool at the ground truth's (camera image) size, or None
            (camera absent).
        points: (B, N) bool, or None (no LiDAR).
    """

    cameras: list[np.ndarray | None]
    points: np.ndarray | None


def predictions(
    model: SAM4D, features: FrameFeatures, track: TrackOutput, num_slots: int
) -> FramePrediction:
    """Thresholded (logit > 0) selected masks, cameras at their image size."""
    cams: list[np.ndarray | None] = [None] * num_slots
    with torch.no_grad():
        if features.image is not None and track.image is not None:
            for ci, slot in enumerate(features.image.camera_ids):
                size = features.image.camera_sizes[ci]
                up = upsample_mask_logits(track.image.mask_logits[:, ci].detach(), size)
                cams[slot] = (up > 0).cpu().numpy()
        pts = None
        if track.lidar is not None:
            pts = (track.lidar.point_logits.detach() > 0).cpu().numpy()
    return FramePrediction(cams, pts)


# ---------------------------------------------------------------------------------------------
# The clip.


@dataclass
class ClipResult:
    """Result of :func:`run_clip`.

    Attributes:
        losses: the accumulated losses (None without ``compute_loss``).
        predictions: per frame the final binary predictions (with ``record``).
        initial: the first-frame prompt of each object (kind and view).
        decodings: decoder runs (frames + corrective rounds).
    """

    losses: LossAccumulator | None
    predictions: list[FramePrediction] = field(default_factory=list)
    initial: list[PromptState] = field(default_factory=list)
    decodings: int = 0


def _prompts_of(
    states: list[PromptState],
    track: TrackOutput | None,
    features: FrameFeatures,
    feed_back: list[bool],
) -> list[ObjectPrompts]:
    out = []
    for b, st in enumerate(states):
        prev_cam = prev_vox = None
        if track is not None and feed_back[b]:
            if track.image is not None and features.image is not None:
                prev_cam = {
                    slot: track.image.mask_logits[b, ci]
                    .detach()
                    .clamp(-_PREV_LOGIT_CLAMP, _PREV_LOGIT_CLAMP)
                    for ci, slot in enumerate(features.image.camera_ids)
                }
            if track.lidar is not None:
                prev_vox = (
                    track.lidar.voxel_logits[b]
                    .detach()
                    .clamp(-_PREV_LOGIT_CLAMP, _PREV_LOGIT_CLAMP)
                )
        p = st.to_prompts(prev_cam, prev_vox)
        out.append(p if p is not None else ObjectPrompts())
    return out


def _decode_frame(
    model: SAM4D,
    features: FrameFeatures,
    conditioned: tuple[torch.Tensor | None, torch.Tensor | None],
    prompts: list[ObjectPrompts],
    no_memory: list[bool],
    as_output: torch.Tensor,
) -> DecodeResult:
    """One decoding of the frame's objects; mask prompts of ``as_output`` objects are taken as
    their output (``SAM4D.track_step``'s rules for multimask and mask-as-output).

    ``conditioned``: the memory-conditioned (image, LiDAR) tokens, as for
    :func:`decode_all_outputs`.
    """
    multimask = torch.tensor(
        [
            model._use_multimask(p.max_points_per_view(), no_memory[k])
            for k, p in enumerate(prompts)
        ],
        dtype=torch.bool,
    )
    dense = [not bool(x) for x in as_output]
    res = decode_all_outputs(model, features, *conditioned, prompts, multimask, dense)
    if bool(as_output.any()):
        model._apply_mask_as_output(features, prompts, as_output, res.track)
    return res


def run_clip(
    model: SAM4D,
    sample: ClipSample,
    plan: ClipPlan,
    prompt_cfg: PromptConfig,
    loss_cfg: LossConfig | None,
    rng: np.random.Generator,
    record: bool = False,
) -> ClipResult:
    """Runs the clip (module docstring); losses when ``loss_cfg`` is given.

    Args:
        model: in train mode for training (the caller sets the mode and the grad context).
        plan: initial prompts and correction schedule (:func:`~.prompt_simulation.plan_clip`).
        rng: draws the corrective clicks.
        record: keep every frame's final binary predictions (validation).
    """
    b = sample.num_objects
    t_len = sample.num_frames
    mem_cfg = model.config.memory
    acc = LossAccumulator(loss_cfg) if loss_cfg is not None else None
    result = ClipResult(acc, initial=plan.initial)
    store: list[dict[int, ObjectMemory]] = [{} for _ in range(b)]
    cond_frames: list[int] = []
    non_cond_frames: list[int] = []
    nslots = len(sample.camera_names)
    dev = model.device
    mask_only = torch.tensor([st.is_mask_only for st in plan.initial], dtype=torch.bool)
    for t in range(t_len):
        features = model.encode_frame(**sample.model_inputs(t))
        memories: list[ObjectMemoryInput | None] = [None] * b
        if cond_frames or non_cond_frames:
            sel = select_memory_frames(
                t, cond_frames, non_cond_frames, mem_cfg, training=True, num_frames=t_len
            )
            memories = [
                ObjectMemoryInput.from_selection(sel, lambda f, k=k: store[k][f]) for k in range(b)
            ]
        img_cond, pts_cond = model.condition_on_memory(features, memories)
        if t == 0:
            states = [
                PromptState(
                    points={k: list(v) for k, v in st.points.items()},
                    labels={k: list(v) for k, v in st.labels.items()},
                    boxes=dict(st.boxes),
                    masks=dict(st.masks),
                    kind=st.kind,
                    view=st.view,
                )
                for st in plan.initial
            ]
            as_output = mask_only.clone()
        else:
            states = [PromptState() for _ in range(b)]
            as_output = torch.zeros(b, dtype=torch.bool)
        weights = (~as_output).float().to(dev)
        no_memory = [m is None or m.is_empty for m in memories]

        prompts = _prompts_of(states, None, features, [False] * b)
        conditioned = (img_cond, pts_cond)
        res = _decode_frame(model, features, conditioned, prompts, no_memory, as_output)
        result.decodings += 1
        if acc is not None:
            add_decoding_losses(acc, model, features, res, sample.targets[t], weights, loss_cfg)  # type: ignore[arg-type]
        corrected = t in plan.clicks_per_frame
        if corrected:
            for _ in range(plan.clicks_per_frame[t]):
                pred = predictions(model, features, res.track, nslots)
                feed_back = [True] * b
                for k in range(b):
                    if bool(as_output[k]):
                        feed_back[k] = False
                        continue
                    click = corrective_click(
                        sample,
                        t,
                        k,
                        [None if p is None else p[k] for p in pred.cameras],
                        None if pred.points is None else pred.points[k],
                        prompt_cfg,
                        rng,
                        prefer_view=plan.initial[k].view,
                    )
                    if click is not None:
                        view, coords, label = click
                        states[k].add_click(view, coords, label)
                prompts = _prompts_of(states, res.track, features, feed_back)
                res = _decode_frame(model, features, conditioned, prompts, no_memory, as_output)
                result.decodings += 1
                if acc is not None:
                    add_decoding_losses(
                        acc,
                        model,
                        features,
                        res,
                        sample.targets[t],
                        weights,
                        loss_cfg,  # type: ignore[arg-type]
                    )
        if t + 1 < t_len:
            # The last frame's memories would feed no later frame and no loss: not encoded.
            mems = model.encode_memory(features, res.track)
            for k in range(b):
                store[k][t] = mems[k]
        if t == 0 or (corrected and prompt_cfg.corrections_as_cond):
            cond_frames.append(t)
        else:
            non_cond_frames.append(t)
        if record:
            result.predictions.append(predictions(model, features, res.track, nslots))
    return result


__all__ = [
    "ClipResult",
    "DecodeGroup",
    "DecodeResult",
    "FramePrediction",
    "add_decoding_losses",
    "decode_all_outputs",
    "predictions",
    "run_clip",
]
