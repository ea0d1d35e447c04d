"""A small fully convolutional network that moves a camera mask's boundary onto the image's.

The decoder's camera masks are stride-4 logits of its input, one cell is several camera pixels,
so their boundaries are blocky and cross thin occluders (a pole in front of a tree). This network
sees a crop of the image around one object's mask, with the mask, and returns the mask's logits
at the crop's resolution: a U-Net of three scales (full, 1/2, 1/4; dilated convolutions at 1/4
widen the context to about 60 crop pixels), whose output is added to a learned multiple of the
input mask, so that it starts from the mask and learns the correction. It is trained apart from
SAM4D (``python -m training.train_refiner``) on synthetic camera images with corrupted
ground-truth masks, and applied by :mod:`sam4d_core.tracking.boundary_refine`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class MaskRefinerConfig:
    """Widths of the network: ``channels`` per scale (full, 1/2, 1/4); ``dilations`` of the
    convolutions at 1/4 (each widens the context by 8 x its dilation crop pixels)."""

    channels: tuple[int, int, int] = (16, 32, 64)
    dilations: tuple[int, ...] = (1, 2, 4)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> MaskRefinerConfig:
        return cls(
            channels=tuple(int(c) for c in d["channels"]),  # type: ignore[arg-type]
            dilations=tuple(int(c) for c in d.get("dilations", (1, 2, 4))),
        )


def _conv(cin: int, cout: int, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class MaskRefiner(nn.Module):
    """Boundary refinement of one mask on its image crop.

    Forward: ``image`` (B, 3, H, W) float32 RGB in [0, 1], ``mask`` (B, 1, H, W) float32 in
    [0, 1] (the mask to refine) -> (B, 1, H, W) float32 logits of the refined mask. H and W are
    any size divisible by 4.
    """

    def __init__(self, config: MaskRefinerConfig | None = None) -> None:
        super().__init__()
        self.config = config or MaskRefinerConfig()
        c1, c2, c3 = self.config.channels
        self.enc1 = nn.Sequential(_conv(4, c1), _conv(c1, c1))
        self.enc2 = nn.Sequential(_conv(c1, c2), _conv(c2, c2))
        dil = self.config.dilations
        self.enc3 = nn.Sequential(_conv(c2, c3, dil[0]), *(_conv(c3, c3, d) for d in dil[1:]))
        self.dec2 = nn.Sequential(_conv(c3 + c2, c2), _conv(c2, c2))
        self.dec1 = nn.Sequential(_conv(c2 + c1, c1), _conv(c1, c1))
        self.head = nn.Conv2d(c1, 1, 1)
        # The input mask's weight in the output logits: the network learns a correction of it.
        self.prior = nn.Parameter(torch.tensor(2.0))

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        signed = mask * 2.0 - 1.0
        x = torch.cat([(image - 0.5) * 4.0, signed], dim=1)
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        e3 = self.enc3(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([F.interpolate(e3, size=e2.shape[-2:], mode="bilinear"), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, size=e1.shape[-2:], mode="bilinear"), e1], 1))
        return self.head(d1) + self.prior * signed


def save_mask_refiner(model: MaskRefiner, path: str, meta: dict | None = None) -> None:
    """Write ``{"config", "state_dict", "meta"}`` (half precision weights) to ``path``."""
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"config": model.config.to_dict(), "state_dict": state, "meta": meta or {}}, path)


def load_mask_refiner(path: str, device: str = "cpu") -> MaskRefiner:
    """The refiner stored at ``path`` by :func:`save_mask_refiner`, in eval mode, float32."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    model = MaskRefiner(MaskRefinerConfig.from_dict(ckpt["config"]))
    model.load_state_dict(
        {k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    )
    return model.to(device).eval()


__all__ = ["MaskRefiner", "MaskRefinerConfig", "load_mask_refiner", "save_mask_refiner"]
