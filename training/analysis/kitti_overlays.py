"""The model on real data: the KITTI raw sample with hand-chosen clicks, as overlay pictures.

    python -m training.analysis.kitti_overlays   # bundled model -> training/reports/kitti_sample/
    python -m training.analysis.kitti_overlays --checkpoint last.pt --out /tmp/kitti --frames 0 5 23

Runs the streaming tracker over the 24 frames of ``../shared/data/kitti_raw_2011_09_26`` (one
camera, ``image_02``, and the Velodyne sweep; no ground truth), prompts each object of
:data:`CLICKS` with one positive click in the camera image on its frame (right after that frame's
step, as a user's click), and writes one JPEG per rendered frame: the camera image with the
objects' masks and outlines in their colours (``sam4d_core.codecs.image``: the node's colours) and
the clicks marked, above a bird's-eye view of the labeled sweep (forward to the right, left up;
background points grey). The clicks were chosen by looking at the images.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..cli import doc_parser

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "kitti_raw_2011_09_26"
DEFAULT_OUT = REPO_ROOT / "training" / "reports" / "kitti_sample"


@dataclass(frozen=True)
class KittiClick:
    """One hand-chosen positive click: frame index, pixel ``(u, v)`` of ``image_02``, what it is."""

    frame: int
    u: float
    v: float
    what: str


CLICKS: tuple[KittiClick, ...] = (
    KittiClick(0, 625, 275, "silver VW hatchback ahead in our lane (rear bumper)"),
    KittiClick(0, 240, 285, "silver Mercedes estate in the left lane (rear door)"),
    KittiClick(0, 440, 180, "red utility truck ahead-left (tailgate)"),
    KittiClick(0, 880, 160, "dark green truck cab in the right lane"),
    KittiClick(12, 1000, 120, "white tanker trailer on the right (added on frame 12)"),
)
RENDER_FRAMES: tuple[int, ...] = (0, 12, 23)

# Bird's-eye panel: x (forward) from BEV_X0 m to the right, y (left) up, BEV_SCALE px per metre.
BEV_SCALE = 15.0
BEV_X0 = -12.0
BEV_HALF_WIDTH_M = 12.5


def bev_panel(
    points: np.ndarray, labels: np.ndarray, width: int, scale: float = BEV_SCALE
) -> np.ndarray:
    """(H, W, 3) uint8 bird's-eye view of (N, 3+) LiDAR points: labeled points (``labels`` (N,)
    ids > 0) in their colours over grey background points, the ego position as a white
    triangle."""
    from sam4d_core.codecs.image import label_colors

    height = int(round(2 * BEV_HALF_WIDTH_M * scale))
    img = np.full((height, width, 3), 18, np.uint8)
    # A metre grid every 10 m for scale.
    for x in range(int(np.ceil(BEV_X0 / 10)) * 10, int(BEV_X0 + width / scale) + 1, 10):
        u = int(round((x - BEV_X0) * scale))
        cv2.line(img, (u, 0), (u, height - 1), (45, 45, 45), 1)
        cv2.putText(img, f"{x} m", (u + 3, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (90,) * 3)
    u = np.round((points[:, 0] - BEV_X0) * scale).astype(np.int64)
    v = np.round((BEV_HALF_WIDTH_M - points[:, 1]) * scale).astype(np.int64)
    inside = (u >= 0) & (u < width - 1) & (v >= 0) & (v < height - 1)
    bg = inside & (labels == 0)
    # Background by height: ground dark, obstacles lighter.
    shade = np.clip(70 + 40 * (points[bg, 2] + 1.7), 50, 170).astype(np.uint8)
    img[v[bg], u[bg]] = shade[:, None]
    fg = np.flatnonzero(inside & (labels > 0))
    colors = label_colors(labels[fg])
    for du in (0, 1):  # labeled points as 2x2 squares: visible at this scale
        for dv in (0, 1):
            img[v[fg] + dv, u[fg] + du] = colors
    ox, oy = int(round(-BEV_X0 * scale)), int(round(BEV_HALF_WIDTH_M * scale))
    tri = np.array([[ox + 10, oy], [ox - 6, oy - 7], [ox - 6, oy + 7]], np.int32)
    cv2.fillPoly(img, [tri], (255, 255, 255))
    return img


def camera_panel(
    rgb: np.ndarray,
    masks: dict[int, np.ndarray],
    clicks: list[tuple[int, KittiClick]],
) -> np.ndarray:
    """The camera image with each object's (H, W) bool mask blended and outlined in its colour,
    and the clicks given on this frame as circles."""
    from sam4d_core.codecs.image import label_color, overlay

    labels = np.zeros(rgb.shape[:2], np.int32)
    for oid, m in masks.items():
        labels[m] = oid
    out = overlay(rgb, labels, alpha=0.45)
    for oid, m in masks.items():
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, label_color(oid), 2)
    for oid, c in clicks:
        p = (int(round(c.u)), int(round(c.v)))
        cv2.circle(out, p, 7, (255, 255, 255), -1)
        cv2.circle(out, p, 5, label_color(oid), -1)
        cv2.circle(out, p, 8, (0, 0, 0), 1)
    return out


def _caption(img: np.ndarray, text: str) -> None:
    cv2.putText(img, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (8, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)


def run(
    checkpoint: Path | None,
    data: Path,
    out: Path,
    render: tuple[int, ...] = RENDER_FRAMES,
    threads: int = 1,
    device: str = "cpu",
    quality: int = 85,
    reprompt: bool = True,
    refine_masks: bool = True,
) -> list[Path]:
    """Tracks the :data:`CLICKS` through the sample and writes the pictures; returns their
    paths. ``reprompt`` / ``refine_masks``: the tracker re-prompts, refines masks with the
    sweep's geometry and lifts image clicks to 3D as the node does by default (both off: memory
    only, the decoder's masks, the SAM4D protocol)."""
    import torch

    from sam4d_core.build_sam import build_sam4d
    from sam4d_core.data.kitti_raw import CAMERA_NAME, read_kitti_raw
    from sam4d_core.tracking.records import ImagePrompt, ObjectPrompt
    from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig
    from sam4d_core.weights import bundled_model_path

    if threads:
        torch.set_num_threads(threads)
    ckpt = checkpoint if checkpoint is not None else bundled_model_path()
    model = build_sam4d(checkpoint=ckpt, device=device)
    seq = read_kitti_raw(data)
    bad = [f for f in render if not 0 <= f < len(seq)]
    if bad:
        raise SystemExit(f"frames {bad} are outside the sample's {len(seq)} frames")
    tracker = StreamingTracker(
        model,
        TrackerConfig(
            reprompt=reprompt,
            refine_masks=refine_masks,
            lift_image_clicks=refine_masks,
            zoom=refine_masks,
            boundary_refine=refine_masks,
        ),
    )
    ids = {k + 1: c for k, c in enumerate(CLICKS)}
    out.mkdir(parents=True, exist_ok=True)
    written = []
    mode = "re-prompting" if reprompt else "memory only"
    mode += ", masks refined" if refine_masks else ", the decoder's masks"
    print(f"{Path(ckpt).name} on {data.name} ({mode}): {len(seq)} frames, {len(CLICKS)} clicks")
    for oid, c in ids.items():
        print(f"  object {oid}: frame {c.frame} pixel ({c.u:.0f}, {c.v:.0f}) {c.what}")
    for t, frame in enumerate(seq.frames):
        t0 = time.perf_counter()
        res = tracker.step(frame)
        given = [(oid, c) for oid, c in ids.items() if c.frame == t]
        if given:
            prompts = [
                ObjectPrompt(
                    oid,
                    image=[ImagePrompt(CAMERA_NAME, np.array([[c.u, c.v]]), np.array([1]))],
                )
                for oid, c in given
            ]
            res = tracker.add_prompts(prompts)
        objs = {o.object_id: o for o in res.objects}
        summary = ", ".join(
            f"{oid}: {int(o.image_masks[CAMERA_NAME].sum())} px / {int(o.point_mask.sum())} pts"
            + (" (lost)" if o.lost else "")
            for oid, o in objs.items()
        )
        print(f"frame {t:2d} ({time.perf_counter() - t0:.1f} s) {summary}", flush=True)
        if t not in render:
            continue
        cam = camera_panel(
            frame.cameras[CAMERA_NAME].image,
            {oid: o.image_masks[CAMERA_NAME] for oid, o in objs.items()},
            given,
        )
        _caption(
            cam,
            f"KITTI raw 2011-09-26, frame {t}: {Path(ckpt).name}, {mode}"
            + (f", clicks on objects {[o for o, _ in given]}" if given else ""),
        )
        labels = np.zeros(len(frame.points), np.int32)
        for oid, o in objs.items():
            labels[o.point_mask] = oid
        bev = bev_panel(frame.points, labels, cam.shape[1])
        _caption(bev, "bird's-eye view of the labeled sweep (forward ->, left ^)")
        pic = np.concatenate([cam, bev], axis=0)
        path = out / f"kitti_frame_{t:02d}.jpg"
        ok, buf = cv2.imencode(
            ".jpg", cv2.cvtColor(pic, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        assert ok
        path.write_bytes(buf.tobytes())
        written.append(path)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} pictures ({total / 1e6:.2f} MB) to {out}")
    return written


def main(argv: list[str] | None = None) -> int:
    p = doc_parser("training.analysis.kitti_overlays", __doc__)
    p.add_argument("--checkpoint", type=Path, default=None, help="default: the bundled model")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the KITTI raw sample")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the pictures go")
    p.add_argument("--frames", type=int, nargs="+", default=list(RENDER_FRAMES))
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jpeg-quality", type=int, default=85)
    p.add_argument(
        "--memory-only", action="store_true", help="no re-prompting (the node's default is on)"
    )
    p.add_argument(
        "--raw-masks",
        action="store_true",
        help="the decoder's masks as they are and image clicks as given (the node refines masks "
        "and lifts image clicks to 3D by default)",
    )
    a = p.parse_args(argv)
    run(
        a.checkpoint,
        a.data,
        a.out,
        tuple(a.frames),
        a.threads,
        a.device,
        a.jpeg_quality,
        reprompt=not a.memory_only,
        refine_masks=not a.raw_masks,
    )
    return 0


__all__ = ["CLICKS", "RENDER_FRAMES", "KittiClick", "bev_panel", "camera_panel", "main", "run"]


if __name__ == "__main__":
    sys.exit(main())
