"""The paper's streaming evaluation: first-frame prompts, tracking to the end, per-frame scores.

Per sequence (:func:`evaluate_sequence`):

1. Objects (:func:`candidate_objects`): every labeled object that passes the label filter (the
   official recipe's semantic blacklist, :data:`DEFAULT_SEMANTIC_BLACKLIST`, as training's
   ``LabelFilter``; objects without an object-table entry pass) and appears in *every* modality
   that has ground truth in the sequence (at least ``min_pixels`` pixels in some camera on some
   frame, at least ``min_points`` LiDAR points on some frame, not necessarily the same frame).
   So the same objects enter the same-modality and the cross-modal cells. With
   ``max_objects``, :func:`select_objects` keeps the objects asked for (e.g. the ROS demo's,
   :func:`pick_demo_object`) and fills up with a random sample seeded by the sequence name
   (CRC-32), the same whatever prompt types or modalities are evaluated.
2. For each (prompt type, prompt modality) and tracker mode (``memory``: the SAM4D protocol;
   ``reprompt``: motion-compensated re-prompting, :mod:`sam4d_core.tracking.reprompt`) one
   :class:`~sam4d_core.tracking.streaming_tracker.StreamingTracker` runs over the whole sequence
   with all the selected objects (batched); each object is added on the first frame where it
   appears in the prompt modality (:mod:`.first_frame_prompts`) right after that frame's
   ``step`` (a prompt on the newest frame, as a user's click on what they see) and tracked to
   the last frame. The trackers of one sequence run in lockstep and share each frame's encoding
   (:class:`SharedFrameEncoding`): the image and LiDAR encoders run once per frame, not once per
   prompt type or mode. Each tracker's batch holds only its own objects, so a subset of prompt
   types (or modes) gives the same numbers.
3. Every tracked frame of every object (from its prompted frame on, the prompted frame
   included) is scored against the ground truth (:mod:`.metrics`): image IoU pooled over the
   cameras with ground truth, boundary F from pooled DAVIS counts, LiDAR IoU without ignored
   points; frames where both masks are empty are skipped by the means.
"""

from __future__ import annotations

import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from sam4d_core.data.sequence import IGNORE_ID, Sequence
from sam4d_core.evaluation.first_frame_prompts import (
    MODALITIES,
    PROMPT_TYPES,
    FirstFramePrompt,
    ObjectVisibility,
    make_first_frame_prompt,
)
from sam4d_core.evaluation.metrics import (
    DAVIS_BOUND_TH,
    BoundaryCounts,
    FrameScores,
    GroundTruthBoundary,
    ObjectScores,
    boundary_counts,
    iou_counts,
    object_scores,
)
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.tracking.records import ObjectResult
from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig

DEFAULT_SEMANTIC_BLACKLIST: tuple[str, ...] = (
    "road",
    "sidewalk",
    "crosswalk",
    "curb",
    "lane line",
    "lane marking",
)
"""The official recipe's classes that are never prompted objects (training's label filter uses
this list too; compared case-, space- and underscore-insensitively)."""

DEFAULT_MIN_PIXELS = 30
# Road users: the classes the demo prefers to prompt (tracking a moving car shows more than a wall).
DEMO_CLASSES: tuple[str, ...] = ("car", "pedestrian", "cyclist", "truck", "bus", "motorcycle")
DEFAULT_MIN_POINTS = 10
TRACKER_MODES: tuple[str, ...] = ("memory", "reprompt")
"""``memory``: memory only (the SAM4D protocol); ``reprompt``: with motion-compensated
re-prompting (:attr:`~sam4d_core.tracking.streaming_tracker.TrackerConfig.reprompt`)."""


def normalize_class(name: str) -> str:
    """``"Lane_Line"`` -> ``"laneline"``: how semantic classes are compared."""
    return re.sub(r"[^a-z0-9]+", "", name.lower())


def object_semantics(sequence: Sequence) -> dict[int, str]:
    """Object id -> semantic class from the frames' object tables (first frame that has it)."""
    out: dict[int, str] = {}
    for frame in sequence.frames:
        for oid, info in frame.objects.items():
            out.setdefault(int(oid), info.semantic)
    return out


