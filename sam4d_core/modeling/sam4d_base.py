"""SAM4D assembled: the official module tree, and the per-frame building blocks of tracking.

:class:`SAM4D` holds every component under the names of the released checkpoint (read from the
released ``sam4d_base.py``, ``model_template.py`` and config):

====================================================  ==========================================
``pure_model.backbone.image.{0,1}``                   Hiera trunk, FPN neck
``pure_model.backbone.point.sparse_3d.0``             MinkUNet
``pure_model.fusion.memory_attention``                MCMA
``pure_model.fusion.memory_encoder.{image,point}``    memory encoders
``pure_model.head.sam``                               prompt encoders, mask decoder, pointers
``union_pe_func``                                     UMPE
``maskmem_tpos_enc``, ``no_mem_embed``,               top-level memory parameters (attributes of
``no_mem_pos_enc``, ``no_obj_embed_spatial``,         the released ``SAM4DBase`` itself, not of
``mask_downsample_img``, ``mask_downsample_pts``,     ``pure_model``)
``ego_pose_encoder``
====================================================  ==========================================

The released model only runs whole sequences (``propagate_in_video``) with one camera. Here the
same computation is split into three blocks, batched over objects, that a streaming tracker and an
offline predictor share; one image encoding (all cameras) and one LiDAR encoding per frame serve
every object:

1. :meth:`SAM4D.encode_frame`: images of any number of cameras (missing ones ``None``) and one
   sweep -> :class:`FrameFeatures` (backbone features, the decoder's projected high-resolution
   skips, UMPE token encodings, the voxel bookkeeping, and the :class:`FrameGeometry` that later
   memory encodings need);
2. :meth:`SAM4D.track_step`: B objects' memories (already selected by the caller, e.g. with
   :class:`~sam4d_core.modeling.memory_bank.ObjectMemoryBank`) and prompts -> memory-conditioned
   tokens (MCMA) -> prompt encoding -> decoding per camera and for the LiDAR ->
   :class:`TrackOutput`;
3. :meth:`SAM4D.encode_memory`: the frame's features and the predicted masks -> one
   :class:`ObjectMemory` per object (image + LiDAR memory tokens at stride 16, the object
   pointers, and a reference to the frame's geometry so that their encodings can be recomputed
   under ego motion at any later frame).

Multi-camera (beyond the release, which has one FRONT camera): image tokens of all cameras of a
frame are concatenated in memory attention (each camera's UMPE gives its geometry) and stored
together in the memory; decoding runs per camera. A camera's decoder sees its own clicks and the
LiDAR clicks ([camera, LiDAR, camera] as released); the LiDAR decoder sees the LiDAR clicks and the
clicks of every camera that has some (or one camera's empty set when none has, which for one camera
is exactly the release). The image object pointer of a frame is the one of the camera with the
highest object score, so a memory holds one image and one LiDAR pointer whatever the camera count.
A frame may lack the LiDAR or every camera; UMPE's cross-modal MLP part is used only when both
modalities are present (as released).

Inference switches follow the released config: ``directly_add_no_mem_embed`` (an object without
memory adds ``no_mem_embed`` and skips attention), multimask for 0 or 1 clicks (tracking
included), ``use_mask_input_as_output_without_sam`` (a mask prompt without clicks is the output;
its pointer comes from the decoder run on ``mask_downsample_*`` of the mask, on features without
memory), memory-encoder input ``sigmoid * 20 - 10``, ``no_obj_embed_spatial`` on memories of absent
objects, memory PEs recomputed with ``T_rel = P_t^-1 P_t'`` (``use_ego_pose_in_pe``), pointer PEs
``obj_ptr_tpos_proj(sine(t_diff / t_diff_max)) + ego_pose_encoder(P_t, P_t')``.

The official config runs in exact-release mode (``config.point.exact_release``,
``config.image.exact_release``): torchsparse 2.1's default sparse semantics, the released
devoxelization, float64 quantisation and the PIL-bicubic resize (see
:mod:`~sam4d_core.modeling.sparse.kernel_map` and :mod:`~sam4d_core.modeling.sparse.voxelize`).

Known differences from the release (all documented where they happen): the camera memory of a
mask-as-output frame is encoded from the stride-4 version of the mask (the release keeps the
full-resolution one); per-point LiDAR mask values are averaged per 0.15 m voxel before the LiDAR
memory encoder and ``mask_downsample_pts`` (the release feeds one row per point); the multimask
rule counts the clicks of the view with the most clicks (the release counts its first modality's).

Gradient mode is the caller's: wrap inference in ``torch.inference_mode()``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sam4d_core.modeling.backbones.image_encoder import (
    ImageEncoder,
    build_image_encoder,
    preprocess_images,
    scale_intrinsics,
)
from sam4d_core.modeling.backbones.minkunet import MinkUNetBackbone
from sam4d_core.modeling.configs import SAM4DConfig, get_config
from sam4d_core.modeling.memory_attention import (
    AttentionPlaces,
    MemoryAttention,
    pack_memories,
    register_memory_parameters,
)
from sam4d_core.modeling.memory_bank import MemorySelection
from sam4d_core.modeling.memory_encoder import (
    ImageMemoryEncoder,
    PointMemoryEncoder,
    add_no_object_embedding,
    mask_logits_for_memory,
    point_masks_to_voxels,
)
from sam4d_core.modeling.reference_paths import use_reference_paths
from sam4d_core.modeling.sam import (
    NEGATIVE_LABEL,
    NOT_A_POINT_LABEL,
    PAD_LABEL,
    EgoPoseEncoder,
    HeadOutput,
    PromptEmbeddings,
    SAMHead,
    VoxelHierarchy,
    bev_boxes_to_points_3d,
    scatter_mean,
)
from sam4d_core.modeling.sam.mask_decoder import DecoderOutput
from sam4d_core.modeling.sparse import SparseTensor, devoxelize, devoxelize_weights
from sam4d_core.modeling.sparse.voxelize import (
    points_to_voxel_index,
    pool_points_to_voxels,
    released_devoxelize_weights,
    sam4d_voxelize,
)
from sam4d_core.modeling.token_places import (
    PlaceSegment,
    image_token_places,
    lidar_token_places,
    unplaced,
)
from sam4d_core.modeling.umpe import UMPE, invert_rigid, relative_ego_motion

ArrayLike = np.ndarray | torch.Tensor

# ---------------------------------------------------------------------------------------------
# Records.


@dataclass(eq=False)
class FrameGeometry:
    """What the positional encodings of a frame's memories need, shared by all its objects.

    Identity-hashed (``eq=False``): :meth:`SAM4D.track_step` computes the encodings of one past
    frame once for every object whose memory refers to it.

    Attributes:
        pose: (4, 4) float64 LiDAR -> world at this frame (identity when unknown).
        camera_K: (Ncam, 3, 3) intrinsics of the present cameras at the model input size, or None.
        lidar_from_cam: (Ncam, 4, 4) of the present cameras, or None.
        token_xyz: (N16, 3) mean xyz (LiDAR frame, metres) of each stride-16 LiDAR token, or None.
        multi_modal: both modalities were present (UMPE's cross-modal MLP part is used).
    """

    pose: torch.Tensor
    camera_K: torch.Tensor | None
    lidar_from_cam: torch.Tensor | None
    token_xyz: torch.Tensor | None
    multi_modal: bool


@dataclass(eq=False)
class ImageFeatures:
    """Image side of a frame (present cameras only, in ``camera_ids`` order).

    Attributes:
        camera_ids: index of each present camera in the frame's camera list.
        camera_sizes: (H, W) of each original camera image.
        tokens: (Ncam, C, h, w) stride-16 features (h, w = model input / 16).
        high_res: [(Ncam, C/8, 4h, 4w), (Ncam, C/4, 2h, 2w)] stride-4 / stride-8 features already
            projected by the decoder's ``conv_s0`` / ``conv_s1``.
        pe: (Ncam, C, h, w) UMPE encoding of the tokens.
        K: (Ncam, 3, 3) intrinsics at the model input size.
        lidar_from_cam: (Ncam, 4, 4).
    """

    camera_ids: tuple[int, ...]
    camera_sizes: tuple[tuple[int, int], ...]
    tokens: torch.Tensor
    high_res: list[torch.Tensor]
    pe: torch.Tensor
    K: torch.Tensor
    lidar_from_cam: torch.Tensor

    @property
    def num_cameras(self) -> int:
        return len(self.camera_ids)

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.tokens.shape[-2], self.tokens.shape[-1])

    def index_of(self, camera_id: int) -> int:
        """Row of camera ``camera_id`` (ValueError if it is not in this frame)."""
        try:
            return self.camera_ids.index(camera_id)
        except ValueError:
            raise ValueError(
                f"camera {camera_id} is not in this frame (present: {list(self.camera_ids)})"
            ) from None


@dataclass(eq=False)
class LidarFeatures:
    """LiDAR side of a frame.

    Attributes:
        points_xyz: (N, 3) float32 input points (LiDAR frame, metres).
        tokens: (N16, C) stride-16 features (the LiDAR tokens).
        pe: (N16, C) UMPE encoding of the tokens.
        token_xyz: (N16, 3) mean xyz of the points of each stride-16 voxel.
        high_res: [(N4, C/8), (N8, C/4)] stride-4 / stride-8 features projected by the decoder's
            ``conv_s0_pts`` / ``conv_s1_pts``.
        hierarchy: parent links stride 4 -> 8 -> 16 (rows in the backbone's order).
        sparse_s16: the stride-16 sparse tensor; its cache holds the stride-1 voxels and kernel
            maps of the sweep (the LiDAR memory encoder and ``mask_downsample_pts`` reuse them).
        voxels_s1: (N1, 4) stride-1 (0.15 m) voxel coordinates the backbone ran on.
        point_to_voxel: (N,) stride-1 voxel row of every point.
        point_to_s4: (N,) stride-4 voxel row of every point (LiDAR mask prompts are averaged
            into these voxels); -1 where exact-release mode dropped the point's voxel.
        devox_rows, devox_weights: (N, 8) stride-4 voxels -> points: trilinear, or the released
            ``voxel_to_point`` in exact-release mode (``config.point.exact_release``).
    """

    points_xyz: torch.Tensor
    tokens: torch.Tensor
    pe: torch.Tensor
    token_xyz: torch.Tensor
    high_res: list[torch.Tensor]
    hierarchy: VoxelHierarchy
    sparse_s16: SparseTensor
    voxels_s1: torch.Tensor
    point_to_voxel: torch.Tensor
    point_to_s4: torch.Tensor
    devox_rows: torch.Tensor
    devox_weights: torch.Tensor

    @property
    def num_points(self) -> int:
        return self.points_xyz.shape[0]

    @property
    def num_tokens(self) -> int:
        return self.tokens.shape[0]

    @property
    def num_s4(self) -> int:
        return self.hierarchy.num_s4


@dataclass(eq=False)
class FrameFeatures:
    """Everything :meth:`SAM4D.track_step` and :meth:`SAM4D.encode_memory` need from one frame.

    Attributes:
        image: the present cameras' features, or None (no camera in this frame).
        lidar: the sweep's features, or None (no LiDAR in this frame).
        geometry: shared by the memories made on this frame.
        num_camera_slots: length of the camera list given to :meth:`SAM4D.encode_frame`.
    """

    image: ImageFeatures | None
    lidar: LidarFeatures | None
    geometry: FrameGeometry
    num_camera_slots: int

    @property
    def multi_modal(self) -> bool:
        return self.image is not None and self.lidar is not None

    @property
    def pose(self) -> torch.Tensor:
        return self.geometry.pose


@dataclass
class CameraPrompt:
    """Prompts of one object on one camera, in that camera's original pixel coordinates.

    Attributes:
        points: (N, 2) click positions (x, y) in pixels, or None.
        labels: (N,) 1 positive, 0 negative (required with ``points``).
        box: (4,) ``[x0, y0, x1, y1]`` in pixels, or None.
        mask: (H, W) bool / 0-1 float mask or logits, or None. Without clicks it is taken as the
            output (``use_mask_input_as_output_without_sam``; thresholded at 0.5 after resizing
            to the model input); with clicks it is a dense prompt, resized to the stride-4 grid
            (any size: a camera-resolution mask, or the previous :attr:`ImageOutput.mask_logits`
            of this camera to refine with more clicks, SAM2's ``prev_sam_mask_logits``).
    """

    points: ArrayLike | None = None
    labels: ArrayLike | None = None
    box: ArrayLike | None = None
    mask: ArrayLike | None = None


@dataclass
class LidarPrompt:
    """Prompts of one object on the LiDAR sweep (LiDAR frame, metres).

    Attributes:
        points: (N, 3) click positions, or None.
        labels: (N,) 1 positive, 0 negative (required with ``points``).
        box: (6,) ``[x_min, y_min, z_min, x_max, y_max, z_max]``, or (4,) a BEV box
            ``[x_min, y_min, x_max, y_max]`` (heights from the sweep's points inside it), or None.
        mask: (N_points,) per-point bool / 0-1 float mask (or logits), or None. Without clicks
            it is taken as the output (``use_mask_input_as_output_without_sam``); with clicks it
            is a dense prompt (averaged into the stride-4 voxels).
        voxel_mask: (N4,) a dense prompt per stride-4 voxel, e.g. the previous
            :attr:`LidarOutput.voxel_logits` when more clicks refine an object on the same frame
            (SAM2's ``prev_sam_mask_logits``; clamp to +-32 as SAM2 does). Never taken as output.
    """

    points: ArrayLike | None = None
    labels: ArrayLike | None = None
    box: ArrayLike | None = None
    mask: ArrayLike | None = None
    voxel_mask: ArrayLike | None = None


@dataclass
class ObjectPrompts:
    """All prompts of one object on the current frame (any may be absent).

    Attributes:
        cameras: camera index (in the frame's camera list) -> :class:`CameraPrompt`.
        lidar: :class:`LidarPrompt` or None.
    """

    cameras: dict[int, CameraPrompt] = field(default_factory=dict)
    lidar: LidarPrompt | None = None

    def _views(self) -> list[CameraPrompt | LidarPrompt]:
        views: list[CameraPrompt | LidarPrompt] = list(self.cameras.values())
        if self.lidar is not None:
            views.append(self.lidar)
        return views

    @property
    def has_clicks(self) -> bool:
        """Any point or box in any view."""
        return any(v.points is not None or v.box is not None for v in self._views())

    @property
    def has_masks(self) -> bool:
        """Any mask prompt that can be taken as output (camera masks, per-point LiDAR masks)."""
        return any(v.mask is not None for v in self._views())

    @property
    def is_empty(self) -> bool:
        voxel = self.lidar is not None and self.lidar.voxel_mask is not None
        return not (self.has_clicks or self.has_masks or voxel)

    def max_points_per_view(self) -> int:
        """Clicks plus box corners (2 per box) of the view with the most of them."""
        best = 0
        for v in self._views():
            n = 0 if v.points is None else int(np.prod(np.shape(v.points)[:-1]))
            n += 2 if v.box is not None else 0
            best = max(best, n)
        return best


@dataclass(eq=False)
class ObjectMemory:
    """One object's memory from one frame (the payload of a memory-bank entry).

    Attributes:
        geometry: the frame's geometry (shared with the frame's other memories).
        image_tokens: (Ncam, C, h, w) image memory of the frame's present cameras, or None.
        lidar_tokens: (N16, C) LiDAR memory, or None.
        obj_ptrs: (P, C) object pointers of the frame (image then LiDAR, for the modalities
            present; P = 1 or 2).
        object_score_logits: () presence logit of the object on that frame (max over views).
    """

    geometry: FrameGeometry
    image_tokens: torch.Tensor | None
    lidar_tokens: torch.Tensor | None
    obj_ptrs: torch.Tensor
    object_score_logits: torch.Tensor

    @property
    def nbytes(self) -> int:
        """Bytes held by this memory's own tensors (not the shared geometry)."""
        ts = [self.image_tokens, self.lidar_tokens, self.obj_ptrs, self.object_score_logits]
        return sum(t.numel() * t.element_size() for t in ts if t is not None)


@dataclass
class ObjectMemoryInput:
    """The memories one object attends to on the current frame (the caller's bank selection).

    Attributes:
        slots: (memory, tpos_index) spatial memories; ``tpos_index`` is the row of
            ``maskmem_tpos_enc`` (:attr:`~sam4d_core.modeling.memory_bank.MemorySlot.tpos_index`).
        pointers: (memory, t_diff) object pointers with their signed frame gap.
        t_diff_max: normaliser of the gaps (``max_obj_ptrs_in_encoder - 1``).
    """

    slots: list[tuple[ObjectMemory, int]] = field(default_factory=list)
    pointers: list[tuple[ObjectMemory, int]] = field(default_factory=list)
    t_diff_max: int = 1

    @property
    def is_empty(self) -> bool:
        return not self.slots and not self.pointers

    @classmethod
    def from_selection(
        cls, selection: MemorySelection, lookup: Callable[[int], ObjectMemory]
    ) -> ObjectMemoryInput:
        """From a :class:`~sam4d_core.modeling.memory_bank.MemorySelection` and a frame ->
        memory lookup (e.g. ``lambda f: bank.get(f).payload``)."""
        return cls(
            slots=[(lookup(s.frame_idx), s.tpos_index) for s in selection.slots],
            pointers=[(lookup(p.frame_idx), p.t_diff) for p in selection.pointers],
            t_diff_max=selection.t_diff_max,
        )


@dataclass
class ImageOutput:
    """Camera predictions for B objects on the present cameras.

    Attributes:
        camera_ids: as in :class:`ImageFeatures`.
        mask_logits: (B, Ncam, 4h, 4w) selected mask logits at stride 4 of the model input
            (:func:`upsample_mask_logits` to a camera's size); NO_OBJ_SCORE where absent.
        ious: (B, Ncam) predicted IoU of the selected masks.
        object_score_logits: (B, Ncam) presence logits per camera.
        camera_obj_ptrs: (B, Ncam, C) object pointer of each camera's decoding.
    """

    camera_ids: tuple[int, ...]
    mask_logits: torch.Tensor
    ious: torch.Tensor
    object_score_logits: torch.Tensor
    camera_obj_ptrs: torch.Tensor

    @property
    def best_camera(self) -> torch.Tensor:
        """(B,) int64 row (in ``camera_ids``) with the highest object score (first on ties)."""
        return self.object_score_logits.argmax(dim=1)

    @property
    def obj_ptr(self) -> torch.Tensor:
        """(B, C) the image object pointer of the frame: the best camera's."""
        rows = torch.arange(self.camera_obj_ptrs.shape[0], device=self.camera_obj_ptrs.device)
        return self.camera_obj_ptrs[rows, self.best_camera]


@dataclass
class LidarOutput:
    """LiDAR predictions for B objects.

    Attributes:
        voxel_logits: (B, N4) logits per stride-4 voxel.
        point_logits: (B, N) logits per input point (devoxelized with the frame's
            ``devox_rows`` / ``devox_weights``; a mask prompt taken as output gives the mask
            itself, +-10).
        ious: (B,) predicted IoU.
        object_score_logits: (B,) presence logits.
        obj_ptr: (B, C) LiDAR object pointer.
    """

    voxel_logits: torch.Tensor
    point_logits: torch.Tensor
    ious: torch.Tensor
    object_score_logits: torch.Tensor
    obj_ptr: torch.Tensor


@dataclass
class TrackOutput:
    """Result of :meth:`SAM4D.track_step` for B objects.

    Attributes:
        image: camera predictions, or None (no camera in the frame).
        lidar: LiDAR predictions, or None (no LiDAR in the frame).
        object_score_logits: (B,) presence logit over all views (max).
        multimask: (B,) bool, the decoder predicted 3 masks and kept the best.
        mask_as_output: (B,) bool, a mask prompt was taken as the output.
    """

    image: ImageOutput | None
    lidar: LidarOutput | None
    object_score_logits: torch.Tensor
    multimask: torch.Tensor
    mask_as_output: torch.Tensor

    @property
    def num_objects(self) -> int:
        return self.object_score_logits.shape[0]

    @property
    def obj_ptrs(self) -> torch.Tensor:
        """(B, P, C) the frame's object pointers (image then LiDAR)."""
        ptrs = [o.obj_ptr for o in (self.image, self.lidar) if o is not None]
        return torch.stack(ptrs, dim=1)


# ---------------------------------------------------------------------------------------------
# Helpers.


def _as_tensor(x: ArrayLike, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


_stage_clock: Callable[[], float] = time.perf_counter


def stage_clock() -> float:
    """The clock (s) of the per-stage timings: wall time (``time.perf_counter``) unless
    :func:`set_stage_clock` chose another (e.g. ``time.process_time``, the CPU time of the
    process, steadier than wall time on a shared machine)."""
    return _stage_clock()


def set_stage_clock(clock: Callable[[], float]) -> Callable[[], float]:
    """Sets the clock of :func:`stage_timer` and the trackers' timings; returns the previous one."""
    global _stage_clock
    previous, _stage_clock = _stage_clock, clock
    return previous


@contextmanager
def stage_timer(
    timings: dict[str, float] | None, key: str, device: torch.device | str | None = None
) -> Iterator[None]:
    """Adds the wall time (ms) of the ``with`` block to ``timings[key]`` (no-op without a dict).

    On CUDA the device is synchronized before and after so that the time is the stage's own
    (asynchronous kernels would otherwise be billed to whichever stage waits first).
    """
    if timings is None:
        yield
        return
    dev = torch.device(device) if device is not None else None
    sync = dev is not None and dev.type == "cuda" and torch.cuda.is_available()
    if sync:
        torch.cuda.synchronize(dev)
    t0 = stage_clock()
    try:
        yield
    finally:
        if sync:
            torch.cuda.synchronize(dev)
        timings[key] = timings.get(key, 0.0) + (stage_clock() - t0) * 1e3


def upsample_mask_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Stride-4 mask logits (..., h, w) -> (..., H, W) at a camera's size (bilinear, as SAM2's
    predictor resizes low-resolution masks to the video; the aspect is not kept, like the input
    resize)."""
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:]).float()
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *size)


def _pad_points(
    rows: list[tuple[torch.Tensor, torch.Tensor]], dim: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-object (coords (n, dim), labels (n,)) -> (B, N, dim) and (B, N) padded with PAD_LABEL.

    An object without points gets one "not a point" (label -1), as the released head pads a
    modality without clicks.
    """
    filled = []
    for coords, labels in rows:
        if labels.numel() == 0:
            coords = torch.zeros(1, dim, device=device)
            labels = torch.full((1,), NOT_A_POINT_LABEL, dtype=torch.int64, device=device)
        filled.append((coords, labels))
    n = max(c.shape[0] for c, _ in filled)
    b = len(filled)
    out_c = torch.zeros(b, n, dim, device=device)
    out_l = torch.full((b, n), PAD_LABEL, dtype=torch.int64, device=device)
    for i, (c, lab) in enumerate(filled):
        out_c[i, : c.shape[0]] = c
        out_l[i, : lab.shape[0]] = lab
    return out_c, out_l


def _mask_rows(dense: torch.Tensor, rows: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``dense`` (B, ...) with rows ``rows`` replaced by ``new`` (R, ...) (out of place)."""
    # ``dense`` may be an expanded view (the "no mask" embedding): materialize before writing.
    out = dense.clone(memory_format=torch.contiguous_format)
    out[rows] = new.to(out.dtype)
    return out


# ---------------------------------------------------------------------------------------------
# The model.


class SAM4D(nn.Module):
    """SAM4D with the official module tree and per-frame building blocks (module docstring).

    Args:
        config: the model configuration (default: the official ``sam4d_hiera_s_mink34``).
    """

    def __init__(self, config: SAM4DConfig | None = None) -> None:
        super().__init__()
        cfg = (config or get_config("sam4d_hiera_s_mink34")).validate()
        self.config = cfg
        d = cfg.d_model
        self.hidden_dim = d
        self.mem_dim = d
        self.num_maskmem = cfg.memory.num_maskmem
        self.image_size = cfg.image_size

        # The released ``ModelTemplate``: backbone / fusion / head containers.
        backbone = nn.ModuleDict()
        backbone["image"] = build_image_encoder(cfg.image)
        point = nn.ModuleDict()
        point["sparse_3d"] = nn.ModuleList([MinkUNetBackbone(cfg.point)])
        backbone["point"] = point
        fusion = nn.Module()
        mac = cfg.memory_attention
        fusion.memory_attention = MemoryAttention(
            d_model=d,
            num_layers=mac.num_layers,
            dim_feedforward=mac.dim_feedforward,
            num_heads=mac.num_heads,
            dropout=mac.dropout,
            kv_in_dim=d,
            pos_enc_at_cross_attn_queries=mac.pos_enc_at_cross_attn_queries,
            pos_scale=mac.pos_scale,
            tie_qk_init=mac.tie_qk_init,
            distance_scales=mac.distance_scales(),
        )
        mec = cfg.memory_encoder
        memory_encoder = nn.ModuleDict()
        memory_encoder["image"] = ImageMemoryEncoder(
            in_dim=d,
            out_dim=d,
            mask_total_stride=cfg.backbone_stride,
            num_fuser_layers=mec.image_fuser_layers,
            fuser_kernel_size=mec.image_fuser_kernel_size,
            layer_scale_init_value=mec.layer_scale_init_value,
        )
        memory_encoder["point"] = PointMemoryEncoder(
            in_dim=d,
            out_dim=d,
            mask_total_stride=16,
            num_fuser_layers=mec.point_fuser_layers,
            fuser_kernel_size=mec.point_fuser_kernel_size,
            layer_scale_init_value=mec.layer_scale_init_value,
        )
        fusion.memory_encoder = memory_encoder
        hc = cfg.head
        head = nn.ModuleDict()
        head["sam"] = SAMHead(
            embed_dim=d,
            mem_dim=d,
            image_size=cfg.image_size,
            backbone_stride=cfg.backbone_stride,
            mask_in_chans=hc.mask_in_chans,
            transformer_depth=hc.transformer_depth,
            transformer_heads=hc.transformer_heads,
            transformer_mlp_dim=hc.transformer_mlp_dim,
            iou_head_depth=hc.iou_head_depth,
            iou_head_hidden_dim=hc.iou_head_hidden_dim,
            released_prompt_order=hc.released_prompt_order,
        )
        self.pure_model = nn.Module()
        self.pure_model.backbone = backbone
        self.pure_model.fusion = fusion
        self.pure_model.head = head

        uc = cfg.umpe
        self.union_pe_func = UMPE(
            num_pos_feats=d,
            image_size=cfg.image_size,
            backbone_stride=cfg.backbone_stride,
            depth_start=uc.depth_start,
            depth_step=uc.depth_step,
            num_depths=uc.num_depths,
            hidden_dim=uc.hidden_dim,
            temperature=uc.temperature,
            released_frequency_quirk=uc.released_frequency_quirk,
            rff_scale=uc.rff_scale,
            coord_scale=uc.coord_scale,
            sine_scale=uc.sine_scale,
        )
        register_memory_parameters(
            self,
            hidden_dim=d,
            mem_dim=d,
            num_maskmem=max(cfg.memory.num_maskmem, 1),
            no_obj_embed_spatial=cfg.no_obj_embed_spatial,
        )
        self.ego_pose_encoder = EgoPoseEncoder(d) if cfg.encode_ego_pose_in_mem else None
        # The runtime of the dense stages (sam4d_core.runtime.install_runtime); None: PyTorch.
        self.stage_runtime: Any = None

    # ------------------------------------------------------------------ component access
    @property
    def image_encoder(self) -> ImageEncoder:
        return self.pure_model.backbone["image"]  # type: ignore[return-value]

    @property
    def point_encoder(self) -> MinkUNetBackbone:
        return self.pure_model.backbone["point"]["sparse_3d"][0]  # type: ignore[index]

    @property
    def memory_attention(self) -> MemoryAttention:
        return self.pure_model.fusion.memory_attention  # type: ignore[return-value]

    @property
    def image_memory_encoder(self) -> ImageMemoryEncoder:
        return self.pure_model.fusion.memory_encoder["image"]  # type: ignore[index]

    @property
    def point_memory_encoder(self) -> PointMemoryEncoder:
        return self.pure_model.fusion.memory_encoder["point"]  # type: ignore[index]

    @property
    def sam_head(self) -> SAMHead:
        return self.pure_model.head["sam"]  # type: ignore[index]

    @property
    def device(self) -> torch.device:
        return self.no_mem_embed.device

    def forward(self, *args, **kwargs):  # noqa: D102
        raise NotImplementedError(
            "SAM4D runs frame by frame: encode_frame -> track_step -> encode_memory (or use the "
            "streaming tracker / offline predictor built on them)"
        )

    # ================================================================== 1. encode a frame
    def encode_frame(
        self,
        images: Sequence[ArrayLike | None] | None,
        intrinsics: Sequence[ArrayLike | None] | None = None,
        cam_from_lidar: Sequence[ArrayLike | None] | None = None,
        points: ArrayLike | None = None,
        pose: ArrayLike | None = None,
        timings: dict[str, float] | None = None,
    ) -> FrameFeatures:
        """Encode one synchronized frame (all cameras in one batch, the sweep once).

        Args:
            images: per camera an (H, W, 3) uint8 RGB image, or None when that camera is missing
                from this frame (cameras may differ in size). None or empty: no camera.
            intrinsics: per camera (3, 3) pinhole K of the original image (None where missing).
            cam_from_lidar: per camera (4, 4) rigid transform LiDAR -> camera (x right, y down,
                z forward) (None where missing).
            points: (N, >=3) the sweep, xyz in metres (LiDAR frame) first; None or N = 0: no LiDAR.
            pose: (4, 4) LiDAR -> world at this sweep (float64 recommended); None: identity.
            timings: when given, ``image_encoder`` and ``lidar_encoder`` wall times (ms) are added
                to it (:func:`stage_timer`).

        Returns:
            :class:`FrameFeatures`.
        """
        device = self.device
        images = list(images or [])
        present = [i for i, im in enumerate(images) if im is not None]
        has_lidar = points is not None and len(points) > 0
        if not present and not has_lidar:
            raise ValueError("a frame needs at least one camera image or a non-empty sweep")
        multi_modal = bool(present) and has_lidar

        image_feats = None
        if present:
            if intrinsics is None or cam_from_lidar is None:
                raise ValueError("camera images need their intrinsics and cam_from_lidar")
            for i in present:
                if i >= len(intrinsics) or intrinsics[i] is None:
                    raise ValueError(f"camera {i} has an image but no intrinsics")
                if i >= len(cam_from_lidar) or cam_from_lidar[i] is None:
                    raise ValueError(f"camera {i} has an image but no cam_from_lidar")
            with stage_timer(timings, "image_encoder", device):
                image_feats = self._encode_images(
                    [images[i] for i in present],
                    [intrinsics[i] for i in present],
                    [cam_from_lidar[i] for i in present],
                    tuple(present),
                    multi_modal,
                )
        lidar_feats = None
        if has_lidar:
            with stage_timer(timings, "lidar_encoder", device):
                lidar_feats = self._encode_points(points, multi_modal)  # type: ignore[arg-type]

        pose_t = (
            torch.eye(4, dtype=torch.float64, device=device)
            if pose is None
            else _as_tensor(pose, torch.float64, device)
        )
        geometry = FrameGeometry(
            pose=pose_t,
            camera_K=image_feats.K if image_feats is not None else None,
            lidar_from_cam=image_feats.lidar_from_cam if image_feats is not None else None,
            token_xyz=lidar_feats.token_xyz if lidar_feats is not None else None,
            multi_modal=multi_modal,
        )
        return FrameFeatures(image_feats, lidar_feats, geometry, len(images))

    def _encode_images(
        self,
        images: list[ArrayLike],
        intrinsics: list[ArrayLike],
        cam_from_lidar: list[ArrayLike],
        camera_ids: tuple[int, ...],
        multi_modal: bool,
    ) -> ImageFeatures:
        device = self.device
        enc = self.image_encoder
        sizes = tuple((int(np.shape(im)[0]), int(np.shape(im)[1])) for im in images)
        batch = preprocess_images(
            images,
            self.image_size,
            mean=tuple(enc.pixel_mean.flatten().tolist()),
            std=tuple(enc.pixel_std.flatten().tolist()),
            device=device,
            exact_release=self.config.image.exact_release,
        ).to(self.no_mem_embed.dtype)
        if self.stage_runtime is not None:
            tokens, *high_res = self.stage_runtime.image_encoder(batch)
        else:
            fpn = enc(batch)["backbone_fpn"]
            if len(fpn) != 3:
                raise ValueError(
                    f"the image encoder must give 3 levels (strides 4, 8, 16), got {len(fpn)}"
                )
            decoder = self.sam_head.sam_mask_decoder
            # Projected once per frame, shared by every object and click (as released).
            high_res = decoder.project_image_high_res(fpn[0], fpn[1])
            tokens = fpn[2]
        K = scale_intrinsics(
            torch.stack([_as_tensor(k, torch.float64, device) for k in intrinsics]).float(),
            list(sizes),
            self.image_size,
        ).to(device)
        cfl = torch.stack([_as_tensor(m, torch.float64, device) for m in cam_from_lidar])
        lidar_from_cam = invert_rigid(cfl).float()
        pe = self.union_pe_func.image_pe(K, lidar_from_cam, multi_modal=multi_modal)
        return ImageFeatures(
            camera_ids=camera_ids,
            camera_sizes=sizes,
            tokens=tokens,
            high_res=high_res,
            pe=pe.to(tokens.dtype),
            K=K,
            lidar_from_cam=lidar_from_cam,
        )

    def _encode_points(self, points: ArrayLike, multi_modal: bool) -> LidarFeatures:
        device = self.device
        backbone = self.point_encoder
        pcfg = backbone.config
        xyz = _as_tensor(points[:, :3], torch.float32, device)
        exact = pcfg.exact_release
        # Exact-release: quantised from the points as given (float64 stays float64, as released).
        xyz_q = _as_tensor(points[:, :3], torch.float64, device) if exact else xyz
        vox = sam4d_voxelize(xyz_q, None, None, pcfg.pre_voxel_size, pcfg.voxel_size, exact)
        feats0 = vox.voxels.feats.to(self.no_mem_embed.dtype)
        x = SparseTensor(feats0, vox.voxels.coords, stride=1, cache=pcfg.sparse_cache())
        levels = backbone.forward_sparse(x)
        if [lv.stride[0] for lv in levels] != [4, 8, 16]:
            raise ValueError(
                f"the LiDAR encoder must give strides 4, 8, 16, got {[lv.stride for lv in levels]}"
            )
        s4, s8, s16 = levels
        grid, batch = vox.point_grid_coords, vox.point_batch
        # Point -> voxel rows found once per stride-1 voxel (same result as per point).
        voxels = (vox.voxels.coords, vox.voxels.point_to_voxel)
        point_to_s16 = points_to_voxel_index(s16, grid, batch, voxels=voxels)
        token_xyz = pool_points_to_voxels(s16, grid, batch, xyz, point_rows=point_to_s16)
        # Exact-release: a voxel whose parent fell outside a strided conv's bound has none.
        hierarchy = VoxelHierarchy.from_coords(
            s4.coords, s8.coords, s16.coords, stride_s4=4, allow_missing=exact
        )
        decoder = self.sam_head.sam_mask_decoder
        high_res = decoder.project_lidar_high_res(s4.feats, s8.feats)
        point_to_s4 = points_to_voxel_index(s4, grid, batch, voxels=voxels)
        if exact:
            rows, weights = released_devoxelize_weights(s4, grid, batch, voxels=voxels)
        else:
            rows, weights = devoxelize_weights(s4, grid, batch, point_rows=point_to_s4)
        pe = self.union_pe_func.point_pe(token_xyz, multi_modal=multi_modal)
        return LidarFeatures(
            points_xyz=xyz,
            tokens=s16.feats,
            pe=pe.to(s16.feats.dtype),
            token_xyz=token_xyz,
            high_res=high_res,
            hierarchy=hierarchy,
            sparse_s16=s16,
            voxels_s1=vox.voxels.coords,
            point_to_voxel=vox.voxels.point_to_voxel,
            point_to_s4=point_to_s4,
            devox_rows=rows,
            devox_weights=weights,
        )

    # ================================================================== 2. track step
    def track_step(
        self,
        features: FrameFeatures,
        prompts: Sequence[ObjectPrompts | None],
        memories: Sequence[ObjectMemoryInput | None] | None = None,
        timings: dict[str, float] | None = None,
    ) -> TrackOutput:
        """Segment B objects on one frame.

        Args:
            features: from :meth:`encode_frame`; its ``geometry.pose`` is the current ego pose.
            prompts: per object its prompts on this frame (None or empty: plain tracking).
            memories: per object its selected memories (None / empty: no memory, a first
                conditioning frame); None for all objects without memory. The poses of the
                memory frames are in their :class:`FrameGeometry`.
            timings: when given, ``memory_attention`` (memory gathering and MCMA) and ``decoder``
                (prompt encoding, decoding, mask prompts taken as output) wall times (ms) are
                added to it.

        Returns:
            :class:`TrackOutput`.
        """
        b = len(prompts)
        if b == 0:
            raise ValueError("track_step needs at least one object")
        mem_list = list(memories) if memories is not None else [None] * b
        if len(mem_list) != b:
            raise ValueError(f"{len(mem_list)} memories for {b} objects")
        prompt_list = [p if p is not None else ObjectPrompts() for p in prompts]
        self._check_prompts(features, prompt_list)

        with stage_timer(timings, "memory_attention", self.device):
            img_cond, pts_cond = self.condition_on_memory(features, mem_list)
        cfg = self.config
        mask_as_output = torch.tensor(
            [
                cfg.use_mask_input_as_output_without_sam and p.has_masks and not p.has_clicks
                for p in prompt_list
            ],
            dtype=torch.bool,
        )
        multimask = torch.tensor(
            [
                self._use_multimask(p.max_points_per_view(), m is None or m.is_empty)
                for p, m in zip(prompt_list, mem_list, strict=True)
            ],
            dtype=torch.bool,
        )
        with stage_timer(timings, "decoder", self.device):
            out = self.decode(
                features,
                img_cond,
                pts_cond,
                prompt_list,
                multimask,
                dense_masks=~mask_as_output,
            )
            if bool(mask_as_output.any()):
                self._apply_mask_as_output(features, prompt_list, mask_as_output, out)
        return out

    def _use_multimask(self, num_points: int, is_init_cond_frame: bool) -> bool:
        """The released ``_use_multimask`` (an object without memory is on an initial
        conditioning frame)."""
        cfg = self.config
        return (
            cfg.multimask_output_in_sam
            and (is_init_cond_frame or cfg.multimask_output_for_tracking)
            and cfg.multimask_min_pt_num <= num_points <= cfg.multimask_max_pt_num
        )

    def _check_prompts(self, features: FrameFeatures, prompts: list[ObjectPrompts]) -> None:
        for i, p in enumerate(prompts):
            if p.cameras and features.image is None:
                raise ValueError(f"object {i}: camera prompts on a frame without cameras")
            for cam in p.cameras:
                assert features.image is not None
                features.image.index_of(cam)
            if p.lidar is not None and not _lidar_prompt_empty(p.lidar) and features.lidar is None:
                raise ValueError(f"object {i}: LiDAR prompts on a frame without LiDAR")

    # ------------------------------------------------------------------ memory conditioning
    def condition_on_memory(
        self, features: FrameFeatures, memories: Sequence[ObjectMemoryInput | None]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """MCMA: the current tokens of both modalities conditioned on each object's memory.

        Args:
            features: the current frame.
            memories: per object its selected memories (None / empty: the no-memory path).

        Returns:
            image tokens (B, Ncam, C, h, w) or None, LiDAR tokens (B, N16, C) or None.
        """
        b = len(memories)
        c = self.hidden_dim
        img, lid = features.image, features.lidar
        cur_img = cur_img_pos = cur_pts = cur_pts_pos = None
        if img is not None:
            n, _, h, w = img.tokens.shape
            cur_img = img.tokens.flatten(2).transpose(1, 2).reshape(1, n * h * w, c)
            cur_img_pos = img.pe.flatten(2).transpose(1, 2).reshape(1, n * h * w, c)
        if lid is not None:
            cur_pts = lid.tokens[None]
            cur_pts_pos = lid.pe[None]

        # The current tokens' places (distance bias), computed once for both attention calls.
        now = self.current_places(features, []) if self.memory_attention.distance_bias else None
        with_mem = [i for i, m in enumerate(memories) if m is not None and not m.is_empty]
        without = [i for i in range(b) if i not in set(with_mem)]
        # Results are cast to these buffers' dtype: under autocast, attention outputs and
        # parameter sums differ in precision.
        out_img = None if cur_img is None else cur_img.new_empty(b, cur_img.shape[1], c)
        out_pts = None if cur_pts is None else cur_pts.new_empty(b, cur_pts.shape[1], c)

        if without:
            idx = torch.tensor(without, device=self.device)
            if self.config.directly_add_no_mem_embed:
                # First conditioning frame: no attention at all, as released.
                emb = self.no_mem_embed.reshape(1, 1, c)
                if out_img is not None:
                    out_img[idx] = (cur_img + emb).to(out_img.dtype).expand(len(without), -1, -1)
                if out_pts is not None:
                    out_pts[idx] = (cur_pts + emb).to(out_pts.dtype).expand(len(without), -1, -1)
            else:
                # A dummy one-token memory (SAM2 without directly_add_no_mem_embed).
                mem = self.no_mem_embed.reshape(1, 1, c).expand(len(without), 1, c)
                pos = self.no_mem_pos_enc.reshape(1, 1, c).expand(len(without), 1, c)
                places = None
                if now is not None:
                    places = dataclasses.replace(now, memory=[[unplaced(1)]] * len(without))
                ia, pa = self._attend(
                    cur_img, cur_img_pos, cur_pts, cur_pts_pos, mem, pos, None, places
                )
                if out_img is not None:
                    out_img[idx] = ia.to(out_img.dtype)
                if out_pts is not None:
                    out_pts[idx] = pa.to(out_pts.dtype)
        if with_mem:
            idx = torch.tensor(with_mem, device=self.device)
            memory, memory_pos, valid = self.gather_memory(
                features.geometry,
                [memories[i] for i in with_mem],  # type: ignore[misc]
            )
            if not use_reference_paths() and bool(valid.all()):
                valid = None  # no padding (e.g. one object): attention without a key mask
            places = None
            if now is not None:
                selected = [memories[i] for i in with_mem]
                mem_places = self.memory_places(features.geometry, selected)  # type: ignore[arg-type]
                places = dataclasses.replace(now, memory=mem_places)
            ia, pa = self._attend(
                cur_img, cur_img_pos, cur_pts, cur_pts_pos, memory, memory_pos, valid, places
            )
            if out_img is not None:
                out_img[idx] = ia.to(out_img.dtype)
            if out_pts is not None:
                out_pts[idx] = pa.to(out_pts.dtype)

        img_out = None
        if out_img is not None:
            assert img is not None
            n, _, h, w = img.tokens.shape
            img_out = out_img.reshape(b, n, h * w, c).transpose(2, 3).reshape(b, n, c, h, w)
        return img_out, out_pts

    def _attend(
        self,
        cur_img: torch.Tensor | None,
        cur_img_pos: torch.Tensor | None,
        cur_pts: torch.Tensor | None,
        cur_pts_pos: torch.Tensor | None,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        valid: torch.Tensor | None,
        places: AttentionPlaces | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """MCMA, on the configured runtime when there is one (sam4d_core.runtime)."""
        args = (cur_img, cur_img_pos, cur_pts, cur_pts_pos, memory, memory_pos, valid, places)
        if self.stage_runtime is not None:
            return self.stage_runtime.attend(self.memory_attention, *args)
        return self.memory_attention(*args[:7], places=places)

    def _memory_motion(
        self, geometry: FrameGeometry, current_pose: torch.Tensor
    ) -> torch.Tensor | None:
        """``T_rel`` (4, 4) float32 from a memory's frame to the current one, or None without
        ``use_ego_pose_in_pe``."""
        if not self.config.use_ego_pose_in_pe:
            return None
        return relative_ego_motion(
            current_pose.to(torch.float64), geometry.pose.to(current_pose.device, torch.float64)
        ).float()

    def current_places(
        self, features: FrameFeatures, memory: Sequence[Sequence[PlaceSegment]]
    ) -> AttentionPlaces:
        """Places of the current frame's tokens (for MCMA's distance bias) with the memories'."""
        img, lid = features.image, features.lidar
        image = points = None
        if img is not None:
            image = image_token_places(
                img.K, img.lidar_from_cam, img.grid_size, self.config.backbone_stride
            )
        if lid is not None:
            points = [lidar_token_places(lid.token_xyz)]
        return AttentionPlaces(image=image, points=points, memory=memory)

    def memory_places(
        self, geometry: FrameGeometry, memories: Sequence[ObjectMemoryInput]
    ) -> list[list[PlaceSegment]]:
        """Per object, the places of its memory tokens in :meth:`gather_memory`'s order, moved
        into the current frame (segments of one past frame are shared by all objects)."""
        cache: dict[FrameGeometry, tuple[list[PlaceSegment] | None, PlaceSegment | None]] = {}
        grid = self.config.grid_size
        out: list[list[PlaceSegment]] = []
        for m in memories:
            segs: list[PlaceSegment] = []
            for mem, _ in m.slots:
                geom = mem.geometry
                if geom not in cache:
                    t_rel = self._memory_motion(geom, geometry.pose)
                    rays = pts = None
                    if geom.camera_K is not None and geom.lidar_from_cam is not None:
                        rays = image_token_places(
                            geom.camera_K.to(self.device),
                            geom.lidar_from_cam.to(self.device),
                            grid,
                            self.config.backbone_stride,
                            t_rel,
                        )
                    if geom.token_xyz is not None:
                        pts = lidar_token_places(geom.token_xyz, t_rel)
                    cache[geom] = (rays, pts)
                rays, pts = cache[geom]
                if mem.image_tokens is not None and rays is not None:
                    segs.extend(rays)
                if mem.lidar_tokens is not None and pts is not None:
                    segs.append(pts)
            n_ptr = sum(mem.obj_ptrs.shape[0] for mem, _ in m.pointers)
            if n_ptr:
                segs.append(unplaced(n_ptr))
            out.append(segs)
        return out

    def memory_positional_encodings(
        self, geometry: FrameGeometry, current_pose: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """UMPE encodings of a past frame's memory tokens, moved into the current frame.

        Returns:
            image (Ncam * h * w, C) (cameras in their order, then row-major cells) or None,
            LiDAR (N16, C) or None. Without ``use_ego_pose_in_pe`` no motion is applied.
        """
        t_rel = self._memory_motion(geometry, current_pose)
        img_pe = pts_pe = None
        c = self.hidden_dim
        if geometry.camera_K is not None:
            pe = self.union_pe_func.image_pe(
                geometry.camera_K,
                geometry.lidar_from_cam,
                T_rel=t_rel,
                multi_modal=geometry.multi_modal,
            )
            img_pe = pe.flatten(2).transpose(1, 2).reshape(-1, c)
        if geometry.token_xyz is not None:
            pts_pe = self.union_pe_func.point_pe(
                geometry.token_xyz, T_rel=t_rel, multi_modal=geometry.multi_modal
            )
        return img_pe, pts_pe

    def gather_memory(
        self, geometry: FrameGeometry, memories: Sequence[ObjectMemoryInput]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Packs B objects' selected memories into padded key/value batches.

        Per object: for each slot, its image memory tokens (all cameras of that frame) and LiDAR
        memory tokens with their UMPE encodings recomputed under ego motion plus the slot's
        temporal embedding; then the object pointers with their time-gap (+ ego-pose) encodings.
        The encodings of one past frame are computed once for all objects.

        Returns:
            memory (B, L, C), memory_pos (B, L, C), valid (B, L) bool.
        """
        c = self.hidden_dim
        cur_pose = geometry.pose
        pe_cache: dict[FrameGeometry, tuple[torch.Tensor | None, torch.Tensor | None]] = {}
        tpos_table = self.maskmem_tpos_enc.reshape(self.maskmem_tpos_enc.shape[0], c)
        head = self.sam_head
        tokens_per_obj: list[list[torch.Tensor]] = []
        pos_per_obj: list[list[torch.Tensor]] = []
        for m in memories:
            toks: list[torch.Tensor] = []
            poss: list[torch.Tensor] = []
            for mem, tpos in m.slots:
                geom = mem.geometry
                if geom not in pe_cache:
                    pe_cache[geom] = self.memory_positional_encodings(geom, cur_pose)
                img_pe, pts_pe = pe_cache[geom]
                t_emb = tpos_table[tpos]
                if mem.image_tokens is not None and img_pe is not None:
                    toks.append(mem.image_tokens.flatten(2).transpose(1, 2).reshape(-1, c))
                    poss.append(img_pe + t_emb)
                if mem.lidar_tokens is not None and pts_pe is not None:
                    toks.append(mem.lidar_tokens)
                    poss.append(pts_pe + t_emb)
            if m.pointers:
                ptrs = [mem.obj_ptrs for mem, _ in m.pointers]
                counts = [p.shape[0] for p in ptrs]
                t_diff = torch.tensor(
                    [t for (_, t), n in zip(m.pointers, counts, strict=True) for _ in range(n)],
                    device=self.device,
                )
                pos = head.pointer_temporal_pe(t_diff, m.t_diff_max)
                if self.ego_pose_encoder is not None:
                    poses = torch.stack(
                        [
                            mem.geometry.pose.to(self.device, torch.float64)
                            for (mem, _), n in zip(m.pointers, counts, strict=True)
                            for _ in range(n)
                        ]
                    )
                    cur = cur_pose.to(self.device, torch.float64)[None].expand_as(poses)
                    pos = pos + self.ego_pose_encoder(cur, poses).to(pos.dtype)
                toks.append(torch.cat(ptrs, dim=0))
                poss.append(pos)
            if not toks:
                raise ValueError("an object's memory input has no usable tokens")
            tokens_per_obj.append(toks)
            pos_per_obj.append(poss)
        return pack_memories(tokens_per_obj, pos_per_obj)

    # ------------------------------------------------------------------ decoding
    def decode(
        self,
        features: FrameFeatures,
        image_tokens: torch.Tensor | None,
        lidar_tokens: torch.Tensor | None,
        prompts: Sequence[ObjectPrompts],
        multimask: torch.Tensor,
        dense_masks: torch.Tensor | None = None,
    ) -> TrackOutput:
        """Prompt encoding and decoding of B objects on (memory-conditioned) tokens.

        Args:
            features: the frame.
            image_tokens: (B, Ncam, C, h, w) or None; lidar_tokens: (B, N16, C) or None.
            prompts: per object.
            multimask: (B,) bool, ask for 3 masks and keep the best.
            dense_masks: (B,) bool, give the object's mask prompts to the prompt encoders as dense
                prompts (default all True).

        Returns:
            :class:`TrackOutput` (``mask_as_output`` all False).
        """
        b = len(prompts)
        img, lid = features.image, features.lidar
        dev = self.device
        if dense_masks is None:
            dense_masks = torch.ones(b, dtype=torch.bool)
        # Outputs, filled group by group.
        (img_masks, img_ious, img_scores, img_ptrs, pts_vox, pts_ious, pts_scores, pts_ptr) = (
            allocate_decode_outputs(features, b, self.hidden_dim, dev)
        )

        for flag in (False, True):
            rows = [i for i in range(b) if bool(multimask[i]) == flag]
            if not rows:
                continue
            idx = torch.tensor(rows, device=dev)
            group = [prompts[i] for i in rows]
            dense = [bool(dense_masks[i]) for i in rows]
            res = self._decode_group(
                features,
                None if image_tokens is None else image_tokens[idx],
                None if lidar_tokens is None else lidar_tokens[idx],
                group,
                dense,
                flag,
            )
            if img is not None:
                for ci, out in enumerate(res["img"]):
                    img_masks[idx, ci] = out.low_res_masks[:, 0].float()  # type: ignore[index]
                    img_ious[idx, ci] = _selected_iou(out)  # type: ignore[index]
                    img_scores[idx, ci] = out.object_score_logits[:, 0].float()  # type: ignore[index]
                    img_ptrs[idx, ci] = out.obj_ptr.to(img_ptrs.dtype)  # type: ignore[index,union-attr]
            if lid is not None:
                out = res["pts"][0]
                pts_vox[idx] = out.low_res_masks[:, 0].float()  # type: ignore[index]
                pts_ious[idx] = _selected_iou(out)  # type: ignore[index]
                pts_scores[idx] = out.object_score_logits[:, 0].float()  # type: ignore[index]
                pts_ptr[idx] = out.obj_ptr.to(pts_ptr.dtype)  # type: ignore[index,union-attr]

        image_out = lidar_out = None
        scores = []
        if img is not None:
            assert img_scores is not None and img_ptrs is not None
            image_out = ImageOutput(
                camera_ids=img.camera_ids,
                mask_logits=img_masks,  # type: ignore[arg-type]
                ious=img_ious,  # type: ignore[arg-type]
                object_score_logits=img_scores,
                camera_obj_ptrs=img_ptrs,
            )
            scores.append(img_scores.amax(dim=1))
        if lid is not None:
            assert pts_vox is not None
            point_logits = devoxelize(pts_vox.t(), lid.devox_rows, lid.devox_weights).t()
            lidar_out = LidarOutput(
                voxel_logits=pts_vox,
                point_logits=point_logits.contiguous(),
                ious=pts_ious,  # type: ignore[arg-type]
                object_score_logits=pts_scores,  # type: ignore[arg-type]
                obj_ptr=pts_ptr,  # type: ignore[arg-type]
            )
            scores.append(pts_scores)  # type: ignore[arg-type]
        return TrackOutput(
            image=image_out,
            lidar=lidar_out,
            object_score_logits=torch.stack(scores, dim=0).amax(dim=0),
            multimask=multimask.clone(),
            mask_as_output=torch.zeros(b, dtype=torch.bool),
        )

    def _camera_prompt_embeddings(
        self,
        features: FrameFeatures,
        ci: int,
        prompts: Sequence[ObjectPrompts],
        dense: Sequence[bool],
    ) -> tuple[PromptEmbeddings, torch.Tensor]:
        """Prompt embeddings of camera row ``ci`` for the objects; also (B,) "has clicks"."""
        img = features.image
        assert img is not None
        dev = self.device
        cam_id = img.camera_ids[ci]
        h0, w0 = img.camera_sizes[ci]
        mh, mw = self.image_size
        scale = torch.tensor([mw / w0, mh / h0], device=dev)
        rows = []
        clicked = []
        for p in prompts:
            cp = p.cameras.get(cam_id)
            coords, labels = _camera_points(cp, dev)
            # Camera pixels -> model-input pixels (as the released predictor scales clicks).
            rows.append((coords * scale, labels))
            clicked.append(labels.numel() > 0)
        coords, labels = _pad_points(rows, 2, dev)
        b = len(prompts)
        enc = self.sam_head.sam_prompt_encoder
        # The released prompt encoder evaluates the PE at pixel centres (+0.5).
        point_pe = self.union_pe_func.image_prompt_pe(
            enc.pixel_centres(coords),
            img.K[ci : ci + 1].expand(b, 3, 3),
            img.lidar_from_cam[ci : ci + 1].expand(b, 4, 4),
            multi_modal=features.multi_modal,
        ).to(self.no_mem_embed.dtype)
        emb = enc(labels, point_pe, None)
        mask_rows = [
            i
            for i, p in enumerate(prompts)
            if dense[i] and cam_id in p.cameras and p.cameras[cam_id].mask is not None
        ]
        if mask_rows:
            masks = torch.stack(
                [
                    _as_tensor(prompts[i].cameras[cam_id].mask, torch.float32, dev)  # type: ignore[arg-type]
                    for i in mask_rows
                ]
            )[:, None]
            new = enc.embed_masks(masks)
            emb = PromptEmbeddings(
                emb.sparse,
                _mask_rows(emb.dense, torch.tensor(mask_rows, device=dev), new),
                emb.valid,
            )
        return emb, torch.tensor(clicked, device=dev)

    def _lidar_prompt_embeddings(
        self, features: FrameFeatures, prompts: Sequence[ObjectPrompts], dense: Sequence[bool]
    ) -> PromptEmbeddings:
        lid = features.lidar
        assert lid is not None
        dev = self.device
        rows = [_lidar_points(p.lidar, lid.points_xyz, dev) for p in prompts]
        coords, labels = _pad_points(rows, 3, dev)
        enc = self.sam_head.psam_prompt_encoder
        point_pe = self.union_pe_func.point_prompt_pe(coords, multi_modal=features.multi_modal)
        emb = enc(labels, point_pe.to(self.no_mem_embed.dtype), None, hierarchy=lid.hierarchy)
        mask_rows, per_voxel_rows = [], []
        for i, p in enumerate(prompts):
            lp = p.lidar
            if lp is None:
                continue
            if lp.voxel_mask is not None:
                v = _as_tensor(lp.voxel_mask, torch.float32, dev).reshape(-1)
                if v.numel() != lid.num_s4:
                    raise ValueError(
                        f"LiDAR voxel_mask of {v.numel()} values for {lid.num_s4} stride-4 voxels"
                    )
                mask_rows.append(i)
                per_voxel_rows.append(v)
            elif dense[i] and lp.mask is not None:
                v = _as_tensor(lp.mask, torch.float32, dev).reshape(-1)
                if v.numel() != lid.num_points:
                    raise ValueError(
                        f"LiDAR mask prompt of {v.numel()} values for {lid.num_points} points"
                    )
                mask_rows.append(i)
                per_voxel_rows.append(scatter_mean(v[None], lid.point_to_s4, lid.num_s4)[0])
        if mask_rows:
            per_voxel = torch.stack(per_voxel_rows)
            new = enc.embed_masks(per_voxel.to(self.no_mem_embed.dtype), lid.hierarchy)
            emb = PromptEmbeddings(
                emb.sparse,
                _mask_rows(emb.dense, torch.tensor(mask_rows, device=dev), new),
                emb.valid,
            )
        return emb

    def _decode_group(
        self,
        features: FrameFeatures,
        image_tokens: torch.Tensor | None,
        lidar_tokens: torch.Tensor | None,
        prompts: Sequence[ObjectPrompts],
        dense: Sequence[bool],
        multimask: bool,
    ) -> dict[str, list[HeadOutput]]:
        """Decodes the objects of one multimask group; one HeadOutput per camera and LiDAR."""
        img, lid = features.image, features.lidar
        head = self.sam_head
        decoder = head.sam_mask_decoder
        released_order = head.released_prompt_order
        cam_emb: list[PromptEmbeddings] = []
        cam_clicked: list[torch.Tensor] = []
        if img is not None:
            for ci in range(img.num_cameras):
                e, k = self._camera_prompt_embeddings(features, ci, prompts, dense)
                cam_emb.append(e)
                cam_clicked.append(k)
        pts_emb = self._lidar_prompt_embeddings(features, prompts, dense) if lid else None

        results: dict[str, list[HeadOutput]] = {"img": [], "pts": []}
        if img is not None and image_tokens is not None:
            for ci in range(img.num_cameras):
                e = cam_emb[ci]
                if pts_emb is not None:
                    parts = [e.sparse, pts_emb.sparse] + ([e.sparse] if released_order else [])
                    valid = [e.valid, pts_emb.valid] + ([e.valid] if released_order else [])
                    sparse, val = torch.cat(parts, dim=1), torch.cat(valid, dim=1)
                else:
                    sparse, val = e.sparse, e.valid
                hr = [img.high_res[0][ci : ci + 1], img.high_res[1][ci : ci + 1]]
                if self.stage_runtime is not None:
                    raw = self.stage_runtime.mask_decoder_image(
                        image_embeddings=image_tokens[:, ci],
                        image_pe=img.pe[ci : ci + 1],
                        sparse=sparse,
                        dense=e.dense.expand(sparse.shape[0], -1, -1, -1),
                        high_res_0=hr[0],
                        high_res_1=hr[1],
                        sparse_valid=val,
                    )
                    dec = decoder._select(*raw, multimask)
                else:
                    dec = decoder.forward_image(
                        image_tokens[:, ci],
                        img.pe[ci : ci + 1],
                        sparse,
                        e.dense,
                        multimask,
                        hr,
                        val,
                    )
                results["img"].append(head._postprocess(dec, multimask))
        if lid is not None and lidar_tokens is not None and pts_emb is not None:
            sparse, val = pts_emb.sparse, pts_emb.valid
            if cam_emb:
                # Every camera with clicks contributes its tokens; with none, the first camera's
                # empty set does (for one camera: exactly the released [LiDAR, camera] tokens).
                clicked = torch.stack(cam_clicked, dim=1)  # (B, Ncam)
                include = clicked.clone()
                include[:, 0] |= ~clicked.any(dim=1)
                parts, valid = [sparse], [val]
                for ci, e in enumerate(cam_emb):
                    parts.append(e.sparse)
                    valid.append(e.valid & include[:, ci : ci + 1])
                sparse, val = torch.cat(parts, dim=1), torch.cat(valid, dim=1)
            if self.stage_runtime is not None:
                hier = lid.hierarchy
                raw = self.stage_runtime.mask_decoder_lidar(
                    token_embeddings=lidar_tokens,
                    token_pe=lid.pe.reshape(1, *lid.pe.shape[-2:]),
                    sparse=sparse,
                    dense=pts_emb.dense.expand(sparse.shape[0], -1, -1),
                    parent_s8=hier.parent_s8,
                    offset_s8=hier.offset_s8,
                    parent_s4=hier.parent_s4,
                    offset_s4=hier.offset_s4,
                    high_res_0=lid.high_res[0],
                    high_res_1=lid.high_res[1],
                    sparse_valid=val,
                )
                dec = decoder._select(*raw, multimask)
            else:
                dec = decoder.forward_lidar(
                    lidar_tokens,
                    lid.pe,
                    sparse,
                    pts_emb.dense,
                    multimask,
                    lid.hierarchy,
                    lid.high_res,
                    val,
                )
            results["pts"].append(head._postprocess(dec, multimask))
        return results

    # ------------------------------------------------------------------ mask prompts as output
    def _apply_mask_as_output(
        self,
        features: FrameFeatures,
        prompts: Sequence[ObjectPrompts],
        selected: torch.Tensor,
        out: TrackOutput,
    ) -> None:
        """The released ``_use_mask_as_output`` for the views that carry a mask prompt.

        Such a view's output is the mask itself (logits +-10, IoU 1, presence from the mask); its
        object pointer comes from the decoder run on the frame's features *without* memory, with
        ``mask_downsample_*`` of the mask as the dense prompt and no clicks. Views of the object
        without a mask keep their tracked prediction.
        """
        img, lid = features.image, features.lidar
        dev = self.device
        head = self.sam_head
        out_scale, out_bias = 20.0, -10.0
        objs = [i for i in range(len(prompts)) if bool(selected[i])]
        none_prompts = [ObjectPrompts() for _ in objs]
        empty_img = (
            [
                self._camera_prompt_embeddings(features, ci, none_prompts, [False] * len(objs))[0]
                for ci in range(img.num_cameras)
            ]
            if img is not None
            else []
        )
        empty_pts = (
            self._lidar_prompt_embeddings(features, none_prompts, [False] * len(objs))
            if lid is not None
            else None
        )
        if img is not None:
            assert out.image is not None
            mh, mw = self.image_size
            for ci, cam_id in enumerate(img.camera_ids):
                rows = [
                    k for k, i in enumerate(objs) if _camera_mask(prompts[i], cam_id) is not None
                ]
                if not rows:
                    continue
                masks = torch.stack(
                    [
                        _as_tensor(_camera_mask(prompts[objs[k]], cam_id), torch.float32, dev)
                        for k in rows
                    ]
                )[:, None]
                # Bring the mask to the model input as SAM2's add_new_mask does.
                if masks.shape[-2:] != (mh, mw):
                    masks = F.interpolate(
                        masks, size=(mh, mw), mode="bilinear", align_corners=False, antialias=True
                    )
                masks = (masks >= 0.5).float()
                high = masks * out_scale + out_bias
                low = F.interpolate(
                    high,
                    size=(mh // 4, mw // 4),
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
                present = (masks.flatten(1) > 0).any(dim=1)
                e = empty_img[ci]
                r = torch.tensor(rows, device=dev)
                sparse, val = e.sparse[r], e.valid[r]
                if empty_pts is not None:
                    sparse = torch.cat(
                        [sparse, empty_pts.sparse[r]]
                        + ([sparse] if head.released_prompt_order else []),
                        dim=1,
                    )
                    val = torch.cat(
                        [val, empty_pts.valid[r]] + ([val] if head.released_prompt_order else []),
                        dim=1,
                    )
                dense = head.sam_prompt_encoder.embed_masks(self.mask_downsample_img(masks))
                dec = head.sam_mask_decoder.forward_image(
                    img.tokens[ci : ci + 1].expand(len(rows), -1, -1, -1),
                    img.pe[ci : ci + 1],
                    sparse,
                    dense,
                    False,
                    [img.high_res[0][ci : ci + 1], img.high_res[1][ci : ci + 1]],
                    val,
                )
                ptr = _mask_pointer(head, dec, present, head.no_obj_ptr)
                obj_idx = torch.tensor([objs[k] for k in rows], device=dev)
                out.image.mask_logits[obj_idx, ci] = low[:, 0].to(out.image.mask_logits.dtype)
                out.image.ious[obj_idx, ci] = 1.0
                out.image.object_score_logits[obj_idx, ci] = present.float() * out_scale + out_bias
                out.image.camera_obj_ptrs[obj_idx, ci] = ptr.to(out.image.camera_obj_ptrs.dtype)
        if lid is not None:
            assert out.lidar is not None and empty_pts is not None
            rows = [k for k, i in enumerate(objs) if _lidar_mask(prompts[i]) is not None]
            if rows:
                per_point = torch.stack(
                    [_as_tensor(_lidar_mask(prompts[objs[k]]), torch.float32, dev) for k in rows]
                )
                if per_point.shape[1] != lid.num_points:
                    raise ValueError(
                        f"LiDAR mask prompt of {per_point.shape[1]} values for {lid.num_points} "
                        "points"
                    )
                per_point = (
                    (per_point > 0.5).float() if per_point.dtype != torch.bool else per_point
                )
                high = per_point * out_scale + out_bias  # (R, N)
                low = scatter_mean(high, lid.point_to_s4, lid.num_s4)
                present = (per_point > 0).any(dim=1)
                # mask_downsample_pts on the stride-1 voxels -> the backbone's stride-4 voxels.
                vox = point_masks_to_voxels(per_point, lid.point_to_voxel, lid.voxels_s1.shape[0])
                cache = lid.sparse_s16.cache
                dense_in = []
                for k in range(len(rows)):
                    x = SparseTensor(vox[k][:, None], lid.voxels_s1, stride=1, cache=cache)
                    y = self.mask_downsample_pts(x)
                    if y.coords.shape[0] != lid.num_s4:
                        raise RuntimeError(
                            "mask_downsample_pts did not land on the stride-4 voxels"
                        )
                    dense_in.append(y.feats[:, 0])
                dense = head.psam_prompt_encoder.embed_masks(torch.stack(dense_in), lid.hierarchy)
                r = torch.tensor(rows, device=dev)
                sparse, val = empty_pts.sparse[r], empty_pts.valid[r]
                if empty_img:
                    sparse = torch.cat([sparse, empty_img[0].sparse[r]], dim=1)
                    val = torch.cat([val, empty_img[0].valid[r]], dim=1)
                dec = head.sam_mask_decoder.forward_lidar(
                    lid.tokens[None].expand(len(rows), -1, -1),
                    lid.pe,
                    sparse,
                    dense,
                    False,
                    lid.hierarchy,
                    lid.high_res,
                    val,
                )
                ptr = _mask_pointer(head, dec, present, head.no_obj_ptr)
                obj_idx = torch.tensor([objs[k] for k in rows], device=dev)
                out.lidar.voxel_logits[obj_idx] = low.to(out.lidar.voxel_logits.dtype)
                out.lidar.point_logits[obj_idx] = high.to(out.lidar.point_logits.dtype)
                out.lidar.ious[obj_idx] = 1.0
                out.lidar.object_score_logits[obj_idx] = present.float() * out_scale + out_bias
                out.lidar.obj_ptr[obj_idx] = ptr.to(out.lidar.obj_ptr.dtype)
        sel = selected.to(out.mask_as_output.device)
        out.mask_as_output = out.mask_as_output | sel
        scores = [
            o.object_score_logits
            if o.object_score_logits.dim() == 1
            else o.object_score_logits.amax(dim=1)
            for o in (out.image, out.lidar)
            if o is not None
        ]
        out.object_score_logits = torch.stack(scores, dim=0).amax(dim=0)

    # ================================================================== 3. memory encoding
    def encode_memory(self, features: FrameFeatures, outputs: TrackOutput) -> list[ObjectMemory]:
        """Encode each object's predicted masks on this frame into its new memory.

        Args:
            features: the frame the outputs were predicted on.
            outputs: :meth:`track_step`'s output (its mask logits may be edited first, e.g. by
                a non-overlap constraint between objects).

        Returns:
            one :class:`ObjectMemory` per object.
        """
        cfg = self.config
        b = outputs.num_objects
        img, lid = features.image, features.lidar
        binarize = cfg.binarize_mask_from_pts_for_mem_enc
        img_mem = pts_mem = None
        if img is not None and outputs.image is not None:
            enc = self.image_memory_encoder
            ncam = img.num_cameras
            high = upsample_mask_logits(outputs.image.mask_logits, self.image_size)
            m_in = mask_logits_for_memory(
                high.reshape(b * ncam, 1, *self.image_size),
                cfg.sigmoid_scale_for_mem_enc,
                cfg.sigmoid_bias_for_mem_enc,
                binarize,
            ).to(img.tokens.dtype)
            if self.stage_runtime is not None:
                x = self.stage_runtime.image_memory_encoder(
                    img.tokens, m_in.reshape(b, ncam, *self.image_size)
                ).flatten(0, 1)
            else:
                m = enc.mask_downsampler(m_in)
                # The feature projection is object independent: once per camera, then
                # broadcast (ImageMemoryEncoder.forward, split to batch objects x cameras).
                proj = enc.pix_feat_proj(img.tokens)  # (Ncam, C, h, w)
                x = (proj[None] + m.reshape(b, ncam, *m.shape[1:])).flatten(0, 1)
                x = enc.out_proj(enc.fuser(x))
            if cfg.no_obj_embed_spatial:
                x = add_no_object_embedding(
                    x,
                    outputs.image.object_score_logits.reshape(b * ncam, 1),
                    self.no_obj_embed_spatial,
                    channels_last=False,
                )
            img_mem = x.reshape(b, ncam, *x.shape[1:])
        if lid is not None and outputs.lidar is not None:
            values = mask_logits_for_memory(
                outputs.lidar.point_logits,
                cfg.sigmoid_scale_for_mem_enc,
                cfg.sigmoid_bias_for_mem_enc,
                binarize,
            )
            vox = point_masks_to_voxels(values, lid.point_to_voxel, lid.voxels_s1.shape[0])
            x = self.point_memory_encoder(
                lid.sparse_s16,
                vox.to(lid.tokens.dtype),
                skip_mask_sigmoid=True,
                voxel_coords=lid.voxels_s1,
            )
            if cfg.no_obj_embed_spatial:
                x = add_no_object_embedding(
                    x, outputs.lidar.object_score_logits, self.no_obj_embed_spatial, True
                )
            pts_mem = x
        ptrs = outputs.obj_ptrs
        return [
            ObjectMemory(
                geometry=features.geometry,
                image_tokens=None if img_mem is None else img_mem[i],
                lidar_tokens=None if pts_mem is None else pts_mem[i],
                obj_ptrs=ptrs[i],
                object_score_logits=outputs.object_score_logits[i],
            )
            for i in range(b)
        ]

    # ------------------------------------------------------------------ output helpers
    def camera_mask_logits(
        self, features: FrameFeatures, outputs: TrackOutput, camera_id: int
    ) -> torch.Tensor:
        """(B, H, W) mask logits of camera ``camera_id`` at its original resolution."""
        if features.image is None or outputs.image is None:
            raise ValueError("this frame has no camera")
        ci = features.image.index_of(camera_id)
        return upsample_mask_logits(
            outputs.image.mask_logits[:, ci], features.image.camera_sizes[ci]
        )


# ---------------------------------------------------------------------------------------------
# Prompt helpers.


def _lidar_prompt_empty(p: LidarPrompt) -> bool:
    return p.points is None and p.box is None and p.mask is None


def _camera_mask(p: ObjectPrompts, cam_id: int) -> ArrayLike | None:
    cp = p.cameras.get(cam_id)
    return None if cp is None else cp.mask


def _lidar_mask(p: ObjectPrompts) -> ArrayLike | None:
    return None if p.lidar is None else p.lidar.mask


def _labels_for(points: ArrayLike, labels: ArrayLike | None, dev: torch.device) -> torch.Tensor:
    if labels is None:
        raise ValueError("point prompts need labels (1 positive, 0 negative)")
    lab = _as_tensor(labels, torch.int64, dev).reshape(-1)
    if lab.numel() != len(points):
        raise ValueError(f"{lab.numel()} labels for {len(points)} points")
    if bool(((lab != NEGATIVE_LABEL) & (lab != 1)).any()):
        raise ValueError("click labels must be 0 (negative) or 1 (positive)")
    return lab


def _camera_points(cp: CameraPrompt | None, dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Box corners (labels 2, 3) first, then clicks (as SAM2 orders them): (n, 2), (n,)."""
    coords = [torch.zeros(0, 2, device=dev)]
    labels = [torch.zeros(0, dtype=torch.int64, device=dev)]
    if cp is not None:
        if cp.box is not None:
            box = _as_tensor(cp.box, torch.float32, dev).reshape(2, 2)
            coords.append(box)
            labels.append(torch.tensor([2, 3], dtype=torch.int64, device=dev))
        if cp.points is not None:
            pts = _as_tensor(cp.points, torch.float32, dev).reshape(-1, 2)
            coords.append(pts)
            labels.append(_labels_for(pts, cp.labels, dev))
    return torch.cat(coords), torch.cat(labels)


def _lidar_points(
    lp: LidarPrompt | None, sweep_xyz: torch.Tensor, dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """3D box corners first (labels 2, 3), then clicks: (n, 3), (n,)."""
    coords = [torch.zeros(0, 3, device=dev)]
    labels = [torch.zeros(0, dtype=torch.int64, device=dev)]
    if lp is not None:
        if lp.box is not None:
            box = _as_tensor(lp.box, torch.float32, dev).reshape(-1)
            if box.numel() == 4:
                c, lab = bev_boxes_to_points_3d(box[None], points=sweep_xyz)
            elif box.numel() == 6:
                c = box.reshape(1, 2, 3)
                lab = torch.tensor([[2, 3]], dtype=torch.int64, device=dev)
            else:
                raise ValueError("a LiDAR box is (4,) BEV [x0, y0, x1, y1] or (6,) 3D")
            coords.append(c[0])
            labels.append(lab[0].to(torch.int64))
        if lp.points is not None:
            pts = _as_tensor(lp.points, torch.float32, dev).reshape(-1, 3)
            coords.append(pts)
            labels.append(_labels_for(pts, lp.labels, dev))
    return torch.cat(coords), torch.cat(labels)


def _selected_iou(out: HeadOutput) -> torch.Tensor:
    rows = torch.arange(out.ious.shape[0], device=out.ious.device)
    return out.ious[rows, out.best_index].float()


def _mask_pointer(
    head: SAMHead, dec: DecoderOutput, present: torch.Tensor, no_obj_ptr: torch.Tensor | None
) -> torch.Tensor:
    """Object pointer of a mask prompt taken as output: the head's pointer of the single-mask
    token, then the presence decided by the mask itself (released ``_use_mask_as_output``)."""
    obj_ptr = head.object_pointer(dec.sam_tokens_out[:, 0], dec.object_score_logits)
    lam = present.to(obj_ptr.dtype)[:, None]
    if head.pred_obj_scores and no_obj_ptr is not None:
        if head.fixed_no_obj_ptr:
            obj_ptr = lam * obj_ptr
        obj_ptr = obj_ptr + (1 - lam) * no_obj_ptr.to(obj_ptr.dtype)
    return obj_ptr


def build_sam4d_model(config: SAM4DConfig | str | None = None) -> SAM4D:
    """The model of a config (or config name), randomly initialised, in eval mode."""
    cfg = get_config(config) if isinstance(config, str) else config
    return SAM4D(cfg).eval()


__all__ = [
    "CameraPrompt",
    "FrameFeatures",
    "FrameGeometry",
    "ImageFeatures",
    "ImageOutput",
    "LidarFeatures",
    "LidarOutput",
    "LidarPrompt",
    "ObjectMemory",
    "ObjectMemoryInput",
    "ObjectPrompts",
    "SAM4D",
    "TrackOutput",
    "build_sam4d_model",
    "set_stage_clock",
    "stage_clock",
    "stage_timer",
    "upsample_mask_logits",
]


def allocate_decode_outputs(
    features: FrameFeatures, batch: int, hidden_dim: int, device: torch.device
) -> tuple[torch.Tensor | None, ...]:
    """Empty per-object output buffers of one decode, filled multimask group by multimask group.

    Returns (img_masks (B, Ncam, 4h, 4w), img_ious (B, Ncam), img_scores (B, Ncam),
    img_ptrs (B, Ncam, C), pts_vox (B, N4), pts_ious (B,), pts_scores (B,), pts_ptr (B, C));
    the image ones are None without cameras, the LiDAR ones None without a sweep.
    """
    img, lid = features.image, features.lidar
    img_out: tuple[torch.Tensor | None, ...] = (None, None, None, None)
    if img is not None:
        ncam, h4w4 = img.num_cameras, (4 * img.grid_size[0], 4 * img.grid_size[1])
        img_out = (
            torch.empty(batch, ncam, *h4w4, device=device),
            torch.empty(batch, ncam, device=device),
            torch.empty(batch, ncam, device=device),
            torch.empty(batch, ncam, hidden_dim, device=device),
        )
    pts_out: tuple[torch.Tensor | None, ...] = (None, None, None, None)
    if lid is not None:
        pts_out = (
            torch.empty(batch, lid.num_s4, device=device),
            torch.empty(batch, device=device),
            torch.empty(batch, device=device),
            torch.empty(batch, hidden_dim, device=device),
        )
    return img_out + pts_out
