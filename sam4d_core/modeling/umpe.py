"""UMPE: SAM4D's unified multi-modal positional encoding of image and LiDAR tokens and prompts.

Image tokens and LiDAR tokens get encodings in one shared 3D space (the LiDAR frame), so that
attention can relate a pixel to the points along its viewing ray and a click in one modality can
prompt the other:

- image token (stride-16 cell, 48 x 48 at 768 x 768):
  ``sine2d(cell centre) + MLP(ray points)``, where the ray through the cell centre is sampled at
  D = 128 depths d = 1.0, 1.6, ..., 77.2 m in the camera frame and the D points are expressed in
  the LiDAR frame (camera intrinsics at the model input size, ``lidar_from_cam``), flattened to
  3D = 384 values (``[x_0, y_0, z_0, x_1, ...]``, nearest depth first);
- LiDAR token (mean xyz of a stride-16 voxel, metres, LiDAR frame):
  ``RFF(xyz) + MLP([xyz] * D)`` (the same MLP, the point repeated D times: a point is a "ray"
  whose samples all coincide);
- 2D click at model-input pixel (u, v): ``sine2d(u / W, v / H) + MLP(ray through (u, v))``;
- 3D click at xyz: ``RFF(xyz) + MLP([xyz] * D)``. (Label embeddings are the prompt encoder's.)

The MLP is Linear(384, 1024) - ReLU - Linear(1024, 256) (``mlp_embedding.{0,2}``).

Motion compensation (MCMA): a memory made at frame t' is used at frame t with
``T_rel = P_t^-1 P_t'`` (``lidar_t <- lidar_t'``; poses P are lidar -> world). Its encodings are
recomputed from the past geometry moved into the current frame: image memory
``sine2d + MLP(T_rel @ past frustum points)`` (the sine part is frame-independent), LiDAR memory
``RFF(T_rel @ c) + MLP([T_rel @ c] * D)`` for the past centroids c (see :meth:`UMPE.image_pe` and
:meth:`UMPE.point_pe` with ``T_rel``). For a static scene this equals the encodings computed
directly in frame t (tested).

The frustum: a non-trainable ``nn.Parameter`` [Hf, Wf, D, 4] (it is in the state dict:
``union_pe_func.union_pe_layer.frustum`` [48, 48, 128, 4] in the official checkpoint) holding
``(u, v, d, 1)`` per cell and depth, with (u, v) = ``((j + 0.5) * stride, (i + 0.5) * stride)``
the cell centre in model-input pixels (continuous coordinates: pixel j spans [j, j + 1)). This is
the released layout (read from SAM4D's ``position_encoding.py``), kept because loading the official
checkpoint overwrites the frustum with its stored values. Geometry per camera: the frustum becomes
``(u d, v d, d, 1)`` (a fixed elementwise product) and then one 4 x 4 matmul with
``T_rel @ lidar_from_cam @ [[K^-1, 0], [0, 1]]``, batched over cameras.

Normalisation: released, none. Ray points and LiDAR coordinates enter the MLP and the RFF as raw
metres in the LiDAR frame, as in the released code (read from its source, not a choice of ours).
The MLP part is added only when ``multi_modal`` is True: the released model adds it only when
both modalities are present in the frame. ``coord_scale`` (1.0 released) multiplies the MLP's
input coordinates. Why it exists: on raw metres (ray samples out to tens of metres) a freshly
drawn MLP gives encodings far larger than the tokens, mostly one component common to every
position, so attention on tokens plus such encodings saturates (one key takes all the weight)
and is blind to position. Metres in units of 20 m (``coord_scale`` 0.05, sam4d_small) keep a
fresh MLP's encodings at the tokens' scale. For the same reason sam4d_small's 2D sine part
reaches 6 periods across the image (``sine_scale``; released 2 pi: one period, too coarse to
tell 24 columns apart).

Conventions: ``K`` (B, 3, 3) upper-triangular pinhole intrinsics *at the model input size* (see
:func:`~sam4d_core.modeling.backbones.image_encoder.scale_intrinsics`); ``lidar_from_cam``
(B, 4, 4) maps camera coordinates (x right, y down, z forward) to LiDAR coordinates; ``T_rel``
(4, 4) or (B, 4, 4). Geometry is computed in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam4d_core.modeling.position_encoding import PositionEmbeddingRandom, PositionEmbeddingSine
from sam4d_core.modeling.reference_paths import (
    parameter_state,
    use_inference_caches,
    use_reference_paths,
)


def depth_bins(start: float = 1.0, step: float = 0.6, num: int = 128) -> torch.Tensor:
    """The UMPE sampling depths ``start + step * k``, k = 0..num-1 (1.0 .. 77.2 m): (num,)."""
    return start + step * torch.arange(num, dtype=torch.float32)


def invert_intrinsics(K: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of upper-triangular intrinsics (..., 3, 3) (no ``linalg.inv``, so it
    exports to ONNX). Entries below the diagonal are ignored (assumed 0)."""
    a, b, c = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    d, e, f = K[..., 1, 1], K[..., 1, 2], K[..., 2, 2]
    zero = torch.zeros_like(a)
    row0 = torch.stack((1 / a, -b / (a * d), (b * e - c * d) / (a * d * f)), dim=-1)
    row1 = torch.stack((zero, 1 / d, -e / (d * f)), dim=-1)
    row2 = torch.stack((zero, zero, 1 / f), dim=-1)
    return torch.stack((row0, row1, row2), dim=-2)


