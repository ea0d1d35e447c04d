"""One camera mask of one object moved onto the image's boundaries by the learned
:class:`~sam4d_core.modeling.mask_refiner.MaskRefiner`.

The mask's bounds plus a margin are cropped from the image and the mask, resized so that small
objects are seen larger (their crop's longer side brought up to ``small_side``, at most
``max_upscale`` times) and large ones at no more than ``max_side`` pixels a side, refined, resized
back and pasted over the crop; outside the crop the mask stays. Training
(``python -m training.train_refiner``) cuts its samples with the same :func:`refine_window` and
:func:`window_inputs`, so the network sees at inference what it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from sam4d_core.modeling.mask_refiner import MaskRefiner


@dataclass(frozen=True)
class BoundaryRefineConfig:
    """Where and at what scale the refiner sees a mask.

    Attributes:
        margin: the crop is the mask's bounds plus this fraction of their longer side each way
            (at least ``min_margin_px``): context for the boundary and room to grow.
        min_margin_px: the least margin (pixels).
        small_side: crops whose longer side is shorter are upscaled to it.
        max_upscale: at most this upscale.
        max_side: crops whose longer side is longer are downscaled to it (the network's cost).
        min_pixels: masks with fewer pixels are left as they are.
    """

    margin: float = 0.25
    min_margin_px: int = 6
    small_side: int = 128
    max_upscale: float = 4.0
    max_side: int = 192
    min_pixels: int = 4

    def __post_init__(self) -> None:
        if self.margin < 0 or self.min_margin_px < 0 or self.min_pixels < 1:
            raise ValueError("BoundaryRefineConfig: margin, min_margin_px >= 0, min_pixels >= 1")
        if self.max_upscale < 1 or not 8 <= self.small_side <= self.max_side:
            raise ValueError("BoundaryRefineConfig: max_upscale >= 1, 8 <= small_side <= max_side")


@dataclass(frozen=True)
class RefineWindow:
    """A crop ``[y0:y1, x0:x1]`` of a camera image, resized to ``(height, width)`` (multiples of
    4) for the refiner."""

    y0: int
    y1: int
    x0: int
    x1: int
    height: int
    width: int


def refine_window(mask: np.ndarray, config: BoundaryRefineConfig) -> RefineWindow | None:
    """The crop around a (H, W) bool mask and its size for the refiner; None when the mask has
    fewer than ``config.min_pixels`` pixels."""
    ys, xs = np.nonzero(mask)
    if len(ys) < config.min_pixels:
        return None
    h, w = mask.shape
    side = max(int(ys.max() - ys.min()) + 1, int(xs.max() - xs.min()) + 1)
    m = max(int(round(config.margin * side)), config.min_margin_px)
    y0, y1 = max(int(ys.min()) - m, 0), min(int(ys.max()) + m + 1, h)
    x0, x1 = max(int(xs.min()) - m, 0), min(int(xs.max()) + m + 1, w)
    longer = max(y1 - y0, x1 - x0)
    if longer < config.small_side:
        scale = min(config.small_side / longer, config.max_upscale)
    else:
        scale = min(config.max_side / longer, 1.0)
    height = max(4, int(round((y1 - y0) * scale / 4)) * 4)
    width = max(4, int(round((x1 - x0) * scale / 4)) * 4)
    return RefineWindow(y0, y1, x0, x1, height, width)


def window_inputs(
    image: np.ndarray, mask: np.ndarray, window: RefineWindow
) -> tuple[np.ndarray, np.ndarray]:
    """The refiner's inputs for one window: (height, width, 3) uint8 image crop and
    (height, width) float32 mask crop in [0, 1] (bilinear: a soft edge, as the logits were)."""
    size = (window.width, window.height)
    crop = image[window.y0 : window.y1, window.x0 : window.x1]
    down = window.height < crop.shape[0]
    img = cv2.resize(crop, size, interpolation=cv2.INTER_AREA if down else cv2.INTER_LINEAR)
    m = mask[window.y0 : window.y1, window.x0 : window.x1].astype(np.float32)
    return img, cv2.resize(m, size, interpolation=cv2.INTER_LINEAR)


@torch.inference_mode()
def refine_mask(
    refiner: MaskRefiner,
    image: np.ndarray,
    mask: np.ndarray,
    config: BoundaryRefineConfig | None = None,
) -> np.ndarray:
    """(H, W) bool: ``mask`` ((H, W) bool, one object in one camera) refined on ``image``
    ((H, W, 3) uint8 RGB) inside its :func:`refine_window`; the mask as it is when it is too
    small or the image does not fit."""
    config = config or BoundaryRefineConfig()
    if image.ndim != 3 or image.shape[:2] != mask.shape or image.shape[2] != 3:
        return mask
    window = refine_window(mask, config)
    if window is None:
        return mask
    img, m = window_inputs(image, mask, window)
    dev = next(refiner.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(img)).to(dev).permute(2, 0, 1)[None].float() / 255.0
    logits = refiner(x, torch.from_numpy(m).to(dev)[None, None])[0, 0].float().cpu().numpy()
    size = (window.x1 - window.x0, window.y1 - window.y0)
    back = cv2.resize(logits, size, interpolation=cv2.INTER_LINEAR) > 0
    out = mask.copy()
    out[window.y0 : window.y1, window.x0 : window.x1] = back
    return out


__all__ = ["BoundaryRefineConfig", "RefineWindow", "refine_mask", "refine_window", "window_inputs"]
