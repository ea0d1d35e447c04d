"""Per-object tracking logic shared by the streaming tracker and the offline predictor.

Both front ends (:class:`~sam4d_core.tracking.streaming_tracker.StreamingTracker`, frame by frame
with a bounded buffer, and :class:`~sam4d_core.tracking.offline_predictor.SAM4DPredictor`, the
official whole-sequence API) keep one :class:`ObjectState` per object and run every frame through
:func:`run_frame`: memory selection per object from its
:class:`~sam4d_core.modeling.memory_bank.ObjectMemoryBank`, one batched
:meth:`~sam4d_core.modeling.sam4d_base.SAM4D.track_step` for all objects of the frame, one batched
:meth:`~sam4d_core.modeling.sam4d_base.SAM4D.encode_memory`, bank updates. Prompts go through
:func:`prepare_prompt_job`. Keeping these rules in one place is what makes a prompt replayed on a
buffered past frame give the same masks as the predictor prompted on that frame.

Prompt semantics (SAM2's video predictor with ``add_all_frames_to_correct_as_cond=True``, the
SAM2.1 setting):

- Every frame that received prompts for an object is a *conditioning* frame of that object. Its
  output is computed when the prompt is given and kept: propagation (offline) and replay
  (streaming) reuse it and never re-track that frame, until new prompts arrive on it.
- A prompt on frame ``f`` is an *initial* conditioning frame when the object has no memory usable
  at ``f`` (a new object, or ``f`` outside what the object's memory reaches): decoded without
  memory, like SAM on a single frame. Otherwise it is a *correction*: decoded on the
  memory-conditioned features with the object's previous prediction on ``f`` as a dense prompt
  (SAM2's ``prev_sam_mask_logits``, clamped to +-32). The frame's own earlier memory is never
  used for its own correction.
- Prompts accumulate per frame and view (more clicks add to the earlier ones; a new box replaces
  the view's box) unless the caller clears them; a mask on a view restarts that view from the mask
  (SAM2's ``add_new_mask`` drops the frame's clicks).
- An object with neither prompts nor any selectable memory on a frame (e.g. offline, a frame more
  than ``max_cond_frame_diff`` before its first prompt) is not run: it is reported absent
  (:data:`NO_OBJ_SCORE`) and nothing is stored.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from sam4d_core.data.sequence import Frame
from sam4d_core.modeling.memory_bank import MemoryBankConfig, ObjectMemoryBank
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.modeling.records import FrameFeatures, ObjectMemory, ObjectMemoryInput, TrackOutput
from sam4d_core.modeling.sam import NO_OBJ_SCORE
from sam4d_core.modeling.sam4d_base import SAM4D, upsample_mask_logits
from sam4d_core.modeling.sparse import devoxelize

# SAM2 clamps the previous logits it feeds back as a dense prompt ("rare numerical issues").
PREV_LOGITS_CLAMP = 32.0

STAGES = (
    "image_encoder",
    "lidar_encoder",
    "memory_attention",
    "decoder",
    "memory_encoder",
    "postprocess",
    "total",
)
"""Keys of the per-stage timings (ms) the tracker reports."""


# ---------------------------------------------------------------------------------------------
# Records.


@dataclass(eq=False)
class ObjectFrameOutput:
    """One object's prediction on one frame, kept for corrections and consolidated outputs.

    Attributes:
        camera_ids: camera slots of the frame's present cameras (rows of the image tensors).
        image_logits: (Ncam, 4h, 4w) stride-4 mask logits (of the model input), or None.
        image_scores: (Ncam,) presence logits per camera, or None.
        image_ious: (Ncam,) predicted IoU per camera, or None.
        voxel_logits: (N4,) LiDAR logits per stride-4 voxel, or None.
        point_logits: (N,) per-point logits when kept (conditioning frames, or on request), else
            None: they are then the trilinear devoxelization of ``voxel_logits``.
        lidar_score: () LiDAR presence logit, or None.
        lidar_iou: () LiDAR predicted IoU, or None.
        object_score: () presence logit over all views.
        is_cond: the frame is a conditioning frame of the object (its output is reused).
        memory: the memory made from this output, kept for conditioning frames (a replay puts it
            back into the bank instead of re-tracking the frame).
        absent: a placeholder for an object that was not run on this frame.
    """

    camera_ids: tuple[int, ...]
    image_logits: torch.Tensor | None
    image_scores: torch.Tensor | None
    image_ious: torch.Tensor | None
    voxel_logits: torch.Tensor | None
    point_logits: torch.Tensor | None
    lidar_score: torch.Tensor | None
    lidar_iou: torch.Tensor | None
    object_score: torch.Tensor
    is_cond: bool = False
    memory: ObjectMemory | None = None
    absent: bool = False

    def predicted_iou(self) -> float:
        """Predicted IoU of the view with the highest presence logit (cameras, then LiDAR)."""
        best_score, best_iou = -float("inf"), 0.0
        if self.image_scores is not None and self.image_ious is not None:
            for s, i in zip(self.image_scores.tolist(), self.image_ious.tolist(), strict=True):
                if s > best_score:
                    best_score, best_iou = s, i
        if self.lidar_score is not None and self.lidar_iou is not None:
            if float(self.lidar_score) > best_score:
                best_iou = float(self.lidar_iou)
        return float(min(max(best_iou, 0.0), 1.0))


@dataclass(eq=False)
class ObjectState:
    """Everything the trackers keep about one object.

    Attributes:
        obj_id: the user's object id.
        bank: its memories (bounded in streaming; keeps every frame offline).
        inputs: frame -> the accumulated prompts of each conditioning frame.
        outputs: frame -> its prediction (streaming: buffered frames only).
    """

    obj_id: int
    bank: ObjectMemoryBank[ObjectMemory]
    inputs: dict[int, ObjectPrompts] = field(default_factory=dict)
    outputs: dict[int, ObjectFrameOutput] = field(default_factory=dict)

    @classmethod
    def new(cls, obj_id: int, bank_config: MemoryBankConfig) -> ObjectState:
        return cls(obj_id, ObjectMemoryBank(bank_config))

    @property
    def cond_frames(self) -> list[int]:
        return sorted(self.inputs)

    def clear(self) -> None:
        """Forget prompts, predictions and memory (the object restarts from its next prompt)."""
        self.bank.clear()
        self.inputs.clear()
        self.outputs.clear()

    def prune_before(self, frame_idx: int) -> None:
        """Drops prompts and predictions of frames before ``frame_idx`` (the bank evicts itself)."""
        for d in (self.inputs, self.outputs):
            for t in [t for t in d if t < frame_idx]:
                del d[t]


@dataclass(eq=False)
class ObjectJob:
    """One object's work on one frame for :func:`run_frame`.

    Attributes:
        state: the object.
        prompts: its prompts on this frame as the decoder sees them, or None (plain tracking).
        init: decode without memory (an object's first frame, or a re-prompted frame decoded
            from its prompts alone).
        is_cond: store the result as a conditioning frame (prompted frames).
        predicted: (M, 3) the motion model's predicted segment on this frame (LiDAR frame, m)
            for the mask refinement, or None.
    """

    state: ObjectState
    prompts: ObjectPrompts | None = None
    init: bool = False
    is_cond: bool = False
    predicted: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Frames.


def encode_sensor_frame(
    model: SAM4D,
    frame: Frame,
    camera_slots: Mapping[str, int],
    timings: dict[str, float] | None = None,
) -> FrameFeatures:
    """:meth:`SAM4D.encode_frame` of a :class:`~sam4d_core.data.sequence.Frame`.

    Args:
        model: the model.
        frame: the frame; cameras absent from it are passed as missing, a sweep of 0 points as no
            LiDAR.
        camera_slots: camera name -> slot (the camera id the model's outputs use); every camera of
            the frame must have one.
        timings: per-stage timings (ms) to add to.
    """
    n_slots = max(camera_slots.values(), default=-1) + 1
    images: list[np.ndarray | None] = [None] * n_slots
    intrinsics: list[np.ndarray | None] = [None] * n_slots
    extrinsics: list[np.ndarray | None] = [None] * n_slots
    for name, cam in frame.cameras.items():
        slot = camera_slots[name]
        images[slot] = cam.image
        intrinsics[slot] = cam.intrinsics
        extrinsics[slot] = cam.cam_from_lidar
    points = frame.points if frame.points is not None and len(frame.points) else None
    return model.encode_frame(
        images, intrinsics, extrinsics, points, frame.world_from_lidar, timings=timings
    )


def drop_backbone_kernel_maps(features: FrameFeatures) -> int:
    """Frees the LiDAR backbone's submanifold kernel maps below stride 16 from a frame's sparse
    cache; returns how many were dropped.

    Re-running objects on a kept frame (track step, memory encoder) only needs the strided
    down-sampling maps and the stride-16 maps; the backbone's stride-1..8 submanifold maps are
    about half of a buffered frame's memory. A dropped map is rebuilt on demand from the cached
    coordinates, so this never changes a result.
    """
    lid = features.lidar
    if lid is None:
        return 0
    cache = lid.sparse_s16.cache
    top = tuple(lid.sparse_s16.stride)
    drop = [k for k in cache.kmaps if tuple(k[2]) == (1, 1, 1) and tuple(k[0]) != top]
    for k in drop:
        del cache.kmaps[k]
    return len(drop)


# ---------------------------------------------------------------------------------------------
# Prompts.


def _cat_points(
    a: np.ndarray | torch.Tensor | None,
    la: np.ndarray | torch.Tensor | None,
    b: np.ndarray | torch.Tensor | None,
    lb: np.ndarray | torch.Tensor | None,
    dim: int,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    parts = [(p, lab) for p, lab in ((a, la), (b, lb)) if p is not None and len(p) > 0]
    if not parts:
        return None, None
    pts = np.concatenate([np.asarray(_np(p), np.float64).reshape(-1, dim) for p, _ in parts])
    labs = np.concatenate([np.asarray(_np(lab), np.int64).reshape(-1) for _, lab in parts])
    return pts, labs


def _np(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def merge_prompts(
    old: ObjectPrompts | None, new: ObjectPrompts, keep_old_points: bool = True
) -> ObjectPrompts:
    """The prompts of one object on one frame after ``new`` is given (module docstring rules).

    Args:
        old: what the frame had before (None: nothing).
        new: the new prompts.
        keep_old_points: add to ``old`` (False: ``new`` replaces it, SAM2's ``clear_old_points``).
    """
    if old is None or not keep_old_points:
        old = ObjectPrompts()
    cameras: dict[int, CameraPrompt] = {}
    for cam in list(old.cameras) + [c for c in new.cameras if c not in old.cameras]:
        o, n = old.cameras.get(cam), new.cameras.get(cam)
        if n is None:
            cameras[cam] = o  # type: ignore[assignment]
        elif o is None or n.mask is not None:
            cameras[cam] = n
        else:
            pts, labs = _cat_points(o.points, o.labels, n.points, n.labels, 2)
            box = n.box if n.box is not None else o.box
            cameras[cam] = CameraPrompt(points=pts, labels=labs, box=box, mask=o.mask)
    lidar = old.lidar
    n = new.lidar
    if n is not None:
        if lidar is None or n.mask is not None:
            lidar = dataclasses.replace(n, voxel_mask=None)
        else:
            pts, labs = _cat_points(lidar.points, lidar.labels, n.points, n.labels, 3)
            box = n.box if n.box is not None else lidar.box
            lidar = LidarPrompt(points=pts, labels=labs, box=box, mask=lidar.mask)
    return ObjectPrompts(cameras=cameras, lidar=lidar)


def with_previous_logits(
    prompts: ObjectPrompts, prev: ObjectFrameOutput | None, camera_ids: Sequence[int]
) -> ObjectPrompts:
    """``prompts`` plus the previous prediction on the frame as dense prompts (SAM2's
    ``prev_sam_mask_logits``) on every view without a mask of the user's.

    Only with clicks or boxes: without them a mask prompt is taken as the output, and previous
    logits alone would be a no-op correction.

    Args:
        prompts: the frame's prompts.
        prev: the object's previous output on this frame, or None.
        camera_ids: the frame's present cameras (a camera the previous output did not see is
            left without).
    """
    if prev is None or prev.absent or not prompts.has_clicks:
        return prompts
    cameras = dict(prompts.cameras)
    if prev.image_logits is not None:
        for row, cam in enumerate(prev.camera_ids):
            if cam not in camera_ids:
                continue
            cp = cameras.get(cam) or CameraPrompt()
            if cp.mask is None:
                logits = prev.image_logits[row].clamp(-PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
                cameras[cam] = dataclasses.replace(cp, mask=logits)
    lidar = prompts.lidar
    if prev.voxel_logits is not None and (lidar is None or lidar.mask is None):
        logits = prev.voxel_logits.clamp(-PREV_LOGITS_CLAMP, PREV_LOGITS_CLAMP)
        lidar = dataclasses.replace(lidar or LidarPrompt(), voxel_mask=logits)
    return ObjectPrompts(cameras=cameras, lidar=lidar)


def snap_to_model_grid(
    points: np.ndarray, camera_size: tuple[int, int], model_size: tuple[int, int]
) -> np.ndarray:
    """Camera pixels (..., 2) (x, y) moved to the corner of the model-input pixel they fall in.

    The released predictor scales clicks to the model input and floors them (the prompt encoder
    then adds 0.5: the pixel centre); doing it in camera pixels keeps our records in the user's
    units while the model sees exactly the released coordinates.
    """
    h0, w0 = camera_size
    mh, mw = model_size
    scale = np.array([mw / w0, mh / h0])
    return np.floor(np.asarray(points, np.float64) * scale) / scale


def prepare_prompt_job(
    state: ObjectState,
    frame_idx: int,
    new: ObjectPrompts,
    camera_ids: Sequence[int],
    keep_old_points: bool = True,
    reverse: bool = False,
    num_frames: int | None = None,
) -> ObjectJob:
    """Records ``new`` on ``frame_idx`` and returns the object's job for that frame.

    The frame's own memory is dropped first (it is about to be replaced); the job is an initial
    conditioning frame when nothing else in the bank is selectable at ``frame_idx``, else a
    correction fed with the previous prediction on the frame.

    Args:
        state: the object.
        frame_idx: the prompted frame.
        new: the prompts given now (model units: camera pixels, LiDAR metres).
        camera_ids: present camera slots of the frame.
        keep_old_points: accumulate with the frame's earlier prompts.
        reverse: direction of the memory selection (offline: the direction the frame was tracked).
        num_frames: sequence length when known (offline).
    """
    merged = merge_prompts(state.inputs.get(frame_idx), new, keep_old_points)
    state.inputs[frame_idx] = merged
    state.bank.remove(frame_idx)
    init = state.bank.select(frame_idx, reverse=reverse, num_frames=num_frames).is_empty
    prompts = with_previous_logits(merged, state.outputs.get(frame_idx), camera_ids)
    return ObjectJob(state, prompts, init=init, is_cond=True)


# ---------------------------------------------------------------------------------------------
# Running a frame.


def absent_output(features: FrameFeatures, device: torch.device) -> ObjectFrameOutput:
    """The placeholder of an object not run on a frame (presence :data:`NO_OBJ_SCORE`)."""
    img, lid = features.image, features.lidar
    full = torch.tensor(NO_OBJ_SCORE, device=device)
    image_logits = image_scores = image_ious = None
    if img is not None:
        h, w = img.grid_size
        image_logits = full.expand(img.num_cameras, 4 * h, 4 * w)
        image_scores = full.expand(img.num_cameras)
        image_ious = torch.zeros(img.num_cameras, device=device)
    voxel_logits = point_logits = lidar_score = lidar_iou = None
    if lid is not None:
        voxel_logits = full.expand(lid.num_s4)
        point_logits = full.expand(lid.num_points)
        lidar_score, lidar_iou = full, torch.zeros((), device=device)
    return ObjectFrameOutput(
        camera_ids=img.camera_ids if img is not None else (),
        image_logits=image_logits,
        image_scores=image_scores,
        image_ious=image_ious,
        voxel_logits=voxel_logits,
        point_logits=point_logits,
        lidar_score=lidar_score,
        lidar_iou=lidar_iou,
        object_score=full,
        absent=True,
    )


def _row(
    out: TrackOutput,
    i: int,
    keep_point_logits: bool,
    is_cond: bool,
    memory: ObjectMemory | None,
    storage: torch.device | None,
) -> ObjectFrameOutput:
    # Clones: a per-object copy must not pin the whole batch's tensors for as long as it is kept.
    def cp(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        return t.to(storage).clone() if storage is not None else t.clone()

    img, lid = out.image, out.lidar
    keep_points = keep_point_logits or is_cond or bool(out.mask_as_output[i])
    return ObjectFrameOutput(
        camera_ids=img.camera_ids if img is not None else (),
        image_logits=cp(img.mask_logits[i]) if img is not None else None,
        image_scores=cp(img.object_score_logits[i]) if img is not None else None,
        image_ious=cp(img.ious[i]) if img is not None else None,
        voxel_logits=cp(lid.voxel_logits[i]) if lid is not None else None,
        point_logits=cp(lid.point_logits[i]) if lid is not None and keep_points else None,
        lidar_score=cp(lid.object_score_logits[i]) if lid is not None else None,
        lidar_iou=cp(lid.ious[i]) if lid is not None else None,
        object_score=cp(out.object_score_logits[i]),  # type: ignore[arg-type]
        is_cond=is_cond,
        memory=memory if is_cond else None,
    )


def run_frame(
    model: SAM4D,
    features: FrameFeatures,
    frame_idx: int,
    jobs: Sequence[ObjectJob],
    reverse: bool = False,
    num_frames: int | None = None,
    keep_point_logits: bool = False,
    storage: torch.device | None = None,
    timings: dict[str, float] | None = None,
) -> list[ObjectFrameOutput]:
    """Runs B objects on one frame: memory selection, one batched track step, one batched memory
    encoding, bank and output updates.

    Args:
        model: the model (eval mode; the caller holds ``torch.inference_mode``).
        features: the frame.
        frame_idx: its index (memory bookkeeping).
        jobs: one per object.
        reverse: memory selection for reverse-time tracking (offline).
        num_frames: sequence length when known (offline).
        keep_point_logits: keep per-point logits of every output (else conditioning frames only).
        storage: where kept outputs live (None: the model's device).
        timings: per-stage timings (ms) to add to.

    Returns:
        the new output of each job's object (also stored in ``state.outputs[frame_idx]``); an
        object with neither prompts nor selectable memory gets an absent placeholder that is not
        stored.
    """
    results: list[ObjectFrameOutput | None] = [None] * len(jobs)
    run: list[int] = []
    memories: list[ObjectMemoryInput | None] = []
    for i, job in enumerate(jobs):
        has_prompts = job.prompts is not None and not job.prompts.is_empty
        if job.init:
            if not has_prompts:
                raise ValueError(f"object {job.state.obj_id}: an initial frame needs prompts")
            run.append(i)
            memories.append(None)
            continue
        bank = job.state.bank
        sel = bank.select(frame_idx, reverse=reverse, num_frames=num_frames)
        if sel.is_empty and not has_prompts:
            results[i] = absent_output(features, model.device)
            continue
        run.append(i)
        memories.append(
            ObjectMemoryInput.from_selection(sel, lambda f, b=bank: b.get(f).payload)  # type: ignore[union-attr]
        )
    if run:
        out = model.track_step(features, [jobs[i].prompts for i in run], memories, timings=timings)
        with model.clock.timer(timings, "memory_encoder", model.device):
            mems = model.encode_memory(features, out)
        for k, i in enumerate(run):
            job = jobs[i]
            row = _row(out, k, keep_point_logits, job.is_cond, mems[k], storage)
            job.state.outputs[frame_idx] = row
            job.state.bank.add(frame_idx, mems[k], is_cond=job.is_cond)
            results[i] = row
    return results  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Outputs at sensor resolution.


@dataclass
class SensorLogits:
    """B objects' mask logits on one frame at the sensors' resolution.

    Attributes:
        camera_logits: camera slot -> (B, H, W) float32 logits at that camera's resolution.
        point_logits: (B, N) float32 per-point logits, or None (no LiDAR).
    """

    camera_logits: dict[int, torch.Tensor]
    point_logits: torch.Tensor | None


def sensor_logits(features: FrameFeatures, outputs: Sequence[ObjectFrameOutput]) -> SensorLogits:
    """Upsamples each camera's stride-4 logits to the camera and devoxelizes the LiDAR logits of
    B objects' outputs on the frame ``features`` was encoded from (batched per camera)."""
    img = features.image
    device = features.pose.device
    cams: dict[int, torch.Tensor] = {}
    if img is not None and outputs:
        for ci, cam in enumerate(img.camera_ids):
            rows = []
            for o in outputs:
                if o.image_logits is None or cam not in o.camera_ids:
                    raise ValueError(f"an output lacks camera {cam} of its frame")
                rows.append(o.image_logits[o.camera_ids.index(cam)].to(device))
            cams[cam] = upsample_mask_logits(torch.stack(rows), img.camera_sizes[ci])
    return SensorLogits(cams, point_logits(features, outputs))


def point_logits(
    features: FrameFeatures, outputs: Sequence[ObjectFrameOutput]
) -> torch.Tensor | None:
    """(B, N) float32 per-point logits of B objects' outputs on a frame (kept per-point logits,
    else the devoxelized voxel logits), or None without LiDAR."""
    lid = features.lidar
    if lid is None or not outputs:
        return None
    device = features.pose.device
    points = torch.empty(len(outputs), lid.num_points, device=device)
    vox_rows = [i for i, o in enumerate(outputs) if o.point_logits is None]
    if vox_rows:
        vox = torch.stack([outputs[i].voxel_logits.to(device) for i in vox_rows])  # type: ignore[union-attr]
        dev = devoxelize(vox.t().float(), lid.devox_rows, lid.devox_weights).t()
        points[torch.tensor(vox_rows, device=device)] = dev
    for i, o in enumerate(outputs):
        if o.point_logits is not None:
            points[i] = o.point_logits.to(device)
    return points


__all__ = [
    "NO_OBJ_SCORE",
    "STAGES",
    "ObjectFrameOutput",
    "ObjectJob",
    "ObjectState",
    "SensorLogits",
    "absent_output",
    "drop_backbone_kernel_maps",
    "encode_sensor_frame",
    "merge_prompts",
    "point_logits",
    "prepare_prompt_job",
    "run_frame",
    "sensor_logits",
    "snap_to_model_grid",
    "with_previous_logits",
]
