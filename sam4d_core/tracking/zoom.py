"""Zoomed decoding: a prompted object's camera mask decoded again on a window of the camera.

The decoder predicts camera masks at stride 4 of its input (384 x 192 for the bundled model: one
logit per 5 x 6 pixels of a 480 x 288 camera), so an object of a few hundred pixels is a handful
of cells and its mask is a blob. On the frame a user prompts, the object's mask in a camera is
decoded a second time on a *virtual camera*: a window of that camera around the object
(:func:`zoom_window`: the camera's aspect, ``margin`` times the object's extent, at most
``1 / factor`` of the image a side), resized to the camera's size, with the intrinsics of that
window (:class:`ZoomWindow`). The model resizes it to its input like any camera, so the object
spans up to ``factor`` times more cells. The object's extent is the user's box, or the clicks
and the first mask (:func:`prompt_extent`); an object prompted in the LiDAR only is zoomed in
each camera seeing its refined segment, on the segment's projected box. The decode is a
memory-free conditioning decode, as on an object's first frame, with the camera prompt moved
into the window (:func:`prompt_in_window`) and the object's 3D clicks unchanged: the sweep's
features are the frame's, only the window is encoded (:func:`zoomed_camera_logits`, one image
encoder pass per zoomed camera). The tracker refines the window's mask like a camera's and
pastes it over the window (:meth:`ZoomWindow.paste`).

Only the camera masks returned change: the object's memory, pointers and presence are the first
decode's.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.modeling.records import FrameFeatures
from sam4d_core.modeling.sam4d_base import SAM4D, upsample_mask_logits


@dataclass(frozen=True)
class ZoomConfig:
    """Settings of the zoomed decoding.

    Attributes:
        factor: the largest zoom: the window is at least the camera's size / ``factor``.
        margin: the window spans at least this many times the object's extent (its box, or its
            clicks and first mask), so the object and some context are in it.
        min_factor: no zoomed decode when the window this leaves zooms less than this (a large
            object: the first decode already has cells to spare).
    """

    factor: float = 2.0
    margin: float = 2.0
    min_factor: float = 1.3

    def __post_init__(self) -> None:
        if not (self.factor >= 1.0 and self.margin >= 1.0 and 1.0 <= self.min_factor):
            raise ValueError("ZoomConfig: factor, margin and min_factor must be >= 1")


@dataclass(frozen=True)
class ZoomWindow:
    """A window of one camera: pixels ``[x0, x0 + width) x [y0, y0 + height)``."""

    x0: int
    y0: int
    width: int
    height: int

    def slices(self) -> tuple[slice, slice]:
        """(rows, columns) of the window in the camera's arrays."""
        return slice(self.y0, self.y0 + self.height), slice(self.x0, self.x0 + self.width)

    def intrinsics(self, K: np.ndarray, size: tuple[int, int] | None = None) -> np.ndarray:
        """(3, 3) pinhole K of the window from the camera's ``K``, its pixels resized to
        ``size`` (H, W) when given."""
        out = np.asarray(K, np.float64).copy()
        out[0, 2] -= self.x0
        out[1, 2] -= self.y0
        if size is not None:
            out[0] *= size[1] / self.width
            out[1] *= size[0] / self.height
        return out

    def to_view(self, uv: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(..., 2) camera pixels (u, v) -> pixels of the window resized to ``size`` (H, W)."""
        scale = np.array([size[1] / self.width, size[0] / self.height])
        return (np.asarray(uv, np.float64) - [self.x0, self.y0]) * scale

    def view(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(H, W, 3) the window of ``image`` resized to ``size`` (bilinear)."""
        crop = np.ascontiguousarray(np.asarray(image)[self.slices()])
        return cv2.resize(crop, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)

    def paste(self, mask: np.ndarray, view_mask: np.ndarray) -> np.ndarray:
        """``mask`` ((H, W) bool, the camera's) with the window replaced by ``view_mask`` (a
        mask of the window's view, any size; area-resampled, a pixel is in where at least half
        of it is)."""
        back = cv2.resize(
            view_mask.astype(np.float32), (self.width, self.height), interpolation=cv2.INTER_AREA
        )
        out = mask.copy()
        out[self.slices()] = back >= 0.5
        return out


def prompt_extent(prompt: CameraPrompt, mask: np.ndarray | None) -> np.ndarray | None:
    """(4,) [x0, y0, x1, y1] pixels the object spans by what is known on the prompted camera:
    the user's box, else the positive clicks together with ``mask`` ((H, W) bool, the first
    decode's mask); None without a box or a positive click."""
    if prompt.box is not None:
        return np.asarray(prompt.box, np.float64).reshape(4)
    if prompt.points is None:
        return None
    uv = np.asarray(prompt.points, np.float64).reshape(-1, 2)
    labels = np.asarray(prompt.labels).reshape(-1) if prompt.labels is not None else None
    if labels is not None and len(labels) == len(uv):
        uv = uv[labels > 0]
    if len(uv) == 0:
        return None
    lo, hi = uv.min(axis=0), uv.max(axis=0)
    if mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        lo = np.minimum(lo, [xs.min(), ys.min()])
        hi = np.maximum(hi, [xs.max(), ys.max()])
    return np.array([lo[0], lo[1], hi[0], hi[1]], np.float64)


def zoom_window(extent: np.ndarray, size: tuple[int, int], config: ZoomConfig) -> ZoomWindow | None:
    """The window (camera aspect kept) centred on ``extent`` ([x0, y0, x1, y1] pixels) of a
    camera of ``size`` (H, W): ``margin`` times the extent, at least the camera / ``factor``,
    moved inside the image; None when it would zoom less than ``min_factor``."""
    h, w = size
    x0, y0, x1, y1 = extent
    frac = max(
        (x1 - x0 + 1) * config.margin / w, (y1 - y0 + 1) * config.margin / h, 1.0 / config.factor
    )
    if 1.0 / frac < config.min_factor:
        return None
    ww, wh = max(int(round(w * frac)), 1), max(int(round(h * frac)), 1)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    left = int(np.clip(round(cx - ww / 2.0), 0, w - ww))
    top = int(np.clip(round(cy - wh / 2.0), 0, h - wh))
    return ZoomWindow(left, top, ww, wh)


def prompt_in_window(
    prompt: CameraPrompt, window: ZoomWindow, size: tuple[int, int] | None = None
) -> CameraPrompt:
    """The clicks and box of ``prompt`` in the window's pixels (resized to ``size`` (H, W) when
    given); its mask, a dense prompt of the whole camera, is left out."""
    size = size or (window.height, window.width)
    points = None
    if prompt.points is not None:
        points = window.to_view(np.asarray(prompt.points, np.float64).reshape(-1, 2), size)
    box = None
    if prompt.box is not None:
        box = window.to_view(np.asarray(prompt.box, np.float64).reshape(2, 2), size).reshape(4)
    return CameraPrompt(points, prompt.labels, box, None)


def zoomed_camera_logits(
    model: SAM4D,
    features: FrameFeatures,
    view: np.ndarray,
    K: np.ndarray,
    cam_from_lidar: np.ndarray,
    prompt: CameraPrompt,
    prompts: ObjectPrompts | None,
    timings: dict[str, float] | None = None,
) -> torch.Tensor:
    """(H, W) float32 mask logits of one object on a window's view (module docstring), decoded
    as a camera of its own.

    Args:
        model: the model (eval mode; the caller holds ``torch.inference_mode``).
        features: the frame's features (its sweep's are reused; its cameras' are not used).
        view: (H, W, 3) uint8 the window's pixels (:meth:`ZoomWindow.view`).
        K: (3, 3) the view's intrinsics (:meth:`ZoomWindow.intrinsics`); cam_from_lidar: (4, 4)
            the camera's.
        prompt: the object's prompt in the view's pixels (:func:`prompt_in_window`).
        prompts: all the object's prompts on the frame (its LiDAR clicks and box are used), or
            None.
        timings: ``image_encoder`` and ``decoder`` times (ms) are added to it.
    """
    lidar = features.lidar
    # The sweep's features are the frame's: only the view is encoded.
    frame = model.encode_frame(
        [view],
        [np.asarray(K, np.float64)],
        [np.asarray(cam_from_lidar, np.float64)],
        None,
        features.geometry.pose,
        timings=timings,
        lidar=lidar,
    )
    lp = None if prompts is None or lidar is None else prompts.lidar
    if lp is not None:
        # Clicks and box only: the frame's dense prompts (a mask, the previous logits) are of
        # the first decode.
        lp = (
            None
            if lp.points is None and lp.box is None
            else LidarPrompt(lp.points, lp.labels, lp.box)
        )
    out = model.track_step(
        frame, [ObjectPrompts(cameras={0: prompt}, lidar=lp)], None, timings=timings
    )
    assert out.image is not None
    return upsample_mask_logits(out.image.mask_logits[0, 0], tuple(np.shape(view)[:2]))


__all__ = [
    "ZoomConfig",
    "ZoomWindow",
    "prompt_extent",
    "prompt_in_window",
    "zoom_window",
    "zoomed_camera_logits",
]
