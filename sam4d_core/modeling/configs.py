"""Model configurations of SAM4D: plain dataclasses, a registry of named configs, (de)serialization.

A :class:`SAM4DConfig` fully determines the module tree of
:class:`~sam4d_core.modeling.sam4d_base.SAM4D` (and so the keys and shapes of its state dict) plus
the inference switches of the released model. It nests the component configs
(:class:`~sam4d_core.modeling.backbones.image_encoder.ImageEncoderConfig`,
:class:`~sam4d_core.modeling.backbones.minkunet.MinkUNetConfig`,
:class:`~sam4d_core.modeling.memory_bank.MemoryBankConfig`) and a few small ones defined here.

Named configs (:func:`get_config`):

- ``sam4d_hiera_s_mink34``: the officially released model (Hiera-S at 768 x 768, MinkUNet34-W32,
  d 256, 4 memory-attention layers, full k7 LiDAR memory fuser; 121.8 M parameters in 904 state
  dict entries), with ``released_frequency_quirk=True`` and the exact-release mode
  (``point.exact_release``: torchsparse 2.1's default sparse semantics, the released
  devoxelization and float64 quantisation; ``image.exact_release``: the released PIL-bicubic
  resize) so that the official checkpoint loads and computes what the released code computes.
  Values read from the released config file (``sam4d.py`` in the code index).
- ``sam4d_small``: our CPU real-time configuration (8.6 M parameters): a 384 x 192 input (the usual
  2:1 camera aspect, token grid 12 x 24), a 0.2 m LiDAR grid, Hiera embed 32, MinkUNet width 16
  with one block per stage, d 128, 2 memory-attention layers, k3 LiDAR memory fuser, 32 depth bins,
  a shorter memory.
- ``sam4d_tiny``: a toy size for unit tests (a few milliseconds per block).

Configs round-trip through plain dicts (:func:`config_to_dict` / :func:`config_from_dict`), which is
how checkpoints embed them, and can be read from a JSON file (:func:`load_config`).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sam4d_core.modeling.backbones.image_encoder import ImageEncoderConfig
from sam4d_core.modeling.backbones.minkunet import MinkUNetConfig
from sam4d_core.modeling.memory_bank import MemoryBankConfig
from sam4d_core.modeling.token_places import DistanceScales


@dataclass
class UMPEConfig:
    """Unified multi-modal positional encoding (see :class:`~sam4d_core.modeling.umpe.UMPE`).

    Attributes:
        depth_start, depth_step, num_depths: the ray sampling depths (1.0 m + 0.6 m k, 128 bins).
        hidden_dim: hidden width of the shared ray / point MLP (None: 4 * d_model).
        temperature: of the 2D sine encoding.
        released_frequency_quirk: reproduce the released sine-PE bug (every frequency 1). Must be on
            for the official checkpoint; our own configs train without it.
        rff_scale: standard deviation of the random Fourier feature matrix.
        coord_scale: multiplies the metres entering the ray / point MLP (1.0: raw metres, as
            released; see :mod:`~sam4d_core.modeling.umpe` for why our configs scale them).
        sine_scale: multiplier of normalised image positions in the 2D sine encoding (None:
            2 pi as released, one period across the image at the highest frequency).
    """

    depth_start: float = 1.0
    depth_step: float = 0.6
    num_depths: int = 128
    hidden_dim: int | None = None
    temperature: float = 10000.0
    released_frequency_quirk: bool = False
    rff_scale: float = 1.0
    coord_scale: float = 1.0
    sine_scale: float | None = None


@dataclass
class MemoryAttentionConfig:
    """MCMA sizes and options (:class:`~sam4d_core.modeling.memory_attention.MemoryAttention`).

    The options default to the released SAM4D; see that class for what they do:
    ``pos_enc_at_cross_attn_queries`` (also add the query tokens' encodings to the
    cross-attention queries; SAM4D adds ``0.1 * pos`` once at the input only), ``pos_scale``
    (multiplier of every encoding entering MCMA) and ``tie_qk_init`` (cross-attention keys
    initialised as a copy of the queries' projection).

    ``distance_bias`` (off in SAM4D) subtracts ``gain * distance(query place, key place)`` from
    every cross-attention logit (:mod:`~sam4d_core.modeling.token_places`), with the scales
    ``distance_sigma_m`` (point to point, metres), ``distance_sigma_rad`` (anything involving
    an image ray), ``distance_unplaced`` (pairs with an object pointer) and the clamp
    ``distance_max``. The defaults suit sam4d_small on 90-degree cameras: one token spacing
    (3.2 m voxels; 16 px = 0.083 rad at f = 192 px) costs ~10 logits.
    """

    num_layers: int = 4
    dim_feedforward: int = 2048
    num_heads: int = 1
    dropout: float = 0.1
    pos_enc_at_cross_attn_queries: bool = False
    pos_scale: float = 1.0
    tie_qk_init: bool = False
    distance_bias: bool = False
    distance_sigma_m: float = 1.0
    distance_sigma_rad: float = 0.026
    distance_unplaced: float = 10.0
    distance_max: float = 50.0

    def distance_scales(self) -> DistanceScales | None:
        """The scales of the distance bias, or None when it is off (validates them)."""
        if not self.distance_bias:
            return None
        return DistanceScales(
            sigma_m=self.distance_sigma_m,
            sigma_rad=self.distance_sigma_rad,
            unplaced=self.distance_unplaced,
            maximum=self.distance_max,
        )


@dataclass
class MemoryEncoderConfig:
    """Image and LiDAR memory encoders (:mod:`~sam4d_core.modeling.memory_encoder`)."""

    image_fuser_layers: int = 2
    image_fuser_kernel_size: int = 7
    point_fuser_layers: int = 2
    point_fuser_kernel_size: int = 7
    layer_scale_init_value: float = 1e-6


@dataclass
class HeadConfig:
    """SAM head sizes (:class:`~sam4d_core.modeling.sam.sam_head.SAMHead`).

    ``released_prompt_order``: the camera decoder sees [camera, LiDAR, camera] prompt tokens as in
    the released code (see :func:`~sam4d_core.modeling.sam.prompt_encoder.cross_modal_prompts`).
    """

    mask_in_chans: int = 16
    transformer_depth: int = 2
    transformer_heads: int = 8
    transformer_mlp_dim: int = 2048
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256
    released_prompt_order: bool = True


@dataclass
class SAM4DConfig:
    """Everything that defines a SAM4D model. Defaults: the official ``sam4d_hiera_s_mink34``.

    Attributes:
        name: config name (informative; stored in checkpoints).
        exact_release (property): both components' exact-release switches are on.
        d_model: token width of every stage after the backbones (FPN output, LiDAR stride-16
            channels, memory width, decoder width, UMPE width). SAM4D requires ``mem_dim ==
            d_model``.
        image, point, umpe, memory_attention, memory_encoder, head: component sizes.
        memory: memory-bank selection rules (``num_maskmem`` also sizes ``maskmem_tpos_enc``).
        backbone_stride: stride of the image tokens (16).
        sigmoid_scale_for_mem_enc, sigmoid_bias_for_mem_enc: memory-encoder input
            ``sigmoid(logits) * scale + bias``.
        binarize_mask_from_pts_for_mem_enc: binarize (instead of sigmoid) the masks of clicked
            frames before memory encoding (SAM4D: off).
        use_mask_input_as_output_without_sam: a mask prompt without clicks is taken as the output
            (SAM4D: on); the object pointer then comes from the decoder run on the mask.
        directly_add_no_mem_embed: first conditioning frames add ``no_mem_embed`` to the tokens
            instead of attending to a dummy memory (SAM4D: on).
        multimask_output_in_sam, multimask_output_for_tracking, multimask_min_pt_num,
            multimask_max_pt_num: when the decoder predicts 3 masks (SAM4D: 0 or 1 clicks).
        use_ego_pose_in_pe: recompute memory PEs in the current frame under ego motion (MCMA).
        encode_ego_pose_in_mem: add the ego-pose encoding to the object pointers' PE.
        no_obj_embed_spatial: add ``no_obj_embed_spatial`` to memories of absent objects.
        cross_modal_selection: gain of the camera / LiDAR agreement when an object's multimask
            outputs are chosen (:mod:`~sam4d_core.modeling.cross_modal_selection`); 0: each view
            keeps its highest predicted IoU, as released.
    """

    name: str = "sam4d_hiera_s_mink34"
    d_model: int = 256
    # The official sizes, in exact-release mode (see the module docstring).
    image: ImageEncoderConfig = field(
        default_factory=lambda: ImageEncoderConfig(exact_release=True)
    )
    point: MinkUNetConfig = field(default_factory=lambda: MinkUNetConfig(exact_release=True))
    umpe: UMPEConfig = field(default_factory=lambda: UMPEConfig(released_frequency_quirk=True))
    memory_attention: MemoryAttentionConfig = field(default_factory=MemoryAttentionConfig)
    memory_encoder: MemoryEncoderConfig = field(default_factory=MemoryEncoderConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    memory: MemoryBankConfig = field(default_factory=MemoryBankConfig)
    backbone_stride: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = False
    use_mask_input_as_output_without_sam: bool = True
    directly_add_no_mem_embed: bool = True
    multimask_output_in_sam: bool = True
    multimask_output_for_tracking: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    use_ego_pose_in_pe: bool = True
    encode_ego_pose_in_mem: bool = True
    no_obj_embed_spatial: bool = True
    cross_modal_selection: float = 0.0

    @property
    def exact_release(self) -> bool:
        """The image and LiDAR paths both compute what the released code computes."""
        return bool(self.image.exact_release and self.point.exact_release)

    @property
    def image_size(self) -> tuple[int, int]:
        """Model input (H, W)."""
        return (int(self.image.image_size[0]), int(self.image.image_size[1]))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Image token grid (H / stride, W / stride)."""
        h, w = self.image_size
        return (h // self.backbone_stride, w // self.backbone_stride)

    def validate(self) -> SAM4DConfig:
        """Checks the cross-component constraints; returns ``self``. Raises ValueError."""
        d = self.d_model
        problems = []
        if self.image.d_model != d:
            problems.append(f"image.d_model {self.image.d_model} != d_model {d}")
        if tuple(self.point.encoder_channels)[-1] != d:
            problems.append(f"point.encoder_channels[-1] {self.point.encoder_channels[-1]} != {d}")
        if tuple(self.point.decoder_channels) != (d, d // 2):
            problems.append(
                f"point.decoder_channels {tuple(self.point.decoder_channels)} != ({d}, {d // 2}) "
                "(the decoder's conv_s1_pts / conv_s0_pts take d and d / 2 channels)"
            )
        if len(self.point.encoder_channels) != 4:
            problems.append("the LiDAR encoder needs 4 stages (tokens at stride 16)")
        h, w = self.image_size
        s = self.backbone_stride
        if h % s or w % s:
            problems.append(f"image size {(h, w)} is not a multiple of the stride {s}")
        win = self.image.window_spec[0]
        if (h // 4) % win or (w // 4) % win:
            problems.append(f"image size {(h, w)} / 4 must be a multiple of window_spec[0] {win}")
        if d % 8:
            problems.append(f"d_model {d} must be a multiple of 8 (decoder upscaling to d / 8)")
        if d % 4:
            problems.append("d_model must be a multiple of 4 (2D sine encoding)")
        if self.head.mask_in_chans % 4:
            problems.append("head.mask_in_chans must be a multiple of 4")
        if not self.cross_modal_selection >= 0.0:
            problems.append(f"cross_modal_selection {self.cross_modal_selection} must be >= 0")
        try:
            self.memory_attention.distance_scales()
        except ValueError as e:
            problems.append(f"memory_attention distance bias: {e}")
        if problems:
            raise ValueError(f"invalid SAM4D config {self.name!r}: " + "; ".join(problems))
        return self


# ---------------------------------------------------------------------------------------------
# Named configurations.


def sam4d_hiera_s_mink34() -> SAM4DConfig:
    """The officially released SAM4D (``sam4d_hieraS_mink34w32.pth``)."""
    return SAM4DConfig()


def sam4d_small() -> SAM4DConfig:
    """Our CPU real-time configuration (8.6 M parameters).

    Why these sizes: on two CPU cores a tracker step (1 camera, a 30k-point sweep, 1 object) has
    a budget of ~150 ms, and once the memory is full, memory attention dominates (queries x keys
    grow with tokens x memory slots). So the token counts are kept small: a 384 x 192 input (the
    usual 2:1 camera aspect, 12 x 24 = 288 image tokens per camera), a 0.2 m LiDAR grid
    (stride-16 cells of 3.2 m, ~520 tokens for a 30k-point sweep; stride-4 logits on 0.8 m
    voxels), and a memory of the conditioning frame plus 2 recent frames (instead of 6). Hiera
    embed 32 with stages (1, 2, 5, 2), MinkUNet width 16 with one block per stage, d 128, 2
    memory-attention layers with 4 heads, a k3 LiDAR memory fuser (27 instead of 343 kernel
    offsets), 32 depth bins (1 m + 2.4 m k).
    """
    d = 128
    return SAM4DConfig(
        name="sam4d_small",
        d_model=d,
        image=ImageEncoderConfig(
            image_size=(192, 384),
            embed_dim=32,
            num_heads=1,
            stages=(1, 2, 5, 2),
            global_att_blocks=(5, 7, 9),
            window_spec=(8, 4, 6, 3),
            window_pos_embed_bkg_spatial_size=(7, 7),
            d_model=d,
        ),
        point=MinkUNetConfig(
            base_channels=16,
            encoder_channels=(16, 32, 64, d),
            encoder_blocks=(1, 1, 1, 1),
            decoder_channels=(d, d // 2),
            decoder_blocks=(1, 1),
            voxel_size=0.2,
        ),
        # Encodings at the tokens' scale (see umpe.py): metres in units of 20 m into the ray MLP,
        # and a 2D sine whose frequencies reach 6 periods across the image (released: 1).
        umpe=UMPEConfig(
            depth_step=2.4,
            num_depths=32,
            hidden_dim=256,
            coord_scale=0.05,
            sine_scale=37.7,  # ~12 pi: 6 periods across the image
            temperature=30.0,
        ),
        memory_attention=MemoryAttentionConfig(num_layers=2, dim_feedforward=512, num_heads=4),
        memory_encoder=MemoryEncoderConfig(point_fuser_kernel_size=3),
        head=HeadConfig(
            transformer_depth=2,
            transformer_heads=4,
            transformer_mlp_dim=512,
            iou_head_hidden_dim=128,
        ),
        memory=MemoryBankConfig(num_maskmem=3, max_obj_ptrs_in_encoder=4, max_cond_frame_diff=4),
        # A small model's IoU heads rank their 3 masks poorly; the sensors' geometry does not.
        cross_modal_selection=1.0,
    )


def sam4d_tiny() -> SAM4DConfig:
    """A toy configuration for unit tests (~0.5 M parameters, 128 x 128 input, d 32)."""
    d = 32
    return SAM4DConfig(
        name="sam4d_tiny",
        d_model=d,
        image=ImageEncoderConfig(
            image_size=(128, 128),
            embed_dim=8,
            num_heads=1,
            stages=(1, 1, 1, 1),
            global_att_blocks=(3,),
            window_spec=(4, 4, 4, 2),
            window_pos_embed_bkg_spatial_size=(4, 4),
            d_model=d,
        ),
        point=MinkUNetConfig(
            base_channels=8,
            encoder_channels=(8, 16, 16, d),
            encoder_blocks=(1, 1, 1, 1),
            decoder_channels=(d, d // 2),
            decoder_blocks=(1, 1),
        ),
        umpe=UMPEConfig(depth_step=8.0, num_depths=8, hidden_dim=64),
        memory_attention=MemoryAttentionConfig(num_layers=1, dim_feedforward=64, num_heads=1),
        memory_encoder=MemoryEncoderConfig(
            image_fuser_layers=1,
            image_fuser_kernel_size=3,
            point_fuser_layers=1,
            point_fuser_kernel_size=3,
        ),
        head=HeadConfig(
            mask_in_chans=8,
            transformer_depth=1,
            transformer_heads=2,
            transformer_mlp_dim=64,
            iou_head_hidden_dim=32,
        ),
        memory=MemoryBankConfig(num_maskmem=3, max_obj_ptrs_in_encoder=4, max_cond_frame_diff=4),
    )


CONFIGS: dict[str, typing.Callable[[], SAM4DConfig]] = {
    "sam4d_hiera_s_mink34": sam4d_hiera_s_mink34,
    "sam4d_small": sam4d_small,
    "sam4d_tiny": sam4d_tiny,
}
"""Registry of named configurations."""


def get_config(name: str) -> SAM4DConfig:
    """A fresh copy of the named configuration."""
    try:
        return CONFIGS[name]().validate()
    except KeyError:
        raise ValueError(f"unknown SAM4D config {name!r}; known: {sorted(CONFIGS)}") from None


# ---------------------------------------------------------------------------------------------
# Serialization.


def config_to_dict(config: SAM4DConfig) -> dict[str, Any]:
    """A plain nested dict (JSON-serializable; tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown config fields in {where or 'config'}: {sorted(unknown)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue  # a field added after the file was written keeps its default
        value = data[f.name]
        sub = hints[f.name]
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            value = _build(sub, value, f"{where}{f.name}.")
        elif isinstance(value, list):
            # Every sequence field of the configs is a tuple.
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> SAM4DConfig:
    """Inverse of :func:`config_to_dict` (missing fields take their defaults)."""
    return _build(SAM4DConfig, data, "").validate()


def load_config(name_or_path: str | Path | SAM4DConfig) -> SAM4DConfig:
    """A registered name, a JSON file of :func:`config_to_dict` form, or a config (returned)."""
    if isinstance(name_or_path, SAM4DConfig):
        return name_or_path.validate()
    text = str(name_or_path)
    if text in CONFIGS:
        return get_config(text)
    path = Path(text)
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON: {exc}") from exc
        return config_from_dict(data)
    raise ValueError(
        f"{text!r} is neither a known config ({sorted(CONFIGS)}) nor a .json config file"
    )


__all__ = [
    "CONFIGS",
    "HeadConfig",
    "MemoryAttentionConfig",
    "MemoryEncoderConfig",
    "SAM4DConfig",
    "UMPEConfig",
    "config_from_dict",
    "config_to_dict",
    "get_config",
    "load_config",
    "sam4d_hiera_s_mink34",
    "sam4d_small",
    "sam4d_tiny",
]
