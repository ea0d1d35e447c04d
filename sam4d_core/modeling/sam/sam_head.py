"""The SAM head of SAM4D (``pure_model.head.sam``): prompts -> masks, scores and object pointers.

One call decodes B objects on one frame in the camera and/or LiDAR modality:

1. each modality's prompts are encoded (:mod:`.prompt_encoder`); a modality without clicks gets one
   "not a point" token (plus the one SAM2 appends), as released;
2. with both modalities, each decoder receives the prompt tokens of both
   (:func:`.prompt_encoder.cross_modal_prompts`);
3. the shared :class:`.mask_decoder.MaskDecoder` predicts stride-4 mask logits (camera pixels or
   LiDAR stride-4 voxels), IoU and object-presence scores;
4. masks of absent objects are set to :data:`NO_OBJ_SCORE`; in multimask mode the mask with the
   highest predicted IoU is selected, and its token (``use_multimask_token_for_obj_ptr``) becomes
   the object pointer through ``obj_ptr_proj``; with ``pred_obj_scores`` the pointer of an absent
   object is replaced by (``fixed_no_obj_ptr``) or blended with the learned ``no_obj_ptr``.

Each modality yields its own pointer, as released. The temporal encoding of stored pointers is
:meth:`SAMHead.pointer_temporal_pe` (sine of the signed frame gap through ``obj_ptr_tpos_proj``);
the memory adds :class:`~sam4d_core.modeling.ego_pose_encoder.EgoPoseEncoder` of the ego motion
to it (:func:`pointer_pos_enc`).

Resizing the camera logits to the image and interpolating LiDAR logits to the points are left to
the caller (they depend on the camera and the sweep, not on the head).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.init import trunc_normal_

from sam4d_core.modeling.blocks import MLP
from sam4d_core.modeling.ego_pose_encoder import EgoPoseEncoder
from sam4d_core.modeling.sam.common import get_1d_sine_pe
from sam4d_core.modeling.sam.mask_decoder import MODALITIES, DecoderOutput, MaskDecoder
from sam4d_core.modeling.sam.prompt_encoder import (
    NOT_A_POINT_LABEL,
    PromptEmbeddings,
    PromptEncoder2D,
    PromptEncoder3D,
    cross_modal_prompts,
)
from sam4d_core.modeling.sam.transformer import TwoWayTransformer
from sam4d_core.modeling.sparse.hierarchy import VoxelHierarchy

NO_OBJ_SCORE = -1024.0
"""Mask logit written where the object is predicted absent (SAM2's placeholder)."""


@dataclass
class ImagePrompts:
    """Camera inputs of the head for B objects.

    Attributes:
        features: (B or 1, C, h, w) stride-16 features (memory-conditioned per object).
        pe: (1 or B, C, h, w) their positional encoding (UMPE).
        high_res: [(B or 1, C/8, 4h, 4w), (B or 1, C/4, 2h, 2w)] stride-4/8 features already
            projected by ``sam_mask_decoder.project_image_high_res`` (None without high-res).
        point_pe: (B, N, C) PE of the click / box-corner points (UMPE), or None.
        point_labels: (B, N) labels, or None for no click in this modality.
        mask: (B, 1, H, W) mask prompt (logits at stride 4, or a 0/1 mask of any size), or None.
    """

    features: torch.Tensor
    pe: torch.Tensor
    high_res: Sequence[torch.Tensor] | None = None
    point_pe: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class LidarPrompts:
    """LiDAR inputs of the head for B objects.

    Attributes:
        features: (B or 1, N16, C) stride-16 voxel features (memory-conditioned per object).
        pe: (N16, C) or (B or 1, N16, C) their positional encoding (UMPE).
        hierarchy: voxel links stride 4 -> 8 -> 16.
        high_res: [(N4 or B, N4, C/8), (N8 or B, N8, C/4)] MinkUNet stride-4/8 features already
            projected by ``sam_mask_decoder.project_lidar_high_res``.
        point_pe: (B, N, C) PE of the 3D click / box-corner points (UMPE), or None.
        point_labels: (B, N) labels, or None for no click in this modality.
        mask: (B, N4) mask prompt per stride-4 voxel (logits, or 0/1), or None.
    """

    features: torch.Tensor
    pe: torch.Tensor
    hierarchy: VoxelHierarchy
    high_res: Sequence[torch.Tensor] | None = None
    point_pe: torch.Tensor | None = None
    point_labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None


@dataclass
class HeadOutput:
    """Per-modality result for B objects (M = 3 in multimask mode, else 1).

    Attributes:
        low_res_multimasks: (B, M, 4h, 4w) camera or (B, M, N4) LiDAR logits, NO_OBJ_SCORE where
            the object is absent.
        ious: (B, M) predicted IoUs.
        low_res_masks: (B, 1, ...) the selected mask (highest predicted IoU in multimask mode).
        best_index: (B,) int64 index of the selected mask among the M.
        obj_ptr: (B, C) object pointer.
        object_score_logits: (B, 1) presence logits.
        raw_multimasks: ``low_res_multimasks`` before absent objects were set to NO_OBJ_SCORE
            (training supervises the mask of an object that is present but predicted absent).
    """

    low_res_multimasks: torch.Tensor
    ious: torch.Tensor
    low_res_masks: torch.Tensor
    best_index: torch.Tensor
    obj_ptr: torch.Tensor
    object_score_logits: torch.Tensor
    raw_multimasks: torch.Tensor | None = None


def use_multimask(
    num_points: int,
    is_init_cond_frame: bool,
    multimask_output_in_sam: bool = True,
    multimask_output_for_tracking: bool = True,
    multimask_min_pt_num: int = 0,
    multimask_max_pt_num: int = 1,
) -> bool:
    """Whether to ask the decoder for 3 masks (defaults: SAM4D's released settings).

    ``num_points`` counts the clicks of the frame (a box counts as 2; SAM4D counts those of its
    first prompted modality; 0 when tracking). With the defaults: tracking frames and single clicks
    use multimask output, two or more points do not.
    """
    return (
        multimask_output_in_sam
        and (is_init_cond_frame or multimask_output_for_tracking)
        and multimask_min_pt_num <= num_points <= multimask_max_pt_num
    )


class SAMHead(nn.Module):
    """Prompt encoders, the shared mask decoder and the object-pointer projections.

    Args:
        embed_dim: token width C (256).
        mem_dim: memory width (256; pointer temporal PE output).
        image_size: model input size (768, square as released), or (H, W) for a non-square input.
        backbone_stride: stride of the image tokens (16).
        modalities: "img", "pts" or both.
        mask_in_chans: hidden channels of the mask prompt downscalers (16).
        num_multimask_outputs: 3.
        transformer_depth, transformer_heads, transformer_mlp_dim: two-way transformer (2, 8, 2048).
        iou_head_depth, iou_head_hidden_dim: IoU MLP (3, 256).
        use_high_res_features, iou_prediction_use_sigmoid, pred_obj_scores, pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr: decoder options (SAM4D: all True).
        use_obj_ptrs_in_encoder: build ``obj_ptr_proj`` (and ``no_obj_ptr`` with presence scores).
        use_mlp_for_obj_ptr_proj: ``obj_ptr_proj`` is a 3-layer MLP instead of a Linear (True).
        proj_tpos_enc_in_obj_ptrs: ``obj_ptr_tpos_proj`` is a Linear(C, mem_dim) (True).
        fixed_no_obj_ptr: an absent object's pointer is exactly ``no_obj_ptr`` (True); otherwise it
            is added to the projected token.
        soft_no_obj_ptr: blend by sigmoid(object score) instead of a hard presence decision.
        released_prompt_order: cross-modal prompt concatenation as released (camera decoder sees
            the camera prompts twice); see :func:`.prompt_encoder.cross_modal_prompts`.
        lidar_activation: activation of the LiDAR upscaling head (released: identity).

    The parameters mirror ``pure_model.head.sam.{sam_prompt_encoder, psam_prompt_encoder,
    sam_mask_decoder, obj_ptr_proj, obj_ptr_tpos_proj, no_obj_ptr}``.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        mem_dim: int = 256,
        image_size: int | tuple[int, int] = 768,
        backbone_stride: int = 16,
        modalities: Sequence[str] = MODALITIES,
        mask_in_chans: int = 16,
        num_multimask_outputs: int = 3,
        transformer_depth: int = 2,
        transformer_heads: int = 8,
        transformer_mlp_dim: int = 2048,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
        use_obj_ptrs_in_encoder: bool = True,
        use_mlp_for_obj_ptr_proj: bool = True,
        proj_tpos_enc_in_obj_ptrs: bool = True,
        fixed_no_obj_ptr: bool = True,
        soft_no_obj_ptr: bool = False,
        released_prompt_order: bool = True,
        lidar_activation: type[nn.Module] = nn.Identity,
    ) -> None:
        super().__init__()
        if fixed_no_obj_ptr and not (pred_obj_scores and use_obj_ptrs_in_encoder):
            raise ValueError("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder")
        self.embed_dim = embed_dim
        self.mem_dim = mem_dim
        self.image_size = image_size
        self.modalities = tuple(modalities)
        self.pred_obj_scores = pred_obj_scores
        self.fixed_no_obj_ptr = fixed_no_obj_ptr
        self.soft_no_obj_ptr = soft_no_obj_ptr
        self.released_prompt_order = released_prompt_order
        if "img" in self.modalities:
            hw = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self.sam_prompt_encoder = PromptEncoder2D(
                embed_dim=embed_dim,
                image_embedding_size=(hw[0] // backbone_stride, hw[1] // backbone_stride),
                input_image_size=hw,
                mask_in_chans=mask_in_chans,
            )
        if "pts" in self.modalities:
            self.psam_prompt_encoder = PromptEncoder3D(embed_dim, mask_in_chans=mask_in_chans)
        self.sam_mask_decoder = MaskDecoder(
            transformer_dim=embed_dim,
            transformer=TwoWayTransformer(
                depth=transformer_depth,
                embedding_dim=embed_dim,
                num_heads=transformer_heads,
                mlp_dim=transformer_mlp_dim,
            ),
            num_multimask_outputs=num_multimask_outputs,
            iou_head_depth=iou_head_depth,
            iou_head_hidden_dim=iou_head_hidden_dim,
            use_high_res_features=use_high_res_features,
            iou_prediction_use_sigmoid=iou_prediction_use_sigmoid,
            pred_obj_scores=pred_obj_scores,
            pred_obj_scores_mlp=pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=use_multimask_token_for_obj_ptr,
            modalities=self.modalities,
            lidar_activation=lidar_activation,
        )
        if use_obj_ptrs_in_encoder:
            self.obj_ptr_proj: nn.Module = (
                MLP(embed_dim, embed_dim, embed_dim, 3)
                if use_mlp_for_obj_ptr_proj
                else nn.Linear(embed_dim, embed_dim)
            )
        else:
            self.obj_ptr_proj = nn.Identity()
        self.obj_ptr_tpos_proj: nn.Module = (
            nn.Linear(embed_dim, mem_dim) if proj_tpos_enc_in_obj_ptrs else nn.Identity()
        )
        self.proj_tpos_enc_in_obj_ptrs = proj_tpos_enc_in_obj_ptrs
        self.no_obj_ptr: nn.Parameter | None = None
        if pred_obj_scores and use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, embed_dim))
            trunc_normal_(self.no_obj_ptr, std=0.02)

    # ----------------------------------------------------------------------------------------

    def encode_image_prompts(self, img: ImagePrompts, batch_size: int) -> PromptEmbeddings:
        """Camera prompt embeddings of ``batch_size`` objects (no clicks: one not-a-point)."""
        labels, point_pe = _default_points(img.point_labels, img.point_pe, batch_size, img.features)
        return self.sam_prompt_encoder(labels, point_pe, img.mask)

    def encode_lidar_prompts(self, pts: LidarPrompts, batch_size: int) -> PromptEmbeddings:
        """LiDAR prompt embeddings of ``batch_size`` objects (no clicks: one not-a-point)."""
        labels, point_pe = _default_points(pts.point_labels, pts.point_pe, batch_size, pts.features)
        return self.psam_prompt_encoder(labels, point_pe, pts.mask, hierarchy=pts.hierarchy)

    def object_pointer(
        self, sam_token: torch.Tensor, object_score_logits: torch.Tensor
    ) -> torch.Tensor:
        """(B, C) chosen output token, (B, 1) presence logits -> (B, C) object pointer."""
        obj_ptr = self.obj_ptr_proj(sam_token)
        if self.pred_obj_scores and self.no_obj_ptr is not None:
            if self.soft_no_obj_ptr:
                present = object_score_logits.sigmoid()
            else:
                present = (object_score_logits > 0).to(obj_ptr.dtype)
            if self.fixed_no_obj_ptr:
                obj_ptr = present * obj_ptr
            obj_ptr = obj_ptr + (1 - present) * self.no_obj_ptr.to(obj_ptr.dtype)
        return obj_ptr

    def pointer_temporal_pe(self, t_diff: torch.Tensor, t_diff_max: int) -> torch.Tensor:
        """Temporal encoding of object pointers.

        Args:
            t_diff: (P,) signed frame gap of each pointer (current - pointer frame, sign flipped
                when tracking in reverse; SAM4D uses the signed gap).
            t_diff_max: normaliser: the maximum number of pointers - 1 (7 for SAM4D's 8).

        Returns:
            (P, mem_dim): ``obj_ptr_tpos_proj(sine_pe(t_diff / t_diff_max))``.
        """
        dim = self.embed_dim if self.proj_tpos_enc_in_obj_ptrs else self.mem_dim
        proj = self.obj_ptr_tpos_proj
        dtype = proj.weight.dtype if isinstance(proj, nn.Linear) else torch.float32
        pos = t_diff.to(torch.float32) / max(t_diff_max, 1)
        return self.obj_ptr_tpos_proj(get_1d_sine_pe(pos, dim=dim).to(dtype))

    def _postprocess(
        self, out: DecoderOutput, multimask_output: bool, best: torch.Tensor | None = None
    ) -> HeadOutput:
        """The decoder's output -> :class:`HeadOutput`: masks of absent objects set to
        ``NO_OBJ_SCORE``, the selected mask (best predicted IoU when multimask, or ``best``:
        (B,) int64 indices chosen elsewhere) and its token's object pointer (the released
        ``_forward_sam_heads`` after the decoder)."""
        masks = out.masks
        b = masks.shape[0]
        if self.pred_obj_scores:
            # The mask used for memory is a hard choice between object and no object.
            present = (out.object_score_logits > 0).view(b, *([1] * (masks.dim() - 1)))
            absent = torch.full((), NO_OBJ_SCORE, dtype=masks.dtype, device=masks.device)
            masks = torch.where(present, masks, absent)
        tokens = out.sam_tokens_out
        if multimask_output:
            if best is None:
                best = out.iou_pred.argmax(dim=-1)
            rows = torch.arange(b, device=masks.device)
            low_res = masks[rows, best].unsqueeze(1)
            token = tokens[rows, best] if tokens.shape[1] > 1 else tokens[:, 0]
        else:
            best = torch.zeros(b, dtype=torch.int64, device=masks.device)
            low_res = masks
            token = tokens[:, 0]
        obj_ptr = self.object_pointer(token, out.object_score_logits)
        return HeadOutput(
            masks, out.iou_pred, low_res, best, obj_ptr, out.object_score_logits, out.masks
        )

    def forward(
        self,
        img: ImagePrompts | None = None,
        pts: LidarPrompts | None = None,
        multimask_output: bool = False,
        batch_size: int | None = None,
    ) -> dict[str, HeadOutput]:
        """Decode B objects in the given modalities.

        Args:
            img: camera inputs, or None.
            pts: LiDAR inputs, or None.
            multimask_output: see :func:`use_multimask`.
            batch_size: B when it cannot be read from the prompts (default: the features' batch).

        Returns:
            {"img": HeadOutput, "pts": HeadOutput} for the modalities given.
        """
        if img is None and pts is None:
            raise ValueError("give at least one modality")
        b = batch_size or _infer_batch(img, pts)
        prompts: dict[str, PromptEmbeddings] = {}
        if img is not None:
            prompts["img"] = self.encode_image_prompts(img, b)
        if pts is not None:
            prompts["pts"] = self.encode_lidar_prompts(pts, b)
        if img is not None and pts is not None:
            prompts["img"], prompts["pts"] = cross_modal_prompts(
                prompts["img"], prompts["pts"], released_order=self.released_prompt_order
            )
        outputs: dict[str, HeadOutput] = {}
        if img is not None:
            p = prompts["img"]
            dec = self.sam_mask_decoder.forward_image(
                img.features, img.pe, p.sparse, p.dense, multimask_output, img.high_res, p.valid
            )
            outputs["img"] = self._postprocess(dec, multimask_output)
        if pts is not None:
            p = prompts["pts"]
            dec = self.sam_mask_decoder.forward_lidar(
                pts.features,
                pts.pe,
                p.sparse,
                p.dense,
                multimask_output,
                pts.hierarchy,
                pts.high_res,
                p.valid,
            )
            outputs["pts"] = self._postprocess(dec, multimask_output)
        return outputs


def _default_points(
    labels: torch.Tensor | None,
    point_pe: torch.Tensor | None,
    batch_size: int,
    like: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No click in a modality: one "not a point" (SAM4D pads with a label -1 point)."""
    if labels is not None:
        return labels, point_pe
    labels = torch.full((batch_size, 1), NOT_A_POINT_LABEL, dtype=torch.int64, device=like.device)
    return labels, None


def _infer_batch(img: ImagePrompts | None, pts: LidarPrompts | None) -> int:
    sizes = []
    for p in (img, pts):
        if p is None:
            continue
        for t in (p.point_labels, p.mask):
            if t is not None:
                sizes.append(t.shape[0])
        sizes.append(p.features.shape[0])
    return max(sizes)


def pointer_pos_enc(
    head: SAMHead,
    t_diff: torch.Tensor,
    t_diff_max: int,
    pose_encoder: EgoPoseEncoder | None = None,
    cur_pose: torch.Tensor | None = None,
    ptr_poses: torch.Tensor | None = None,
    lidar_aug: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positional encoding of P stored object pointers, as SAM4D's memory builds it.

    ``head.pointer_temporal_pe(t_diff, t_diff_max) + pose_encoder(cur_pose, ptr_poses, lidar_aug)``

    Args:
        t_diff: (P,) signed frame gaps.
        t_diff_max: max pointers - 1.
        pose_encoder: the top-level ``ego_pose_encoder`` (None: temporal PE only).
        cur_pose: (4, 4) current LiDAR -> world.
        ptr_poses: (P, 4, 4) LiDAR -> world of each pointer's frame.
        lidar_aug: optional (4, 4) augmentation matrix.

    Returns:
        (P, mem_dim).
    """
    pos = head.pointer_temporal_pe(t_diff, t_diff_max)
    if pose_encoder is not None:
        if cur_pose is None or ptr_poses is None:
            raise ValueError("the pose encoding needs cur_pose and ptr_poses")
        pose = pose_encoder(cur_pose.expand_as(ptr_poses), ptr_poses, lidar_aug)
        pos = pos + pose.to(pos.dtype)
    return pos


__all__ = [
    "NO_OBJ_SCORE",
    "HeadOutput",
    "ImagePrompts",
    "LidarPrompts",
    "SAMHead",
    "pointer_pos_enc",
    "use_multimask",
]
