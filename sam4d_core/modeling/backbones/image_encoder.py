"""SAM4D's image encoder: Hiera trunk + FPN neck, and the image preprocessing it expects.

Pipeline (official ``sam4d_hiera_s_mink34``):

1. :func:`preprocess_images`: each camera's (H, W, 3) uint8 RGB image is resized to the model
   input size (768 x 768) *without* keeping the aspect ratio, scaled to [0, 1] and normalised with
   the ImageNet mean / std -> (B, 3, 768, 768) float. Intrinsics must be scaled the same way
   (:func:`scale_intrinsics`) before they go to UMPE.
2. :class:`~.hieradet.Hiera` (Hiera-S): maps at strides 4, 8, 16, 32 with 96, 192, 384, 768 ch.
3. :class:`FpnNeck`: 1x1 lateral convs to d_model = 256, top-down (nearest 2x upsampling, sum) only
   into the stride-16 and stride-32 levels (``fpn_top_down_levels`` = [2, 3]), then ``scalp = 1``
   drops the stride-32 level -> 256-ch maps at strides 4, 8, 16 (192 x 192, 96 x 96, 48 x 48).

The stride-16 map (48 x 48 x 256) is the token grid for memory attention and the decoder. The
stride-4 and stride-8 maps are the decoder's high-resolution skips; their reduction to 32 and 64
channels is *not* here: as in SAM2 those are ``conv_s0`` (1x1, 256 -> 32) and ``conv_s1`` (1x1,
256 -> 64) of the mask decoder (official keys ``pure_model.head.sam.sam_mask_decoder.conv_s0/
conv_s1``), applied once per frame on these outputs.

Positional encodings of the tokens are not computed by the neck (SAM2's neck computes a sine PE per
level); in SAM4D they come from UMPE (:mod:`sam4d_core.modeling.umpe`).

State-dict layout: :class:`ImageEncoder` registers the trunk as child ``0`` and the neck as child
``1`` so that, mounted at ``pure_model.backbone.image``, its keys are the official
``pure_model.backbone.image.0.*`` (Hiera) and ``pure_model.backbone.image.1.*`` (neck:
``convs.{0..3}.conv.{weight,bias}``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sam4d_core.modeling.backbones.hieradet import Hiera

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class FpnNeck(nn.Module):
    """SAM2's modified FPN neck (no output convs): trunk maps -> d_model maps.

    Args:
        d_model: output width (256).
        backbone_channel_list: trunk channels, coarsest first ([768, 384, 192, 96] for Hiera-S);
            ``convs.k`` is the lateral conv of the k-th coarsest level.
        kernel_size, stride, padding: of the lateral convs (1x1 in SAM2 / SAM4D).
        fpn_interp_model: top-down upsampling mode ("nearest" in SAM4D).
        fuse_type: "sum" or "avg" of lateral and top-down features.
        fpn_top_down_levels: levels (0 = finest) whose output includes the top-down path; the
            others output their lateral features only. Default: all levels.
        scalp: number of coarsest levels dropped from the output (1 in SAM4D).

    Forward: list of trunk maps, finest first, (B, C_i, H_i, W_i) -> list of
    ``len(xs) - scalp`` maps (B, d_model, H_i, W_i), finest first.
    """

    def __init__(
        self,
        d_model: int,
        backbone_channel_list: Sequence[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "nearest",
        fuse_type: str = "sum",
        fpn_top_down_levels: Sequence[int] | None = None,
        scalp: int = 1,
    ) -> None:
        super().__init__()
        assert fuse_type in ("sum", "avg")
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            lateral = nn.Sequential()
            lateral.add_module(
                "conv", nn.Conv2d(dim, d_model, kernel_size, stride=stride, padding=padding)
            )
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        if fpn_top_down_levels is None:
            fpn_top_down_levels = range(len(self.convs))
        self.fpn_top_down_levels = list(fpn_top_down_levels)
        assert 0 <= scalp < len(self.convs)
        self.scalp = scalp

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        n = len(self.convs) - 1
        assert len(xs) == n + 1, f"expected {n + 1} trunk maps, got {len(xs)}"
        out: list[torch.Tensor] = [xs[0]] * (n + 1)
        prev: torch.Tensor | None = None
        # Coarse to fine, like detectron2's FPN.
        for i in range(n, -1, -1):
            lateral = self.convs[n - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                top_down = F.interpolate(
                    prev,
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                )
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
        return out[: len(out) - self.scalp] if self.scalp > 0 else out


@dataclass
class ImageEncoderConfig:
    """Sizes of the image encoder. Defaults: the official SAM4D Hiera-S + FPN at 768 x 768.

    ``exact_release``: resize camera images as the released pipeline does (PIL's default bicubic
    on uint8, see :func:`preprocess_images`); off: bilinear with antialiasing in float.
    """

    image_size: tuple[int, int] = (768, 768)
    embed_dim: int = 96
    num_heads: int = 1
    stages: tuple[int, ...] = (1, 2, 11, 2)
    global_att_blocks: tuple[int, ...] = (7, 10, 13)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7)
    q_pool: int = 3
    drop_path_rate: float = 0.0
    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] = (2, 3)
    fpn_interp_model: str = "nearest"
    scalp: int = 1
    pixel_mean: tuple[float, float, float] = field(default=IMAGENET_MEAN)
    pixel_std: tuple[float, float, float] = field(default=IMAGENET_STD)
    exact_release: bool = False


class ImageEncoder(nn.Module):
    """Hiera trunk + FPN neck: normalised images -> multi-scale 256-ch features.

    Children are registered as ``0`` (trunk) and ``1`` (neck) to match the official state dict
    (see the module docstring); ``trunk`` / ``neck`` are aliases.

    Forward: (B, 3, H, W) normalised images (B = cameras, or cameras x frames) -> dict
        ``backbone_fpn``: list of (B, d_model, H / s, W / s) for s = 4, 8, 16 (official config),
        ``vision_features``: the coarsest kept map (B, d_model, H / 16, W / 16).
    The 32 / 64-channel stride-4 / stride-8 features of DESIGN.md are made from ``backbone_fpn[0]``
    / ``[1]`` by the mask decoder's ``conv_s0`` / ``conv_s1`` (they belong to the SAM head).
    """

    def __init__(
        self,
        trunk: Hiera,
        neck: FpnNeck,
        pixel_mean: Sequence[float] = IMAGENET_MEAN,
        pixel_std: Sequence[float] = IMAGENET_STD,
        exact_release: bool = False,
    ) -> None:
        super().__init__()
        self.exact_release = exact_release  # resize as the release does (preprocess_images)
        assert list(trunk.channel_list) == list(neck.backbone_channel_list), (
            f"trunk channels {trunk.channel_list} != neck channels {neck.backbone_channel_list}"
        )
        self.add_module("0", trunk)
        self.add_module("1", neck)
        # Not persistent: the official checkpoint has no such entries.
        self.register_buffer(
            "pixel_mean", torch.tensor(pixel_mean).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            "pixel_std", torch.tensor(pixel_std).view(1, 3, 1, 1), persistent=False
        )

    @property
    def trunk(self) -> Hiera:
        return self._modules["0"]  # type: ignore[return-value]

    @property
    def neck(self) -> FpnNeck:
        return self._modules["1"]  # type: ignore[return-value]

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        feats = self.neck(self.trunk(images))
        return {"vision_features": feats[-1], "backbone_fpn": feats}

    def preprocess(
        self,
        images: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
        image_size: tuple[int, int],
    ) -> torch.Tensor:
        """:func:`preprocess_images` with this encoder's mean / std, on its device."""
        return preprocess_images(
            images,
            image_size,
            mean=tuple(self.pixel_mean.flatten().tolist()),
            std=tuple(self.pixel_std.flatten().tolist()),
            device=self.pixel_mean.device,
            exact_release=self.exact_release,
        )


