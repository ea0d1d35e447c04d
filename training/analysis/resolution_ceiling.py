"""How well can a configuration segment at all? The IoU ceiling set by its output resolution.

    python -m training.analysis.resolution_ceiling --help
    python -m training.analysis.resolution_ceiling --config sam4d_small --json ceiling.json

A model predicts image masks as stride-4 logits of its input (``image_size / 4``, bilinearly
upsampled to the camera, as :func:`~sam4d_core.modeling.sam4d_base.upsample_mask_logits`) and
LiDAR masks as logits of its stride-4 voxels (``4 * voxel_size``), trilinearly interpolated to
the points (:func:`~sam4d_core.modeling.sparse.voxelize.devoxelize`). Small or thin objects then
cannot be segmented exactly, however well the model is trained. This tool measures that ceiling
on the evaluation's objects: an oracle sets every low-resolution logit from the ground truth
(the object's area fraction in the cell or voxel, minus 0.5), the output path of the model turns
it into a mask, and the mask is scored like :mod:`training.evaluate` scores a prediction (image
IoU pools the cameras; LiDAR IoU leaves out ignored points; per object the mean over the frames
where it is labeled, then the mean over objects). The fraction oracle is an estimate: logits
tuned per object could do a little better at boundaries, never worse than a model could.

Objects: :func:`~sam4d_core.evaluation.streaming_eval.candidate_objects` (blacklist, visible in
both modalities), and the subset :func:`~sam4d_core.evaluation.streaming_eval.select_objects`
keeps with ``--max-objects-per-sequence`` (what the evaluation report scores). Only the
configuration's geometry is used (input size, voxel size): no weights, no model forward.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sam4d_core.data.sequence import IGNORE_ID, Frame, Sequence
from sam4d_core.evaluation.first_frame_prompts import ObjectVisibility
from sam4d_core.evaluation.metrics import iou_counts
from sam4d_core.evaluation.streaming_eval import EvalConfig, candidate_objects, select_objects
from sam4d_core.modeling.configs import SAM4DConfig, load_config
from sam4d_core.modeling.sam4d_base import upsample_mask_logits
from sam4d_core.modeling.sparse.kernel_map import downsample_coords
from sam4d_core.modeling.sparse.tensor import SparseTensor
from sam4d_core.modeling.sparse.voxelize import (
    devoxelize,
    devoxelize_weights,
    points_to_voxel_index,
    released_devoxelize_weights,
    sam4d_voxelize,
)

LOGIT_STRIDE = 4
"""Both heads predict at stride 4: image logits of the input / 4, LiDAR logits of stride-4
voxels."""


def image_ceiling_mask(gt: np.ndarray, logit_size: tuple[int, int]) -> np.ndarray:
    """The best mask an image head with ``logit_size`` (h, w) logits gives for ``gt``.

    Args:
        gt: (H, W) bool ground-truth mask of one camera.
        logit_size: (h, w) of the stride-4 logits (``image_size / 4``; the aspect need not be
            the camera's: the model resizes without keeping it).

    Returns:
        (H, W) bool: the area fraction per logit cell minus 0.5, upsampled as the model does,
        above 0.
    """
    g = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))[None, None]
    frac = F.interpolate(g, size=tuple(logit_size), mode="area")[0, 0]
    return (upsample_mask_logits(frac - 0.5, tuple(gt.shape)) > 0).numpy()


@dataclass
class LidarGrid:
    """The stride-4 voxels of one sweep and each point's trilinear weights over them.

    Attributes:
        point_rows: (N,) int64 stride-4 voxel of each point.
        num_voxels: number of stride-4 voxels.
        devox_rows, devox_weights: (N, 8) as :func:`devoxelize_weights` (the model's path).
    """

    point_rows: torch.Tensor
    num_voxels: int
    devox_rows: torch.Tensor
    devox_weights: torch.Tensor

    @classmethod
    def of(cls, points: np.ndarray, config: SAM4DConfig) -> LidarGrid:
        """The grid of ``points`` ((N, >= 3) metres) under ``config``'s voxelization.

        The LiDAR encoder's strided convolutions (kernel = stride) place a stride-4 voxel at
        ``floor(c / 4) * 4`` of the stride-1 voxels ``c``: the same sparse set the model's
        stride-4 logits live on.
        """
        pcfg = config.point
        exact = pcfg.exact_release
        dtype = torch.float64 if exact else torch.float32
        xyz = torch.as_tensor(np.ascontiguousarray(points[:, :3]), dtype=dtype)
        vox = sam4d_voxelize(xyz, None, None, pcfg.pre_voxel_size, pcfg.voxel_size, exact)
        s = LOGIT_STRIDE
        # The model's stride-4 voxels come from two k2 s2 convs (their bounds, in exact mode).
        coords = vox.voxels.coords
        for stride in (1, 2):
            coords, _ = downsample_coords(coords, (stride,) * 3, (2, 2, 2), (2, 2, 2), False, exact)
        s4 = SparseTensor(torch.zeros(coords.shape[0], 1), coords, stride=s)
        grid, batch = vox.point_grid_coords, vox.point_batch
        rows = points_to_voxel_index(s4, grid, batch)
        if exact:
            devox_rows, devox_weights = released_devoxelize_weights(s4, grid, batch)
        else:
            devox_rows, devox_weights = devoxelize_weights(s4, grid, batch, point_rows=rows)
        return cls(rows, int(coords.shape[0]), devox_rows, devox_weights)

    def ceiling_mask(self, gt: np.ndarray) -> np.ndarray:
        """(N,) bool: the best per-point mask for ``gt`` ((N,) bool): per voxel the fraction
        of its points on the object minus 0.5, interpolated to the points, above 0."""
        on = torch.from_numpy(np.ascontiguousarray(gt, dtype=np.float32))
        keep = self.point_rows >= 0  # exact-release mode: some points have no stride-4 voxel
        rows, on = self.point_rows[keep], on[keep]
        hits = torch.zeros(self.num_voxels).index_add_(0, rows, on)
        count = torch.zeros(self.num_voxels).index_add_(0, rows, torch.ones_like(on))
        frac = hits / count.clamp(min=1.0) - 0.5
        return (devoxelize(frac[:, None], self.devox_rows, self.devox_weights)[:, 0] > 0).numpy()


def frame_ceilings(
    frame: Frame, objects: list[int], config: SAM4DConfig
) -> dict[int, tuple[float | None, float | None]]:
    """Per object (image IoU pooled over the cameras, LiDAR IoU) of the oracle masks; None
    where the object is not labeled in that modality in this frame."""
    h, w = config.image.image_size
    logit_size = (h // LOGIT_STRIDE, w // LOGIT_STRIDE)
    grid = LidarGrid.of(frame.points, config) if frame.point_labels is not None else None
    out: dict[int, tuple[float | None, float | None]] = {}
    for oid in objects:
        inter = union = 0
        for cam in frame.cameras.values():
            if cam.instance_mask is None:
                continue
            gt = cam.instance_mask == oid
            if not gt.any():
                continue
            i, u = iou_counts(image_ceiling_mask(gt, logit_size), gt)
            inter, union = inter + i, union + u
        image = inter / union if union else None
        lidar = None
        if grid is not None:
            labels = frame.point_labels
            gt = labels == oid
            if gt.any():
                i, u = iou_counts(grid.ceiling_mask(gt), gt, labels == IGNORE_ID)
                lidar = i / u if u else None
        out[oid] = (image, lidar)
    return out


@dataclass
class ObjectCeiling:
    """One object's ceiling: mean IoU over the frames where it is labeled (None: never)."""

    sequence: str
    object_id: int
    selected: bool
    image_miou: float | None
    lidar_miou: float | None
    image_frames: int
    lidar_frames: int


def sequence_ceilings(
    sequence: Sequence, config: SAM4DConfig, eval_config: EvalConfig
) -> list[ObjectCeiling]:
    """The ceilings of the evaluation's candidate objects of ``sequence``."""
    vis = ObjectVisibility(sequence)  # one pass over the frames, shared by both selections
    cands = candidate_objects(sequence, eval_config, vis)
    selected, _ = select_objects(sequence, eval_config, visibility=vis)
    per: dict[int, tuple[list[float], list[float]]] = {o: ([], []) for o in cands}
    for frame in sequence.frames:
        for oid, (image, lidar) in frame_ceilings(frame, cands, config).items():
            if image is not None:
                per[oid][0].append(image)
            if lidar is not None:
                per[oid][1].append(lidar)
    return [
        ObjectCeiling(
            sequence.name,
            oid,
            oid in selected,
            float(np.mean(im)) if im else None,
            float(np.mean(li)) if li else None,
            len(im),
            len(li),
        )
        for oid, (im, li) in per.items()
    ]


@dataclass
class CeilingReport:
    """The measured ceilings of one configuration."""

    config: str
    image_size: tuple[int, int]
    voxel_size: float
    sources: list[str]
    objects: list[ObjectCeiling] = field(default_factory=list)

    def summary(self, selected_only: bool) -> dict[str, float | int | None]:
        objs = [o for o in self.objects if o.selected or not selected_only]
        im = [o.image_miou for o in objs if o.image_miou is not None]
        li = [o.lidar_miou for o in objs if o.lidar_miou is not None]
        return {
            "objects": len(objs),
            "image_miou": round(float(np.mean(im)), 4) if im else None,
            "lidar_miou": round(float(np.mean(li)), 4) if li else None,
        }

    def to_dict(self) -> dict:
        d = asdict(self)
        d["all_candidates"] = self.summary(False)
        d["evaluated_objects"] = self.summary(True)
        return d


def format_table(report: CeilingReport) -> str:
    h, w = report.image_size
    lines = [
        f"Resolution ceiling of {report.config} (image logits {h // LOGIT_STRIDE} x "
        f"{w // LOGIT_STRIDE} of a {h} x {w} input; LiDAR logits on "
        f"{LOGIT_STRIDE * report.voxel_size:g} m voxels); sources: {', '.join(report.sources)}",
        "",
        "| objects | count | image mIoU ceiling | LiDAR mIoU ceiling |",
        "|---|--:|--:|--:|",
    ]
    for name, sel in (("all candidates", False), ("the evaluation's objects", True)):
        s = report.summary(sel)
        cells = [f"{v:.3f}" if v is not None else "-" for v in (s["image_miou"], s["lidar_miou"])]
        lines.append(f"| {name} | {s['objects']} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def measure(
    config: SAM4DConfig,
    sequences: Iterable[Sequence],
    eval_config: EvalConfig,
    sources: list[str],
    log: Callable[[str], None] | None = None,
) -> CeilingReport:
    """The ceilings of the evaluation's objects of every sequence (rendered one at a time)."""
    report = CeilingReport(
        config.name, tuple(config.image.image_size), float(config.point.voxel_size), sources
    )
    for seq in sequences:
        t0 = time.perf_counter()
        rows = sequence_ceilings(seq, config, eval_config)
        report.objects += rows
        if log is not None:
            log(f"{seq.name}: {len(rows)} objects, {time.perf_counter() - t0:.1f} s")
    return report


def _config(name: str) -> SAM4DConfig:
    if name.endswith(".pt"):
        from sam4d_core.checkpoint import read_checkpoint

        ck = read_checkpoint(name)
        if ck.config is None:
            raise SystemExit(f"{name}: an official checkpoint; pass --config sam4d_hiera_s_mink34")
        return ck.config
    return load_config(name)


def main(argv: list[str] | None = None) -> int:
    from sam4d_core.data.synthetic import generate_sequence, make_config

    p = argparse.ArgumentParser(
        prog="python -m training.analysis.resolution_ceiling",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    p.add_argument(
        "--config", default="sam4d_small", help="a config name, JSON, or a .pt (its config)"
    )
    p.add_argument(
        "--synthetic-seeds",
        nargs=2,
        type=int,
        default=[950000, 950008],
        metavar=("START", "STOP"),
        help="synthetic sequences (default: the bundled model's held-out set)",
    )
    p.add_argument("--preset", default="bundled_sample")
    p.add_argument("--frames", type=int, default=20)
    p.add_argument("--min-pixels", type=int, default=30)
    p.add_argument("--min-points", type=int, default=10)
    p.add_argument(
        "--max-objects-per-sequence", type=int, default=2, help="the evaluation's sample"
    )
    p.add_argument("--json", type=Path, help="write the report here")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    config = _config(args.config)
    ec = EvalConfig(
        min_pixels=args.min_pixels,
        min_points=args.min_points,
        max_objects=args.max_objects_per_sequence or None,
    )
    a, b = args.synthetic_seeds
    if b <= a:
        raise SystemExit("--synthetic-seeds START STOP needs START < STOP")
    log = None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    seqs = (
        generate_sequence(
            make_config(args.preset, seed=s, num_frames=args.frames, name=f"{args.preset}_{s}")
        )
        for s in range(a, b)
    )
    source = f"synthetic:{args.preset} seeds {a}-{b - 1}, {args.frames} frames"
    report = measure(config, seqs, ec, [source], log)
    print(format_table(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
