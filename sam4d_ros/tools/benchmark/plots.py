"""PNG line plots drawn with OpenCV (matplotlib is not a dependency of the project): latency CDF,
drops and latency against rate, memory over time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Series", "line_plot", "nice_ticks"]

_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
]


@dataclass
class Series:
    """One curve: label, x values, y values (same length), drawn with markers when ``dots``."""

    label: str
    x: Sequence[float]
    y: Sequence[float]
    dots: bool = False


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [start + i * step for i in range(int(math.ceil((hi - start) / step)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.2e}"


def line_plot(
    path: Path,
    series: Sequence[Series],
    title: str,
    xlabel: str,
    ylabel: str,
    *,
    hline: float | None = None,
    size: tuple[int, int] = (800, 480),
    y_min: float | None = None,
) -> Path:
    """Write a PNG of the curves (white background, axes with ticks, a legend)."""
    import cv2

    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 80, 40, 60, 60
    xs = [float(v) for s in series for v in s.x if math.isfinite(float(v))]
    ys = [float(v) for s in series for v in s.y if math.isfinite(float(v))]
    if hline is not None:
        ys.append(hline)
    if not xs or not ys:
        xs, ys = [0.0, 1.0], [0.0, 1.0]
    x0, x1 = min(xs), max(xs)
    y0, y1 = (min(ys) if y_min is None else y_min), max(ys)
    if x1 <= x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    if y1 <= y0:
        y0, y1 = y0 - 0.5, y1 + 0.5
    xt, yt = nice_ticks(x0, x1), nice_ticks(y0, y1)
    x0, x1 = min(x0, xt[0]), max(x1, xt[-1])
    y0, y1 = min(y0, yt[0]), max(y1, yt[-1])

    def px(x: float, y: float) -> tuple[int, int]:
        u = left + (x - x0) / (x1 - x0) * (w - left - right)
        v = h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)
        return int(round(u)), int(round(v))

    font, grey, black = cv2.FONT_HERSHEY_SIMPLEX, (220, 220, 220), (0, 0, 0)
    for t in xt:
        u, _ = px(t, y0)
        cv2.line(img, (u, top), (u, h - bottom), grey, 1)
        cv2.putText(img, _fmt(t), (u - 15, h - bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
    for t in yt:
        _, v = px(x0, t)
        cv2.line(img, (left, v), (w - right, v), grey, 1)
        cv2.putText(img, _fmt(t), (5, v + 4), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), black, 1)
    if hline is not None:
        a, b = px(x0, hline), px(x1, hline)
        cv2.line(img, a, b, (200, 0, 0), 1, cv2.LINE_AA)
    for i, s in enumerate(series):
        color = _COLORS[i % len(_COLORS)][::-1]  # BGR
        pts = [
            px(float(x), float(y))
            for x, y in zip(s.x, s.y, strict=True)
            if math.isfinite(float(x)) and math.isfinite(float(y))
        ]
        if len(pts) > 1:
            cv2.polylines(img, [np.asarray(pts, np.int32)], False, color, 2, cv2.LINE_AA)
        if s.dots or len(pts) == 1:
            for p in pts:
                cv2.circle(img, p, 4, color, -1, cv2.LINE_AA)
        cv2.putText(img, s.label, (left + 10, top + 18 + 18 * i), font, 0.45, color, 1, cv2.LINE_AA)
    cv2.putText(img, title, (left, 22), font, 0.6, black, 1, cv2.LINE_AA)
    cv2.putText(img, xlabel, (w // 2 - 60, h - 15), font, 0.5, black, 1, cv2.LINE_AA)
    cv2.putText(img, ylabel, (5, top - 8), font, 0.45, black, 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path