def build_image_encoder(cfg: ImageEncoderConfig | None = None) -> ImageEncoder:
    """Build the encoder for ``cfg`` (default: the official Hiera-S + FPN)."""
    cfg = cfg or ImageEncoderConfig()
    trunk = Hiera(
        embed_dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        drop_path_rate=cfg.drop_path_rate,
        q_pool=cfg.q_pool,
        stages=tuple(cfg.stages),
        window_pos_embed_bkg_spatial_size=tuple(cfg.window_pos_embed_bkg_spatial_size),
        window_spec=tuple(cfg.window_spec),
        global_att_blocks=tuple(cfg.global_att_blocks),
    )
    neck = FpnNeck(
        d_model=cfg.d_model,
        backbone_channel_list=trunk.channel_list,
        fpn_top_down_levels=list(cfg.fpn_top_down_levels),
        fpn_interp_model=cfg.fpn_interp_model,
        scalp=cfg.scalp,
    )
    return ImageEncoder(
        trunk,
        neck,
        pixel_mean=cfg.pixel_mean,
        pixel_std=cfg.pixel_std,
        exact_release=cfg.exact_release,
    )


def _to_chw_float(image: torch.Tensor | np.ndarray, device: torch.device | None) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    assert t.ndim == 3 and t.shape[-1] == 3, f"expected (H, W, 3) RGB, got {tuple(t.shape)}"
    assert t.dtype == torch.uint8, f"expected uint8, got {t.dtype}"
    return t.to(device).permute(2, 0, 1)[None].float().div_(255.0)


