"""Memory encoders: a frame's features and an object's predicted mask -> that object's memory.

SAM4D keeps one memory per frame and object with both modalities
(``pure_model.fusion.memory_encoder.{image,point}``):

- image (:class:`ImageMemoryEncoder`, SAM2's memory encoder): the mask (input-image resolution,
  768 x 768) goes through a conv downsampler (4 x [Conv2d k3 s2 p1, LayerNorm2d, GELU] with
  channels 1 -> 4 -> 16 -> 64 -> 256, then a 1x1 conv) to the stride-16 grid, is added to a 1x1
  projection of the stride-16 image features, and two ConvNeXt blocks (depthwise k7) fuse them;
  no output projection since ``mem_dim == 256``;
- LiDAR (:class:`PointMemoryEncoder`): the per-voxel mask (0.15 m grid, stride 1) goes through a
  sparse downsampler (4 x [sparse Conv3d k2 s2, LayerNorm, GELU], channels 1 -> 4 -> 16 -> 64
  -> 256 (SAM2's ``stride ** 2`` channel growth kept in 3D), then a 1x1 conv with bias) to
  the stride-16 voxels of the LiDAR encoder, is added to a 1x1 projection (with bias) of the
  stride-16 LiDAR features, and two blocks of [*full* (not depthwise) sparse Conv3d k7 at 256
  channels, LayerNorm, 1x1 256 -> 1024, GELU, 1x1 1024 -> 256, layer scale] with a residual fuse
  them. The k7 convolutions keep the stride-16 coordinates (torchsparse's stride-1 convolutions
  never dilate the active set); their kernels [343, 256, 256] are 45 M of the 46.3 M parameters.

The input masks are logits mapped to ``sigmoid(x) * 20 - 10`` (``sigmoid_scale_for_mem_enc`` 20,
``sigmoid_bias_for_mem_enc`` -10; see :func:`mask_logits_for_memory`), and the encoders are then
called with ``skip_mask_sigmoid=True``, as released.

Verified (read from SAM4D's released config, ``memory_encoder.py`` and ``pts_memory_encoder.py``
as stored in the code index): the module trees and names above, the downsamplers' kernel /
stride / padding (image k3 s2 p1; LiDAR k2 s2 p0, total stride 16), ``in_dim = out_dim = 256``,
``layer_scale_init_value`` 1e-6, sparse 1x1 convs without bias in the LiDAR blocks and with bias
in ``pix_feat_proj`` and the downsampler's last conv, no positional encoding in the encoders.
Parameter counts at the official sizes: image 1,368,160 + LiDAR 46,279,880 = 47,648,040
(DESIGN.md: 47.6 M). Not verified: the eps of SAM4D's ``LayerNorm1d`` (1e-6 used, like its
``LayerNorm2d``).

Differences from the released code: (1) the released LiDAR encoder feeds the *per-point* mask as a
sparse tensor with one row per point (duplicate voxel coordinates), so the first strided conv sees
whichever point its hash lookup returns per voxel; we average the points of each voxel first
(:func:`point_masks_to_voxels`), a deterministic version of the same thing. (2) Objects are
batched: per-object features are (B, N, C) tensors, pointwise layers run batched, and the sparse
convolutions run object after object on the frame's cached kernel maps (the masks reuse the LiDAR
encoder's coordinates and maps, so no hashing is repeated per object).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from sam4d_core.modeling.blocks import LayerNorm2d
from sam4d_core.modeling.sparse import Conv3d, SparseCache, SparseTensor
from sam4d_core.modeling.sparse.conv import sparse_conv3d_objects
from sam4d_core.modeling.sparse.voxelize import scatter_mean


def mask_logits_for_memory(
    logits: torch.Tensor,
    scale: float = 20.0,
    bias: float = -10.0,
    binarize: bool = False,
) -> torch.Tensor:
    """Mask logits -> memory-encoder input: ``sigmoid(logits) * scale + bias`` (in [-10, 10]).

    ``binarize`` uses ``logits > 0`` instead of the sigmoid (SAM2's
    ``binarize_mask_from_pts_for_mem_enc`` for interacted frames; off in SAM4D's config).
    """
    probs = (logits > 0).to(logits.dtype) if binarize else torch.sigmoid(logits)
    return probs * scale + bias


def point_masks_to_voxels(
    point_values: torch.Tensor, point_to_voxel: torch.Tensor, num_voxels: int
) -> torch.Tensor:
    """Mean of per-point mask values over the points of each stride-1 voxel.

    Args:
        point_values: (B, N_pts) per-point values (typically already through
            :func:`mask_logits_for_memory`).
        point_to_voxel: (N_pts,) int64 voxel row of each point (-1: no voxel); e.g.
            ``Voxelization.point_to_voxel`` or
            :func:`~sam4d_core.modeling.sparse.voxelize.points_to_voxel_index` at stride 1.
        num_voxels: number of stride-1 voxels.

    Returns:
        (B, num_voxels) (0 for a voxel without points).
    """
    keep = point_to_voxel >= 0
    idx = point_to_voxel[keep]
    vals = point_values[:, keep].transpose(0, 1)  # (N_kept, B)
    return scatter_mean(vals, idx, num_voxels).transpose(0, 1)


def add_no_object_embedding(
    features: torch.Tensor,
    object_score_logits: torch.Tensor,
    no_obj_embed_spatial: torch.Tensor,
    channels_last: bool,
) -> torch.Tensor:
    """Adds ``no_obj_embed_spatial`` to the memories of objects predicted absent (score <= 0).

    Args:
        features: (B, C, H, W) image memory (``channels_last=False``) or (B, N, C) LiDAR memory
            (``channels_last=True``).
        object_score_logits: (B, 1) or (B,) object presence logits.
        no_obj_embed_spatial: [1, C].
    """
    absent = (object_score_logits.reshape(-1) <= 0).to(features.dtype)  # (B,)
    emb = no_obj_embed_spatial.reshape(-1).to(features.dtype)  # (C,)
    if channels_last:
        return features + absent[:, None, None] * emb[None, None, :]
    return features + absent[:, None, None, None] * emb[None, :, None, None]


# ---------------------------------------------------------------------------------------------
# Image memory encoder (plain torch).


def _num_down_layers(total_stride: int, stride: int) -> int:
    num_layers = int(round(math.log(total_stride) / math.log(stride)))
    if stride**num_layers != total_stride:
        raise ValueError(f"total_stride {total_stride} is not a power of stride {stride}")
    return num_layers


class MaskDownSampler(nn.Module):
    """Downsamples a (B, 1, H, W) mask by ``total_stride`` to (B, embed_dim, H/s, W/s).

    Each step is Conv2d(k, stride, padding) + LayerNorm2d + GELU with channels growing by
    ``stride ** 2``; a final 1x1 conv projects to ``embed_dim``. Children: ``encoder.N``.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 3,
        stride: int = 2,
        padding: int = 1,
        total_stride: int = 16,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = c_out = 1
        for _ in range(_num_down_layers(total_stride, stride)):
            c_out = c_in * stride**2
            layers += [
                nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding),
                LayerNorm2d(c_out),
                nn.GELU(),
            ]
            c_in = c_out
        layers.append(nn.Conv2d(c_out, embed_dim, kernel_size=1))
        self.encoder = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, LayerNorm2d, Linear (4x), GELU, Linear, layer scale.

    Args:
        dim: channels.
        kernel_size, padding: of the depthwise conv (7, 3).
        layer_scale_init_value: initial ``gamma`` (1e-6; <= 0 disables layer scale).
        use_dwconv: depthwise (True, SAM4D) or full conv.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        else:
            self.register_parameter("gamma", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        return x + y.permute(0, 3, 1, 2)


class ImageMemoryEncoder(nn.Module):
    """SAM2-style image memory encoder (``memory_encoder.image``).

    Args:
        in_dim: image feature channels (256).
        out_dim: memory channels (``mem_dim``, 256; a 1x1 ``out_proj`` is added if different).
        mask_kernel_size, mask_stride, mask_padding, mask_total_stride: downsampler (3, 2, 1, 16).
        num_fuser_layers: ConvNeXt blocks (2).
        fuser_kernel_size: their depthwise kernel (7, padding k // 2).
        layer_scale_init_value: ``gamma`` init (1e-6).
    """

    def __init__(
        self,
        in_dim: int = 256,
        out_dim: int = 256,
        mask_kernel_size: int = 3,
        mask_stride: int = 2,
        mask_padding: int = 1,
        mask_total_stride: int = 16,
        num_fuser_layers: int = 2,
        fuser_kernel_size: int = 7,
        layer_scale_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.mask_downsampler = MaskDownSampler(
            in_dim, mask_kernel_size, mask_stride, mask_padding, mask_total_stride
        )
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = Fuser(
            [
                CXBlock(in_dim, fuser_kernel_size, fuser_kernel_size // 2, layer_scale_init_value)
                for _ in range(num_fuser_layers)
            ]
        )
        self.out_proj: nn.Module = (
            nn.Identity() if out_dim == in_dim else nn.Conv2d(in_dim, out_dim, kernel_size=1)
        )

    def forward(
        self, pix_feat: torch.Tensor, masks: torch.Tensor, skip_mask_sigmoid: bool = False
    ) -> torch.Tensor:
        """Encodes B objects' memories on one camera image.

        Args:
            pix_feat: (B or 1, in_dim, H, W) stride-16 image features (batch 1: the frame's
                features shared by all objects).
            masks: (B, 1, 16 H, 16 W) mask values; with ``skip_mask_sigmoid=True`` already
                ``sigmoid * 20 - 10`` (:func:`mask_logits_for_memory`), else logits to squash.
            skip_mask_sigmoid: see ``masks``.

        Returns:
            (B, out_dim, H, W) memory features.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        m = self.mask_downsampler(masks.to(pix_feat.dtype))
        if m.shape[-2:] != pix_feat.shape[-2:]:
            raise ValueError(
                f"mask downsampled to {tuple(m.shape[-2:])}, features are "
                f"{tuple(pix_feat.shape[-2:])}: the mask must be at the model input resolution"
            )
        # The projection is object independent: run it once on a shared (batch 1) feature map.
        x = self.pix_feat_proj(pix_feat) + m
        x = self.fuser(x)
        return self.out_proj(x)


class Fuser(nn.Module):
    """A stack of fuser blocks under ``layers`` (``proj`` is SAM2's optional input projection,
    an identity in SAM4D and without parameters)."""

    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.proj = nn.Identity()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, *context: object) -> torch.Tensor:
        """``x`` through every block; ``context`` is passed to each (the LiDAR blocks take the
        sparse tensor whose coordinates the features lie on)."""
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x, *context)
        return x


# ---------------------------------------------------------------------------------------------
# LiDAR memory encoder (sparse convolutions; features of B objects as dense (B, N, C) tensors).


def _pointwise(conv: Conv3d, feats: torch.Tensor) -> torch.Tensor:
    """A 1x1x1 stride-1 sparse conv is a matmul on the features: (B, N, C_in) -> (B, N, C_out)."""
    out = feats @ conv.kernel.reshape(conv.in_channels, conv.out_channels)
    return out + conv.bias if conv.bias is not None else out


def _is_pointwise(conv: Conv3d) -> bool:
    return conv.kernel_volume == 1 and conv.stride == (1, 1, 1)


def _sparse_per_object(
    conv: Conv3d, feats: torch.Tensor, template: SparseTensor
) -> tuple[torch.Tensor, SparseTensor]:
    """Applies a sparse conv to B objects' features on one coordinate set.

    Args:
        conv: the sparse conv.
        feats: (B, N, C_in) features on ``template``'s coordinates.
        template: a sparse tensor whose coordinates, stride and cache the features live on.

    Returns:
        (B, N_out, C_out) and a sparse tensor on the output coordinates (features of the last
        object) to use as the next template.
    """
    batched = sparse_conv3d_objects(conv, feats, template)
    if batched is not None:
        # All objects at once on the CPU: same sums, one matmul per kernel offset.
        return batched
    outs = []
    y = None
    # One object at a time: every call reuses the cached kernel map of the frame, so the loop
    # only repeats the matmuls (a batched im2col would multiply the peak memory by B).
    for b in range(feats.shape[0]):
        y = conv(template.replace_feats(feats[b]))
        outs.append(y.feats)
    assert y is not None
    return torch.stack(outs, dim=0), y


class SparseMaskDownSampler(nn.Module):
    """Downsamples per-voxel masks to stride ``total_stride`` (``mask_downsampler``).

    Children ``encoder.N`` (official names): [Conv3d(k, s), LayerNorm, GELU] per step with
    channels growing by ``stride ** 2``, then Conv3d(C, embed_dim, 1, bias=True). The Sequential
    is a parameter container: :meth:`forward` walks it with B objects' (B, N, C) features.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 2,
        stride: int = 2,
        total_stride: int = 16,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = c_out = 1
        for _ in range(_num_down_layers(total_stride, stride)):
            c_out = c_in * stride**2
            layers += [
                Conv3d(c_in, c_out, kernel_size, stride=stride),
                nn.LayerNorm(c_out, eps=1e-6),
                nn.GELU(),
            ]
            c_in = c_out
        layers.append(Conv3d(c_out, embed_dim, kernel_size=1, bias=True))
        self.encoder = nn.Sequential(*layers)

    def forward(
        self, masks: torch.Tensor, template: SparseTensor
    ) -> tuple[torch.Tensor, SparseTensor]:
        """(B, N_1, 1) masks on ``template``'s stride-1 voxels -> (B, N_s, embed_dim) and the
        output coordinates (stride ``total_stride``)."""
        x = masks
        for layer in self.encoder:
            if isinstance(layer, Conv3d):
                if _is_pointwise(layer):
                    x = _pointwise(layer, x)
                else:
                    x, template = _sparse_per_object(layer, x, template)
            else:
                x = layer(x)
        return x, template


class SparseCXBlock(nn.Module):
    """LiDAR fuser block: full sparse Conv3d k7 (no bias), LayerNorm, 1x1 (4x), GELU, 1x1, gamma.

    Children (official names): ``conv`` ([k^3, C, C]), ``norm``, ``pwconv1`` ([C, 4C]),
    ``pwconv2`` ([4C, C]), ``gamma`` [C]. The 1x1 convs are torchsparse convs without bias.
    """

    def __init__(
        self, dim: int, kernel_size: int = 7, layer_scale_init_value: float = 1e-6
    ) -> None:
        super().__init__()
        self.conv = Conv3d(dim, dim, kernel_size)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = Conv3d(dim, 4 * dim, kernel_size=1)
        self.act = nn.GELU()
        self.pwconv2 = Conv3d(4 * dim, dim, kernel_size=1)
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(layer_scale_init_value * torch.ones(dim))
        else:
            self.register_parameter("gamma", None)

    def forward(self, feats: torch.Tensor, template: SparseTensor) -> torch.Tensor:
        """(B, N, C) features on ``template``'s coordinates -> (B, N, C)."""
        y, _ = _sparse_per_object(self.conv, feats, template)
        y = _pointwise(self.pwconv2, self.act(_pointwise(self.pwconv1, self.norm(y))))
        if self.gamma is not None:
            y = self.gamma * y
        return feats + y


class PointMemoryEncoder(nn.Module):
    """SAM4D's LiDAR memory encoder (``memory_encoder.point``).

    Args:
        in_dim: LiDAR stride-16 feature channels (256).
        out_dim: memory channels (256; a 1x1 sparse ``out_proj`` with bias is added if different).
        mask_kernel_size, mask_stride, mask_total_stride: sparse downsampler (2, 2, 16); the total
            stride must equal the stride of the features passed to :meth:`forward`.
        num_fuser_layers: fuser blocks (2).
        fuser_kernel_size: their full sparse conv kernel (7).
        layer_scale_init_value: ``gamma`` init (1e-6).
    """

    def __init__(
        self,
        in_dim: int = 256,
        out_dim: int = 256,
        mask_kernel_size: int = 2,
        mask_stride: int = 2,
        mask_total_stride: int = 16,
        num_fuser_layers: int = 2,
        fuser_kernel_size: int = 7,
        layer_scale_init_value: float = 1e-6,
    ) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.total_stride = mask_total_stride
        self.mask_downsampler = SparseMaskDownSampler(
            in_dim, mask_kernel_size, mask_stride, mask_total_stride
        )
        self.pix_feat_proj = Conv3d(in_dim, in_dim, kernel_size=1, bias=True)
        self.fuser = Fuser(
            [
                SparseCXBlock(in_dim, fuser_kernel_size, layer_scale_init_value)
                for _ in range(num_fuser_layers)
            ]
        )
        self.out_proj: nn.Module = (
            nn.Identity() if out_dim == in_dim else Conv3d(in_dim, out_dim, 1, bias=True)
        )

    def forward(
        self,
        pix_feat: SparseTensor,
        masks: torch.Tensor,
        skip_mask_sigmoid: bool = False,
        voxel_coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encodes B objects' LiDAR memories for one sweep.

        Args:
            pix_feat: the LiDAR encoder's stride-16 output (N_16, in_dim), shared by all objects;
                its cache must hold the stride-1 voxel coordinates (it does for the features the
                LiDAR encoder returns), so the mask downsampling lands on the same voxels and
                reuses the encoder's kernel maps.
            masks: (B, N_1) or (B, N_1, 1) mask values per stride-1 voxel (the 0.15 m voxels the
                LiDAR encoder ran on, in their row order; see :func:`point_masks_to_voxels`);
                with ``skip_mask_sigmoid=True`` already ``sigmoid * 20 - 10``.
            skip_mask_sigmoid: see ``masks``.
            voxel_coords: (N_1, 4) stride-1 coordinates, if not those in ``pix_feat``'s cache.

        Returns:
            (B, N_16, out_dim) memory features, rows in ``pix_feat``'s order.
        """
        if pix_feat.stride != (self.total_stride,) * 3:
            raise ValueError(
                f"features at stride {pix_feat.stride}, the mask downsampler goes to "
                f"{self.total_stride}"
            )
        cache: SparseCache | None = pix_feat.cache
        if voxel_coords is None:
            voxel_coords = pix_feat.cache.coords.get((1, 1, 1))
            if voxel_coords is None:
                raise ValueError(
                    "the stride-1 voxel coordinates are not in the features' cache; pass "
                    "voxel_coords (the LiDAR encoder's input voxels)"
                )
        elif pix_feat.cache.coords.get((1, 1, 1)) is not voxel_coords:
            # Foreign coordinates: build fresh kernel maps (the check below still requires the
            # downsampled voxels to be the features' voxels), with the same semantics.
            cache = SparseCache(release_semantics=pix_feat.cache.release_semantics)
        if masks.dim() == 2:
            masks = masks[..., None]
        if masks.shape[1] != voxel_coords.shape[0]:
            raise ValueError(
                f"{masks.shape[1]} mask values for {voxel_coords.shape[0]} stride-1 voxels"
            )
        b = masks.shape[0]
        dtype = pix_feat.feats.dtype
        if b == 0:
            return pix_feat.feats.new_zeros(0, pix_feat.num_points, self.out_dim)
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        template = SparseTensor(masks[0].to(dtype), voxel_coords, stride=1, cache=cache)
        m, m_tensor = self.mask_downsampler(masks.to(dtype), template)
        if m_tensor.coords.shape[0] != pix_feat.num_points or (
            m_tensor.coords is not pix_feat.coords
            and not torch.equal(m_tensor.coords, pix_feat.coords)
        ):
            raise ValueError(
                "the downsampled mask does not land on the features' stride-16 voxels: pass the "
                "stride-1 voxels the LiDAR encoder ran on"
            )
        # The projection is object independent: (N_16, C) once, broadcast over objects.
        x = _pointwise(self.pix_feat_proj, pix_feat.feats)[None] + m
        x = self.fuser(x, pix_feat)
        if isinstance(self.out_proj, Conv3d):
            x = _pointwise(self.out_proj, x)
        return x


def build_mask_downsample_img() -> nn.Conv2d:
    """``mask_downsample_img``: Conv2d(1, 1, 4, stride 4), mask input -> decoder mask stride."""
    return nn.Conv2d(1, 1, kernel_size=4, stride=4)


def build_mask_downsample_pts() -> Conv3d:
    """``mask_downsample_pts``: sparse Conv3d(1, 1, 4, stride 4, bias) ([64, 1, 1] + [1]),
    per-voxel mask input -> the decoder's stride-4 voxels."""
    return Conv3d(1, 1, kernel_size=4, stride=4, bias=True)


__all__ = [
    "CXBlock",
    "Fuser",
    "ImageMemoryEncoder",
    "MaskDownSampler",
    "PointMemoryEncoder",
    "SparseCXBlock",
    "SparseMaskDownSampler",
    "add_no_object_embedding",
    "build_mask_downsample_img",
    "build_mask_downsample_pts",
    "mask_logits_for_memory",
    "point_masks_to_voxels",
]
