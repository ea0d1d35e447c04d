"""Prompt encoders of the SAM head: camera (2D) and LiDAR (3D) points, boxes and masks.

Each encoder turns prompts into

- sparse embeddings (B, T, C), one token per prompt point: the point's positional encoding (PE)
  plus a learned label embedding (negative click, positive click, box corner 1, box corner 2), or
  a learned "not a point" embedding (label -1) in place of both;
- a dense embedding added to the scene tokens: the encoded mask prompt, or a learned "no mask"
  embedding everywhere;
- a validity mask (B, T) that lets objects with different numbers of clicks share a batch.

Positional encodings are not computed here: SAM4D encodes prompts with UMPE, the same unified
camera/LiDAR encoding as the scene tokens (a 2D click gets its image PE plus the MLP of its camera
ray, a 3D click the Fourier features of its xyz plus the MLP of the point), and UMPE lives in
:mod:`sam4d_core.modeling.umpe`. The encoders take the (B, N, C) PE of each prompt point, or
coordinates plus a callable ``pe_fn`` that computes it (the standalone/test path).

Labels (SAM2's convention, plus one for batching):

====  =======================================================================================
 1    positive click
 0    negative click
 2    box corner with the smaller coordinates (top-left in an image; see the 3D box helpers)
 3    box corner with the larger coordinates
-1    "not a point": PE dropped, ``not_a_point_embed`` instead. A real token that takes part in
      attention (SAM2 appends one to every point set, and SAM4D feeds one when a modality has
      no click); kept for checkpoint fidelity.
-2    padding (:data:`PAD_LABEL`): a token that is masked out of all attention, so padding never
      changes the output. Use it to batch objects with different numbers of clicks.
====  =======================================================================================

Boxes are given as their two corner points with labels 2 and 3, placed before the clicks (as
SAM2/SAM4D do); see :func:`boxes_to_points_2d`, :func:`bev_boxes_to_points_3d`,
:func:`boxes3d_to_points`.

Cross-modal prompting: SAM4D gives the prompts of either modality to both decoders;
:func:`cross_modal_prompts` concatenates the sparse tokens accordingly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from sam4d_core.modeling.blocks import LayerNorm2d
from sam4d_core.modeling.sparse.hierarchy import (
    PointwiseConv,
    SparseDownsampleBlock,
    VoxelHierarchy,
)

NEGATIVE_LABEL = 0
POSITIVE_LABEL = 1
BOX_MIN_CORNER_LABEL = 2
BOX_MAX_CORNER_LABEL = 3
NOT_A_POINT_LABEL = -1
PAD_LABEL = -2

PointPEFn = Callable[[torch.Tensor], torch.Tensor]
"""Maps prompt coordinates (B, N, D) to their positional encodings (B, N, C)."""


class PromptEmbeddings(NamedTuple):
    """Output of a prompt encoder.

    Attributes:
        sparse: (B, T, C) point/box tokens.
        dense: (B, C, h, w) for the camera, (B, N16, C) for the LiDAR tokens.
        valid: (B, T) bool, False for padding tokens (label -2).
    """

    sparse: torch.Tensor
    dense: torch.Tensor
    valid: torch.Tensor


class _PointEmbedder(nn.Module):
    """Label embeddings shared by both encoders (SAM2 names: ``point_embeddings.N``,
    ``not_a_point_embed``)."""

    num_point_embeddings = 4  # negative, positive, two box corners

    def __init__(self, embed_dim: int) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.point_embeddings = nn.ModuleList(
            nn.Embedding(1, embed_dim) for _ in range(self.num_point_embeddings)
        )
        self.not_a_point_embed = nn.Embedding(1, embed_dim)

    def _device(self) -> torch.device:
        return self.not_a_point_embed.weight.device

    def embed_points(
        self,
        point_pe: torch.Tensor | None,
        labels: torch.Tensor,
        pad: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens for labelled points.

        Args:
            point_pe: (B, N, C) PE of each point, or None (only valid when every label is < 0).
            labels: (B, N) integer labels (see the module docstring).
            pad: append one "not a point" token, as SAM2's prompt encoder does whenever no box is
                passed separately (always, in SAM4D).

        Returns:
            tokens (B, N + pad, C) and their validity (B, N + pad) bool.
        """
        lab = labels.to(torch.int64)
        b, n = lab.shape
        weight = self.not_a_point_embed.weight
        if point_pe is None:
            point_pe = weight.new_zeros(b, n, self.embed_dim)
        if point_pe.shape[:2] != lab.shape:
            raise ValueError(f"point_pe {tuple(point_pe.shape)} does not match labels {(b, n)}")
        dtype = point_pe.dtype
        # The table rows: not-a-point, then labels 0..3 (index = label + 1).
        table = torch.cat([weight] + [e.weight for e in self.point_embeddings], dim=0).to(dtype)
        keep_pe = (lab >= 0).unsqueeze(-1)
        # where() rather than a product, so a non-finite PE of a dropped point cannot leak in.
        tokens = torch.where(keep_pe, point_pe, torch.zeros((), dtype=dtype, device=lab.device))
        known = ((lab >= NOT_A_POINT_LABEL) & (lab <= BOX_MAX_CORNER_LABEL)).unsqueeze(-1)
        label_emb = table[(lab + 1).clamp(0, self.num_point_embeddings)]
        tokens = tokens + torch.where(
            known, label_emb, torch.zeros((), dtype=dtype, device=lab.device)
        )
        valid = lab != PAD_LABEL
        if pad:
            tokens = torch.cat([tokens, weight.to(dtype).expand(b, 1, -1)], dim=1)
            valid = torch.cat([valid, valid.new_ones(b, 1)], dim=1)
        return tokens, valid

    def _sparse(
        self,
        labels: torch.Tensor | None,
        point_pe: torch.Tensor | None,
        batch_size: int,
        pad: bool,
        dtype: torch.dtype,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if labels is None:
            device = self._device()
            return (
                torch.zeros(batch_size, 0, self.embed_dim, dtype=dtype, device=device),
                torch.zeros(batch_size, 0, dtype=torch.bool, device=device),
            )
        return self.embed_points(point_pe, labels, pad=pad)


def _batch_size(*tensors: torch.Tensor | None, default: int | None) -> int:
    for t in tensors:
        if t is not None:
            return t.shape[0]
    return 1 if default is None else default


class PromptEncoder2D(_PointEmbedder):
    """Camera prompt encoder (SAM2's ``PromptEncoder`` with externally computed PE).

    Args:
        embed_dim: token width (256).
        image_embedding_size: (h, w) of the stride-16 token grid (48, 48 at 768x768).
        input_image_size: (H, W) of the model's input image (768, 768).
        mask_in_chans: hidden channels of the mask downscaler (16).
        activation: activation of the mask downscaler (GELU).

    State dict (official ``pure_model.head.sam.sam_prompt_encoder.``): ``point_embeddings.{0..3}``,
    ``not_a_point_embed``, ``mask_downscaling.{0,1,3,4,6}`` (conv 1->4 k2s2, LayerNorm2d, conv
    4->16 k2s2, LayerNorm2d, conv 16->256 k1), ``no_mask_embed``.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        image_embedding_size: tuple[int, int] = (48, 48),
        input_image_size: tuple[int, int] = (768, 768),
        mask_in_chans: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__(embed_dim)
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        # Mask prompts enter at stride 4 (the resolution of the decoder's mask logits).
        self.mask_input_size = (4 * image_embedding_size[0], 4 * image_embedding_size[1])
        self.mask_downscaling = nn.Sequential(
            nn.Conv2d(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans // 4),
            activation(),
            nn.Conv2d(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNorm2d(mask_in_chans),
            activation(),
            nn.Conv2d(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    @staticmethod
    def pixel_centres(coords: torch.Tensor) -> torch.Tensor:
        """Integer pixel coordinates (x, y) -> the pixel centres the PE is evaluated at (+0.5)."""
        return coords + 0.5

    def embed_masks(self, masks: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) mask prompt (logits or 0/1) -> (B, C, h, w) dense embedding.

        Masks of another size are first resized to ``mask_input_size`` (bilinear, antialiased),
        as SAM2 does with a full-resolution mask.
        """
        if masks.dim() != 4 or masks.shape[1] != 1:
            raise ValueError(f"expected masks (B, 1, H, W), got {tuple(masks.shape)}")
        dtype = self.mask_downscaling[0].weight.dtype
        if masks.shape[-2:] != self.mask_input_size:
            masks = F.interpolate(
                masks.float(),
                size=self.mask_input_size,
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        return self.mask_downscaling(masks.to(dtype))

    def no_mask_dense(self, batch_size: int) -> torch.Tensor:
        """(B, C, h, w) "no mask" dense embedding (an expanded view, no copy)."""
        h, w = self.image_embedding_size
        return self.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(batch_size, -1, h, w)

    def forward(
        self,
        labels: torch.Tensor | None = None,
        point_pe: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        *,
        coords: torch.Tensor | None = None,
        pe_fn: PointPEFn | None = None,
        batch_size: int | None = None,
        pad: bool = True,
    ) -> PromptEmbeddings:
        """Encode camera prompts.

        Args:
            labels: (B, N) point labels, or None for no point tokens at all.
            point_pe: (B, N, C) PE of the points (from UMPE). Alternatively give ``coords`` and
                ``pe_fn``.
            masks: (B, 1, H, W) mask prompt or None.
            coords: (B, N, 2) pixel coordinates (x, y) in the model's input image.
            pe_fn: called with the pixel centres ``coords + 0.5`` (B, N, 2) when ``point_pe`` is
                None.
            batch_size: B when no prompt tensor is given.
            pad: append SAM2's "not a point" token to the points.

        Returns:
            :class:`PromptEmbeddings` with dense (B, C, h, w).
        """
        if point_pe is None and coords is not None:
            if pe_fn is None:
                raise ValueError("coords given without point_pe nor pe_fn")
            point_pe = pe_fn(self.pixel_centres(coords))
        b = _batch_size(labels, masks, default=batch_size)
        dtype = point_pe.dtype if point_pe is not None else self.no_mask_embed.weight.dtype
        sparse, valid = self._sparse(labels, point_pe, b, pad, dtype)
        dense = self.embed_masks(masks) if masks is not None else self.no_mask_dense(b)
        return PromptEmbeddings(sparse, dense, valid)


class PromptEncoder3D(_PointEmbedder):
    """LiDAR prompt encoder (the released ``psam_prompt_encoder``).

    Points are 3D positions in metres in the LiDAR frame; the caller supplies their PE. The mask
    prompt is a value per stride-4 voxel (the resolution of the decoder's LiDAR logits), brought
    down to the stride-16 tokens by two 2x2x2 strided sparse convs with BatchNorm + ReLU and a
    1x1x1 conv, as released. A per-point mask is first averaged into the stride-4 voxels
    (:func:`sam4d_core.modeling.sparse.hierarchy.scatter_mean`).

    Args:
        embed_dim: token width (256).
        mask_in_chans: hidden channels of the mask downscaler (16).

    State dict (official ``pure_model.head.sam.psam_prompt_encoder.``): ``point_embeddings.{0..3}``,
    ``not_a_point_embed``, ``mask_downscaling.0.net.{0.kernel [8,1,4], 1.<BatchNorm>}``,
    ``mask_downscaling.1.net.{0.kernel [8,4,16], 1.<BatchNorm>}``, ``mask_downscaling.2.kernel
    [16,256]``, ``no_mask_embed``.
    """

    def __init__(self, embed_dim: int = 256, mask_in_chans: int = 16) -> None:
        super().__init__(embed_dim)
        self.mask_downscaling = nn.Sequential(
            SparseDownsampleBlock(1, mask_in_chans // 4),
            SparseDownsampleBlock(mask_in_chans // 4, mask_in_chans),
            PointwiseConv(mask_in_chans, embed_dim),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def embed_masks(self, masks: torch.Tensor, hierarchy: VoxelHierarchy) -> torch.Tensor:
        """(B, N4) mask prompt per stride-4 voxel (also (B, 1, N4) or (B, 1, N4, 1), the released
        layout) -> (B, N16, C) dense embedding per LiDAR token."""
        if masks.dim() == 4:
            masks = masks.squeeze(3)
        if masks.dim() == 3:
            masks = masks.squeeze(1)
        if masks.dim() != 2 or masks.shape[1] != hierarchy.num_s4:
            raise ValueError(
                f"expected masks (B, {hierarchy.num_s4}) on the stride-4 voxels, got "
                f"{tuple(masks.shape)}"
            )
        down1, down2, proj = self.mask_downscaling
        x = masks.to(proj.kernel.dtype).unsqueeze(-1)
        h = hierarchy
        x = down1(x, h.parent_s4, h.offset_s4, h.num_s8, h.missing_s4)
        x = down2(x, h.parent_s8, h.offset_s8, h.num_s16, h.missing_s8)
        return proj(x)

    def no_mask_dense(self, batch_size: int, num_tokens: int) -> torch.Tensor:
        """(B, N16, C) "no mask" dense embedding (an expanded view, no copy)."""
        return self.no_mask_embed.weight.reshape(1, 1, -1).expand(batch_size, num_tokens, -1)

    def forward(
        self,
        labels: torch.Tensor | None = None,
        point_pe: torch.Tensor | None = None,
        masks: torch.Tensor | None = None,
        *,
        hierarchy: VoxelHierarchy | None = None,
        num_tokens: int | None = None,
        coords: torch.Tensor | None = None,
        pe_fn: PointPEFn | None = None,
        batch_size: int | None = None,
        pad: bool = True,
    ) -> PromptEmbeddings:
        """Encode LiDAR prompts.

        Args:
            labels: (B, N) point labels, or None for no point tokens at all.
            point_pe: (B, N, C) PE of the points (from UMPE). Alternatively ``coords`` + ``pe_fn``.
            masks: (B, N4) mask prompt on the stride-4 voxels, or None.
            hierarchy: voxel links (needed with ``masks``; gives the token count).
            num_tokens: N16 when no ``hierarchy`` is given.
            coords: (B, N, 3) points in metres, LiDAR frame; ``pe_fn`` is called with them.
            batch_size: B when no prompt tensor is given.
            pad: append SAM2's "not a point" token to the points.

        Returns:
            :class:`PromptEmbeddings` with dense (B, N16, C).
        """
        if point_pe is None and coords is not None:
            if pe_fn is None:
                raise ValueError("coords given without point_pe nor pe_fn")
            point_pe = pe_fn(coords)
        b = _batch_size(labels, masks, default=batch_size)
        dtype = point_pe.dtype if point_pe is not None else self.no_mask_embed.weight.dtype
        sparse, valid = self._sparse(labels, point_pe, b, pad, dtype)
        if masks is not None:
            if hierarchy is None:
                raise ValueError("a LiDAR mask prompt needs the voxel hierarchy")
            dense = self.embed_masks(masks, hierarchy)
        else:
            n16 = hierarchy.num_s16 if hierarchy is not None else num_tokens
            if n16 is None:
                raise ValueError("give hierarchy or num_tokens for the no-mask embedding")
            dense = self.no_mask_dense(b, n16)
        return PromptEmbeddings(sparse, dense, valid)


def cross_modal_prompts(
    img: PromptEmbeddings, pts: PromptEmbeddings, released_order: bool = True
) -> tuple[PromptEmbeddings, PromptEmbeddings]:
    """Give each decoder the sparse prompt tokens of both modalities.

    Args:
        img, pts: the camera and LiDAR prompt embeddings of the same B objects.
        released_order: reproduce the released code, which first extends the LiDAR set to
            [lidar, camera] and then builds the camera set from that extended set: camera tokens
            = [camera, lidar, camera] (the camera prompts twice). The released checkpoint was
            trained that way. False: camera = [camera, lidar], LiDAR = [lidar, camera].

    Returns:
        (camera, LiDAR) embeddings with concatenated sparse tokens and validity; dense unchanged.
    """
    pts_sparse = torch.cat([pts.sparse, img.sparse], dim=1)
    pts_valid = torch.cat([pts.valid, img.valid], dim=1)
    if released_order:
        img_sparse = torch.cat([img.sparse, pts_sparse], dim=1)
        img_valid = torch.cat([img.valid, pts_valid], dim=1)
    else:
        img_sparse = torch.cat([img.sparse, pts.sparse], dim=1)
        img_valid = torch.cat([img.valid, pts.valid], dim=1)
    return (
        PromptEmbeddings(img_sparse, img.dense, img_valid),
        PromptEmbeddings(pts_sparse, pts.dense, pts_valid),
    )


def boxes_to_points_2d(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 4) image boxes ``[x0, y0, x1, y1]`` in pixels -> corners (B, 2, 2) and labels (B, 2)
    = [2, 3] (top-left, bottom-right)."""
    coords = boxes.reshape(-1, 2, 2)
    labels = torch.tensor(
        [BOX_MIN_CORNER_LABEL, BOX_MAX_CORNER_LABEL], dtype=torch.int64, device=boxes.device
    ).expand(coords.shape[0], 2)
    return coords, labels


def boxes3d_to_points(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 6) axis-aligned LiDAR boxes ``[x_min, y_min, z_min, x_max, y_max, z_max]`` (metres) ->
    the two diagonal corners (B, 2, 3), labels (B, 2) = [2, 3] (min corner, max corner)."""
    coords = boxes.reshape(-1, 2, 3)
    labels = torch.tensor(
        [BOX_MIN_CORNER_LABEL, BOX_MAX_CORNER_LABEL], dtype=torch.int64, device=boxes.device
    ).expand(coords.shape[0], 2)
    return coords, labels


def bev_boxes_to_points_3d(
    boxes: torch.Tensor,
    points: torch.Tensor | None = None,
    z_range: torch.Tensor | tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bird's-eye-view LiDAR boxes -> two 3D corner prompts with labels 2 / 3.

    A BEV box has no height, but the 3D prompt is a point in 3D. Our choice: the corners are
    ``(x_min, y_min, z_lo)`` (label 2) and ``(x_max, y_max, z_hi)`` (label 3), the diagonal of the
    axis-aligned 3D box that a user drawing in BEV means; ``[z_lo, z_hi]`` is

    1. ``z_range`` when given ((2,) or (B, 2)), else
    2. the z extent of the sweep's ``points`` inside the BEV rectangle, else
    3. ``[0, 0]`` (the LiDAR origin's height; also for a box with no point inside).

    Args:
        boxes: (B, 4) ``[x_min, y_min, x_max, y_max]`` in metres, LiDAR frame.
        points: optional (N, >=3) sweep points (x, y, z first).
        z_range: optional explicit heights.

    Returns:
        coords (B, 2, 3) and labels (B, 2).
    """
    b = boxes.shape[0]
    lo = boxes[:, :2]
    hi = boxes[:, 2:4]
    if z_range is not None:
        z = torch.as_tensor(z_range, dtype=boxes.dtype, device=boxes.device).expand(b, 2)
    elif points is not None and points.shape[0] > 0:
        xy = points[None, :, :2].to(boxes.dtype)
        inside = ((xy >= lo[:, None]) & (xy <= hi[:, None])).all(dim=-1)  # (B, N)
        pz = points[None, :, 2].to(boxes.dtype).expand(b, -1)
        inf = torch.tensor(float("inf"), dtype=boxes.dtype, device=boxes.device)
        z_lo = torch.where(inside, pz, inf).amin(dim=1)
        z_hi = torch.where(inside, pz, -inf).amax(dim=1)
        any_inside = inside.any(dim=1)
        zero = torch.zeros((), dtype=boxes.dtype, device=boxes.device)
        z = torch.stack(
            [torch.where(any_inside, z_lo, zero), torch.where(any_inside, z_hi, zero)], 1
        )
    else:
        z = boxes.new_zeros(b, 2)
    corners = torch.stack(
        [torch.cat([lo, z[:, :1]], dim=1), torch.cat([hi, z[:, 1:]], dim=1)], dim=1
    )
    return boxes3d_to_points(corners.reshape(b, 6))


__all__ = [
    "BOX_MAX_CORNER_LABEL",
    "BOX_MIN_CORNER_LABEL",
    "NEGATIVE_LABEL",
    "NOT_A_POINT_LABEL",
    "PAD_LABEL",
    "POSITIVE_LABEL",
    "PointPEFn",
    "PromptEmbeddings",
    "PromptEncoder2D",
    "PromptEncoder3D",
    "bev_boxes_to_points_3d",
    "boxes3d_to_points",
    "boxes_to_points_2d",
    "cross_modal_prompts",
]