@dataclass
class EvalConfig:
    """Settings of the streaming evaluation.

    Attributes:
        prompt_types: subset of ``1click, 3click, box, mask``.
        modalities: prompt modalities, subset of ``img, pts``.
        min_pixels / min_points: an object appears in a camera / the LiDAR with at least this
            many pixels / points (prompted on the first such frame).
        semantic_blacklist: classes never evaluated.
        max_objects: at most this many objects per sequence (None: all candidates).
        bound_th: DAVIS boundary tolerance (fraction of the image diagonal).
        mask_threshold: the tracker's mask probability threshold.
        tracker_modes: subset of :data:`TRACKER_MODES`, each run on the same prompts.
        refine_masks: the tracker refines masks with the sweep's geometry in every mode
            (:attr:`~sam4d_core.tracking.streaming_tracker.TrackerConfig.refine_masks`).
        lift_image_clicks: the tracker adds a 3D click under image clicks
            (:attr:`~sam4d_core.tracking.streaming_tracker.TrackerConfig.lift_image_clicks`).
        zoom: the tracker decodes prompted cameras again on a window around the prompt
            (:attr:`~sam4d_core.tracking.streaming_tracker.TrackerConfig.zoom`).
        boundary_refine: the tracker refines camera masks with the learned boundary refiner
            (:attr:`~sam4d_core.tracking.streaming_tracker.TrackerConfig.boundary_refine`).
    """

    prompt_types: tuple[str, ...] = PROMPT_TYPES
    modalities: tuple[str, ...] = MODALITIES
    min_pixels: int = DEFAULT_MIN_PIXELS
    min_points: int = DEFAULT_MIN_POINTS
    semantic_blacklist: tuple[str, ...] = DEFAULT_SEMANTIC_BLACKLIST
    max_objects: int | None = None
    bound_th: float = DAVIS_BOUND_TH
    mask_threshold: float = 0.5
    tracker_modes: tuple[str, ...] = ("memory",)
    refine_masks: bool = False
    lift_image_clicks: bool = False
    zoom: bool = False
    boundary_refine: bool = False

    def __post_init__(self) -> None:
        self.prompt_types = tuple(self.prompt_types)
        self.modalities = tuple(self.modalities)
        self.tracker_modes = tuple(self.tracker_modes)
        modes = self.tracker_modes
        if not modes or len(set(modes)) != len(modes) or set(modes) - set(TRACKER_MODES):
            raise ValueError(f"tracker modes must be distinct, among {TRACKER_MODES}; got {modes}")
        self.semantic_blacklist = tuple(self.semantic_blacklist)
        bad = [p for p in self.prompt_types if p not in PROMPT_TYPES]
        bad += [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.prompt_types or not self.modalities:
            raise ValueError(
                f"prompt types must be among {PROMPT_TYPES} and modalities among {MODALITIES} "
                f"(at least one of each); got {self.prompt_types} / {self.modalities}"
            )
        if self.max_objects is not None and self.max_objects < 1:
            raise ValueError("max_objects must be >= 1 or None")

    @property
    def combos(self) -> list[tuple[str, str]]:
        """(prompt type, modality) pairs in table order."""
        return [(p, m) for p in self.prompt_types for m in self.modalities]

    def blacklisted(self, semantic: str | None) -> bool:
        if semantic is None:
            return False
        return normalize_class(semantic) in {normalize_class(s) for s in self.semantic_blacklist}

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# ---------------------------------------------------------------------------------------------
# Which objects.


def candidate_objects(
    sequence: Sequence, config: EvalConfig, visibility: ObjectVisibility | None = None
) -> list[int]:
    """Objects eligible for evaluation (module docstring, step 1), sorted by id."""
    vis = visibility or ObjectVisibility(sequence)
    sem = object_semantics(sequence)
    needed = [m for m, ok in (("img", vis.has_image_gt), ("pts", vis.has_lidar_gt)) if ok]
    out = []
    for oid in vis.object_ids:
        if config.blacklisted(sem.get(oid)):
            continue
        if all(
            vis.first_appearance(oid, m, config.min_pixels, config.min_points) is not None
            for m in needed
        ):
            out.append(oid)
    return out


def select_objects(
    sequence: Sequence,
    config: EvalConfig,
    include: Iterable[int] = (),
    visibility: ObjectVisibility | None = None,
) -> tuple[list[int], int]:
    """(the evaluated objects sorted by id, the number of candidates).

    ``include``: objects to keep first when ``max_objects`` cuts (ignored unless candidates);
    the rest is a random sample seeded by the CRC-32 of the sequence name.
    """
    cands = candidate_objects(sequence, config, visibility)
    if config.max_objects is None or len(cands) <= config.max_objects:
        return cands, len(cands)
    keep = [o for o in dict.fromkeys(int(i) for i in include) if o in set(cands)]
    keep = keep[: config.max_objects]
    rest = [o for o in cands if o not in set(keep)]
    rng = np.random.default_rng(zlib.crc32(sequence.name.encode()))
    order = rng.permutation(len(rest))
    keep += [rest[i] for i in order[: config.max_objects - len(keep)]]
    return sorted(keep), len(cands)


def pick_demo_object(
    sequence: Sequence,
    camera: str,
    min_fraction: float = 0.8,
    min_pixels: int = DEFAULT_MIN_PIXELS,
    semantic_blacklist: Iterable[str] = DEFAULT_SEMANTIC_BLACKLIST,
    visibility: ObjectVisibility | None = None,
    preferred_classes: Iterable[str] = DEMO_CLASSES,
) -> int | None:
    """The object the ROS demo prompts, chosen deterministically from the ground truth.

    Rule: among the objects that are not blacklisted and are visible in ``camera`` (at least
    ``min_pixels`` pixels) on at least ``min_fraction`` of the sequence's frames, the one with the
    largest mask in ``camera`` on frame 0 (ties: the smaller id), taken from the
    ``preferred_classes`` (road users: what a demo of tracking is about) when any of them
    qualifies, from all classes otherwise. None when no object qualifies or frame 0 has no ground
    truth for ``camera``.
    """
    vis = visibility or ObjectVisibility(sequence)
    if not vis.num_frames or camera not in vis.pixels[0]:
        return None
    cfg = EvalConfig(semantic_blacklist=tuple(semantic_blacklist))
    sem = object_semantics(sequence)
    preferred = {c.lower() for c in preferred_classes}
    best: dict[bool, tuple[int | None, int]] = {True: (None, 0), False: (None, 0)}
    for oid in vis.object_ids:
        px0 = vis.camera_pixels(0, oid).get(camera, 0)
        cls = sem.get(oid)
        rank = cls is not None and cls.lower() in preferred
        if px0 < max(1, min_pixels) or px0 <= best[rank][1] or cfg.blacklisted(cls):
            continue
        seen = sum(
            vis.camera_pixels(t, oid).get(camera, 0) >= max(1, min_pixels)
            for t in range(vis.num_frames)
        )
        if seen >= min_fraction * vis.num_frames:
            best[rank] = (oid, px0)
    return best[True][0] if best[True][0] is not None else best[False][0]


# ---------------------------------------------------------------------------------------------
# Shared encoding.


class SharedFrameEncoding:
    """Makes several trackers of one model share each frame's encoding.

    Inside ``with SharedFrameEncoding(model) as shared:``, ``model.encode_frame`` is computed once
    per :meth:`new_frame` call and the same :class:`~sam4d_core.modeling.records.FrameFeatures`
    is returned to every tracker that steps the frame afterwards. Why this works: the trackers
    only read the features (the one mutation, dropping backbone kernel maps, is idempotent and
    never changes a result), and all of them see the same frames with the same camera order.
    The model's own method is restored on exit.
    """

    def __init__(self, model: SAM4D) -> None:
        self.model = model
        self._token: object = None
        self._cached: tuple[tuple[object, tuple[int, ...]], object] | None = None
        self.encodings = 0

    def new_frame(self, token: object) -> None:
        """The next encode computes; the calls after it until the next token reuse it."""
        self._token = token
        self._cached = None

    def __enter__(self) -> SharedFrameEncoding:
        original = type(self.model).encode_frame.__get__(self.model)

        def encode_frame(*args: object, **kwargs: object) -> object:
            # Shared only for the same inputs: a tracker also encodes views of its own (a zoomed
            # window of a camera), which must not be served the frame's encoding.
            images = args[0] if args else kwargs.get("images")
            key = (self._token, tuple(id(im) for im in images or ()))  # type: ignore[union-attr]
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            feats = original(*args, **kwargs)
            if self._cached is None or self._cached[0][0] is not self._token:
                self.encodings += 1
                self._cached = (key, feats)
            return feats

        # An instance attribute shadows the method for this model object only.
        object.__setattr__(self.model, "encode_frame", encode_frame)
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.__dict__.pop("encode_frame", None)
        self._cached = None


# ---------------------------------------------------------------------------------------------
# Scoring.


class FrameGroundTruth:
    """One frame's ground truth, with per-object masks and boundaries cached while the trackers
    of every prompt type score that frame."""

    def __init__(self, sequence: Sequence, t: int, bound_th: float) -> None:
        self.frame = sequence.frames[t]
        self.bound_th = bound_th
        self._masks: dict[tuple[str, int], np.ndarray] = {}
        self._bounds: dict[tuple[str, int], GroundTruthBoundary] = {}

    def mask(self, cam: str, oid: int) -> np.ndarray:
        key = (cam, oid)
        m = self._masks.get(key)
        if m is None:
            m = self._masks[key] = self.frame.cameras[cam].instance_mask == oid
        return m

    def boundary(self, cam: str, oid: int) -> GroundTruthBoundary:
        key = (cam, oid)
        b = self._bounds.get(key)
        if b is None:
            b = self._bounds[key] = GroundTruthBoundary.of(self.mask(cam, oid), self.bound_th)
        return b

    def score(self, oid: int, result: ObjectResult) -> FrameScores:
        """:class:`~.metrics.FrameScores` of ground-truth object ``oid`` against ``result``."""
        inter = union = 0
        counts = BoundaryCounts()
        any_cam = False
        per_cam: dict[str, float | None] = {}
        for name, cam in self.frame.cameras.items():
            if cam.instance_mask is None:
                continue
            any_cam = True
            gt = self.mask(name, oid)
            pred = result.image_masks.get(name)
            if pred is None:  # the tracker returns every camera of the frame; be safe
                pred = np.zeros_like(gt)
            i, u = iou_counts(pred, gt)
            per_cam[name] = i / u if u > 0 else None
            if u == 0:
                continue
            inter += i
            union += u
            counts = counts + boundary_counts(pred, self.boundary(name, oid))
        image_iou = inter / union if any_cam and union > 0 else None
        f = counts.f_measure() if image_iou is not None else None
        lid = None
        labels = self.frame.point_labels
        if labels is not None and len(result.point_mask) == len(labels):
            i, u = iou_counts(result.point_mask, labels == oid, labels == IGNORE_ID)
            lid = i / u if u > 0 else None
        return FrameScores(image_iou, f, lid, per_cam)


@dataclass
class ObjectRun:
    """One object tracked from one first-frame prompt.

    Attributes:
        object_id: ground-truth id. semantic: its class.
        prompt_type / modality: the prompt.
        first_frame: the prompted frame.
        mode: the tracker mode (:data:`TRACKER_MODES`).
        lost: per scored frame, the tracker reported the object lost.
        prompt: :meth:`FirstFramePrompt.describe` (camera, clicks, box, mask size).
        frames: the scored frames (first_frame .. last). scores: one per frame.
        summary: the means over frames.
    """

    object_id: int
    semantic: str
    prompt_type: str
    modality: str
    first_frame: int
    prompt: dict[str, object]
    frames: list[int] = field(default_factory=list)
    scores: list[FrameScores] = field(default_factory=list)
    mode: str = "memory"
    lost: list[bool] = field(default_factory=list)

    @property
    def summary(self) -> ObjectScores:
        return object_scores(self.scores)

    def to_dict(self, digits: int = 6) -> dict[str, object]:
        def r(x: float | None) -> float | None:
            return None if x is None else round(float(x), digits)

        s = self.summary
        return {
            "object_id": self.object_id,
            "semantic": self.semantic,
            "prompt": self.prompt_type,
            "modality": self.modality,
            "mode": self.mode,
            "first_frame": self.first_frame,
            "prompt_detail": self.prompt,
            "frames": list(self.frames),
            "image_iou": [r(x.image_iou) for x in self.scores],
            "boundary_f": [r(x.boundary_f) for x in self.scores],
            "lidar_iou": [r(x.lidar_iou) for x in self.scores],
            "camera_iou": {
                cam: [r(x.camera_iou.get(cam)) for x in self.scores]
                for cam in dict.fromkeys(c for x in self.scores for c in x.camera_iou)
            },
            "image_miou": r(s.image_miou),
            "j": r(s.j),
            "f": r(s.f),
            "jf": r(s.jf),
            "lidar_miou": r(s.lidar_miou),
            "image_frames": s.image_frames,
            "lidar_frames": s.lidar_frames,
            "lost_frames": sum(self.lost),
        }


@dataclass
class SequenceResult:
    """A sequence's evaluation: which objects, every :class:`ObjectRun`, the time it took."""

    name: str
    num_frames: int
    cameras: list[str]
    num_candidates: int
    objects: list[int]
    runs: list[ObjectRun]
    seconds: float = 0.0
    encodings: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "num_frames": self.num_frames,
            "cameras": list(self.cameras),
            "num_candidates": self.num_candidates,
            "objects": list(self.objects),
            "runs": [r.to_dict() for r in self.runs],
        }


