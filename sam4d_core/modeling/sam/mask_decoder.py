"""SAM4D's mask decoder: one SAM2-style decoder shared by the camera and the LiDAR branch.

Both branches share the output tokens (object score, IoU, 4 mask tokens), the two-way
transformer, the hypernetwork MLPs, the IoU head and the object-score head. They differ only in how
the transformer's scene tokens are brought back to stride 4 before the per-mask dot product:

- camera: SAM2's ``output_upscaling`` (two 2x2 transposed convs, 16 -> 8 -> 4) with the projected
  stride-8 / stride-4 image features added at each step (``conv_s1`` / ``conv_s0``,
  ``use_high_res_features``) -> logits on the stride-4 pixel grid (the caller resizes to the
  image);
- LiDAR (``output_upscaling_pts``): the same shape of head on voxels: two 2x2x2 transposed sparse
  convs 16 -> 8 -> 4 (a stride-8 voxel takes its stride-16 parent's feature through the kernel
  slice of its position in the parent), BatchNorm after the first, with the projected stride-8
  (256 ch -> ``conv_s1_pts``) and stride-4 (128 ch -> ``conv_s0_pts``) MinkUNet features added
  -> logits per stride-4 voxel (the caller interpolates them to the points). As released, the
  activations of this branch are identities (LeakyReLU with slope 1); the class is a parameter.

Multimask (3 masks + IoU predictions) is used for single clicks and for tracking; which mask to keep
(argmax predicted IoU) and the object pointer are decided by :class:`~.sam_head.SAMHead`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from sam4d_core.modeling.blocks import MLP, LayerNorm2d
from sam4d_core.modeling.sam.common import expand_batch
from sam4d_core.modeling.sam.transformer import TwoWayTransformer
from sam4d_core.modeling.sparse.hierarchy import (
    PointwiseConv,
    SparseUpsample,
    VoxelHierarchy,
    batch_norm_objects,
)

MODALITIES = ("img", "pts")


@dataclass
class DecoderOutput:
    """Mask decoder output for B objects (M = 3 with multimask output, else 1).

    Attributes:
        masks: (B, M, 4h, 4w) camera logits at stride 4, or (B, M, N4) LiDAR logits per stride-4
            voxel.
        iou_pred: (B, M) predicted IoU of each mask.
        sam_tokens_out: (B, 3, C) multimask tokens (multimask output with
            ``use_multimask_token_for_obj_ptr``) or (B, 1, C) the single-mask token; the source of
            the object pointer.
        object_score_logits: (B, 1) object-presence logit (> 0: present).
    """

    masks: torch.Tensor
    iou_pred: torch.Tensor
    sam_tokens_out: torch.Tensor
    object_score_logits: torch.Tensor


class MaskDecoder(nn.Module):
    """Predict masks of one object per batch row from scene tokens and prompt embeddings.

    Args:
        transformer_dim: token width C (256).
        transformer: the two-way transformer (default: depth 2, 8 heads, MLP 2048, as SAM4D).
        num_multimask_outputs: masks in multimask mode (3); one more token for the single mask.
        activation: activation of the camera upscaling head (GELU).
        iou_head_depth, iou_head_hidden_dim: IoU MLP (3 layers, 256).
        use_high_res_features: add the projected stride-8/stride-4 backbone features while
            upscaling (SAM4D: True).
        iou_prediction_use_sigmoid: IoU head outputs in [0, 1] (SAM4D: True).
        dynamic_multimask_via_stability, dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh: SAM2's fallback from an unstable single mask to the
            best multimask in eval (SAM4D: off).
        pred_obj_scores: predict object presence with an extra token (SAM4D: True).
        pred_obj_scores_mlp: 3-layer MLP object-score head instead of a linear one (SAM4D: True).
        use_multimask_token_for_obj_ptr: in multimask mode return the 3 multimask tokens for the
            object pointer (SAM4D: True).
        modalities: which upscaling heads to build: "img", "pts" or both.
        lidar_high_res_channels: channels of the MinkUNet stride-4 / stride-8 features
            (default C/2, C: 128, 256).
        lidar_activation: activation of the LiDAR upscaling head (released: identity).

    State dict (official ``pure_model.head.sam.sam_mask_decoder.``): ``transformer.*``,
    ``iou_token``, ``mask_tokens``, ``obj_score_token``, ``output_upscaling.{0,1,3}``,
    ``output_upscaling_pts.{0.kernel [8,C,C/4], 1.<BatchNorm>, 3.kernel [8,C/4,C/8], 3.bias}``,
    ``conv_s0``, ``conv_s1``, ``conv_s0_pts.kernel [C/2,C/8]``, ``conv_s1_pts.kernel [C,C/4]``,
    ``output_hypernetworks_mlps.N.layers.M``, ``iou_prediction_head.layers.M``,
    ``pred_obj_score_head(.layers.M)``.
    """

    def __init__(
        self,
        transformer_dim: int = 256,
        transformer: nn.Module | None = None,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
        use_high_res_features: bool = True,
        iou_prediction_use_sigmoid: bool = True,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = True,
        pred_obj_scores_mlp: bool = True,
        use_multimask_token_for_obj_ptr: bool = True,
        modalities: Sequence[str] = MODALITIES,
        lidar_high_res_channels: tuple[int, int] | None = None,
        lidar_activation: type[nn.Module] = nn.Identity,
    ) -> None:
        super().__init__()
        unknown = set(modalities) - set(MODALITIES)
        if unknown or not modalities:
            raise ValueError(
                f"modalities must be a non-empty subset of {MODALITIES}, got {modalities}"
            )
        c = transformer_dim
        self.transformer_dim = c
        self.modalities = tuple(modalities)
        self.transformer = (
            transformer
            if transformer is not None
            else TwoWayTransformer(depth=2, embedding_dim=c, num_heads=8, mlp_dim=2048)
        )
        self.num_multimask_outputs = num_multimask_outputs
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, c)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, c)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, c)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr

        if "img" in self.modalities:
            self.output_upscaling = nn.Sequential(
                nn.ConvTranspose2d(c, c // 4, kernel_size=2, stride=2),
                LayerNorm2d(c // 4),
                activation(),
                nn.ConvTranspose2d(c // 4, c // 8, kernel_size=2, stride=2),
                activation(),
            )
        if "pts" in self.modalities:
            self.output_upscaling_pts = nn.Sequential(
                SparseUpsample(c, c // 4),
                nn.BatchNorm1d(c // 4),
                lidar_activation(),
                SparseUpsample(c // 4, c // 8, bias=True),
                lidar_activation(),
            )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features and "img" in self.modalities:
            self.conv_s0 = nn.Conv2d(c, c // 8, kernel_size=1, stride=1)
            self.conv_s1 = nn.Conv2d(c, c // 4, kernel_size=1, stride=1)
        if use_high_res_features and "pts" in self.modalities:
            ch_s4, ch_s8 = lidar_high_res_channels or (c // 2, c)
            self.conv_s0_pts = PointwiseConv(ch_s4, c // 8)
            self.conv_s1_pts = PointwiseConv(ch_s8, c // 4)

        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(c, c, c // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            c,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head = MLP(c, c, 1, 3) if pred_obj_scores_mlp else nn.Linear(c, 1)
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    # ----------------------------------------------------------------------------------------
    # High-resolution feature projections (once per frame, shared by all objects and clicks).

    def project_image_high_res(
        self, feat_s4: torch.Tensor, feat_s8: torch.Tensor
    ) -> list[torch.Tensor]:
        """(B, C, 4h, 4w), (B, C, 2h, 2w) FPN features -> [(B, C/8, 4h, 4w), (B, C/4, 2h, 2w)]."""
        return [self.conv_s0(feat_s4), self.conv_s1(feat_s8)]

    def project_lidar_high_res(
        self, feat_s4: torch.Tensor, feat_s8: torch.Tensor
    ) -> list[torch.Tensor]:
        """(..., N4, 128), (..., N8, 256) MinkUNet features -> [(..., N4, C/8), (..., N8, C/4)]."""
        return [self.conv_s0_pts(feat_s4), self.conv_s1_pts(feat_s8)]

    # ----------------------------------------------------------------------------------------
    # Shared parts.

    @property
    def num_output_tokens(self) -> int:
        """Tokens the decoder puts before the prompt tokens ([obj score?, IoU, mask x4])."""
        return 1 + self.num_mask_tokens + int(self.pred_obj_scores)

    def _output_tokens(self, sparse: torch.Tensor, sparse_valid: torch.Tensor | None):
        """Prepend [obj score?, IoU, mask x4] tokens to the prompt tokens."""
        weights = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            weights.insert(0, self.obj_score_token.weight)
        out = torch.cat(weights, dim=0).to(sparse.dtype)
        b = sparse.shape[0]
        tokens = torch.cat([out.unsqueeze(0).expand(b, -1, -1), sparse], dim=1)
        valid = None
        if sparse_valid is not None:
            valid = torch.cat([sparse_valid.new_ones(b, out.shape[0]), sparse_valid], dim=1)
        return tokens, valid

    def _token_heads(self, hs: torch.Tensor):
        """Transformer token outputs -> hypernetwork weights, IoU, mask tokens, object score."""
        s = 1 if self.pred_obj_scores else 0
        iou_token_out = hs[:, s]
        mask_tokens_out = hs[:, s + 1 : s + 1 + self.num_mask_tokens]
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i]) for i, mlp in enumerate(self.output_hypernetworks_mlps)],
            dim=1,
        )  # (B, 4, C/8)
        iou_pred = self.iou_prediction_head(iou_token_out)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0])
        else:
            # No presence head: logit 10, i.e. "present" (sigmoid(10) ~ 1), as SAM2.
            object_score_logits = 10.0 * iou_pred.new_ones(iou_pred.shape[0], 1)
        return hyper_in, iou_pred, mask_tokens_out, object_score_logits

    def _stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """IoU between the masks thresholded at +delta and -delta, per (B, M) mask."""
        flat = mask_logits.flatten(2)
        delta = self.dynamic_multimask_stability_delta
        area_i = (flat > delta).sum(dim=-1).float()
        area_u = (flat > -delta).sum(dim=-1).float()
        return torch.where(area_u > 0, area_i / area_u.clamp_min(1), torch.ones_like(area_u))

    def _dynamic_multimask(self, masks: torch.Tensor, iou_pred: torch.Tensor):
        """Single mask unless it is unstable, then the best multimask (SAM2, eval only)."""
        multi_iou = iou_pred[:, 1:]
        best = multi_iou.argmax(dim=-1)
        rows = torch.arange(masks.shape[0], device=masks.device)
        best_masks = masks[:, 1:][rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)
        single = masks[:, 0:1]
        stable = self._stability_scores(single) >= self.dynamic_multimask_stability_thresh
        shape = (masks.shape[0],) + (1,) * (masks.dim() - 1)
        out_masks = torch.where(stable.view(shape), single, best_masks)
        out_iou = torch.where(stable, iou_pred[:, 0:1], best_iou)
        return out_masks, out_iou

    def _select(
        self,
        masks: torch.Tensor,
        iou_pred: torch.Tensor,
        mask_tokens_out: torch.Tensor,
        object_score_logits: torch.Tensor,
        multimask_output: bool,
    ) -> DecoderOutput:
        if multimask_output:
            masks, iou_pred = masks[:, 1:], iou_pred[:, 1:]
        elif self.dynamic_multimask_via_stability and not self.training:
            masks, iou_pred = self._dynamic_multimask(masks, iou_pred)
        else:
            masks, iou_pred = masks[:, 0:1], iou_pred[:, 0:1]
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            # SAM2's rationale: the pointer is trained from the single-mask token (tracking always
            # follows several clicks in training), so it is the object-memory token.
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return DecoderOutput(masks, iou_pred, sam_tokens_out, object_score_logits)

    # ----------------------------------------------------------------------------------------
    # Branches.

    def forward_image(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        high_res_features: Sequence[torch.Tensor] | None = None,
        sparse_valid: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Camera branch.

        Args:
            image_embeddings: (B or 1, C, h, w) stride-16 features (memory-conditioned per object).
            image_pe: (1 or B, C, h, w) their positional encoding (UMPE).
            sparse_prompt_embeddings: (B, T, C) prompt tokens.
            dense_prompt_embeddings: (B or 1, C, h, w) mask-prompt / no-mask embedding.
            multimask_output: return the 3 multimask outputs instead of the single mask.
            high_res_features: [(B or 1, C/8, 4h, 4w), (B or 1, C/4, 2h, 2w)] already projected by
                :meth:`project_image_high_res`; required with ``use_high_res_features``.
            sparse_valid: (B, T) bool, False for padding tokens.

        Returns:
            :class:`DecoderOutput` with masks (B, M, 4h, 4w).
        """
        raw = self.forward_image_raw(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            high_res_features,
            sparse_valid,
        )
        return self._select(*raw, multimask_output)

    def forward_image_raw(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        high_res_features: Sequence[torch.Tensor] | None = None,
        sparse_valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward_image` before the multimask selection (the exported decoder stage).

        Returns:
            masks (B, 4, 4h, 4w), iou_pred (B, 4), mask tokens (B, 4, C), object score logits
            (B, 1); :meth:`_select` makes a :class:`DecoderOutput` of them.
        """
        b = sparse_prompt_embeddings.shape[0]
        src = expand_batch(image_embeddings, b) + dense_prompt_embeddings
        _, c, h, w = src.shape
        tokens, valid = self._output_tokens(sparse_prompt_embeddings, sparse_valid)
        hs, src = self.transformer(
            src.flatten(2).transpose(1, 2), image_pe.flatten(2).transpose(1, 2), tokens, valid
        )
        src = src.transpose(1, 2).reshape(b, c, h, w)
        if not self.use_high_res_features:
            up = self.output_upscaling(src)
        else:
            if high_res_features is None:
                raise ValueError("use_high_res_features needs the projected stride-4/8 features")
            dc1, ln1, act1, dc2, act2 = self.output_upscaling
            feat_s0, feat_s1 = high_res_features
            up = act1(ln1(dc1(src) + feat_s1))
            up = act2(dc2(up) + feat_s0)
        hyper_in, iou_pred, mask_tokens_out, obj_logits = self._token_heads(hs)
        _, cu, hu, wu = up.shape
        masks = (hyper_in @ up.reshape(b, cu, hu * wu)).reshape(b, -1, hu, wu)
        return masks, iou_pred, mask_tokens_out, obj_logits

    def forward_lidar(
        self,
        token_embeddings: torch.Tensor,
        token_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        hierarchy: VoxelHierarchy,
        high_res_features: Sequence[torch.Tensor] | None = None,
        sparse_valid: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """LiDAR branch.

        Args:
            token_embeddings: (B or 1, N16, C) stride-16 voxel features (memory-conditioned).
            token_pe: (N16, C) or (B or 1, N16, C) their positional encoding (UMPE).
            sparse_prompt_embeddings: (B, T, C) prompt tokens.
            dense_prompt_embeddings: (B or 1, N16, C) mask-prompt / no-mask embedding.
            multimask_output: return the 3 multimask outputs instead of the single mask.
            hierarchy: links stride-4 -> 8 -> 16 (rows in the backbone's order).
            high_res_features: [(N4, C/8) or (B, N4, C/8), (N8, C/4) or (B, N8, C/4)] already
                projected by :meth:`project_lidar_high_res`; required with
                ``use_high_res_features``.
            sparse_valid: (B, T) bool, False for padding tokens.

        Returns:
            :class:`DecoderOutput` with masks (B, M, N4).
        """
        raw = self.forward_lidar_raw(
            token_embeddings,
            token_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            hierarchy.parent_s8,
            hierarchy.offset_s8,
            hierarchy.parent_s4,
            hierarchy.offset_s4,
            high_res_features,
            sparse_valid,
            missing_s8=hierarchy.missing_s8,
            missing_s4=hierarchy.missing_s4,
        )
        return self._select(*raw, multimask_output)

    def forward_lidar_raw(
        self,
        token_embeddings: torch.Tensor,
        token_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        parent_s8: torch.Tensor,
        offset_s8: torch.Tensor,
        parent_s4: torch.Tensor,
        offset_s4: torch.Tensor,
        high_res_features: Sequence[torch.Tensor] | None = None,
        sparse_valid: torch.Tensor | None = None,
        missing_s8: bool = False,
        missing_s4: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward_lidar` before the multimask selection, with the voxel hierarchy as
        plain index tensors (:class:`VoxelHierarchy` fields; the exported LiDAR decoder stage).
        ``missing_s8`` / ``missing_s4``: some parent is -1 (exact-release mode; the exported
        stage always takes that path, which gives the same values when none is).

        Returns:
            masks (B, 4, N4), iou_pred (B, 4), mask tokens (B, 4, C), object score logits (B, 1).
        """
        b = sparse_prompt_embeddings.shape[0]
        src = expand_batch(token_embeddings, b) + dense_prompt_embeddings
        pe = token_pe if token_pe.dim() == 3 else token_pe.unsqueeze(0)
        tokens, valid = self._output_tokens(sparse_prompt_embeddings, sparse_valid)
        hs, src = self.transformer(src, pe, tokens, valid)
        dc1, bn, act1, dc2, act2 = self.output_upscaling_pts
        up = dc1(src, parent_s8, offset_s8, missing_s8)  # (B, N8, C/4)
        if self.use_high_res_features:
            if high_res_features is None:
                raise ValueError("use_high_res_features needs the projected stride-4/8 features")
            feat_s0, feat_s1 = high_res_features
            up = up + feat_s1
        up = act1(batch_norm_objects(bn, up))
        up = dc2(up, parent_s4, offset_s4, missing_s4)  # (B, N4, C/8)
        if self.use_high_res_features:
            up = up + feat_s0
        up = act2(up)
        hyper_in, iou_pred, mask_tokens_out, obj_logits = self._token_heads(hs)
        masks = hyper_in @ up.transpose(1, 2)  # (B, 4, N4)
        return masks, iou_pred, mask_tokens_out, obj_logits


__all__ = ["MODALITIES", "DecoderOutput", "MaskDecoder"]
