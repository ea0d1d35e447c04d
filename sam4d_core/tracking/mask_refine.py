"""Mask refinement with the sweep's geometry: one object's LiDAR mask made one whole segment,
and its camera masks guided by that segment where the LiDAR sees.

The decoder's LiDAR mask of one clicked object often carries pieces of other objects metres away
(its stride-16 tokens mix neighbours) and misses parts of the object (its stride-4 voxels are
0.8 m, and far objects have few points). Two geometric steps fix most of it, the way SAM's and
SAM 2's post-processing drop sprinkles and fill holes in 2D, with the LiDAR's metric 3D:

1. **select**: on a tracked sweep the mask's points far from the motion model's predicted
   segment are dropped first (:func:`gate_to_prediction`); the mask's points are grouped into
   segments (points closer than ``segment_radius`` are linked; ``click_segment_radius`` around
   a user's 3D clicks) and the segment of the object's *anchor* is kept: the one
   nearest the prompt (a LiDAR click, a bird's-eye box's centre, the point seen nearest an image
   click, the tracker's predicted segment), the largest one without a prompt. A mask that
   holds nothing near any 3D click lies on a neighbour: the segment starts from the clicked
   points instead.
2. **complete**: around that segment the sweep is split into clusters of non-ground points
   (local ground removed, not counting what lies well under the ground around: a car's
   reflection in the road; points linked within a distance that grows with range as the
   LiDAR's rings spread); a cluster mostly inside the segment is taken
   whole, and the segment's points on clusters it barely touches are dropped. The clusters the
   3D clicks land on are always taken: a click is on its object (a bush clicked in front of a
   building the decoder chose). Points taken for ground that touch what was taken are added
   when they are the segment's (a wheel) or stand clear of the ground the rings hit nearby
   (between the rings the local ground is a far car's sill or a bush's lowest ring).

On the sweep a user prompts with a LiDAR box, the segment is what the box frames instead
(:func:`boxed_segment`): a box drawn around an object is stronger evidence than the decoder's
mask.

Camera masks then follow the refined segment where the LiDAR sees (:func:`guided_image_mask`):
a pixel within ``image_radius_px`` of a projected point takes that point's label (the nearest
projected point; of points projecting on one pixel, the nearest in depth), the object's or not;
elsewhere (beyond the sweep's rings, the sky, gaps) the decoder's mask stays, except above the
object where the LiDAR's next beam up passed over it (:func:`ceiling_points`,
:func:`above_object`; :class:`HeightMemory` keeps the height for sweeps whose highest beam hits
the object): no point labels the sky over a car or the taller building behind a low one, but
the beam that found nothing there says it is not the object. Then one GrabCut
iteration on the camera image around the object (:func:`grabcut_image_mask`), seeded by the
pixels where points project (the segment's: object; the others': background) and started from
that mask, moves the boundary onto the image's edges between the LiDAR's rings. Where the
LiDAR looked and got nothing back (a hole in its returns wider than its beams' gaps, between its
lowest and highest beam: the sky, a building beyond its range, :func:`unseen_pixels`), an object
within its reach is not. Of the result
only the parts holding one of the segment's points are kept (:func:`supported_image_mask`), and on
the frame a user prompts, the prompted camera's mask stays in the user's box and keeps the parts
holding a positive click (:func:`prompt_constrained_mask`).

Image prompts can also be lifted to 3D clicks (:func:`lifted_clicks`): the point seen under a
click (with none there, the non-ground point seen nearest it within ``click_lift_radius_px``:
a click above the LiDAR's highest beam), of a box the point cluster it frames
(:func:`box_lifted_row`), and of a mask the point seen deepest inside it
(:func:`mask_lifted_row`).

Masks only change here: the model's logits, memory and presence are what they were. Nothing here
is learned; every setting is in :class:`MaskRefineConfig`. The tracker may pass in one learned
step, run after GrabCut: :func:`~sam4d_core.tracking.boundary_refine.refine_mask`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from sam4d_core.modeling.prompts import CameraPrompt, ObjectPrompts
from sam4d_core.tracking.reprompt import (
    CameraGeometry,
    project_points,
    rigid_inverse,
    transform_points,
)


@dataclass(frozen=True)
class MaskRefineConfig:
    """Settings of the mask refinement.

    Attributes:
        predicted_gate: on a tracked sweep, mask points farther than this (m) from the motion
            model's predicted segment are dropped before the select step (a pole's mask
            spreading onto the wall behind it); 0 = off. Only with a prediction made from the
            previous sweep's observation.
        segment_radius: mask points closer than this (m) belong to one segment (select step).
        clicks_held: a 3D click is on the object: when the mask holds no point within the
            completion's linking distance of any positive 3D click, the segment starts from the
            clicked points instead; the completion always takes the clicked clusters.
        box_held: on the sweep a user prompts with a LiDAR box, the segment is what the box
            frames (:func:`boxed_segment`), not the decoder's mask refined.
        box_margin: ... with the box grown by this much (m) each side.
        click_lift_radius_px: an image click with no sweep point within 4 px is lifted to the
            non-ground point seen nearest it within this many camera pixels (0 = off): a click
            on a pole's lamp or a building's upper floors, above the LiDAR's highest beam,
            lands on the object's points below it (:func:`lifted_clicks`).
        click_segment_radius: with a user's 3D clicks on the sweep's points (a LiDAR click,
            an image click or box lifted to 3D) the select step links the mask's points within
            this (m), not ``segment_radius``, on the sweep the user prompted.
        complete: run the completion step (else only the anchor's segment is kept).
        link_min: the completion's linking distance near the sensor (m).
        link_per_m: ... growing by this much per metre of range (the rings' spacing grows).
        ground_cell: cell size (m) of the local ground height (lowest point of 3 x 3 cells;
            not a point well under the cells around beside others: a reflection in the road).
        ground_tolerance: points less than this above the local ground are ground (m).
        ground_rise: the completion also takes the local ground's points touching what it took
            when they stand at least this high (m) over the lowest point of the
            ``ground_reach`` cells around: between a far object and the LiDAR's ground rings no
            cell holds the ground, and the lowest point near a car or a bush is its own bottom.
            0 = off.
        ground_reach: cells each side of that wider look (3: 7 x 7 cells).
        margin: the completion looks this far (m) around the segment's bounds.
        min_overlap: a cluster is taken whole when at least this fraction of it is in the
            segment, or when it holds this fraction of the segment's non-ground points.
        max_points: when the completion's region has more points than this, it is the
            region around the segment's points above their own local ground (a car ahead whose
            mask took the road around it), and with more again the completion is skipped
            (bounds the cost of a mask spread over a building).
        images: guide the camera masks by the refined segment.
        image_radius_px: a pixel this close (camera pixels) to a projected point takes its label.
        image_guide_min_points: a camera mask is guided only when at least this many of the
            segment's points are seen by that camera. One is enough: a pedestrian of two points
            40 m away is as well placed by them as a car by forty, and the points of what
            surrounds it (labelled not the object) cut the decoder's spill onto a building.
        image_min_points: fewer of the segment's points seen by a camera than this, and the
            segment does not cover the object there: on a user-prompted frame such a camera
            takes the prompted camera's mask carried across (``carry_across``), and a LiDAR
            prompt's segment is zoomed in a camera only from this many.
        image_support: keep only the parts of a guided camera mask (8-connected) that hold a
            pixel where one of the segment's points projects: the decoder's blobs where the
            LiDAR sees none of the object (windows, sky, the next building) are dropped.
        prompt_box_margin_px: on the frame a user prompts, the prompted camera's mask is
            clipped to the user's box plus this margin, and keeps its parts holding a positive
            click (:func:`prompt_constrained_mask`).
        carry_across: on that frame, each other camera the segment cannot guide (fewer than
            ``image_min_points`` of its points seen there) takes the prompted camera's mask
            carried across at the object's depth, when any of it lands in its image
            (:mod:`~sam4d_core.tracking.overlap`): an object in two overlapping cameras.
        carry_default_depth: the depth (m) it is carried at when the segment gives none.
        above_margin_deg: a guided camera mask keeps no pixel above the next beam over the
            segment's points in its column, nor less than this (degrees, as the LiDAR sees it)
            above them, where the LiDAR's beams at the object's range reach higher
            (:func:`above_object`): the decoder's mask climbing the taller building behind a
            low one, or into the sky (0 = off).
        above_min_points: ... for a segment of at least this many points (the beam over a
            far cyclist may pass beside his head, between its columns).
        above_columns_px: the ceiling reaches this many pixels beyond the columns the
            segment's ceiling spans.
        above_slack_px: and keeps this many pixels above it (a roof's corner between two
            columns' ceilings).
        remember_height: the tracker keeps each object's height from the sweeps that show
            free space above it for those that do not (:class:`HeightMemory`).
        free_space_deg: a camera mask leaves out the pixels where the LiDAR looked and got
            nothing back (:func:`unseen_pixels`): those farther than this angle from every
            point's projection, within the elevations the sweep's returns span (0 = off).
        free_space_range: ... for objects nearer than this fraction of the sweep's farthest
            return (what lies beyond the LiDAR's reach gives no return either).
        grabcut: refine a guided camera mask with GrabCut on the image (needs the image).
        grabcut_iterations: GrabCut iterations (1 does as well as 5 on the held-out set).
        grabcut_margin_px: the GrabCut region: the mask's and the segment's bounds plus this.
        grabcut_max_side: that region is downscaled to at most this many pixels a side (bounds
            the cost on large cameras and near objects).
    """

    predicted_gate: float = 1.5
    segment_radius: float = 4.0
    clicks_held: bool = True
    box_held: bool = True
    box_margin: float = 0.2
    click_segment_radius: float = 2.0
    click_lift_radius_px: float = 16.0
    complete: bool = True
    link_min: float = 0.5
    link_per_m: float = 0.04
    ground_cell: float = 1.0
    ground_tolerance: float = 0.25
    ground_rise: float = 0.2
    ground_reach: int = 3
    margin: float = 3.0
    min_overlap: float = 0.5
    max_points: int = 20000
    images: bool = True
    image_radius_px: float = 6.0
    image_guide_min_points: int = 1
    image_min_points: int = 5
    image_support: bool = True
    prompt_box_margin_px: int = 2
    carry_across: bool = True
    carry_default_depth: float = 50.0
    above_margin_deg: float = 1.0
    above_columns_px: int = 8
    above_min_points: int = 8
    above_slack_px: int = 3
    remember_height: bool = True
    free_space_deg: float = 2.0
    free_space_range: float = 0.85
    grabcut: bool = True
    grabcut_iterations: int = 1
    grabcut_margin_px: int = 15
    grabcut_max_side: int = 192

    def __post_init__(self) -> None:
        positive = (
            "segment_radius",
            "click_segment_radius",
            "link_min",
            "ground_cell",
            "margin",
            "image_radius_px",
        )
        bad = [n for n in positive if not getattr(self, n) > 0]
        bad += [
            n
            for n in (
                "link_per_m",
                "ground_tolerance",
                "ground_rise",
                "ground_reach",
                "predicted_gate",
                "box_margin",
                "free_space_deg",
                "free_space_range",
            )
            if getattr(self, n) < 0
        ]
        if bad:
            raise ValueError(f"MaskRefineConfig: {', '.join(bad)} out of range")
        counts = (
            "above_min_points",
            "max_points",
            "image_guide_min_points",
            "image_min_points",
            "grabcut_iterations",
            "grabcut_max_side",
        )
        if not 0.0 < self.min_overlap <= 1.0 or any(getattr(self, n) < 1 for n in counts):
            raise ValueError(f"MaskRefineConfig: min_overlap in (0, 1], {', '.join(counts)} >= 1")
        if self.grabcut_margin_px < 0 or self.prompt_box_margin_px < 0:
            raise ValueError("MaskRefineConfig: grabcut_margin_px, prompt_box_margin_px >= 0")
        if (
            min(self.click_lift_radius_px, self.above_margin_deg) < 0
            or min(self.above_columns_px, self.above_slack_px) < 0
        ):
            raise ValueError(
                "MaskRefineConfig: click_lift_radius_px, above_margin_deg, above_columns_px,"
                " above_slack_px >= 0"
            )


@dataclass
class SegmentAnchor:
    """Where the object is, to choose among a mask's segments (any may be absent).

    Attributes:
        points: (P, 3) positive 3D clicks (LiDAR frame, m).
        bev: (2,) x, y of a bird's-eye box's centre (m).
        pixels: (P, 2) positive clicks or a box centre (u, v) in ``camera``'s pixels.
        camera: the camera of ``pixels``.
        predicted: (M, 3) on a tracked sweep, the motion model's predicted segment (LiDAR
            frame, m): mask points farther than ``predicted_gate`` from it are dropped first.
        prompted: the anchor is a user's prompt on the sweep it was given on (not the
            tracker's re-prompting): its 3D clicks bound the segment to
            ``click_segment_radius``.
        box: the user's LiDAR box (LiDAR frame, m): (4,) bird's-eye ``[x_min, y_min, x_max,
            y_max]`` or (6,) ``[x_min, y_min, z_min, x_max, y_max, z_max]``; with ``prompted``
            the segment is what the box frames (:func:`boxed_segment`).
    """

    points: np.ndarray | None = None
    bev: np.ndarray | None = None
    pixels: np.ndarray | None = None
    camera: CameraGeometry | None = None
    predicted: np.ndarray | None = None
    prompted: bool = False
    box: np.ndarray | None = None


def anchor_from_prompts(
    prompts: ObjectPrompts | None, cameras: Sequence[CameraGeometry]
) -> SegmentAnchor:
    """The anchor of an object's prompts on a frame (model units: LiDAR metres, camera pixels):
    LiDAR clicks first, then a LiDAR box, then image clicks, then an image box; an empty anchor
    (the largest segment is kept) without any."""
    if prompts is None:
        return SegmentAnchor()
    lp = prompts.lidar
    if lp is not None and lp.points is not None:
        pts = np.asarray(lp.points, np.float64).reshape(-1, 3)
        pos = pts[np.asarray(lp.labels).reshape(-1) > 0]
        if len(pos):
            return SegmentAnchor(points=pos)
    if lp is not None and lp.box is not None:
        b = np.asarray(lp.box, np.float64).reshape(-1)
        half = len(b) // 2
        return SegmentAnchor(bev=np.array([(b[0] + b[half]) / 2, (b[1] + b[half + 1]) / 2]), box=b)
    by_slot = {c.slot: c for c in cameras}
    boxed: SegmentAnchor | None = None
    for slot, cp in prompts.cameras.items():
        cam = by_slot.get(slot)
        if cam is None:
            continue
        if cp.points is not None:
            uv = np.asarray(cp.points, np.float64).reshape(-1, 2)
            pos = uv[np.asarray(cp.labels).reshape(-1) > 0]
            if len(pos):
                return SegmentAnchor(pixels=pos, camera=cam)
        if cp.box is not None and boxed is None:
            b = np.asarray(cp.box, np.float64).reshape(4)
            boxed = SegmentAnchor(
                pixels=np.array([[(b[0] + b[2]) / 2, (b[1] + b[3]) / 2]]), camera=cam
            )
    return boxed or SegmentAnchor()


def _components(xyz: np.ndarray, radius: float) -> np.ndarray:
    """(M,) component label of (M, 3) points linked when closer than ``radius``."""
    n = len(xyz)
    if n <= 1:
        return np.zeros(n, np.int64)
    pairs = cKDTree(xyz).query_pairs(radius, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _project(xyz: np.ndarray, camera: CameraGeometry) -> tuple[np.ndarray, np.ndarray]:
    """(M, 2) pixels of (M, 3) LiDAR-frame points and (M,) whether each is seen by the camera
    (in front of it, on a pixel of the image once rounded)."""
    uv, front = project_points(xyz, camera)
    h, w = camera.size
    seen = front & (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5) & (uv[:, 1] >= -0.5)
    return uv, seen & (uv[:, 1] < h - 0.5)


def _anchor_row(xyz: np.ndarray, anchor: SegmentAnchor) -> int | None:
    """Row of the (M, 3) mask points nearest the anchor, None without a usable anchor."""
    if anchor.points is not None and len(anchor.points):
        d = np.linalg.norm(xyz[:, None, :] - anchor.points[None, :, :3], axis=2).min(axis=1)
        return int(np.argmin(d))
    if anchor.bev is not None:
        return int(np.argmin(np.linalg.norm(xyz[:, :2] - anchor.bev[None], axis=1)))
    if anchor.pixels is not None and anchor.camera is not None and len(anchor.pixels):
        uv, seen = _project(xyz, anchor.camera)
        if seen.any():
            d = np.linalg.norm(uv[:, None, :] - anchor.pixels[None], axis=2).min(axis=1)
            return int(np.argmin(np.where(seen, d, np.inf)))
    return None


def select_segment(
    xyz: np.ndarray, mask: np.ndarray, anchor: SegmentAnchor, radius: float
) -> np.ndarray:
    """(N,) bool: the segment of ``mask`` ((N,) bool over (N, 3) ``xyz``) nearest the anchor
    (the largest without one); segments are the mask's points linked within ``radius`` m."""
    idx = np.flatnonzero(mask)
    if len(idx) == 0:
        return np.zeros(len(xyz), bool)
    pts = xyz[idx]
    # Link voxel centroids (a quarter of the radius) rather than points: a mask spread over a
    # building has thousands of points within a few metres of each other.
    cell = np.floor(pts / (radius / 4.0)).astype(np.int64)
    _, inv = np.unique(cell, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    sums = np.zeros((inv.max() + 1, 3))
    np.add.at(sums, inv, pts)
    centroids = sums / np.bincount(inv)[:, None]
    lab = _components(centroids, radius)[inv]
    row = _anchor_row(pts, anchor)
    keep = np.bincount(lab).argmax() if row is None else lab[row]
    out = np.zeros(len(xyz), bool)
    out[idx[lab == keep]] = True
    return out


def ground_points(xyz: np.ndarray, cell: float, tolerance: float) -> np.ndarray:
    """(N,) bool: points less than ``tolerance`` above the lowest point of their 3 x 3 cells
    (``cell`` m, bird's-eye) of (N, 3) ``xyz``, i.e. the local ground."""
    if len(xyz) == 0:
        return np.zeros(0, bool)
    return xyz[:, 2] < _lowest_around(xyz, cell, 3) + tolerance


def height_over_wide_ground(xyz: np.ndarray, cell: float, reach: int) -> np.ndarray:
    """(N,) m: each of the (N, 3) points' height over the lowest point of the (2 ``reach`` +
    1)^2 cells (``cell`` m) around it."""
    if len(xyz) == 0:
        return np.zeros(0)
    return xyz[:, 2] - _lowest_around(xyz, cell, 2 * reach + 1)


# Points lying this far (m) under the lows of the cells around theirs (the quarter-lowest of
# the 5 x 5 around) are not the ground of their cell when it holds other points: the LiDAR's
# multipath image of a shiny car reflected in the road, seen under it (KITTI: 1-3.6 m under the
# road behind the car ahead, which made the road around the car non-ground and joined it to the
# car). A cell holding only such points keeps them: a patch of ground seen alone between walls
# or under a crown. 1 m: the ground beside a bush whose cells surround it lies 0.5 m under them,
# and must stay its cell's ground.
_SINK_M = 1.0
_SINK_WINDOW = 5


def _cell_lows(xyz: np.ndarray, cell: float) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) bird's-eye cell of each point and the grid of each cell's lowest z (inf: none),
    not counting points sunk under the cells around (:data:`_SINK_M`) unless all of the cell's
    are."""
    ij = np.floor(xyz[:, :2] / cell).astype(np.int64)
    ij -= ij.min(axis=0)
    low = np.full(tuple(ij.max(axis=0) + 1), np.inf)
    np.minimum.at(low, (ij[:, 0], ij[:, 1]), xyz[:, 2])
    around = ndimage.percentile_filter(low, 25, size=_SINK_WINDOW, mode="constant", cval=np.inf)
    sunk = xyz[:, 2] < around[ij[:, 0], ij[:, 1]] - _SINK_M
    if sunk.any():
        kept = np.full_like(low, np.inf)
        np.minimum.at(kept, (ij[~sunk, 0], ij[~sunk, 1]), xyz[~sunk, 2])
        low = np.where(np.isfinite(kept), kept, low)
    return ij, low


def _lowest_around(xyz: np.ndarray, cell: float, size: int) -> np.ndarray:
    """(N,) the lowest z of the ``size`` x ``size`` cells around each of the (N, 3) points
    (:func:`_cell_lows`)."""
    ij, low = _cell_lows(xyz, cell)
    near = ndimage.minimum_filter(low, size=size, mode="constant", cval=np.inf)
    return near[ij[:, 0], ij[:, 1]]


def _ground(xyz: np.ndarray, config: MaskRefineConfig) -> np.ndarray:
    """:func:`ground_points` with ``config``'s settings."""
    return ground_points(xyz, config.ground_cell, config.ground_tolerance)


def complete_segment(
    xyz: np.ndarray,
    segment: np.ndarray,
    config: MaskRefineConfig,
    clicked: np.ndarray | None = None,
) -> np.ndarray:
    """(N,) bool: ``segment`` completed with the non-ground clusters it mostly covers (module
    docstring), and the clusters of the ``clicked`` rows (a user's or the tracker's 3D clicks:
    the clicked object, however little of it the segment holds). The region clustered is the
    segment's bounds plus ``margin``, or when that holds more than ``max_points`` the bounds of
    its points above their own local ground; the segment unchanged when that is too large too."""
    if not segment.any():
        return segment
    seg_pts = xyz[segment]
    crop = _around(xyz, seg_pts, config.margin)
    if len(crop) > config.max_points:
        # A mask spread over the road (the decoder's coarse cells take the road around a car
        # ahead): the region is that around its points above their own local ground.
        core = seg_pts[~_ground(seg_pts, config)]
        if len(core) == 0:
            return segment
        crop = _around(xyz, core, config.margin)
        if len(crop) > config.max_points:
            return segment
    p, m = xyz[crop], segment[crop]
    ground = _ground(p, config)
    above = np.flatnonzero(~ground)
    if len(above) == 0:
        return segment
    link = float(link_distance(np.linalg.norm(seg_pts.mean(axis=0)), config))
    lab = _components(p[above], link)
    size = np.bincount(lab)
    hit = np.bincount(lab, weights=m[above].astype(np.float64), minlength=len(size))
    keep = (hit >= config.min_overlap * size) | (hit >= config.min_overlap * max(hit.sum(), 1.0))
    keep &= hit > 0
    if clicked is not None and len(clicked):
        where = np.full(len(xyz), -1, np.int64)
        where[crop[above]] = np.arange(len(above))
        at = where[clicked]
        on = np.unique(lab[at[at >= 0]])
        keep[on] = True
    taken = np.zeros(len(p), bool)
    taken[above[keep[lab]]] = True
    # The segment's ground-level points stay when they touch what was taken (a wheel, a foot),
    # and so do points taken for ground that stand clear of the ground the LiDAR's rings hit
    # nearby: between those rings the local ground is a far car's sill or a bush's lowest ring.
    low = ground & m
    if config.ground_rise > 0 and config.ground_reach > 0:
        lifted = height_over_wide_ground(p, config.ground_cell, config.ground_reach)
        low |= ground & (lifted >= config.ground_rise)
    if taken.any() and low.any():
        low = np.flatnonzero(low)
        d, _ = cKDTree(p[taken]).query(p[low], distance_upper_bound=link)
        taken[low[np.isfinite(d)]] = True
    if not taken.any():
        return segment
    out = np.zeros(len(xyz), bool)
    out[crop[taken]] = True
    return out


def _around(xyz: np.ndarray, pts: np.ndarray, margin: float) -> np.ndarray:
    """Rows of the (N, 3) points inside the bounds of (M, 3) ``pts`` plus ``margin`` (m)."""
    lo, hi = pts.min(axis=0) - margin, pts.max(axis=0) + margin
    return np.flatnonzero(np.all((xyz >= lo) & (xyz <= hi), axis=1))


def gate_to_prediction(
    xyz: np.ndarray, mask: np.ndarray, predicted: np.ndarray, gate: float
) -> np.ndarray:
    """(N,) bool: the points of ``mask`` ((N,) bool over (N, 3) ``xyz``) within ``gate`` m of
    the predicted segment ((M, 3), same frame); the mask as it is when none is (the object moved
    otherwise than predicted: select and complete decide alone)."""
    rows = np.flatnonzero(mask)
    if len(rows) == 0 or len(predicted) == 0:
        return mask
    d, _ = cKDTree(np.asarray(predicted, np.float64)[:, :3]).query(
        xyz[rows], distance_upper_bound=gate
    )
    near = np.isfinite(d)
    if not near.any():
        return mask
    out = np.zeros_like(mask)
    out[rows[near]] = True
    return out


def link_distance(range_m: float | np.ndarray, config: MaskRefineConfig) -> np.ndarray:
    """The completion's linking distance (m) at ``range_m`` m from the sensor (a scalar or an
    array of ranges: the same shape)."""
    return np.maximum(config.link_min, config.link_per_m * np.asarray(range_m, np.float64))


def clicked_rows(xyz: np.ndarray, anchor: SegmentAnchor, config: MaskRefineConfig) -> np.ndarray:
    """Rows of the (N, 3) sweep points nearest the anchor's positive 3D clicks, each within the
    linking distance of its click (a click between points picks none)."""
    if anchor.points is None or not len(anchor.points) or not len(xyz):
        return np.zeros(0, np.int64)
    clicks = np.asarray(anchor.points, np.float64).reshape(-1, 3)
    link = link_distance(np.linalg.norm(clicks, axis=1), config)
    # Only the points around the clicks: a tree over the whole sweep costs more than the rest.
    near = np.all(
        (xyz >= clicks.min(axis=0) - link.max()) & (xyz <= clicks.max(axis=0) + link.max()), axis=1
    )
    crop = np.flatnonzero(near)
    if not len(crop):
        return np.zeros(0, np.int64)
    d, rows = cKDTree(xyz[crop]).query(clicks)
    return np.unique(crop[rows[d <= link]])


def _farther_than_link(
    xyz: np.ndarray, mask: np.ndarray, rows: np.ndarray, config: MaskRefineConfig
) -> bool:
    """Whether every point of ``rows`` is farther than the linking distance from ``mask``."""
    if not mask.any():
        return True
    d, _ = cKDTree(xyz[mask]).query(xyz[rows])
    link = link_distance(np.linalg.norm(xyz[rows], axis=1), config)
    return bool(np.all(d > link))


def boxed_segment(
    xyz: np.ndarray, mask: np.ndarray, box: np.ndarray, config: MaskRefineConfig
) -> np.ndarray | None:
    """(N,) bool: the object a user's LiDAR box frames ((4,) bird's-eye or (6,) box, LiDAR
    frame, m; ``box_margin`` around it) on the sweep's (N, 3) ``xyz``: the box's non-ground
    points on the clusters (the completion's) that lie mostly inside it or make most of what is
    inside it (a car parked against a hedge), not wholly above the one it holds most of (a
    canopy's fragments over a car); of those, when the decoder's ``mask`` ((N,) bool) reaches
    any, the ones linked within 2.5 linking distances to those it reaches (a loose box around
    two cars); clipped to the box, with the decoder's ground-level points in the box touching
    them (a wheel). None when the box holds no such point."""
    b = np.asarray(box, np.float64).reshape(-1)
    half = len(b) // 2
    lo, hi = b[:half] - config.box_margin, b[half:] + config.box_margin
    inside = np.all((xyz[:, :half] >= lo) & (xyz[:, :half] <= hi), axis=1)
    if not inside.any():
        return None
    pad = config.margin
    region = np.all((xyz[:, :2] >= lo[:2] - pad) & (xyz[:, :2] <= hi[:2] + pad), axis=1)
    crop = np.flatnonzero(region)
    if len(crop) > config.max_points:
        return None
    p, m, box_in = xyz[crop], mask[crop], inside[crop]
    ground = _ground(p, config)
    above = np.flatnonzero(~ground)
    if not box_in[above].any():
        return None
    centre = np.r_[(lo[:2] + hi[:2]) / 2, 0.0]
    link = float(link_distance(np.linalg.norm(centre), config))
    lab = _components(p[above], link)
    size = np.bincount(lab)
    held = np.bincount(lab, weights=box_in[above].astype(np.float64), minlength=len(size))
    keep = (held >= config.min_overlap * size) | (held >= config.min_overlap * held.sum())
    keep &= held > 0
    in_mask = (m & box_in)[above].astype(np.float64)
    reached = np.bincount(lab, weights=in_mask, minlength=len(size))
    if not keep.any():
        return None
    # Not what lies wholly above the cluster the box holds most of: a canopy's fragments over
    # a car, a sign over a van.
    main = np.flatnonzero(keep)[np.argmax(held[keep])]
    top = p[above[lab == main], 2].max()
    low_z = np.full(len(size), np.inf)
    np.minimum.at(low_z, lab, p[above, 2])
    keep &= low_z <= top + 2 * link
    # Of two objects in a loose box, the one the decoder reaches, with its pieces (a sparse car
    # is hit in pieces over a metre apart).
    cand = np.flatnonzero(keep[lab])
    if (keep & (reached > 0)).any():
        joined = _components(p[above[cand]], 2.5 * link)
        hit = np.unique(joined[reached[lab[cand]] > 0])
        cand = cand[np.isin(joined, hit)]
    taken = np.zeros(len(p), bool)
    taken[above[cand]] = True
    taken &= box_in
    if not taken.any():
        return None
    low = np.flatnonzero(ground & box_in & m)
    if len(low):
        d, _ = cKDTree(p[taken]).query(p[low], distance_upper_bound=link)
        taken[low[np.isfinite(d)]] = True
    out = np.zeros(len(xyz), bool)
    out[crop[taken]] = True
    return out


def refine_point_mask(
    xyz: np.ndarray, mask: np.ndarray, anchor: SegmentAnchor, config: MaskRefineConfig
) -> np.ndarray:
    """(N,) bool: one object's point mask ((N,) bool over (N, 3+) ``xyz``, LiDAR frame)
    refined: its anchor's segment, completed (module docstring)."""
    xyz = np.asarray(xyz, np.float64)[:, :3]
    mask = np.asarray(mask, bool)
    if config.box_held and anchor.prompted and anchor.box is not None:
        boxed = boxed_segment(xyz, mask, anchor.box, config)
        if boxed is not None:
            return boxed
    clicked = clicked_rows(xyz, anchor, config) if config.clicks_held else np.zeros(0, np.int64)
    if not mask.any() and not len(clicked):
        return mask
    if config.predicted_gate > 0 and anchor.predicted is not None and len(anchor.predicted):
        mask = gate_to_prediction(xyz, mask, anchor.predicted, config.predicted_gate)
    if len(clicked) and not mask[clicked].any() and _farther_than_link(xyz, mask, clicked, config):
        # The mask missed the clicked object (it lies on a neighbour): start from the clicks.
        out = np.zeros(len(xyz), bool)
        out[clicked] = True
    else:
        # A user-clicked object's mask reaches no farther than this from its clicked part;
        # beyond it lie neighbours the decoder's coarse tokens mixed in (a building behind a
        # bush). The tracker's clicks are not bound so: a facade with gaps stays whole.
        r = config.segment_radius
        if len(clicked) and anchor.prompted:
            r = min(r, config.click_segment_radius)
        out = select_segment(xyz, mask, anchor, r)
    if config.complete:
        out = complete_segment(xyz, out, config, clicked)
    return out


@dataclass
class PixelPoints:
    """Which sweep point each pixel of one camera sees (:func:`pixel_points`).

    Attributes:
        index: (H, W) int64 row of the point whose projection is nearest the pixel (of points
            projecting on one pixel, the nearest in depth), -1 where none is within the radius.
        seen: (N,) bool, the points that project into the image in front of the camera.
        hit: (H, W) int64 row of the point projecting on the pixel itself (the nearest in
            depth), -1 where none does.
        unseen: (H, W) bool :func:`unseen_pixels` of the camera, once computed (None before).
    """

    index: np.ndarray
    seen: np.ndarray
    hit: np.ndarray
    unseen: np.ndarray | None = None


def pixel_points(xyz: np.ndarray, camera: CameraGeometry, radius_px: float) -> PixelPoints:
    """:class:`PixelPoints` of (N, 3) LiDAR-frame points in ``camera`` (one per camera and
    sweep, shared by all objects)."""
    h, w = camera.size
    xyz = np.asarray(xyz, np.float64)[:, :3]
    uv, seen = _project(xyz, camera)
    rows = np.flatnonzero(seen)
    index = np.full((h, w), -1, np.int64)
    if len(rows) == 0:
        return PixelPoints(index, seen, index.copy())
    depth = transform_points(camera.cam_from_lidar, xyz[rows])[:, 2]
    rows = rows[np.argsort(-depth, kind="stable")]  # far first: the nearest point writes last
    px = np.clip(np.round(uv[rows]).astype(np.int64), 0, [w - 1, h - 1])
    hit = np.full((h, w), -1, np.int64)
    hit[px[:, 1], px[:, 0]] = rows
    free = (hit < 0).astype(np.uint8)
    dist, label = cv2.distanceTransformWithLabels(
        free, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    # Each hit pixel has its own label; every pixel takes the row of its nearest hit pixel.
    ys, xs = np.nonzero(hit >= 0)
    by_label = np.full(int(label.max()) + 1, -1, np.int64)
    by_label[label[ys, xs]] = hit[ys, xs]
    index = np.where(dist <= radius_px, by_label[label], -1)
    return PixelPoints(index, seen, hit)


def unseen_pixels(
    xyz: np.ndarray, camera: CameraGeometry, pixels: PixelPoints, angle_deg: float
) -> np.ndarray:
    """(H, W) bool: the pixels of one camera where the LiDAR looked and got nothing back: within
    the elevations the returns of the sweep ((N, 3) LiDAR-frame ``xyz``) span, and farther than
    ``angle_deg`` from every point's projection (``pixels.hit``), above the horizontal. The
    angle is wider than the gaps between the LiDAR's beams and columns and a dropped return, so
    such a hole is the sky or what lies beyond the LiDAR's range: nothing within its reach
    covers it. Below the horizontal the ground returns within reach; a hole there is between
    the rings the camera sees near the vehicle."""
    h, w = camera.size
    if not (pixels.hit >= 0).any():
        return np.zeros((h, w), bool)
    dist = cv2.distanceTransform((pixels.hit < 0).astype(np.uint8), cv2.DIST_L2, 5)
    K = np.asarray(camera.intrinsics, np.float64)
    far = dist > float(K[1, 1]) * np.tan(np.radians(angle_deg))
    # Each pixel's ray in the LiDAR frame, from the camera's centre: above the horizontal
    # what it meets is far, and the LiDAR's offset from the camera changes the elevation by a
    # fraction of a beam there.
    vv, uu = np.mgrid[0:h, 0:w]
    rays = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], np.ones((h, w))], -1)
    rays = rays @ np.linalg.inv(np.asarray(camera.cam_from_lidar, np.float64))[:3, :3].T
    elev = np.arctan2(rays[..., 2], np.hypot(rays[..., 0], rays[..., 1]))
    pts = np.asarray(xyz, np.float64)[:, :3]
    returns = np.arctan2(pts[:, 2], np.hypot(pts[:, 0], pts[:, 1]))
    # Percentiles: a few noisy returns should not widen the band past the beams.
    lo, hi = np.percentile(returns, [0.5, 99.5])
    return far & (elev > max(lo, 0.0)) & (elev < hi)