def _resize_like_pil(image: torch.Tensor | np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, h, w) uint8 on the CPU, PIL's default bicubic resize."""
    t = torch.from_numpy(np.ascontiguousarray(image)) if isinstance(image, np.ndarray) else image
    assert t.ndim == 3 and t.shape[-1] == 3, f"expected (H, W, 3) RGB, got {tuple(t.shape)}"
    assert t.dtype == torch.uint8, f"expected uint8, got {t.dtype}"
    x = t.cpu().permute(2, 0, 1)[None]
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    # channels_last: the layout the uint8 antialiased kernel is written for (no internal copy).
    x = x.contiguous(memory_format=torch.channels_last)
    return F.interpolate(x, size=tuple(size), mode="bicubic", antialias=True)


def preprocess_images(
    images: torch.Tensor | np.ndarray | Sequence[torch.Tensor | np.ndarray],
    image_size: tuple[int, int] = (768, 768),
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
    exact_release: bool = False,
) -> torch.Tensor:
    """Camera images -> model input batch.

    Args:
        images: one (B, H, W, 3) uint8 RGB array / tensor, or a sequence of (H_i, W_i, 3) uint8
            RGB images (cameras may differ in size).
        image_size: model input (H, W), 768 x 768 for the official model. The aspect ratio is not
            kept (as in SAM4D).
        mean, std: per-channel normalisation of [0, 1] intensities (ImageNet).
        device: where to compute (default: the input's device, CPU for numpy).
        exact_release: resample as the released pipeline does (see below).
    Returns:
        (B, 3, H, W) float32.

    Resampling: bilinear with antialiasing in float (``F.interpolate(antialias=True)``), our
    choice; or, with ``exact_release``, what the released ``ImageResize`` does: PIL's
    ``Image.resize`` with its default filter (bicubic, a = -0.5, support widened by the scale
    factor when downsizing, two separable passes each rounded to uint8). PyTorch's uint8 CPU
    kernel of ``F.interpolate(mode="bicubic", antialias=True)`` implements that same filter
    (it was written to match PIL): on a KITTI frame (1242 x 375) and a nuScenes frame
    (1600 x 900) resized to 768 x 768 it equals Pillow 13 on all but 0.22 % / 0.14 % of the
    values, by 1-2 levels, where the bilinear float path differs by 0.9 / 0.5 levels on average.
    That kernel runs on the CPU, so images are resized there and moved afterwards.
    """
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        images = list(images)
    if len(images) == 0:
        raise ValueError("no images")
    dev = torch.device(device) if device is not None else None
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
    out = []
    for image in images:
        if exact_release:
            out.append(_resize_like_pil(image, image_size).to(dev).float().div_(255.0))
            continue
        x = _to_chw_float(image, dev)
        if tuple(x.shape[-2:]) != tuple(image_size):
            x = F.interpolate(
                x, size=tuple(image_size), mode="bilinear", align_corners=False, antialias=True
            )
        out.append(x)
    batch = torch.cat(out, dim=0)
    return (batch - mean_t.to(batch.device)) / std_t.to(batch.device)


def scale_intrinsics(
    K: torch.Tensor | np.ndarray,
    original_size: tuple[int, int] | Sequence[tuple[int, int]],
    model_size: tuple[int, int] = (768, 768),
) -> torch.Tensor:
    """Intrinsics of the original camera image -> intrinsics of the resized model input.

    Args:
        K: (3, 3) or (B, 3, 3) pinhole intrinsics of the original image(s).
        original_size: (H, W) of the original image, or one (H, W) per camera.
        model_size: (H, W) of the model input.
    Returns:
        (B, 3, 3) float32 (B = 1 for a single K): rows 0 / 1 scaled by W' / W and H' / H.

    The scaling is the plain ``u' = u * W' / W`` (fx, cx, and skew scaled alike), i.e. the scale
    matrix an image-resize augmentation composes with K; this matches the UMPE frustum, which puts
    cell centres at ``(j + 0.5) * stride`` in the same continuous coordinates. (The exact
    half-pixel convention of the released pipeline was not verified; the difference is below half
    a model-input pixel.)
    """
    K_t = torch.as_tensor(np.asarray(K) if isinstance(K, np.ndarray) else K, dtype=torch.float32)
    if K_t.ndim == 2:
        K_t = K_t[None]
    b = K_t.shape[0]
    sizes = (
        [tuple(original_size)] * b
        if isinstance(original_size[0], (int, np.integer))
        else [tuple(s) for s in original_size]  # type: ignore[union-attr]
    )
    assert len(sizes) == b, f"{len(sizes)} sizes for {b} intrinsics"
    scale = torch.ones(b, 3, 1, dtype=torch.float32, device=K_t.device)
    for i, (h, w) in enumerate(sizes):
        scale[i, 0, 0] = model_size[1] / w
        scale[i, 1, 0] = model_size[0] / h
    return K_t * scale