@contextmanager
def _threads(n: int | None) -> Iterator[None]:
    if not n:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def evaluate_sequence(
    model: SAM4D,
    sequence: Sequence,
    config: EvalConfig,
    include: Iterable[int] = (),
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SequenceResult:
    """Runs the streaming evaluation of one sequence (module docstring).

    Args:
        model: the model (eval mode, on its device).
        sequence: frames with ground truth.
        config: settings.
        include: objects to keep when ``config.max_objects`` cuts (e.g. the demo's object).
        threads: torch intra-op threads while it runs (None: unchanged).
        progress: called with (frames done, frames) after each frame.
    """
    t_start = time.perf_counter()
    vis = ObjectVisibility(sequence)
    objects, n_cand = select_objects(sequence, config, include, vis)
    sem = object_semantics(sequence)
    # Tracker ids are 1..K (the ground truth's ids may exceed the tracker's 16-bit range).
    tracker_id = {oid: k + 1 for k, oid in enumerate(objects)}
    gt_id = {v: k for k, v in tracker_id.items()}
    plans: dict[tuple[str, str], dict[int, list[FirstFramePrompt]]] = {}
    runs: dict[tuple[str, str, str], dict[int, ObjectRun]] = {}
    for combo in config.combos:
        ptype, mod = combo
        by_frame: dict[int, list[FirstFramePrompt]] = {}
        for mode in config.tracker_modes:
            runs[(*combo, mode)] = {}
        for oid in objects:
            t0 = vis.first_appearance(oid, mod, config.min_pixels, config.min_points)
            if t0 is None:
                continue
            p = make_first_frame_prompt(sequence.frames[t0], oid, ptype, mod, frame_index=t0)
            if p is None:
                continue
            by_frame.setdefault(t0, []).append(p)
            for mode in config.tracker_modes:
                runs[(*combo, mode)][oid] = ObjectRun(
                    oid, sem.get(oid, "unknown"), ptype, mod, t0, p.describe(), mode=mode
                )
        if by_frame:
            plans[combo] = by_frame
    trackers = {
        (*combo, mode): StreamingTracker(
            model,
            TrackerConfig(
                max_objects=max(1, len(objects)),
                mask_threshold=config.mask_threshold,
                reprompt=mode == "reprompt",
                refine_masks=config.refine_masks,
                lift_image_clicks=config.lift_image_clicks,
                zoom=config.zoom,
                boundary_refine=config.boundary_refine,
            ),
        )
        for combo in plans
        for mode in config.tracker_modes
    }
    n = len(sequence.frames)
    with _threads(threads), SharedFrameEncoding(model) as shared:
        for t, frame in enumerate(sequence.frames):
            shared.new_frame(object())
            gt = FrameGroundTruth(sequence, t, config.bound_th)
            for key, tracker in trackers.items():
                combo = key[:2]
                res = tracker.step(frame)
                new = plans[combo].get(t)
                if new:
                    prompts = []
                    for p in new:
                        op = p.to_object_prompt(stamp=None)
                        op.object_id = tracker_id[p.object_id]
                        prompts.append(op)
                    res = tracker.add_prompts(prompts)
                    assert res is not None
                for obj in res.objects:
                    oid = gt_id[obj.object_id]
                    run = runs[key][oid]
                    run.frames.append(t)
                    run.scores.append(gt.score(oid, obj))
                    run.lost.append(obj.lost)
            if progress is not None:
                progress(t + 1, n)
    keys = [(*c, m) for m in config.tracker_modes for c in config.combos]
    ordered = [runs[k][o] for k in keys for o in objects if o in runs[k]]
    return SequenceResult(
        name=sequence.name,
        num_frames=n,
        cameras=sequence.camera_names,
        num_candidates=n_cand,
        objects=objects,
        runs=ordered,
        seconds=time.perf_counter() - t_start,
        encodings=shared.encodings,
    )


__all__ = [
    "DEFAULT_MIN_PIXELS",
    "DEFAULT_MIN_POINTS",
    "DEFAULT_SEMANTIC_BLACKLIST",
    "EvalConfig",
    "FrameGroundTruth",
    "ObjectRun",
    "SequenceResult",
    "SharedFrameEncoding",
    "TRACKER_MODES",
    "candidate_objects",
    "evaluate_sequence",
    "normalize_class",
    "object_semantics",
    "pick_demo_object",
    "select_objects",
]