def _within_reach(xyz: np.ndarray, segment: np.ndarray, fraction: float) -> bool:
    """Whether the object (``segment``, (N,) bool over the (N, 3) sweep) lies nearer than
    ``fraction`` of the sweep's farthest return (its median range)."""
    rng = np.hypot(xyz[:, 0], xyz[:, 1])
    return bool(np.median(rng[segment]) <= fraction * rng.max())


def guided_image_mask(
    mask: np.ndarray, segment: np.ndarray, pixels: PixelPoints, min_points: int
) -> np.ndarray:
    """(H, W) bool: a camera's mask of one object with every pixel near a projected point
    labelled as that point is in ``segment`` ((N,) bool); the mask as it is when fewer than
    ``min_points`` of the segment's points are seen by the camera."""
    if int((segment & pixels.seen).sum()) < min_points:
        return mask
    near = pixels.index >= 0
    return np.where(near, segment[np.maximum(pixels.index, 0)], mask)


def grabcut_image_mask(
    image: np.ndarray,
    mask: np.ndarray,
    segment: np.ndarray,
    pixels: PixelPoints,
    config: MaskRefineConfig,
) -> np.ndarray:
    """(H, W) bool: a guided camera mask of one object moved onto the image's edges by GrabCut
    (``image``: (H, W, 3) uint8). Seeds: pixels at most one pixel from where a point projects,
    the object's where that point is in ``segment`` ((N,) bool), background where it is not;
    the rest of the region starts as ``mask`` says. The mask as it is when GrabCut has nothing to
    separate (no seed of one side) or the image does not fit."""
    h, w = mask.shape
    if image.ndim != 3 or image.shape[:2] != (h, w) or image.shape[2] != 3 or not mask.any():
        return mask
    near_hit = cv2.dilate((pixels.hit >= 0).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    near_hit &= pixels.index >= 0
    label = segment[np.maximum(pixels.index, 0)]
    fg, bg = near_hit & label, near_hit & ~label
    ys, xs = np.nonzero(mask | fg)
    m = config.grabcut_margin_px
    y0, y1 = max(int(ys.min()) - m, 0), min(int(ys.max()) + m + 1, h)
    x0, x1 = max(int(xs.min()) - m, 0), min(int(xs.max()) + m + 1, w)
    gc = np.where(mask[y0:y1, x0:x1], cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[fg[y0:y1, x0:x1]] = cv2.GC_FGD
    gc[bg[y0:y1, x0:x1]] = cv2.GC_BGD
    has_fg = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).any()
    if not has_fg or not ((gc == cv2.GC_BGD) | (gc == cv2.GC_PR_BGD)).any():
        return mask
    crop = np.ascontiguousarray(image[y0:y1, x0:x1], dtype=np.uint8)
    ch, cw = crop.shape[:2]
    scale = min(1.0, config.grabcut_max_side / max(ch, cw))
    if scale < 1.0:
        size = (max(int(round(cw * scale)), 1), max(int(round(ch * scale)), 1))
        crop = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        gc = cv2.resize(gc, size, interpolation=cv2.INTER_NEAREST)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    # GrabCut starts its colour models with k-means on OpenCV's (thread-local) RNG: seeded, the
    # same inputs give the same mask (a replayed prompt equals the live one, reports repeat).
    cv2.setRNGSeed(0)
    try:
        cv2.grabCut(crop, gc, None, bgd, fgd, config.grabcut_iterations, cv2.GC_INIT_WITH_MASK)
    except cv2.error:  # a colour model it cannot fit (e.g. too few samples of one side)
        return mask
    out_crop = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
    if scale < 1.0:
        out_crop = cv2.resize(out_crop, (cw, ch), interpolation=cv2.INTER_NEAREST)
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = out_crop > 0
    return out


def _components_holding(mask: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """(H, W) bool: the 8-connected parts of ``mask`` holding a pixel of ``seeds``; the mask as
    it is when none does."""
    n, label = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
    keep = np.unique(label[seeds & mask])
    keep = keep[keep > 0]
    return np.isin(label, keep) if len(keep) else mask


def supported_image_mask(mask: np.ndarray, segment: np.ndarray, pixels: PixelPoints) -> np.ndarray:
    """(H, W) bool: the parts of a camera mask (8-connected) holding a pixel where a point of
    ``segment`` ((N,) bool) projects, one pixel of slack; the mask as it is when no part does.
    A part with none of the object's points under it, where the LiDAR sees the object, is the
    decoder's spill onto something else (its stride-4 masks bleed across windows and sky)."""
    hit = (pixels.hit >= 0) & segment[np.maximum(pixels.hit, 0)]
    seeds = cv2.dilate(hit.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    return _components_holding(mask, seeds)


def ceiling_points(
    segment: np.ndarray, xyz: np.ndarray, config: MaskRefineConfig
) -> np.ndarray | None:
    """(M, 3) LiDAR-frame points just above one object, where the LiDAR looked and found nothing
    of it: for each of the segment's points ((N,) bool over the sweep's (N, 3) ``xyz``) the
    point on the next beam up (which passed over the object), at least ``above_margin_deg``
    higher, at its range and bearing. None when the LiDAR's beams at and beyond the object's
    range reach no higher than that (a building taller than the highest beam), when the object
    is near the LiDAR's reach (85 % of the sweep's farthest point: the beam over it may have met
    it beyond), or with fewer than ``above_min_points`` points (a far cyclist's head may lie
    between the beam's columns). A point whose beam above met something nearer (a tree in
    front of a facade) gives none: the object may go on behind it.
    Elevations are seen from the origin of the points' frame: the LiDAR's own frame."""
    if config.above_margin_deg <= 0 or int(segment.sum()) < config.above_min_points:
        return None
    # float32 and tangents (no arctan over the sweep): this runs per object on 100k points.
    x, y, z = np.asarray(xyz, np.float32)[:, :3].T
    rng = np.hypot(x, y)
    r_seg = rng[segment].astype(np.float64)
    z_seg = z[segment].astype(np.float64)
    # Near the LiDAR's reach the beam over the object may have met it beyond that reach: no
    # return there says nothing (the sweep's farthest point stands for the reach).
    reach2 = float((rng * rng + z * z).max())
    if (r_seg**2 + z_seg**2).max() > 0.85**2 * reach2:
        return None
    # The beams reach above the object: some other point as far or farther is seen higher (as
    # seen from the frame's origin a LiDAR's beams rise a little towards the sensor, its
    # emitters being above the origin, so nearer points do not count).
    band = (rng > r_seg.min() / 1.25) & ~segment
    band_tan = np.sort(z[band] / rng[band])
    e_seg = np.arctan2(z_seg, np.maximum(r_seg, 1e-6))
    margin = np.deg2rad(config.above_margin_deg)
    if len(band_tan) == 0 or np.arctan(band_tan[-1]) < e_seg.max() + margin:
        return None
    # Each point's ceiling: the next beam up where the sweep's elevations are its beams' (a
    # spinning LiDAR seen from its own centre), at least the margin above it.
    above = np.searchsorted(band_tan, np.tan(e_seg + np.deg2rad(0.05)), side="right")
    next_beam = np.arctan(band_tan[np.minimum(above, len(band_tan) - 1)].astype(np.float64))
    up = np.maximum(next_beam, e_seg + margin)
    rays = _Rays(np.arctan2(y[segment], x[segment]).astype(np.float64), e_seg, r_seg, up)
    # Only a column's top point gives a ceiling, and only when the beam above it passed over the
    # object, not into something in front of it (a tree before a facade).
    free = ~_blocked_above(_Polar(x, y, z, rng), segment, rays, config)
    if not free.any():
        return None
    top = r_seg * np.tan(np.minimum(up, 1.5))
    out = np.stack([r_seg * np.cos(rays.bearing), r_seg * np.sin(rays.bearing), top], axis=1)
    return out[free]


@dataclass(frozen=True)
class _Polar:
    """A sweep's N points as seen from the LiDAR's origin: ``x, y, z`` and horizontal range
    ``rng``, (N,) float32 (m)."""

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    rng: np.ndarray


@dataclass(frozen=True)
class _Rays:
    """An object's S segment points as rays: ``bearing``, ``elevation`` and ``up`` (the
    elevation of its ceiling, the next beam over it) in radians, ``range`` (m); (S,) float64."""

    bearing: np.ndarray
    elevation: np.ndarray
    range: np.ndarray
    up: np.ndarray


def _blocked_above(
    sweep: _Polar, segment: np.ndarray, rays: _Rays, config: MaskRefineConfig
) -> np.ndarray:
    """(S,) bool: of the segment's S points (``segment``: (N,) bool over the sweep), those
    with a sweep point within half a degree of bearing and above it up to its ceiling that is
    the object's own (not its column's top) or nearer by more than the linking distance (the
    beam over it met an occluder)."""
    eps = np.deg2rad(0.05)
    az, e_seg, r_seg, up = rays.bearing, rays.elevation, rays.range, rays.up
    x, y, rng = sweep.x, sweep.y, sweep.rng
    t_lo, t_hi = np.tan(e_seg.min() + eps), np.tan(min(up.max() + eps, 1.5))
    tan_all = sweep.z / np.maximum(rng, 1e-6)
    near_or_own = (rng < r_seg.max()) | segment
    cand = np.flatnonzero(near_or_own & (tan_all > t_lo) & (tan_all <= t_hi))
    blocked = np.zeros(len(az), bool)
    if len(cand) == 0:
        return blocked
    az_c = np.arctan2(y[cand], x[cand]).astype(np.float64)
    el_c = np.arctan(tan_all[cand].astype(np.float64))
    r_c = rng[cand].astype(np.float64)
    seg_c = segment[cand]
    link = link_distance(r_seg, config)
    half = np.deg2rad(0.5)
    for i in range(0, len(az), 256):  # (256, M) at a time
        sl = slice(i, i + 256)
        d_az = np.abs((az_c[None, :] - az[sl, None] + np.pi) % (2 * np.pi) - np.pi)
        hit = (
            (d_az < half)
            & (el_c[None, :] > e_seg[sl, None] + eps)
            & (el_c[None, :] <= up[sl, None] + eps)
            & (seg_c[None, :] | (r_c[None, :] < (r_seg[sl] - link[sl])[:, None]))
        )
        blocked[sl] = hit.any(axis=1)
    return blocked


@dataclass
class HeightMemory:
    """How high each tracked object reaches, remembered for the sweeps whose beams cannot say.

    A building the LiDAR's highest beam passed over 50 m away is hit by that beam 40 m away:
    from then on the sweep shows no free space above it, but the object has not grown. The
    highest of its :func:`ceiling_points` (world frame, z up) is kept from the last sweep that
    gave them and stands in while the sweeps give none; a segment point above it means the
    object was not all seen then, and the height is forgotten.

    Attributes:
        tops: object id -> world-frame height (m) the object does not reach.
    """

    tops: dict[int, float] = field(default_factory=dict)

    def ceiling(
        self,
        object_id: int,
        segment: np.ndarray,
        xyz: np.ndarray,
        world_from_lidar: np.ndarray,
        config: MaskRefineConfig,
    ) -> np.ndarray | None:
        """(M, 3) LiDAR-frame ceiling points of ``object_id`` on this sweep (((N,) bool
        ``segment`` over the sweep's (N, 3) ``xyz``; ``world_from_lidar``: (4, 4) the sweep's
        pose): the sweep's own :func:`ceiling_points`, else the segment raised to the
        remembered height; None when neither exists."""
        pts = ceiling_points(segment, xyz, config)
        if pts is not None:
            self.tops[object_id] = float(transform_points(world_from_lidar, pts)[:, 2].max())
            return pts
        top = self.tops.get(object_id)
        if top is None or not segment.any():
            return None
        world = transform_points(world_from_lidar, np.asarray(xyz, np.float64)[segment, :3])
        if world[:, 2].max() >= top:
            del self.tops[object_id]
            return None
        world[:, 2] = top
        return transform_points(rigid_inverse(world_from_lidar), world)

    def forget(self, object_id: int) -> None:
        self.tops.pop(object_id, None)

    def clear(self) -> None:
        self.tops.clear()


def above_object(
    ceiling: np.ndarray | None, camera: CameraGeometry, config: MaskRefineConfig
) -> np.ndarray:
    """(H, W) bool: the pixels of one camera above the object where the LiDAR looked and found
    nothing of it (the sky over a car, the taller building behind a low one: no point projects
    there to label them): above the upper hull of the projected ``ceiling`` ((M, 3) LiDAR-frame
    points, :func:`ceiling_points` or :class:`HeightMemory`), over the columns they span and
    ``above_columns_px`` either side. Nothing elsewhere, nor without ``ceiling``."""
    h, w = camera.size
    none = np.zeros((h, w), bool)
    if ceiling is None or len(ceiling) == 0:
        return none
    uv, front = project_points(ceiling, camera)
    uv = uv[front]
    inside = (uv[:, 0] >= -0.5) & (uv[:, 0] < w - 0.5)
    if not inside.any():
        return none
    cols = np.round(uv[inside, 0]).astype(np.int64)
    top = np.full(w, np.inf)
    np.minimum.at(top, cols, uv[inside, 1])
    # The upper hull of the columns' ceilings: a window or dark panel without returns under
    # the top beam (its column's ceiling a beam lower) is bridged by its neighbours'.
    hull: list[tuple[float, float]] = []
    for u in np.flatnonzero(np.isfinite(top)):
        p = (float(u), float(top[u]))
        while len(hull) >= 2:
            (au, av), (bu, bv) = hull[-2], hull[-1]
            if (bu - au) * (p[1] - av) - (bv - av) * (p[0] - au) > 0:
                break
            hull.pop()
        hull.append(p)
    hu, hv = np.array(hull).T
    k = max(int(config.above_columns_px), 0)
    u = np.arange(w)
    ceiling = np.where(
        (u >= hu[0] - k) & (u <= hu[-1] + k),
        np.floor(np.interp(u, hu, hv)) - config.above_slack_px,
        -1.0,
    )
    return np.arange(h)[:, None] < ceiling[None, :]


def prompt_above(prompt: CameraPrompt, above: np.ndarray) -> bool:
    """Whether the user's prompt in a camera says the object reaches into ``above`` ((H, W)
    bool, :func:`above_object` or :func:`unseen_pixels`): a positive click there, or the box's
    top (its centre column, a tenth of its height down) there. The segment then is not the
    object the user framed."""
    h, w = above.shape
    spots = []
    if prompt.points is not None:
        uv = np.asarray(prompt.points, np.float64).reshape(-1, 2)
        spots += [tuple(p) for p in uv[np.asarray(prompt.labels).reshape(-1) > 0]]
    if prompt.box is not None:
        x0, y0, x1, y1 = np.asarray(prompt.box, np.float64).reshape(4)
        spots.append(((x0 + x1) / 2, y0 + (y1 - y0) / 10))
    return any(
        bool(above[int(np.clip(round(v), 0, h - 1)), int(np.clip(round(u), 0, w - 1))])
        for u, v in spots
    )


def prompt_constrained_mask(
    mask: np.ndarray, prompt: CameraPrompt, box_margin_px: int = 2
) -> np.ndarray:
    """(H, W) bool: one camera's mask on the frame the user prompted it, held to what the user
    said: inside the box (``prompt.box`` [x0, y0, x1, y1] pixels, plus ``box_margin_px``) and,
    with positive clicks, the parts (8-connected) holding one of them (the mask as it is when
    none does: a click on the mask's edge is no reason to drop it)."""
    h, w = mask.shape
    out = mask
    if prompt.box is not None:
        x0, y0, x1, y1 = np.asarray(prompt.box, np.float64).reshape(4)
        m = box_margin_px
        inside = np.zeros_like(mask, dtype=bool)
        inside[
            max(int(np.floor(y0)) - m, 0) : max(int(np.ceil(y1)) + m + 1, 0),
            max(int(np.floor(x0)) - m, 0) : max(int(np.ceil(x1)) + m + 1, 0),
        ] = True
        out = out & inside
    if prompt.points is not None and out.any():
        uv = np.asarray(prompt.points, np.float64).reshape(-1, 2)
        pos = uv[np.asarray(prompt.labels).reshape(-1) > 0]
        seeds = np.zeros_like(mask, dtype=bool)
        for u, v in pos:
            seeds[int(np.clip(round(v), 0, h - 1)), int(np.clip(round(u), 0, w - 1))] = True
        if seeds.any():
            out = _components_holding(out, seeds)
    return out


def guide_camera_masks(
    masks: Mapping[str, np.ndarray],
    segment: np.ndarray,
    xyz: np.ndarray,
    cameras: Mapping[str, CameraGeometry],
    config: MaskRefineConfig,
    cache: dict[str, PixelPoints],
    images: Mapping[str, np.ndarray] | None = None,
    refine: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    prompts: Mapping[str, CameraPrompt] | None = None,
    ceiling: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Camera name -> (H, W) bool: one object's camera masks guided by its refined segment
    ((N,) bool over the sweep's (N, 3) ``xyz``), :func:`guided_image_mask` per camera with a
    calibration, without what lies :func:`above_object` (the ``ceiling`` points, (0, 3) for
    none, by default the sweep's :func:`ceiling_points`) nor, for an object within the LiDAR's
    reach (``config.free_space_deg``), the :func:`unseen_pixels` (neither when the user's
    prompt in that camera on this frame, ``prompts``: camera name -> its prompt, reaches
    there: :func:`prompt_above`), then
    :func:`grabcut_image_mask` where ``images`` (camera name -> (H, W, 3) uint8) has the
    camera's image, then ``refine(image, mask) -> mask`` there when given (the learned boundary
    refinement, :func:`~sam4d_core.tracking.boundary_refine.refine_mask`), both cut again,
    then :func:`supported_image_mask`; ``cache`` keeps each camera's :class:`PixelPoints` for
    the frame's other objects."""
    out = dict(masks)
    if not config.images or not segment.any():
        return out
    if ceiling is None:
        ceiling = ceiling_points(segment, xyz, config)
    free = config.free_space_deg > 0 and _within_reach(xyz, segment, config.free_space_range)
    for name, mask in masks.items():
        cam = cameras.get(name)
        if cam is None or tuple(mask.shape) != tuple(cam.size):
            continue
        if name not in cache:
            cache[name] = pixel_points(xyz, cam, config.image_radius_px)
        pix = cache[name]
        least = config.image_guide_min_points
        if int((segment & pix.seen).sum()) < least:
            continue
        guided = guided_image_mask(mask, segment, pix, least)
        above = above_object(ceiling, cam, config)
        unseen = np.zeros_like(above)
        if free:
            if pix.unseen is None:
                pix.unseen = unseen_pixels(xyz, cam, pix, config.free_space_deg)
            unseen = pix.unseen
        if prompts is not None and name in prompts and prompt_above(prompts[name], above | unseen):
            above = unseen = np.zeros_like(above)  # the user says the object reaches there
        guided = guided & ~above
        image = None if images is None else images.get(name)
        if config.grabcut and image is not None:
            guided = grabcut_image_mask(image, guided, segment, pix, config)
        if refine is not None and image is not None:
            guided = refine(image, guided)
        guided = guided & ~(above | unseen)
        if config.image_support:
            guided = supported_image_mask(guided, segment, pix)
        out[name] = guided
    return out


def box_lifted_row(
    xyz: np.ndarray,
    camera: CameraGeometry,
    box: np.ndarray,
    pixels: PixelPoints,
    config: MaskRefineConfig,
) -> int | None:
    """Row of the (N, 3) sweep point a camera box ([x0, y0, x1, y1] pixels) frames, None when
    no point is seen inside it.

    The box's centre is often not on the object (a pole, a tree beside a wall, a car seen through
    a gap); its frame is. Around the box (its size again on each side) the non-ground points are
    clustered as the completion step does (linked within max(``link_min``, ``link_per_m`` x
    range)); of the clusters seen inside the box the object is the one that lies in the box and
    spans it: the largest (fraction of its projected points inside the box, 2 px of slack) x
    (mean of the fractions of the box's width and height its projection spans). A box is tight,
    so what reaches far past it is something else (a wall, the next building); the LiDAR covers
    an object only in rings, so the spans are partial. Its point seen nearest the box's centre is
    returned.
    """
    h, w = pixels.index.shape
    x0, y0, x1, y1 = (float(v) for v in np.asarray(box, np.float64).reshape(4))
    inside = pixels.hit[
        max(int(np.floor(y0)), 0) : max(int(np.ceil(y1)) + 1, 0),
        max(int(np.floor(x0)), 0) : max(int(np.ceil(x1)) + 1, 0),
    ]
    cand = np.unique(inside[inside >= 0])
    if len(cand) == 0:
        return None
    uv, seen = _project(xyz, camera)
    bw, bh = x1 - x0, y1 - y0
    region = np.flatnonzero(
        seen
        & (uv[:, 0] >= x0 - bw)
        & (uv[:, 0] <= x1 + bw)
        & (uv[:, 1] >= y0 - bh)
        & (uv[:, 1] <= y1 + bh)
    )
    above = region[~_ground(xyz[region], config)]
    cand = cand[np.isin(cand, above)]
    if len(cand) == 0:
        return None
    rng = float(np.median(np.linalg.norm(xyz[cand], axis=1)))
    lab = np.full(len(xyz), -1, np.int64)
    lab[above] = _components(xyz[above], max(config.link_min, config.link_per_m * rng))
    best, best_score = -1, -1.0
    for c in np.unique(lab[cand]):
        q = uv[above[lab[above] == c]]
        inside = np.mean(
            (q[:, 0] >= x0 - 2) & (q[:, 0] <= x1 + 2) & (q[:, 1] >= y0 - 2) & (q[:, 1] <= y1 + 2)
        )
        span_w = min(1.0, (min(q[:, 0].max(), x1) - max(q[:, 0].min(), x0)) / max(bw, 1.0))
        span_h = min(1.0, (min(q[:, 1].max(), y1) - max(q[:, 1].min(), y0)) / max(bh, 1.0))
        score = float(inside) * (max(span_w, 0.0) + max(span_h, 0.0)) / 2
        if score > best_score:
            best, best_score = int(c), score
    rows = cand[lab[cand] == best]
    centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    return int(rows[np.argmin(np.linalg.norm(uv[rows] - centre, axis=1))])


def mask_lifted_row(
    xyz: np.ndarray, camera: CameraGeometry, mask: np.ndarray, pixels: PixelPoints
) -> int | None:
    """Row of the (N, 3) sweep point a camera mask ((H, W) bool) shows deepest inside it, None
    when no point is seen in the mask.

    Of the points nearest the camera on their own pixel (``pixels.hit``) inside the mask, the
    one farthest from the mask's edge (at most 3 px counted: past that all are inside), then
    nearest the mask's deepest pixel (SAM's evaluation click). Points on the edge pixels are
    the last resort: the LiDAR sits apart from the camera and sees past an object's outline
    onto what lies behind it.
    """
    m = np.asarray(mask, bool)
    if m.shape != pixels.hit.shape or not m.any():
        return None
    inside = np.flatnonzero((pixels.hit >= 0).ravel() & m.ravel())
    if len(inside) == 0:
        return None
    depth = cv2.distanceTransform(np.pad(m, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]
    ys, xs = np.divmod(inside, m.shape[1])
    deep_y, deep_x = np.unravel_index(int(np.argmax(depth)), m.shape)
    far = np.hypot(xs - deep_x, ys - deep_y)
    best = np.lexsort((far, -np.minimum(depth[ys, xs], 3.0)))[0]
    return int(pixels.hit[ys[best], xs[best]])


def _seen_above_ground(
    xyz: np.ndarray, camera: CameraGeometry, pixels: PixelPoints, config: MaskRefineConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Rows (K,) of the (N, 3) sweep's non-ground points a camera sees, and their (K, 2)
    pixels."""
    rows = np.flatnonzero(pixels.seen)
    rows = rows[~_ground(xyz[rows], config)]
    return rows, _project(xyz[rows], camera)[0]


def _nearest_within(
    points: tuple[np.ndarray, np.ndarray], uv: tuple[float, float], radius: float
) -> int:
    """Row of the point (``points``: rows, (K, 2) pixels) projecting nearest ``uv`` within
    ``radius`` pixels, -1 when none does."""
    rows, pix = points
    if len(rows) == 0:
        return -1
    d = np.linalg.norm(pix - np.asarray(uv, np.float64), axis=1)
    k = int(np.argmin(d))
    return int(rows[k]) if d[k] <= radius else -1


def lifted_clicks(
    prompts: ObjectPrompts,
    xyz: np.ndarray,
    cameras: Sequence[CameraGeometry],
    radius_px: float = 4.0,
    config: MaskRefineConfig | None = None,
) -> np.ndarray:
    """(P, 3) the sweep points seen under an object's image prompts (model units: camera
    pixels; ``xyz``: (N, 3) LiDAR frame): per positive click the point projecting nearest it
    within ``radius_px`` (of points on one pixel, the nearest in depth), else the non-ground
    point seen nearest it within ``config.click_lift_radius_px``; in a camera without one,
    for a box the point of the cluster the box frames (:func:`box_lifted_row`, clustered with
    ``config``'s settings), else for a mask the point seen deepest inside it
    (:func:`mask_lifted_row`); clicks with none are skipped. What the user pointed at in the
    image, as a 3D click for the LiDAR decoder."""
    config = config or MaskRefineConfig()
    geometry = {c.slot: c for c in cameras}
    found: list[np.ndarray] = []
    xyz = np.asarray(xyz, np.float64)[:, :3]
    for slot, cp in prompts.cameras.items():
        cam = geometry.get(slot)
        if cam is None:
            continue
        pos = np.zeros((0, 2))
        if cp.points is not None:
            uv = np.asarray(cp.points, np.float64).reshape(-1, 2)
            pos = uv[np.asarray(cp.labels).reshape(-1) > 0]
        if not len(pos) and cp.box is None and cp.mask is None:
            continue
        pix = pixel_points(xyz, cam, radius_px)
        if not len(pos):
            if cp.box is not None:
                row = box_lifted_row(xyz, cam, np.asarray(cp.box), pix, config)
            else:
                row = mask_lifted_row(xyz, cam, np.asarray(cp.mask) > 0.5, pix)
            if row is not None:
                found.append(xyz[row])
            continue
        h, w = cam.size
        above: tuple[np.ndarray, np.ndarray] | None = None
        for u, v in pos:
            row = int(pix.index[int(np.clip(round(v), 0, h - 1)), int(np.clip(round(u), 0, w - 1))])
            if row < 0 and config.click_lift_radius_px > 0:
                if above is None:
                    above = _seen_above_ground(xyz, cam, pix, config)
                row = _nearest_within(above, (u, v), config.click_lift_radius_px)
            if row >= 0:
                found.append(xyz[row])
    return np.array(found, np.float64).reshape(-1, 3)


__all__ = [
    "MaskRefineConfig",
    "PixelPoints",
    "SegmentAnchor",
    "HeightMemory",
    "above_object",
    "anchor_from_prompts",
    "ceiling_points",
    "box_lifted_row",
    "boxed_segment",
    "complete_segment",
    "gate_to_prediction",
    "ground_points",
    "height_over_wide_ground",
    "guide_camera_masks",
    "grabcut_image_mask",
    "guided_image_mask",
    "lifted_clicks",
    "mask_lifted_row",
    "pixel_points",
    "prompt_above",
    "prompt_constrained_mask",
    "refine_point_mask",
    "select_segment",
    "supported_image_mask",
    "unseen_pixels",
]
