"""The exportable stages of a tracker step: their I/O contracts and PyTorch modules.

A tracker step (:mod:`sam4d_core.tracking.engine`) calls these dense stages of :class:`SAM4D`:

=========================  ====================================================================
``image_encoder``          Hiera + FPN + the decoder's high-resolution projections, per camera
                           (cameras batched)
``memory_attention``       MCMA on a multi-modal frame (objects x memory tokens)
``mask_decoder_image``     two-way transformer + upscaling + token heads, one camera
``mask_decoder_lidar``     the same on the LiDAR tokens, with the voxel hierarchy as index
                           inputs (its sparse upsampling is a gather)
``image_memory_encoder``   mask downsampler + feature projection + ConvNeXt fuser
=========================  ====================================================================

What stays in PyTorch, and why:

- the LiDAR encoder (voxelization, hashing of coordinates into kernel maps, MinkUNet sparse
  convolutions) and the LiDAR memory encoder (full sparse convolutions): the kernel maps are
  built with data-dependent hashing and every sparse conv is a gather-matmul-scatter whose
  output row count is data dependent; exporting them means moving the kernel-map construction
  out of the graph and feeding ~20 index tensors per sweep. The LiDAR branch's cost is measured
  by ``python -m sam4d_export bench`` (its "LiDAR enc" / "mem enc" columns);
- UMPE encodings (calibration and geometry only: a few small MLPs on the rays of the token grid,
  the LiDAR token centroids and the clicks; recomputed per memory under ego motion) and the
  distance-bias tables of MCMA: they are computed from Python-side bookkeeping (which memory
  came from which frame, ragged token counts) once per frame and are cheap; the stages take them
  as inputs;
- prompt encoding (label embeddings added to the clicks' UMPE, ragged click lists padded per
  object) and the multimask selection (an argmax): bookkeeping around the decoder stages.

Every stage is a plain function of tensors: :data:`STAGES` names its inputs and outputs and the
dynamic axes, :func:`stage_module` builds the PyTorch module that ``torch.onnx.export`` traces and
that the ``torch`` backend runs, :func:`example_inputs` makes inputs of the right shapes (dynamic
sizes all >= 2 and pairwise different, so the exporter sees no 0/1 specialisation and no
accidental equality between axes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sam4d_core.modeling.sam4d_base import SAM4D


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a stage.

    Attributes:
        name: the ONNX name.
        axes: per dimension a symbolic name (dynamic) or an int (fixed by the config); for
            inputs these are also the shapes of :func:`example_inputs`.
        dtype: "float32", "bool" or "int64".
    """

    name: str
    axes: tuple[str | int, ...]
    dtype: str = "float32"

    def dynamic_axes(self) -> dict[int, str]:
        """{dimension: symbolic name} of the dynamic dimensions."""
        return {i: a for i, a in enumerate(self.axes) if isinstance(a, str)}


