"""The demo's video (overlay.mp4): per processed sweep the camera overlays side by side and a
bird's-eye view of the labeled cloud.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sam4d_ros.tools.demo.bag_info import NS_PER_S, BagInfo
from sam4d_ros.tools.demo.errors import DemoError
from sam4d_ros.tools.demo.prompts import ScheduledPrompt
from sam4d_ros.tools.demo.report import ObjectReport, Outputs, fmt_value

__all__ = ["bird_eye_view", "write_video"]


_BEV_RANGE_M = 40.0  # the bird's-eye view spans +-40 m around the LiDAR
_CLICK_MARK_NS = NS_PER_S // 2  # an image click stays marked for 0.5 s of bag time
_VIDEO_SCALE = 0.75


def bird_eye_view(xy: np.ndarray, labels: np.ndarray, size: int) -> np.ndarray:
    """(size, size, 3) rgb: points seen from above (x forward = up, y left = left), background
    grey, objects in their label colours."""
    import cv2

    from sam4d_core.codecs.image import label_colors

    img = np.full((size, size, 3), 16, np.uint8)
    scale = size / (2.0 * _BEV_RANGE_M)
    u = (size / 2 - xy[:, 1] * scale).astype(np.int32)
    v = (size / 2 - xy[:, 0] * scale).astype(np.int32)
    ok = np.isfinite(xy).all(axis=1) & (u >= 0) & (u < size) & (v >= 0) & (v < size)
    bg = ok & (labels == 0)
    img[v[bg], u[bg]] = (110, 110, 110)
    fg = np.nonzero(ok & (labels > 0))[0]
    if fg.size:
        colors = label_colors(labels[fg])
        for k in range(3):  # 2x2 dots: objects stand out from the background
            for dv, du in ((0, 0), (0, 1), (1, 0), (1, 1)):
                vv = np.clip(v[fg] + dv, 0, size - 1)
                uu = np.clip(u[fg] + du, 0, size - 1)
                img[vv, uu, k] = colors[:, k]
    c = size // 2
    cv2.rectangle(img, (c - 2, c - 4), (c + 2, c + 4), (255, 255, 255), -1)  # the ego vehicle
    return img


def write_video(
    path: Path,
    info: BagInfo,
    outputs: Outputs,
    scores: list[ObjectReport],
    prompts: Sequence[ScheduledPrompt],
    fps: float,
) -> int:
    """overlay.mp4 (mp4v): per processed sweep the camera overlays side by side and the
    bird's-eye view, image clicks marked on the sweeps of half a second from theirs; returns the
    number of frames written."""
    import cv2

    cams = list(info.cameras)
    stamps = [s for s in info.sweep_stamps_ns if s in outputs.frames]
    if not stamps:
        return 0
    h_cam = max((c.height for c in info.cameras.values()), default=0) or 288
    h = int(round(h_cam * _VIDEO_SCALE)) // 2 * 2
    widths = [
        int(round(info.cameras[c].width * h / max(info.cameras[c].height, 1))) // 2 * 2
        for c in cams
    ]
    bar = 22
    width = sum(widths) + h
    width += width % 2
    iou_by_frame = {f.stamp_ns: f for s in scores[:1] for f in s.frames if f.status == "evaluated"}
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, h + bar))
    if not writer.isOpened():
        raise DemoError(f"OpenCV cannot write {path} (mp4v)")
    n = 0
    try:
        for s in stamps:
            fo = outputs.frames[s]
            canvas = np.zeros((h + bar, width, 3), np.uint8)
            x = 0
            for cam, w in zip(cams, widths, strict=True):
                img = fo.overlays.get(cam)
                if img is not None and img.ndim == 3:
                    canvas[bar:, x : x + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
                cv2.putText(canvas, cam, (x + 4, bar + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                            (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip
                for p in prompts:
                    if p.spec.camera == cam and 0 <= s - p.stamp_ns < _CLICK_MARK_NS:
                        k = h / max(info.cameras[cam].height, 1)
                        c = (x + int(p.spec.point[0] * k), bar + int(p.spec.point[1] * k))
                        cv2.drawMarker(canvas, c, (255, 255, 255), cv2.MARKER_CROSS, 14, 2)
                x += w
            if fo.cloud_xy is not None and fo.cloud_labels is not None:
                canvas[bar:, x : x + h] = bird_eye_view(fo.cloud_xy, fo.cloud_labels, h)
            i = info.sweep_stamps_ns.index(s)
            n_obj = len(fo.objects.objects) if fo.objects is not None else 0
            text = f"sweep {i}/{len(info.sweep_stamps_ns) - 1}"
            text += f"  t={(s - info.start_ns) / NS_PER_S:.1f}s"
            text += f"  objects {n_obj}"
            row = iou_by_frame.get(s)
            if row is not None:
                text += (
                    f"  IoU img {fmt_value(row.image_iou, 2)} lidar {fmt_value(row.lidar_iou, 2)}"
                )
            cv2.putText(canvas, text, (6, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255),
                        1, cv2.LINE_AA)  # fmt: skip
            writer.write(cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR))
            n += 1
    finally:
        writer.release()
    return n
