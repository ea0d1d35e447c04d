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

from collections.abc import Sequence
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
from sam4d_core.modeling.decoding import PromptDecoding
from sam4d_core.modeling.ego_pose_encoder import EgoPoseEncoder
from sam4d_core.modeling.memory_attention import MemoryAttention, register_memory_parameters
from sam4d_core.modeling.memory_conditioning import MemoryConditioning
from sam4d_core.modeling.memory_encoder import (
    ImageMemoryEncoder,
    PointMemoryEncoder,
    add_no_object_embedding,
    mask_logits_for_memory,
    point_masks_to_voxels,
)
from sam4d_core.modeling.profiling import StageClock
from sam4d_core.modeling.prompts import ObjectPrompts, lidar_prompt_is_empty
from sam4d_core.modeling.records import (
    ArrayLike,
    FrameFeatures,
    FrameGeometry,
    ImageFeatures,
    LidarFeatures,
    ObjectMemory,
    ObjectMemoryInput,
    TrackOutput,
    as_tensor,
)
from sam4d_core.modeling.sam import SAMHead
from sam4d_core.modeling.sparse import SparseTensor, devoxelize_weights
from sam4d_core.modeling.sparse.hierarchy import VoxelHierarchy
from sam4d_core.modeling.sparse.voxelize import (
    points_to_voxel_index,
    pool_points_to_voxels,
    released_devoxelize_weights,
    sam4d_voxelize,
)
from sam4d_core.modeling.umpe import UMPE, invert_rigid


def upsample_mask_logits(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Stride-4 mask logits (..., h, w) -> (..., H, W) at a camera's size (bilinear, as SAM2's
    predictor resizes low-resolution masks to the video; the aspect is not kept, like the input
    resize)."""
    lead = logits.shape[:-2]
    x = logits.reshape(-1, 1, *logits.shape[-2:]).float()
    x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *size)


# ---------------------------------------------------------------------------------------------
# The model.


class SAM4D(MemoryConditioning, PromptDecoding, nn.Module):
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
        # The clock of the stage timings (this model's and its trackers').
        self.clock = StageClock()

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
        lidar: LidarFeatures | None = None,
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
                to it (:attr:`clock`).
            lidar: the sweep's features from an earlier call (multi-modal ones when cameras are
                given), used instead of encoding ``points`` (other cameras of the same sweep).

        Returns:
            :class:`FrameFeatures`.
        """
        device = self.device
        images = list(images or [])
        present = [i for i, im in enumerate(images) if im is not None]
        has_lidar = lidar is not None or (points is not None and len(points) > 0)
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
            with self.clock.timer(timings, "image_encoder", device):
                image_feats = self._encode_images(
                    [images[i] for i in present],
                    [intrinsics[i] for i in present],
                    [cam_from_lidar[i] for i in present],
                    tuple(present),
                    multi_modal,
                )
        lidar_feats = lidar
        if has_lidar and lidar_feats is None:
            with self.clock.timer(timings, "lidar_encoder", device):
                lidar_feats = self._encode_points(points, multi_modal)  # type: ignore[arg-type]

        pose_t = (
            torch.eye(4, dtype=torch.float64, device=device)
            if pose is None
            else as_tensor(pose, torch.float64, device)
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
        """The present cameras' (H, W, 3) uint8 images, (3, 3) K and (4, 4) cam_from_lidar ->
        stride-16 tokens, projected stride-4 / stride-8 skips and UMPE encodings."""
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
            torch.stack([as_tensor(k, torch.float64, device) for k in intrinsics]).float(),
            list(sizes),
            self.image_size,
        ).to(device)
        cfl = torch.stack([as_tensor(m, torch.float64, device) for m in cam_from_lidar])
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
        """The (N, >=3) sweep (xyz first, LiDAR frame, metres) -> stride-16 tokens, projected
        stride-4 / stride-8 skips, UMPE encodings and the point <-> voxel bookkeeping."""
        device = self.device
        backbone = self.point_encoder
        pcfg = backbone.config
        xyz = as_tensor(points[:, :3], torch.float32, device)
        exact = pcfg.exact_release
        # Exact-release: quantised from the points as given (float64 stays float64, as released).
        xyz_q = as_tensor(points[:, :3], torch.float64, device) if exact else xyz
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

        with self.clock.timer(timings, "memory_attention", self.device):
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
        with self.clock.timer(timings, "decoder", self.device):
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
            if (
                p.lidar is not None
                and not lidar_prompt_is_empty(p.lidar)
                and features.lidar is None
            ):
                raise ValueError(f"object {i}: LiDAR prompts on a frame without LiDAR")

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


__all__ = ["SAM4D", "upsample_mask_logits"]