@dataclass(frozen=True)
class StageSpec:
    """The I/O contract of one stage for one model configuration."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


STAGE_NAMES = (
    "image_encoder",
    "memory_attention",
    "mask_decoder_image",
    "mask_decoder_lidar",
    "image_memory_encoder",
)
"""Every exported stage, in tracker-step order."""

# Example sizes of the symbolic axes (all >= 2 and different from each other and from the
# fixed sizes of the small configs, see the module docstring).
EXAMPLE_SIZES = {
    "cameras": 2,
    "objects": 3,
    "memory_tokens": 37,
    "image_tokens": 22,
    "lidar_tokens": 29,
    "keys_image": 37 + 29,
    "keys_lidar": 37 + 22,
    "clicks": 5,
    "voxels_s8": 61,
    "voxels_s4": 131,
}


def stage_specs(model: SAM4D) -> dict[str, StageSpec]:
    """The I/O contracts of every stage for ``model``'s configuration."""
    cfg = model.config
    c = model.hidden_dim
    h, w = cfg.grid_size
    ih, iw = cfg.image_size
    f = "float32"
    specs = {}
    specs["image_encoder"] = StageSpec(
        "image_encoder",
        (TensorSpec("images", ("cameras", 3, ih, iw)),),
        (
            TensorSpec("tokens", ("cameras", c, h, w)),
            TensorSpec("high_res_0", ("cameras", c // 8, 4 * h, 4 * w)),
            TensorSpec("high_res_1", ("cameras", c // 4, 2 * h, 2 * w)),
        ),
    )
    ma = [
        TensorSpec("image", (1, "image_tokens", c)),
        TensorSpec("image_pos", (1, "image_tokens", c)),
        TensorSpec("points", (1, "lidar_tokens", c)),
        TensorSpec("points_pos", (1, "lidar_tokens", c)),
        TensorSpec("memory", ("objects", "memory_tokens", c)),
        TensorSpec("memory_pos", ("objects", "memory_tokens", c)),
        TensorSpec("memory_valid", ("objects", "memory_tokens"), "bool"),
    ]
    if model.memory_attention.distance_bias:
        ma += [
            TensorSpec("image_distances", ("objects", "image_tokens", "keys_image"), f),
            TensorSpec("points_distances", ("objects", "lidar_tokens", "keys_lidar"), f),
        ]
    specs["memory_attention"] = StageSpec(
        "memory_attention",
        tuple(ma),
        (
            TensorSpec("image_out", ("objects", "image_tokens", c)),
            TensorSpec("points_out", ("objects", "lidar_tokens", c)),
        ),
    )
    heads = (
        TensorSpec("masks", ()),  # axes filled per modality below
        TensorSpec("iou_pred", ("objects", 4)),
        TensorSpec("mask_tokens", ("objects", 4, c)),
        TensorSpec("object_score_logits", ("objects", 1)),
    )
    specs["mask_decoder_image"] = StageSpec(
        "mask_decoder_image",
        (
            TensorSpec("image_embeddings", ("objects", c, h, w)),
            TensorSpec("image_pe", (1, c, h, w)),
            TensorSpec("sparse", ("objects", "clicks", c)),
            TensorSpec("dense", ("objects", c, h, w)),
            TensorSpec("high_res_0", (1, c // 8, 4 * h, 4 * w)),
            TensorSpec("high_res_1", (1, c // 4, 2 * h, 2 * w)),
            TensorSpec("sparse_valid", ("objects", "clicks"), "bool"),
        ),
        (TensorSpec("masks", ("objects", 4, 4 * h, 4 * w)),) + heads[1:],
    )
    specs["mask_decoder_lidar"] = StageSpec(
        "mask_decoder_lidar",
        (
            TensorSpec("token_embeddings", ("objects", "lidar_tokens", c)),
            TensorSpec("token_pe", (1, "lidar_tokens", c)),
            TensorSpec("sparse", ("objects", "clicks", c)),
            TensorSpec("dense", ("objects", "lidar_tokens", c)),
            TensorSpec("parent_s8", ("voxels_s8",), "int64"),
            TensorSpec("offset_s8", ("voxels_s8",), "int64"),
            TensorSpec("parent_s4", ("voxels_s4",), "int64"),
            TensorSpec("offset_s4", ("voxels_s4",), "int64"),
            TensorSpec("high_res_0", ("voxels_s4", c // 8)),
            TensorSpec("high_res_1", ("voxels_s8", c // 4)),
            TensorSpec("sparse_valid", ("objects", "clicks"), "bool"),
        ),
        (TensorSpec("masks", ("objects", 4, "voxels_s4")),) + heads[1:],
    )
    specs["image_memory_encoder"] = StageSpec(
        "image_memory_encoder",
        (
            TensorSpec("pix_feat", ("cameras", c, h, w)),
            TensorSpec("mask_in", ("objects", "cameras", ih, iw)),
        ),
        (TensorSpec("memory", ("objects", "cameras", c, h, w)),),
    )
    return specs


class ImageEncoderStage(nn.Module):
    """images (N, 3, H, W) normalised -> tokens (N, C, h, w), high_res_0, high_res_1."""

    def __init__(self, model: SAM4D) -> None:
        super().__init__()
        self.encoder = model.image_encoder
        self.decoder = model.sam_head.sam_mask_decoder

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        fpn = self.encoder(images)["backbone_fpn"]
        hr0, hr1 = self.decoder.project_image_high_res(fpn[0], fpn[1])
        return fpn[2], hr0, hr1


class MemoryAttentionStage(nn.Module):
    """MCMA on a frame with both modalities (:meth:`MemoryAttention.forward_with_distances`)."""

    def __init__(self, model: SAM4D) -> None:
        super().__init__()
        self.attention = model.memory_attention

    def forward(
        self,
        image: torch.Tensor,
        image_pos: torch.Tensor,
        points: torch.Tensor,
        points_pos: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_valid: torch.Tensor,
        image_distances: torch.Tensor | None = None,
        points_distances: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ia, pa = self.attention.forward_with_distances(
            image,
            image_pos,
            points,
            points_pos,
            memory,
            memory_pos,
            memory_valid,
            image_distances=image_distances,
            points_distances=points_distances,
            reuse_buffers=False,
        )
        assert ia is not None and pa is not None
        return ia, pa


class MaskDecoderImageStage(nn.Module):
    """:meth:`MaskDecoder.forward_image_raw` of one camera."""

    def __init__(self, model: SAM4D) -> None:
        super().__init__()
        self.decoder = model.sam_head.sam_mask_decoder

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        high_res_0: torch.Tensor,
        high_res_1: torch.Tensor,
        sparse_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.decoder.forward_image_raw(
            image_embeddings, image_pe, sparse, dense, [high_res_0, high_res_1], sparse_valid
        )


class MaskDecoderLidarStage(nn.Module):
    """:meth:`MaskDecoder.forward_lidar_raw`."""

    def __init__(self, model: SAM4D) -> None:
        super().__init__()
        self.decoder = model.sam_head.sam_mask_decoder

    def forward(
        self,
        token_embeddings: torch.Tensor,
        token_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
        parent_s8: torch.Tensor,
        offset_s8: torch.Tensor,
        parent_s4: torch.Tensor,
        offset_s4: torch.Tensor,
        high_res_0: torch.Tensor,
        high_res_1: torch.Tensor,
        sparse_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.decoder.forward_lidar_raw(
            token_embeddings,
            token_pe,
            sparse,
            dense,
            parent_s8,
            offset_s8,
            parent_s4,
            offset_s4,
            [high_res_0, high_res_1],
            sparse_valid,
            # Children without a parent (parent -1, exact-release grids) get 0; the same values
            # as the plain gather when every parent exists, so one graph serves both.
            missing_s8=True,
            missing_s4=True,
        )


class ImageMemoryEncoderStage(nn.Module):
    """pix_feat (Ncam, C, h, w), mask_in (B, Ncam, H, W) (``sigmoid * 20 - 10`` values) ->
    memory (B, Ncam, C, h, w), before the no-object embedding (as in
    :meth:`SAM4D.encode_memory`, the feature projection runs once per camera)."""

    def __init__(self, model: SAM4D) -> None:
        super().__init__()
        self.encoder = model.image_memory_encoder

    def forward(self, pix_feat: torch.Tensor, mask_in: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        b, n, hh, ww = mask_in.shape
        m = enc.mask_downsampler(mask_in.reshape(b * n, 1, hh, ww))
        proj = enc.pix_feat_proj(pix_feat)
        x = (proj[None] + m.reshape(b, n, *m.shape[1:])).flatten(0, 1)
        x = enc.out_proj(enc.fuser(x))
        return x.reshape(b, n, *x.shape[1:])


_MODULES: dict[str, type[nn.Module]] = {
    "image_encoder": ImageEncoderStage,
    "memory_attention": MemoryAttentionStage,
    "mask_decoder_image": MaskDecoderImageStage,
    "mask_decoder_lidar": MaskDecoderLidarStage,
    "image_memory_encoder": ImageMemoryEncoderStage,
}


def stage_module(model: SAM4D, name: str) -> nn.Module:
    """The PyTorch module of stage ``name`` (shares ``model``'s parameters), in eval mode."""
    if name not in _MODULES:
        raise ValueError(f"unknown stage {name!r}; stages: {STAGE_NAMES}")
    return _MODULES[name](model).eval()


def example_inputs(
    model: SAM4D,
    name: str,
    sizes: dict[str, int] | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Random inputs of stage ``name`` ({input name: tensor}, on the model's device).

    Args:
        sizes: values of the symbolic axes (default :data:`EXAMPLE_SIZES`; ``keys_image`` /
            ``keys_lidar`` follow from the others when not given). Index inputs are valid
            (parents within the coarser level, offsets in 0..7), boolean masks have at least one
            True per row.
    """
    sz = dict(EXAMPLE_SIZES)
    sz.update(sizes or {})
    if sizes and "keys_image" not in sizes:
        sz["keys_image"] = sz["memory_tokens"] + sz["lidar_tokens"]
    if sizes and "keys_lidar" not in sizes:
        sz["keys_lidar"] = sz["memory_tokens"] + sz["image_tokens"]
    g = generator or torch.Generator().manual_seed(0)
    spec = stage_specs(model)[name]
    dev = model.device
    out: dict[str, torch.Tensor] = {}
    for t in spec.inputs:
        shape = tuple(sz[a] if isinstance(a, str) else a for a in t.axes)
        if t.dtype == "bool":
            v = torch.rand(shape, generator=g) > 0.3
            v[..., 0] = True
        elif t.name.startswith("parent_s"):
            coarse = sz["lidar_tokens"] if t.name == "parent_s8" else sz["voxels_s8"]
            v = torch.randint(0, coarse, shape, generator=g)
            v[::17] = -1  # a few children without parent (exact-release grids)
        elif t.name.startswith("offset_"):
            v = torch.randint(0, 8, shape, generator=g)
        elif t.name.endswith("distances"):
            v = torch.rand(shape, generator=g) * 2.0
        elif t.name == "mask_in":
            v = torch.rand(shape, generator=g) * 20.0 - 10.0
        else:
            v = torch.randn(shape, generator=g)
        out[t.name] = v.to(dev)
    return out


__all__ = [
    "EXAMPLE_SIZES",
    "STAGE_NAMES",
    "StageSpec",
    "TensorSpec",
    "example_inputs",
    "stage_module",
    "stage_specs",
]
