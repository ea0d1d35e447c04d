"""The records that pass between the blocks of :class:`~sam4d_core.modeling.sam4d_base.SAM4D`.

:class:`FrameFeatures` (:meth:`SAM4D.encode_frame`'s output, with its :class:`ImageFeatures`,
:class:`LidarFeatures` and :class:`FrameGeometry`), :class:`ObjectMemory` (one object's memory
of one frame, :meth:`SAM4D.encode_memory`'s output), :class:`ObjectMemoryInput` (the memories
one object attends to) and :class:`TrackOutput` (:meth:`SAM4D.track_step`'s output, with its
:class:`ImageOutput` and :class:`LidarOutput`). B is the number of objects, Ncam the number of
present cameras, C the model width, h x w the stride-16 image grid, N the sweep's points and
N4 / N16 its stride-4 / stride-16 voxels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from sam4d_core.modeling.memory_bank import MemorySelection
from sam4d_core.modeling.sparse import SparseTensor
from sam4d_core.modeling.sparse.hierarchy import VoxelHierarchy

ArrayLike = np.ndarray | torch.Tensor
"""A numpy array or a torch tensor (prompts and sensor data may be either)."""


def as_tensor(x: ArrayLike, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor of ``dtype`` on ``device`` (no copy when it already is one)."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), dtype=dtype, device=device)


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


__all__ = [
    "ArrayLike",
    "FrameFeatures",
    "FrameGeometry",
    "ImageFeatures",
    "ImageOutput",
    "LidarFeatures",
    "LidarOutput",
    "ObjectMemory",
    "ObjectMemoryInput",
    "TrackOutput",
    "as_tensor",
]
