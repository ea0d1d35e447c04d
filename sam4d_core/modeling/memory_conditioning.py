"""Memory conditioning of :class:`~sam4d_core.modeling.sam4d_base.SAM4D` (MCMA).

The current frame's image and LiDAR tokens attend to each object's selected memories: the memory
tokens of past frames with their UMPE encodings recomputed under ego motion, plus the objects'
pointers with their time-gap (and ego-pose) encodings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from sam4d_core.modeling.memory_attention import AttentionPlaces, pack_memories
from sam4d_core.modeling.records import FrameFeatures, FrameGeometry, ObjectMemoryInput
from sam4d_core.modeling.reference_paths import use_reference_paths
from sam4d_core.modeling.token_places import (
    PlaceSegment,
    image_token_places,
    lidar_token_places,
    unplaced,
)
from sam4d_core.modeling.umpe import relative_ego_motion


class MemoryConditioning:
    """The memory-conditioning methods of :class:`~sam4d_core.modeling.sam4d_base.SAM4D` (a
    mix-in: they use the model's components, config and ``stage_runtime``)."""

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
