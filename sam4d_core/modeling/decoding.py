"""Prompt encoding and mask decoding of :class:`~sam4d_core.modeling.sam4d_base.SAM4D`.

Objects are decoded in two groups (single-mask, multimask); per group, one decoder run per present
camera and one for the LiDAR. Mask prompts without clicks are taken as the output (the released
``_use_mask_as_output``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from sam4d_core.modeling.cross_modal_selection import (
    lidar_point_logits,
    mask_agreement,
    point_pixels,
    select_jointly,
)
from sam4d_core.modeling.memory_encoder import point_masks_to_voxels
from sam4d_core.modeling.prompts import (
    ObjectPrompts,
    camera_prompt_points,
    lidar_prompt_points,
    pad_prompt_points,
)
from sam4d_core.modeling.records import (
    ArrayLike,
    FrameFeatures,
    ImageOutput,
    LidarOutput,
    TrackOutput,
    as_tensor,
)
from sam4d_core.modeling.sam import HeadOutput, PromptEmbeddings, SAMHead
from sam4d_core.modeling.sam.mask_decoder import DecoderOutput
from sam4d_core.modeling.sparse import SparseTensor, devoxelize
from sam4d_core.modeling.sparse.hierarchy import scatter_mean


class PromptDecoding:
    """The decoding methods of :class:`~sam4d_core.modeling.sam4d_base.SAM4D` (a mix-in: they use
    the model's components, config and ``stage_runtime``)."""

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
            coords, labels = camera_prompt_points(cp, dev)
            # Camera pixels -> model-input pixels (as the released predictor scales clicks).
            rows.append((coords * scale, labels))
            clicked.append(labels.numel() > 0)
        coords, labels = pad_prompt_points(rows, 2, dev)
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
                    as_tensor(prompts[i].cameras[cam_id].mask, torch.float32, dev)  # type: ignore[arg-type]
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
        """LiDAR prompt embeddings of the objects: their 3D clicks / boxes as sparse tokens, and
        where ``dense`` allows, their LiDAR mask prompt ((N,) per point, averaged into the
        stride-4 voxels) or voxel mask ((N4,)) as the dense embedding."""
        lid = features.lidar
        assert lid is not None
        dev = self.device
        rows = [lidar_prompt_points(p.lidar, lid.points_xyz, dev) for p in prompts]
        coords, labels = pad_prompt_points(rows, 3, dev)
        enc = self.sam_head.psam_prompt_encoder
        point_pe = self.union_pe_func.point_prompt_pe(coords, multi_modal=features.multi_modal)
        emb = enc(labels, point_pe.to(self.no_mem_embed.dtype), None, hierarchy=lid.hierarchy)
        mask_rows, per_voxel_rows = [], []
        for i, p in enumerate(prompts):
            lp = p.lidar
            if lp is None:
                continue
            if lp.voxel_mask is not None:
                v = as_tensor(lp.voxel_mask, torch.float32, dev).reshape(-1)
                if v.numel() != lid.num_s4:
                    raise ValueError(
                        f"LiDAR voxel_mask of {v.numel()} values for {lid.num_s4} stride-4 voxels"
                    )
                mask_rows.append(i)
                per_voxel_rows.append(v)
            elif dense[i] and lp.mask is not None:
                v = as_tensor(lp.mask, torch.float32, dev).reshape(-1)
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

        img_decs: list[DecoderOutput] = []
        lid_dec: DecoderOutput | None = None
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
                img_decs.append(dec)
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
            lid_dec = dec

        best_img: list[torch.Tensor | None] = [None] * len(img_decs)
        best_lid = None
        gain = self.config.cross_modal_selection
        if multimask and gain > 0 and img_decs and lid_dec is not None:
            assert img is not None and lid is not None
            seen = point_pixels(lid, img, self.config.image_size)
            per_point = lidar_point_logits(lid, lid_dec.masks)
            agreements = [
                mask_agreement(d.masks, per_point, s) for d, s in zip(img_decs, seen, strict=True)
            ]
            chosen, best_lid = select_jointly(
                [d.iou_pred for d in img_decs], lid_dec.iou_pred, agreements, gain
            )
            best_img = list(chosen)
        results: dict[str, list[HeadOutput]] = {
            "img": [
                head._postprocess(d, multimask, k) for d, k in zip(img_decs, best_img, strict=True)
            ],
            "pts": [] if lid_dec is None else [head._postprocess(lid_dec, multimask, best_lid)],
        }
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
                        as_tensor(_camera_mask(prompts[objs[k]], cam_id), torch.float32, dev)
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
                    [as_tensor(_lidar_mask(prompts[objs[k]]), torch.float32, dev) for k in rows]
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


def _mask_rows(dense: torch.Tensor, rows: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``dense`` (B, ...) with rows ``rows`` replaced by ``new`` (R, ...) (out of place)."""
    # ``dense`` may be an expanded view (the "no mask" embedding): materialize before writing.
    out = dense.clone(memory_format=torch.contiguous_format)
    out[rows] = new.to(out.dtype)
    return out


def _camera_mask(p: ObjectPrompts, cam_id: int) -> ArrayLike | None:
    """The object's (H, W) mask prompt on camera ``cam_id``, or None."""
    cp = p.cameras.get(cam_id)
    return None if cp is None else cp.mask


def _lidar_mask(p: ObjectPrompts) -> ArrayLike | None:
    """The object's (N,) per-point LiDAR mask prompt, or None."""
    return None if p.lidar is None else p.lidar.mask


def _selected_iou(out: HeadOutput) -> torch.Tensor:
    """(B,) float32 predicted IoU of the mask the head selected for each object."""
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


__all__ = ["PromptDecoding", "allocate_decode_outputs"]