def invert_rigid(T: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (..., 4, 4): ``[R^T, -R^T t; 0, 1]``."""
    R = T[..., :3, :3]
    t = T[..., :3, 3:]
    Rt = R.transpose(-1, -2)
    top = torch.cat((Rt, -Rt @ t), dim=-1)
    bottom = torch.zeros_like(T[..., 3:, :])
    bottom[..., 3] = 1
    return torch.cat((top, bottom), dim=-2)


def relative_ego_motion(pose_now: torch.Tensor, pose_past: torch.Tensor) -> torch.Tensor:
    """``T_rel = P_t^-1 P_t'`` (lidar_t <- lidar_t') from lidar -> world poses (..., 4, 4)."""
    return invert_rigid(pose_now) @ pose_past


def transform_points(T: torch.Tensor, xyz: torch.Tensor) -> torch.Tensor:
    """Apply rigid/affine transforms T (..., 4, 4) to points (..., N, 3) (broadcast over ...)."""
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    return xyz @ R.transpose(-1, -2) + t[..., None, :]


class FrustumRayEmbedding(nn.Module):
    """The shared ray / point MLP of UMPE and the stride-16 frustum it samples (SAM4D's
    ``union_pe_layer``).

    Args:
        num_pos_feats: output width C (256).
        image_size: model input (H, W) (768, 768).
        backbone_stride: stride of the token grid (16) -> frustum grid (H / 16, W / 16).
        depth_start, depth_step, num_depths: depth bins (1.0 m, 0.6 m, 128).
        hidden_dim: MLP hidden width (default 4 C = 1024).
        coord_scale: multiplies the MLP's input coordinates (metres; 1.0 released).

    State dict: ``frustum`` [Hf, Wf, D, 4] (non-trainable parameter), ``mlp_embedding.0.*``
    (Linear 3D -> hidden), ``mlp_embedding.2.*`` (Linear hidden -> C).
    """

    depths: torch.Tensor

    def __init__(
        self,
        num_pos_feats: int = 256,
        image_size: tuple[int, int] = (768, 768),
        backbone_stride: int = 16,
        depth_start: float = 1.0,
        depth_step: float = 0.6,
        num_depths: int = 128,
        hidden_dim: int | None = None,
        coord_scale: float = 1.0,
    ) -> None:
        super().__init__()
        if not coord_scale > 0:
            raise ValueError(f"coord_scale must be > 0, got {coord_scale}")
        self.num_pos_feats = num_pos_feats
        self.image_size = tuple(image_size)
        self.backbone_stride = backbone_stride
        self.num_depths = num_depths
        self.coord_scale = float(coord_scale)
        hidden_dim = hidden_dim or 4 * num_pos_feats
        # Not persistent: the official checkpoint has no such entry (the depths are in the frustum).
        self.register_buffer(
            "depths", depth_bins(depth_start, depth_step, num_depths), persistent=False
        )
        self.frustum = nn.Parameter(self._create_frustum(), requires_grad=False)
        self.mlp_embedding = nn.Sequential(
            nn.Linear(3 * num_depths, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, num_pos_feats),
        )

    @property
    def grid_size(self) -> tuple[int, int]:
        return (
            self.image_size[0] // self.backbone_stride,
            self.image_size[1] // self.backbone_stride,
        )

    def _create_frustum(self) -> torch.Tensor:
        """(Hf, Wf, D, 4) of (u, v, d, 1): cell-centre pixels of the model input, and depths."""
        fh, fw = self.grid_size
        s = float(self.backbone_stride)
        u = (torch.arange(fw, dtype=torch.float32) + 0.5) * s
        v = (torch.arange(fh, dtype=torch.float32) + 0.5) * s
        d = self.depths
        nd = d.shape[0]
        return torch.stack(
            (
                u.view(1, fw, 1).expand(fh, fw, nd),
                v.view(fh, 1, 1).expand(fh, fw, nd),
                d.view(1, 1, nd).expand(fh, fw, nd),
                torch.ones(fh, fw, nd),
            ),
            dim=-1,
        )

    @staticmethod
    def _uvd1_to_camera_homogeneous(uvd1: torch.Tensor) -> torch.Tensor:
        """(..., 4) (u, v, d, 1) -> (u d, v d, d, 1): after K^-1 this is the camera-frame point."""
        return torch.cat((uvd1[..., :2] * uvd1[..., 2:3], uvd1[..., 2:]), dim=-1)

    @staticmethod
    def camera_to_lidar_matrix(
        K: torch.Tensor, lidar_from_cam: torch.Tensor, T_rel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``T_rel @ lidar_from_cam @ [[K^-1, 0], [0, 1]]``: (B, 4, 4) float32.

        It maps (u d, v d, d, 1) to homogeneous LiDAR (with T_rel: current-LiDAR) coordinates.
        """
        K = K.float()
        M = lidar_from_cam.float()
        if M.ndim == 2:
            M = M[None]
        Kinv = invert_intrinsics(K if K.ndim == 3 else K[None])
        if M.shape[0] != Kinv.shape[0]:  # one extrinsic shared by several intrinsics, or vice versa
            b = max(M.shape[0], Kinv.shape[0])
            M, Kinv = M.expand(b, 4, 4), Kinv.expand(b, 3, 3)
        # [R, t; 0, 1] @ [K^-1, 0; 0, 1] = [R K^-1, t; 0, 1]
        top = torch.cat((M[..., :3, :3] @ Kinv, M[..., :3, 3:]), dim=-1)
        M = torch.cat((top, M[..., 3:, :].expand(top.shape[0], 1, 4)), dim=-2)
        if T_rel is not None:
            M = T_rel.float() @ M
        return M

    def frustum_points(
        self, K: torch.Tensor, lidar_from_cam: torch.Tensor, T_rel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Ray samples of every token cell in the LiDAR frame.

        Args:
            K: (B, 3, 3) intrinsics at the model input size.
            lidar_from_cam: (B, 4, 4).
            T_rel: optional (4, 4) or (B, 4, 4) applied last (memory warping).
        Returns:
            (B, Hf, Wf, D, 3) float32.
        """
        M = self.camera_to_lidar_matrix(K, lidar_from_cam, T_rel)
        cam_h = self._uvd1_to_camera_homogeneous(self.frustum.float())  # (Hf, Wf, D, 4)
        return torch.einsum("bij,hwdj->bhwdi", M[:, :3, :], cam_h)

    def ray_points(
        self,
        uv: torch.Tensor,
        K: torch.Tensor,
        lidar_from_cam: torch.Tensor,
        T_rel: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Ray samples through arbitrary model-input pixels (2D clicks).

        Args:
            uv: (B, N, 2) continuous pixel coordinates in the model input (cell centre of cell j
                is (j + 0.5) * stride, as in the frustum).
            K, lidar_from_cam, T_rel: as in :meth:`frustum_points`.
        Returns:
            (B, N, D, 3) float32.
        """
        M = self.camera_to_lidar_matrix(K, lidar_from_cam, T_rel)
        uv = uv.float()
        d = self.depths.to(device=uv.device, dtype=torch.float32)
        lead = uv.shape[:-1]  # (B, N)
        dd = d.view(*([1] * len(lead)), -1, 1).expand(*lead, d.shape[0], 1)
        # (B, N, D, 4) = (u d, v d, d, 1)
        uvd = torch.cat((uv[..., None, :] * dd, dd, torch.ones_like(dd)), dim=-1)
        return torch.einsum("bij,bndj->bndi", M[:, :3, :], uvd)

    def embed_rays(self, points: torch.Tensor) -> torch.Tensor:
        """MLP of ray samples: (..., D, 3) -> (..., C)."""
        assert points.shape[-2:] == (self.num_depths, 3), f"got {tuple(points.shape)}"
        w = self.mlp_embedding[0].weight
        flat = points.reshape(*points.shape[:-2], 3 * self.num_depths).to(w.dtype)
        if self.coord_scale != 1.0:
            flat = flat * self.coord_scale
        return self.mlp_embedding(flat)

    def embed_points(self, xyz: torch.Tensor) -> torch.Tensor:
        """MLP of single points, each repeated D times: (..., 3) -> (..., C).

        The first layer is linear, so on D copies of a point it equals the layer with its D
        column blocks summed, applied to the point once: ``W1 [p; ...; p] = (sum_d W1_d) p``
        (3 inputs per point instead of 3 D; equal up to float rounding).
        """
        assert xyz.shape[-1] == 3, f"got {tuple(xyz.shape)}"
        if use_reference_paths():
            rep = xyz.unsqueeze(-2).expand(*xyz.shape[:-1], self.num_depths, 3)
            return self.embed_rays(rep)
        first = self.mlp_embedding[0]
        xyz = xyz.to(first.weight.dtype)
        if self.coord_scale != 1.0:
            xyz = xyz * self.coord_scale
        hidden = F.linear(xyz, self._folded_first_layer(), first.bias)
        return self.mlp_embedding[2](self.mlp_embedding[1](hidden))

    def _folded_first_layer(self) -> torch.Tensor:
        """(hidden, 3): the first layer's weight summed over the D depth blocks (cached in
        inference)."""
        w = self.mlp_embedding[0].weight
        if not use_inference_caches():
            return w.reshape(w.shape[0], self.num_depths, 3).sum(dim=1)
        key = parameter_state(w)
        cached = self.__dict__.get("_folded_cache")
        if cached is None or cached[0] != key:
            cached = (key, w.reshape(w.shape[0], self.num_depths, 3).sum(dim=1))
            self.__dict__["_folded_cache"] = cached
        return cached[1]


class UMPE(nn.Module):
    """Unified multi-modal positional encoding (SAM4D's ``union_pe_func``).

    Args:
        num_pos_feats: encoding width C (256).
        image_size: model input (H, W).
        backbone_stride: image token stride (16).
        depth_start, depth_step, num_depths: ray sampling depths (1.0 m, 0.6 m, 128).
        hidden_dim: ray MLP hidden width (default 4 C).
        temperature: of the 2D sine encoding.
        released_frequency_quirk: reproduce the released sine-PE bug (all frequencies 1); must be
            on for the official checkpoint.
        rff_scale: standard deviation of the RFF Gaussian matrix (1.0 released).
        coord_scale: multiplies the ray / point MLP's input metres (1.0 released; see the module
            docstring).
        sine_scale: multiplier of the normalised image positions in the 2D sine part (None:
            2 pi, released: its highest frequency is one period across the image).

    Children (official names): ``img_pe_layer`` (2D sine, no state), ``pts_pe_layer`` (RFF,
    buffer ``positional_encoding_gaussian_matrix`` [3, C/2]), ``union_pe_layer``
    (:class:`FrustumRayEmbedding`: ``frustum``, ``mlp_embedding``).

    All outputs are float32 unless the MLP runs in another dtype (then that dtype).
    """

    def __init__(
        self,
        num_pos_feats: int = 256,
        image_size: tuple[int, int] = (768, 768),
        backbone_stride: int = 16,
        depth_start: float = 1.0,
        depth_step: float = 0.6,
        num_depths: int = 128,
        hidden_dim: int | None = None,
        temperature: float = 10000.0,
        released_frequency_quirk: bool = False,
        rff_scale: float = 1.0,
        coord_scale: float = 1.0,
        sine_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.image_size = tuple(image_size)
        self.img_pe_layer = PositionEmbeddingSine(
            num_pos_feats,
            temperature=temperature,
            scale=sine_scale,
            released_frequency_quirk=released_frequency_quirk,
            pixel_centers=True,
        )
        self.pts_pe_layer = PositionEmbeddingRandom(num_pos_feats, in_channels=3, scale=rff_scale)
        self.union_pe_layer = FrustumRayEmbedding(
            num_pos_feats,
            image_size=image_size,
            backbone_stride=backbone_stride,
            depth_start=depth_start,
            depth_step=depth_step,
            num_depths=num_depths,
            hidden_dim=hidden_dim,
            coord_scale=coord_scale,
        )

    def reset_parameters(self) -> None:
        """Draws the ray / point MLP anew (the frustum and the RFF matrix are fixed), e.g. to
        retrain the encodings under another ``coord_scale`` on top of trained encoders."""
        for m in self.union_pe_layer.mlp_embedding:
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    @property
    def grid_size(self) -> tuple[int, int]:
        """(Hf, Wf) of the image token grid."""
        return self.union_pe_layer.grid_size

    # ------------------------------------------------------------------ image tokens
    def image_sine_pe(
        self, batch_size: int = 1, device: torch.device | None = None
    ) -> torch.Tensor:
        """2D sine part of the image token encoding: (B, C, Hf, Wf)."""
        hf, wf = self.grid_size
        if device is None:
            device = self.union_pe_layer.frustum.device
        return self.img_pe_layer.grid(hf, wf, device)[None].expand(batch_size, -1, -1, -1)

    def image_ray_pe(
        self, K: torch.Tensor, lidar_from_cam: torch.Tensor, T_rel: torch.Tensor | None = None
    ) -> torch.Tensor:
        """MLP part of the image token encoding: (B, C, Hf, Wf).

        ``T_rel`` (lidar_t <- lidar_t') moves a past camera's frustum into the current frame
        (memory positional encodings under ego motion).
        """
        pts = self.union_pe_layer.frustum_points(K, lidar_from_cam, T_rel)  # (B, Hf, Wf, D, 3)
        return self.union_pe_layer.embed_rays(pts).permute(0, 3, 1, 2)

    def image_pe(
        self,
        K: torch.Tensor,
        lidar_from_cam: torch.Tensor,
        T_rel: torch.Tensor | None = None,
        multi_modal: bool = True,
    ) -> torch.Tensor:
        """Image token encodings for B cameras: (B, C, Hf, Wf).

        Args:
            K: (B, 3, 3) intrinsics at the model input size.
            lidar_from_cam: (B, 4, 4).
            T_rel: optional (4, 4) / (B, 4, 4) lidar_t <- lidar_t' for a memory from frame t'.
            multi_modal: add the ray-MLP part (released: only when both modalities are present).

        Without ``T_rel`` the result depends only on the calibration and the weights: in inference
        it is cached for the last calibration seen (cameras rarely change between frames).
        """
        if T_rel is None and use_inference_caches():
            key = parameter_state(*self.union_pe_layer.parameters())
            cached = self.__dict__.get("_image_pe_cache")
            if (
                cached is not None
                and cached[2] == multi_modal
                and cached[3] == key
                and cached[0].shape == K.shape
                and cached[1].shape == lidar_from_cam.shape
                and torch.equal(cached[0], K)
                and torch.equal(cached[1], lidar_from_cam)
            ):
                return cached[4].clone()
            out = self._image_pe(K, lidar_from_cam, None, multi_modal)
            self.__dict__["_image_pe_cache"] = (
                K.clone(),
                lidar_from_cam.clone(),
                multi_modal,
                key,
                out.clone(),
            )
            return out
        return self._image_pe(K, lidar_from_cam, T_rel, multi_modal)

    def _image_pe(
        self,
        K: torch.Tensor,
        lidar_from_cam: torch.Tensor,
        T_rel: torch.Tensor | None,
        multi_modal: bool,
    ) -> torch.Tensor:
        b = K.shape[0] if K.ndim == 3 else 1
        sine = self.image_sine_pe(b, K.device)
        if not multi_modal:
            return sine
        ray = self.image_ray_pe(K, lidar_from_cam, T_rel)
        return sine.to(ray.dtype) + ray

    # ------------------------------------------------------------------ LiDAR tokens
    def point_pe(
        self, xyz: torch.Tensor, T_rel: torch.Tensor | None = None, multi_modal: bool = True
    ) -> torch.Tensor:
        """LiDAR token (or 3D click) encodings: (..., 3) metres in the LiDAR frame -> (..., C).

        ``T_rel`` (4, 4), or (B, 4, 4) with ``xyz`` (B, N, 3), moves past centroids into the
        current frame first; both the RFF and the MLP parts are then recomputed (as released).
        """
        xyz = xyz.float()
        if T_rel is not None:
            xyz = transform_points(T_rel.float(), xyz)
        pe = self.pts_pe_layer(xyz)
        if not multi_modal:
            return pe
        ray = self.union_pe_layer.embed_points(xyz)
        return pe.to(ray.dtype) + ray

    # ------------------------------------------------------------------ prompts
    def image_prompt_pe(
        self,
        uv: torch.Tensor,
        K: torch.Tensor,
        lidar_from_cam: torch.Tensor,
        multi_modal: bool = True,
    ) -> torch.Tensor:
        """2D click encodings (without the label embedding).

        Args:
            uv: (B, N, 2) model-input pixel coordinates (continuous: the centre of pixel j is
                j + 0.5) of N clicks on camera b. The released prompt encoder holds clicks as
                pixel indices at the model input size and adds 0.5 before calling both parts;
                callers with pixel indices must do the same.
            K, lidar_from_cam: (B, 3, 3), (B, 4, 4) of those cameras.
        Returns:
            (B, N, C): ``sine2d(u / W, v / H) + MLP(ray through (u, v))``.
        """
        h, w = self.image_size
        sine = self.img_pe_layer.encode_pixels(uv, (h, w))
        if not multi_modal:
            return sine
        rays = self.union_pe_layer.ray_points(uv, K, lidar_from_cam)
        ray = self.union_pe_layer.embed_rays(rays)
        return sine.to(ray.dtype) + ray

    def point_prompt_pe(self, xyz: torch.Tensor, multi_modal: bool = True) -> torch.Tensor:
        """3D click encodings (without the label embedding): (..., 3) -> (..., C)."""
        return self.point_pe(xyz, multi_modal=multi_modal)

    # ------------------------------------------------------------------ memories (MCMA)
    def memory_image_pe(
        self,
        K_past: torch.Tensor,
        lidar_from_cam_past: torch.Tensor,
        T_rel: torch.Tensor,
        multi_modal: bool = True,
    ) -> torch.Tensor:
        """Encodings of an image memory from frame t' used at frame t: (B, C, Hf, Wf).

        The past camera's frustum points (its calibration at t') are moved by ``T_rel`` =
        P_t^-1 P_t' into the current LiDAR frame and the MLP part is recomputed.
        """
        return self.image_pe(K_past, lidar_from_cam_past, T_rel=T_rel, multi_modal=multi_modal)

    def memory_point_pe(
        self, xyz_past: torch.Tensor, T_rel: torch.Tensor, multi_modal: bool = True
    ) -> torch.Tensor:
        """Encodings of a LiDAR memory from frame t' (its stride-16 centroids in lidar_t')
        used at frame t: (..., C)."""
        return self.point_pe(xyz_past, T_rel=T_rel, multi_modal=multi_modal)
