"""The streaming tracker: SAM4D frame by frame with bounded memory, the API the ROS node uses.

One :meth:`StreamingTracker.step` per synchronized frame (:class:`~sam4d_core.data.sequence.Frame`:
one LiDAR sweep, any number of cameras, any of them missing): one image encoding (all cameras in
one batch) and one LiDAR encoding for all objects, memory selection per object from its bounded
:class:`~sam4d_core.modeling.memory_bank.ObjectMemoryBank`, one batched track step (memory
attention + decoders) and one batched memory encoding for all objects, then the masks per camera
at the camera's resolution and per point (:class:`~sam4d_core.tracking.records.StepResult`).

Prompts (:meth:`StreamingTracker.add_prompts`) refer to a frame by its stamp: the newest frame
(``stamp=None``), one of the frames of the last ``frame_buffer_s`` seconds (the frame buffer keeps
their :class:`~sam4d_core.modeling.records.FrameFeatures`), or a frame that has not arrived yet.
Past-frame prompts ("a click on what the user saw"):

- A stamp matches the buffered frame nearest to it within ``stamp_tolerance_s`` (camera images
  are stamped slightly off the sweep). Older than the buffer: :class:`PromptOutOfBufferError`.
- The prompt is applied on that frame exactly as it would have been live (the object's memory is
  rolled back to what it was then), and the object is re-tracked through the buffered frames up
  to the newest (replay). Only the prompted objects are re-run; the others keep their results.
  Conditioning frames of the prompted object inside the replayed span keep their outputs (the
  rules of :mod:`sam4d_core.tracking.engine`, shared with the offline predictor: the newest
  result after a past-frame prompt equals the predictor's when prompted on that frame and
  propagated).
- ``add_prompts`` returns the newest frame's :class:`StepResult` after the prompts (every object:
  the replayed ones new, the others as last stepped) so that the caller can publish at once; its
  ``replayed_from`` is the earliest prompted frame. Replaying costs one track step per buffered
  frame after the prompted one (no encoder runs).
- A stamp newer than the newest frame (an image that arrived before its sweep) is kept pending
  and applied by the first :meth:`step` whose frame is at or after it (within the tolerance);
  ``add_prompts`` then returns None for it.

Bounded memory: the frame buffer holds at most ``max_buffer_frames`` frames and only the last
``frame_buffer_s`` seconds; each object's bank keeps what the next frame (or a replay from the
oldest buffered frame) can select; per-object predictions and prompts are kept for buffered
frames only; pending prompts are capped. Nothing grows with the length of the stream.

Thread safety: the public methods hold one lock (the node steps in a worker thread and adds
prompts from service callbacks).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from sam4d_core.data.sequence import Frame
from sam4d_core.modeling.mask_refiner import load_mask_refiner
from sam4d_core.modeling.memory_bank import MemoryBankConfig
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.modeling.records import FrameFeatures
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.runtime.model_runtime import install_runtime
from sam4d_core.tracking.boundary_refine import BoundaryRefineConfig, refine_mask
from sam4d_core.tracking.engine import (
    ObjectFrameOutput,
    ObjectJob,
    ObjectState,
    absent_output,
    drop_backbone_kernel_maps,
    encode_sensor_frame,
    merge_prompts,
    point_logits,
    prepare_prompt_job,
    run_frame,
    sensor_logits,
    snap_to_model_grid,
)
from sam4d_core.tracking.mask_refine import (
    HeightMemory,
    MaskRefineConfig,
    PixelPoints,
    anchor_from_prompts,
    ceiling_points,
    guide_camera_masks,
    lifted_clicks,
    prompt_constrained_mask,
    refine_point_mask,
)
from sam4d_core.tracking.overlap import carry_mask, mask_depth, points_in_image
from sam4d_core.tracking.records import (
    MAX_OBJECT_ID,
    ObjectPrompt,
    ObjectResult,
    StepResult,
)
from sam4d_core.tracking.reprompt import (
    CameraGeometry,
    FrameSensors,
    RepromptConfig,
    Reprompter,
    camera_geometry,
    project_box,
    to_object_prompts,
)
from sam4d_core.tracking.zoom import (
    ZoomConfig,
    prompt_extent,
    prompt_in_window,
    zoom_window,
    zoomed_camera_logits,
)
from sam4d_core.weights import BUNDLED_REFINER

logger = logging.getLogger(__name__)

# Frames exactly ``frame_buffer_s`` old stay in the buffer (stamps of ~1.7e9 s carry ~1e-7 s of
# float noise).
_STAMP_EPS = 1e-6


class PromptError(ValueError):
    """A prompt cannot be applied (the message says which object and why); nothing was changed."""


class PromptOutOfBufferError(PromptError):
    """A prompt's stamp matches no frame of the buffer (older than it, or a frame never seen)."""


@dataclass
class TrackerConfig:
    """Settings of the streaming tracker.

    Attributes:
        frame_buffer_s: how far back (s, behind the newest frame) prompts may refer to.
        max_buffer_frames: hard cap on buffered frames whatever the stamps (memory bound; 2 s at
            10 Hz is 21 frames).
        stamp_tolerance_s: a prompt stamp matches the buffered frame nearest to it within this.
        max_prompt_lead_s: how far ahead of the newest frame a stamp may be (kept pending).
        max_pending_prompts: at most this many pending prompts.
        mask_threshold: mask probability above which a pixel / point belongs to the object.
        max_objects: most objects tracked at once.
        num_maskmem: memory slots per object (None: the model's; at most the model's, whose
            temporal embeddings are learned per slot).
        max_object_pointers: object pointers per object (None: the model's).
        snap_clicks_to_model_grid: move clicks and box corners to the model-input pixel grid as
            the released predictor does (floor), so that results match it.
        device: move the model there (None: leave it where it is).
        reprompt: motion-compensated re-prompting (:mod:`sam4d_core.tracking.reprompt`): on
            every tracked frame, each object's predicted LiDAR segment gives the decoder 3D
            clicks and camera boxes beside its memory, and an object whose prediction finds no
            support is reported lost (absent, not run). False: memory only (the SAM4D protocol).
            In both modes an object whose output has no mask anywhere (no pixel, no point) is
            reported lost on that frame (:class:`~sam4d_core.tracking.records.ObjectResult`).
        reprompt_config: settings of the motion model and the prompt derivation.
        refine_masks: refine each object's masks with the sweep's geometry
            (:mod:`sam4d_core.tracking.mask_refine`): its LiDAR mask becomes the mask's segment
            nearest the object's prompt, completed with the non-ground clusters it mostly
            covers; its camera masks follow that segment where the LiDAR sees and one GrabCut
            iteration puts their boundary on the image's edges. The results and what the motion
            model observes use them. False: the decoder's masks as they are (the SAM4D
            protocol).
        mask_refine_config: settings of that refinement.
        lift_image_clicks: an object prompted in an image and nothing in the LiDAR gets a 3D
            click too, on the sweep point seen under each positive click (or a box's centre)
            (:func:`~sam4d_core.tracking.mask_refine.lifted_clicks`), so the LiDAR decoder is
            prompted where the user clicked rather than through the image alone. False: the
            prompt as given (the SAM4D protocol).
        zoom: on the frame a user prompts, decode the object's mask again on a window around
            it, zoomed to the model input (:mod:`~sam4d_core.tracking.zoom`), in the prompted
            camera (LiDAR prompts: in each camera seeing the refined segment): small objects
            span more of the decoder's stride-4 cells. One image encoder pass per zoomed camera.
            False: one decode (the SAM4D protocol).
        zoom_config: settings of the zoomed decoding.
        boundary_refine: with ``refine_masks``, each camera mask the sweep's segment guides is
            also refined on its image crop by the learned boundary refiner
            (:mod:`~sam4d_core.tracking.boundary_refine`), after GrabCut. False: not.
        boundary_refiner: the refiner's weights (None: the bundled
            ``sam4d_core/weights/mask_refiner_synthetic.pt``).
        boundary_refine_config: where and at what scale the refiner sees a mask.
        runtime: where the model's dense stages run: "torch" (PyTorch eager), "onnxruntime" or
            "tensorrt" (:mod:`sam4d_core.runtime`); the rest of the step is the same.
        onnx_dir: the ONNX export of this model (``python -m sam4d_export onnx``), for
            "onnxruntime" and "tensorrt".
        runtime_threads: ONNX Runtime intra-op threads (0: its default).
        engine_dir: TensorRT engine cache (None: ``<onnx_dir>/engines``).
        trt_precision: TensorRT precision: "fp32", "fp16" or "bf16".
    """

    frame_buffer_s: float = 2.0
    max_buffer_frames: int = 32
    stamp_tolerance_s: float = 0.05
    max_prompt_lead_s: float = 1.0
    max_pending_prompts: int = 256
    mask_threshold: float = 0.5
    max_objects: int = 64
    num_maskmem: int | None = None
    max_object_pointers: int | None = None
    snap_clicks_to_model_grid: bool = True
    device: str | None = None
    reprompt: bool = False
    reprompt_config: RepromptConfig = field(default_factory=RepromptConfig)
    refine_masks: bool = False
    mask_refine_config: MaskRefineConfig = field(default_factory=MaskRefineConfig)
    lift_image_clicks: bool = False
    zoom: bool = False
    zoom_config: ZoomConfig = field(default_factory=ZoomConfig)
    boundary_refine: bool = False
    boundary_refiner: str | None = None
    boundary_refine_config: BoundaryRefineConfig = field(default_factory=BoundaryRefineConfig)
    runtime: str = "torch"
    onnx_dir: str | None = None
    runtime_threads: int = 0
    engine_dir: str | None = None
    trt_precision: str = "fp16"

    def __post_init__(self) -> None:
        if self.frame_buffer_s < 0 or self.stamp_tolerance_s < 0 or self.max_prompt_lead_s < 0:
            raise ValueError("frame_buffer_s, stamp_tolerance_s, max_prompt_lead_s must be >= 0")
        if self.max_buffer_frames < 1 or self.max_objects < 1 or self.max_pending_prompts < 0:
            raise ValueError("max_buffer_frames, max_objects >= 1 and max_pending_prompts >= 0")
        if not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {self.mask_threshold}")

    @property
    def mask_logit_threshold(self) -> float:
        p = self.mask_threshold
        return math.log(p / (1.0 - p))


@dataclass(eq=False)
class BufferedFrame:
    """A frame kept for prompts on the past: its features and what results need.

    Attributes:
        index: the tracker's frame index (counts steps since the last reset).
        timestamp: sweep time (s).
        features: the model's encoding (enough to re-run any object on it).
        camera_sizes: present camera name -> (H, W).
        num_points: points of the sweep (0: no LiDAR).
        world_from_lidar: (4, 4) ego pose (re-prompting).
        cameras: the present cameras' calibration (re-prompting).
    """

    index: int
    timestamp: float
    features: FrameFeatures
    camera_sizes: dict[str, tuple[int, int]]
    num_points: int
    world_from_lidar: np.ndarray = field(default_factory=lambda: np.eye(4))
    cameras: list[CameraGeometry] = field(default_factory=list)

    def sensors(self) -> FrameSensors:
        """What the re-prompting needs of this frame (the points stay where the model has them
        and come to the CPU here)."""
        lid = self.features.lidar
        pts = None if lid is None else lid.points_xyz.detach().float().cpu().numpy()
        return FrameSensors(self.index, self.timestamp, self.world_from_lidar, pts, self.cameras)

    @property
    def camera_ids(self) -> tuple[int, ...]:
        img = self.features.image
        return img.camera_ids if img is not None else ()


@dataclass
class _Pending:
    prompt: ObjectPrompt
    order: int


@dataclass
class _Request:
    """One object's prompts of one request, resolved to frames and model units."""

    object_id: int
    frames: dict[int, ObjectPrompts] = field(default_factory=dict)
    clear_previous: bool = False


def _grown(masks: np.ndarray) -> np.ndarray:
    """(C, h, w) bool masks, each grown by one cell in the 8 directions."""
    kernel = np.ones((3, 3), np.uint8)
    return (
        np.stack([cv2.dilate(m.astype(np.uint8), kernel) > 0 for m in masks])
        if len(masks)
        else masks
    )


class StreamingTracker:
    """SAM4D as a streaming tracker (module docstring).

    Args:
        model: a :class:`~sam4d_core.modeling.sam4d_base.SAM4D` (put in eval mode).
        config: tracker settings.
    """

    def __init__(self, model: SAM4D, config: TrackerConfig | None = None) -> None:
        self.config = cfg = config or TrackerConfig()
        if cfg.device is not None:
            model = model.to(cfg.device)
        self.model = model.eval()
        self.runtime = install_runtime(
            model,
            cfg.runtime,
            cfg.onnx_dir,
            threads=cfg.runtime_threads,
            engine_dir=cfg.engine_dir,
            precision=cfg.trt_precision,
        )
        mem = model.config.memory
        overrides: dict[str, int] = {}
        if cfg.num_maskmem is not None:
            if not 1 <= cfg.num_maskmem <= max(mem.num_maskmem, 1):
                raise ValueError(
                    f"num_maskmem must be in [1, {mem.num_maskmem}] for model "
                    f"{model.config.name!r} (its temporal embeddings), got {cfg.num_maskmem}"
                )
            overrides["num_maskmem"] = cfg.num_maskmem
        if cfg.max_object_pointers is not None:
            if cfg.max_object_pointers < 1:
                raise ValueError("max_object_pointers must be >= 1")
            overrides["max_obj_ptrs_in_encoder"] = cfg.max_object_pointers
        # ``extra_history``: a replay from the oldest buffered frame needs the memories before it.
        self.bank_config: MemoryBankConfig = dataclasses.replace(
            mem, extra_history=cfg.max_buffer_frames, **overrides
        )
        self._lock = threading.RLock()
        self._camera_slots: dict[str, int] = {}
        self._buffer: collections.deque[BufferedFrame] = collections.deque()
        self._objects: dict[int, ObjectState] = {}
        self._latest: dict[int, ObjectResult] = {}
        self._pending: list[_Pending] = []
        self._next_index = 0
        self._order = 0
        self._reprompter = Reprompter(cfg.reprompt_config) if cfg.reprompt else None
        self._heights = HeightMemory()
        self._refine_boundary = None
        if cfg.boundary_refine and cfg.refine_masks:  # it refines the masks the segment guides
            refiner = load_mask_refiner(
                cfg.boundary_refiner or str(BUNDLED_REFINER),
                device=str(next(model.parameters()).device),
            )
            self._refine_boundary = functools.partial(
                refine_mask, refiner, config=cfg.boundary_refine_config
            )
        # The newest frame's camera images (mask refinement's GrabCut; older frames keep none).
        self._newest_images: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ properties
    @property
    def object_ids(self) -> list[int]:
        """Tracked object ids (in order of creation)."""
        with self._lock:
            return list(self._objects)

    @property
    def buffered_stamps(self) -> list[float]:
        """Stamps of the buffered frames, oldest first."""
        with self._lock:
            return [f.timestamp for f in self._buffer]

    @property
    def newest_timestamp(self) -> float | None:
        with self._lock:
            return self._buffer[-1].timestamp if self._buffer else None

    @property
    def device(self) -> torch.device:
        return self.model.device

    def memory_stats(self) -> dict[str, object]:
        """Sizes of everything the tracker keeps (for soak tests and diagnostics)."""
        with self._lock:
            return {
                "buffer_frames": len(self._buffer),
                "max_buffer_frames": self.config.max_buffer_frames,
                "objects": len(self._objects),
                "bank_capacity": self.bank_config.capacity,
                "bank_entries": {o: len(s.bank) for o, s in self._objects.items()},
                "outputs_kept": {o: len(s.outputs) for o, s in self._objects.items()},
                "inputs_kept": {o: len(s.inputs) for o, s in self._objects.items()},
                "pending_prompts": len(self._pending),
                "cameras": len(self._camera_slots),
            }

    # ------------------------------------------------------------------ stepping
    def step(self, frame: Frame) -> StepResult:
        """Track every object on a new frame (stamps must increase; :meth:`reset` after a jump).

        Prompts pending for this frame are applied on it. Raises ValueError for a frame with
        neither a camera image nor a point, or one not newer than the newest frame.
        """
        with self._lock, torch.inference_mode():
            t0 = self.model.clock.now()
            timings: dict[str, float] = {}
            ts = float(frame.timestamp)
            if self._buffer and ts <= self._buffer[-1].timestamp:
                raise ValueError(
                    f"frame stamp {ts:.6f} s is not after the newest frame "
                    f"({self._buffer[-1].timestamp:.6f} s); reset() the tracker after a time jump"
                )
            npts = _check_frame(frame)
            for name in frame.cameras:
                if name not in self._camera_slots:
                    self._camera_slots[name] = len(self._camera_slots)
            features = encode_sensor_frame(self.model, frame, self._camera_slots, timings)
            drop_backbone_kernel_maps(features)  # the buffer keeps what re-running needs
            bf = BufferedFrame(
                index=self._next_index,
                timestamp=ts,
                features=features,
                camera_sizes={n: tuple(c.image.shape[:2]) for n, c in frame.cameras.items()},  # type: ignore[misc]
                num_points=npts,
                world_from_lidar=np.asarray(frame.world_from_lidar, np.float64),
                cameras=camera_geometry(frame, self._camera_slots),
            )
            self._next_index += 1
            self._buffer.append(bf)
            self._newest_images = {n: c.image for n, c in frame.cameras.items()}
            self._prune()

            requests = self._take_due_pending(bf)
            jobs: list[ObjectJob] = []
            for req in requests.values():
                if req.object_id not in self._objects:
                    self._objects[req.object_id] = ObjectState.new(req.object_id, self.bank_config)
                elif req.clear_previous:
                    self._objects[req.object_id].clear()
                    self._forget_motion(req.object_id)
            sensors = bf.sensors() if self._reprompter is not None else None
            lost: set[int] = set()
            for oid, st in self._objects.items():
                req = requests.get(oid)
                if req is not None and bf.index in req.frames:
                    jobs.append(
                        prepare_prompt_job(st, bf.index, req.frames[bf.index], bf.camera_ids)
                    )
                else:
                    job = self._tracking_job(st, sensors, timings)
                    if job is None:
                        lost.add(oid)
                    else:
                        jobs.append(job)
            outs = run_frame(self.model, features, bf.index, jobs, timings=timings) if jobs else []
            refined = self._refine(bf, jobs, outs, timings)
            self._observe(bf, sensors, jobs, outs, lost, timings, refined)
            states, outs = self._with_lost(bf, jobs, outs, lost)
            objects = self._results(bf, states, outs, timings, lost, refined)
            self._latest = {r.object_id: r for r in objects}
            timings["total"] = (self.model.clock.now() - t0) * 1e3
            return StepResult(ts, bf.index, objects, timings)

    # ------------------------------------------------------------------ prompts
    def add_prompts(self, prompts: Sequence[ObjectPrompt]) -> StepResult | None:
        """Adds objects or refines them (more clicks, negative clicks, boxes, masks; either
        modality), on the frame each prompt's stamp refers to (module docstring).

        All prompts are checked before anything changes: an invalid one raises
        :class:`PromptError` (:class:`PromptOutOfBufferError` for a stamp outside the buffer) and
        the tracker is left as it was.

        Returns:
            the newest frame's results after the prompts, or None when every prompt is pending
            (stamped after the newest frame) or ``prompts`` is empty.
        """
        with self._lock, torch.inference_mode():
            t0 = self.model.clock.now()
            if not prompts:
                return None
            if not self._buffer:
                raise PromptOutOfBufferError("no frame has been tracked yet: prompts need a frame")
            requests: dict[int, _Request] = {}
            pending: list[ObjectPrompt] = []
            for p in prompts:
                oid = _check_object_id(p.object_id)
                bf = self._match(p)
                if bf is None:
                    pending.append(p)
                    continue
                converted = self._to_model_prompts(p, bf)
                req = requests.setdefault(oid, _Request(oid))
                req.frames[bf.index] = merge_prompts(req.frames.get(bf.index), converted)
                req.clear_previous |= bool(p.clear_previous)
            new_ids = {p.object_id for p in prompts if p.object_id not in self._objects} | {
                p.prompt.object_id for p in self._pending if p.prompt.object_id not in self._objects
            }
            if len(self._objects) + len(new_ids) > self.config.max_objects:
                raise PromptError(
                    f"{len(new_ids)} new object(s) would exceed max_objects="
                    f"{self.config.max_objects} ({len(self._objects)} tracked)"
                )
            if len(self._pending) + len(pending) > self.config.max_pending_prompts:
                raise PromptError(
                    "too many prompts pending for future frames "
                    f"(max {self.config.max_pending_prompts})"
                )
            # Everything is valid: apply.
            for p in pending:
                self._pending.append(_Pending(p, self._order))
                self._order += 1
            if not requests:
                return None
            timings: dict[str, float] = {}
            first = self._replay(requests, timings)
            newest = self._buffer[-1]
            objects = [self._latest[o] for o in self._objects if o in self._latest]
            timings["total"] = (self.model.clock.now() - t0) * 1e3
            return StepResult(newest.timestamp, newest.index, objects, timings, replayed_from=first)

    def remove_objects(self, ids: Iterable[int]) -> list[int]:
        """Stops tracking ``ids`` (unknown ids are ignored); returns the ids removed. Their
        pending prompts are dropped too."""
        with self._lock:
            ids = {int(i) for i in ids}
            removed = [i for i in self._objects if i in ids]
            for i in removed:
                del self._objects[i]
                self._latest.pop(i, None)
                self._forget_motion(i)
            self._pending = [p for p in self._pending if p.prompt.object_id not in ids]
            return removed

    def reset(self) -> None:
        """Forgets every object, frame, pending prompt and camera; frame indices restart at 0."""
        with self._lock:
            self._objects.clear()
            self._latest.clear()
            self._buffer.clear()
            self._pending.clear()
            self._camera_slots.clear()
            self._next_index = 0
            self._newest_images = {}
            if self._reprompter is not None:
                self._reprompter.clear()
            self._heights.clear()

    # ------------------------------------------------------------------ internals
    def _prune(self) -> None:
        cfg = self.config
        newest = self._buffer[-1].timestamp
        while len(self._buffer) > 1 and (
            len(self._buffer) > cfg.max_buffer_frames
            or self._buffer[0].timestamp < newest - cfg.frame_buffer_s - _STAMP_EPS
        ):
            self._buffer.popleft()
        oldest = self._buffer[0].index
        for st in self._objects.values():
            st.prune_before(oldest)
        if self._reprompter is not None:
            self._reprompter.prune_before(oldest)

    def _match(self, p: ObjectPrompt) -> BufferedFrame | None:
        """The buffered frame of a prompt's stamp; None for a future one (pending)."""
        newest = self._buffer[-1]
        if p.stamp is None:
            return newest
        stamp = float(p.stamp)
        if not math.isfinite(stamp):
            raise PromptError(f"object {p.object_id}: stamp {p.stamp} is not finite")
        tol = self.config.stamp_tolerance_s + _STAMP_EPS
        best = min(self._buffer, key=lambda f: abs(f.timestamp - stamp))
        if abs(best.timestamp - stamp) <= tol:
            return best
        if stamp > newest.timestamp:
            lead = stamp - newest.timestamp
            if lead > self.config.max_prompt_lead_s:
                raise PromptError(
                    f"object {p.object_id}: stamp {stamp:.6f} s is {lead:.3f} s after the newest "
                    f"frame ({newest.timestamp:.6f} s); at most {self.config.max_prompt_lead_s} s "
                    "ahead is kept pending"
                )
            return None
        oldest = self._buffer[0]
        if stamp < oldest.timestamp:
            raise PromptOutOfBufferError(
                f"object {p.object_id}: stamp {stamp:.6f} s is {newest.timestamp - stamp:.3f} s "
                f"before the newest frame ({newest.timestamp:.6f} s) but the frame buffer keeps "
                f"{self.config.frame_buffer_s} s (oldest frame {oldest.timestamp:.6f} s)"
            )
        raise PromptOutOfBufferError(
            f"object {p.object_id}: no buffered frame within {self.config.stamp_tolerance_s} s of "
            f"stamp {stamp:.6f} s (nearest {best.timestamp:.6f} s; was that sweep dropped?)"
        )

    def _to_model_prompts(self, p: ObjectPrompt, bf: BufferedFrame) -> ObjectPrompts:
        """A record prompt -> the model's prompts on frame ``bf`` (validated)."""
        oid = p.object_id
        where = f"object {oid} at {bf.timestamp:.6f} s"
        out = ObjectPrompts()
        for ip in p.image:
            if ip.camera not in bf.camera_sizes:
                raise PromptError(
                    f"{where}: camera {ip.camera!r} is not in that frame "
                    f"(cameras: {sorted(bf.camera_sizes)})"
                )
            size = bf.camera_sizes[ip.camera]
            pts, labels = _points(ip.points, ip.labels, 2, f"{where}, camera {ip.camera!r}")
            box = _box(ip.box, (4,), f"{where}, camera {ip.camera!r}")
            mask = None
            if ip.mask is not None:
                mask = np.asarray(ip.mask)
                if mask.shape != size:
                    raise PromptError(
                        f"{where}: mask of camera {ip.camera!r} is {mask.shape}, the image {size}"
                    )
                mask = mask.astype(bool)
            if self.config.snap_clicks_to_model_grid:
                ms = self.model.image_size
                if pts is not None:
                    pts = snap_to_model_grid(pts, size, ms)
                if box is not None:
                    box = snap_to_model_grid(box.reshape(2, 2), size, ms).reshape(4)
            if pts is None and box is None and mask is None:
                continue
            slot = self._camera_slots[ip.camera]
            cp = ObjectPrompts(cameras={slot: CameraPrompt(pts, labels, box, mask)})
            out = merge_prompts(out, cp)
        lp = p.lidar
        if lp is not None:
            where_l = f"{where}, LiDAR"
            pts, labels = _points(lp.points, lp.labels, 3, where_l)
            box = _box(lp.box, (4, 6), where_l)
            mask = None
            if lp.point_mask is not None:
                mask = np.asarray(lp.point_mask).reshape(-1)
                if mask.shape[0] != bf.num_points:
                    raise PromptError(
                        f"{where_l}: point_mask of {mask.shape[0]} values, the sweep has "
                        f"{bf.num_points} points"
                    )
                mask = mask.astype(bool)
            if pts is not None or box is not None or mask is not None:
                if bf.features.lidar is None:
                    raise PromptError(f"{where_l}: that frame has no LiDAR points")
                out = merge_prompts(out, ObjectPrompts(lidar=LidarPrompt(pts, labels, box, mask)))
        if out.is_empty:
            raise PromptError(f"{where}: the prompt has no points, box or mask")
        lid = bf.features.lidar
        if self.config.lift_image_clicks and out.lidar is None and lid is not None:
            xyz = lid.points_xyz.detach().float().cpu().numpy()
            lifted = lifted_clicks(out, xyz, bf.cameras, config=self.config.mask_refine_config)
            if len(lifted):
                labels = np.ones(len(lifted), np.int64)
                out = merge_prompts(out, ObjectPrompts(lidar=LidarPrompt(lifted, labels)))
        return out

    def _take_due_pending(self, bf: BufferedFrame) -> dict[int, _Request]:
        """Pending prompts whose stamp this frame reaches, as requests on it (invalid ones are
        dropped with a warning: the caller was told the prompt was accepted)."""
        tol = self.config.stamp_tolerance_s + _STAMP_EPS
        due = [p for p in self._pending if float(p.prompt.stamp) <= bf.timestamp + tol]  # type: ignore[arg-type]
        if not due:
            return {}
        due_ids = {id(p) for p in due}
        self._pending = [p for p in self._pending if id(p) not in due_ids]
        requests: dict[int, _Request] = {}
        for p in sorted(due, key=lambda q: q.order):
            try:
                converted = self._to_model_prompts(p.prompt, bf)
            except PromptError as e:
                logger.warning("dropping a pending prompt: %s", e)
                continue
            oid = p.prompt.object_id
            if (
                oid not in self._objects
                and len(self._objects) + len([r for r in requests if r not in self._objects])
                >= self.config.max_objects
            ):
                logger.warning("dropping a pending prompt of object %d: max_objects reached", oid)
                continue
            req = requests.setdefault(oid, _Request(oid))
            req.frames[bf.index] = merge_prompts(req.frames.get(bf.index), converted)
            req.clear_previous |= bool(p.prompt.clear_previous)
        return requests

    def _replay(self, requests: dict[int, _Request], timings: dict[str, float]) -> int:
        """Applies the requests on their frames and re-tracks their objects up to the newest
        frame (batched per frame); returns the earliest prompted frame."""
        for oid, req in requests.items():
            if oid not in self._objects:
                self._objects[oid] = ObjectState.new(oid, self.bank_config)
            elif req.clear_previous:
                self._objects[oid].clear()
                self._forget_motion(oid)
        start = {oid: min(req.frames) for oid, req in requests.items()}
        first = min(start.values())
        newest = self._buffer[-1]
        final: dict[int, ObjectFrameOutput] = {}
        final_lost: set[int] = set()
        final_refined: dict[int, np.ndarray] = {}
        for bf in self._buffer:
            if bf.index < first:
                continue
            sensors = bf.sensors() if self._reprompter is not None else None
            jobs: list[ObjectJob] = []
            kept_jobs: list[ObjectJob] = []
            kept_outs: list[ObjectFrameOutput] = []
            lost: set[int] = set()
            for oid, s in start.items():
                if bf.index < s:
                    continue
                st = self._objects[oid]
                if bf.index == s:
                    # Back to the object's memory (and motion) as it was when this frame was live.
                    st.bank.discard_after(s - 1)
                    if self._reprompter is not None:
                        self._reprompter.discard_after(oid, s - 1)
                new = requests[oid].frames.get(bf.index)
                kept = st.outputs.get(bf.index)
                if new is not None:
                    jobs.append(prepare_prompt_job(st, bf.index, new, bf.camera_ids))
                elif bf.index in st.inputs and kept is not None and kept.memory is not None:
                    # A conditioning frame of an earlier request: its output stands.
                    st.bank.add(bf.index, kept.memory, is_cond=True)
                    kept_jobs.append(ObjectJob(st))
                    kept_outs.append(kept)
                    if bf is newest:
                        final[oid] = kept
                else:
                    job = self._tracking_job(st, sensors, timings)
                    if job is None:
                        lost.add(oid)
                    else:
                        jobs.append(job)
            outs = (
                run_frame(self.model, bf.features, bf.index, jobs, timings=timings) if jobs else []
            )
            refined = self._refine(bf, jobs + kept_jobs, list(outs) + kept_outs, timings)
            self._observe(
                bf, sensors, jobs + kept_jobs, list(outs) + kept_outs, lost, timings, refined
            )
            if bf is newest:
                final_refined = refined
                states, with_lost = self._with_lost(bf, jobs, outs, lost)
                final.update({st.obj_id: o for st, o in zip(states, with_lost, strict=True)})
                final_lost = lost
        oids = list(final)
        results = self._results(
            newest,
            [self._objects[o] for o in oids],
            list(final.values()),
            timings,
            final_lost,
            final_refined,
        )
        self._latest.update({r.object_id: r for r in results})
        return first

    # ------------------------------------------------------------------ re-prompting
    def _tracking_job(
        self, st: ObjectState, sensors: FrameSensors | None, timings: dict[str, float]
    ) -> ObjectJob | None:
        """A tracked (not user-prompted) object's job: memory only, or decoded from the prompts
        of its predicted segment (re-prompting; beside the memory with ``RepromptConfig.memory``);
        None when it is lost."""
        if self._reprompter is None or sensors is None:
            return ObjectJob(st)
        t0 = self.model.clock.now()
        rp = self._reprompter.plan(st.obj_id, sensors)
        timings["reprompt"] = timings.get("reprompt", 0.0) + (self.model.clock.now() - t0) * 1e3
        if rp is None:
            return ObjectJob(st)
        if rp.lost:
            return None
        if rp.is_empty:
            return ObjectJob(st)
        # Not a conditioning frame: the derived prompts only steer this frame's decoding (its
        # memory is written as a tracked frame's).
        # The refinement keeps the mask near a prediction made from the previous sweep's
        # observation (after a miss the object is searched anew).
        return ObjectJob(
            st,
            to_object_prompts(rp),
            init=not self._reprompter.config.memory,
            predicted=rp.predicted if rp.fresh else None,
        )

    def _refine(
        self,
        bf: BufferedFrame,
        jobs: Sequence[ObjectJob],
        outs: Sequence[ObjectFrameOutput],
        timings: dict[str, float],
    ) -> dict[int, np.ndarray]:
        """Object id -> (N,) bool refined point mask of each present output on ``bf``
        (:mod:`~sam4d_core.tracking.mask_refine`, anchored on the object's prompts there);
        empty when the refinement is off or the frame has no LiDAR."""
        lid = bf.features.lidar
        if not self.config.refine_masks or lid is None or not jobs:
            return {}
        t0 = self.model.clock.now()
        pl = point_logits(bf.features, outs)
        if pl is None:
            return {}
        masks = (pl > self.config.mask_logit_threshold).cpu().numpy()
        xyz = lid.points_xyz.detach().float().cpu().numpy()
        out: dict[int, np.ndarray] = {}
        for i, (job, o) in enumerate(zip(jobs, outs, strict=True)):
            if o.absent:
                continue
            st = job.state
            user = _user_point_mask(st.inputs.get(bf.index), len(xyz)) if o.is_cond else None
            if user is not None:
                out[st.obj_id] = user  # the user's own segment is the answer (SAM 2's mask)
                continue
            prompts = job.prompts if job.prompts is not None else st.inputs.get(bf.index)
            anchor = dataclasses.replace(
                anchor_from_prompts(prompts, bf.cameras),
                predicted=job.predicted,
                prompted=job.is_cond,
            )
            out[st.obj_id] = refine_point_mask(
                xyz, masks[i], anchor, self.config.mask_refine_config
            )
        timings["postprocess"] = (
            timings.get("postprocess", 0.0) + (self.model.clock.now() - t0) * 1e3
        )
        return out

    def _observe(
        self,
        bf: BufferedFrame,
        sensors: FrameSensors | None,
        jobs: Sequence[ObjectJob],
        outs: Sequence[ObjectFrameOutput],
        lost: set[int],
        timings: dict[str, float],
        refined: dict[int, np.ndarray] | None = None,
    ) -> None:
        """Updates the objects' motion with their outputs on ``bf`` (lost ones coast), from
        their refined point masks where there are (``refined``: object id -> (N,) bool)."""
        rep = self._reprompter
        if rep is None or sensors is None:
            return
        t0 = self.model.clock.now()
        for oid in lost:
            rep.miss(oid, bf.index, lost=True)
        if not jobs:
            return
        refined = refined or {}
        masks = None
        if any(j.state.obj_id not in refined for j in jobs):  # else every mask is refined
            pl = point_logits(bf.features, outs)
            masks = None if pl is None else (pl > self.config.mask_logit_threshold).cpu().numpy()
        thr = self.config.mask_logit_threshold
        for i, (job, o) in enumerate(zip(jobs, outs, strict=True)):
            presence = 0.0 if o.absent else float(torch.sigmoid(o.object_score.float()))
            mask = refined.get(job.state.obj_id)
            # Stride-4 camera masks (the decoder's own grid) for the cross-modal check; on a
            # user-prompted sweep grown by one cell: its coarse cells miss small objects' edge
            # points (a 5-point tree boxed by the user lost 3 of them, too few to start its
            # motion), and the refined segment there is held to the user's prompt.
            cams = {}
            if o.image_logits is not None and not o.absent:
                low = (o.image_logits > thr).cpu().numpy()
                if o.is_cond and mask is not None:
                    low = _grown(low)
                cams = {cam: low[row] for row, cam in enumerate(o.camera_ids)}
            if o.is_cond:
                cams = _with_user_masks(cams, job.state.inputs.get(bf.index))
            if mask is None and masks is not None:
                mask = masks[i]
            prompted = o.is_cond and job.state.obj_id in refined
            rep.observe(job.state.obj_id, sensors, mask, presence, cams, prompted=prompted)
        timings["reprompt"] = timings.get("reprompt", 0.0) + (self.model.clock.now() - t0) * 1e3

    def _with_lost(
        self,
        bf: BufferedFrame,
        jobs: Sequence[ObjectJob],
        outs: Sequence[ObjectFrameOutput],
        lost: set[int],
    ) -> tuple[list[ObjectState], list[ObjectFrameOutput]]:
        """The run objects and the lost ones (absent placeholders), in object order."""
        if not lost:
            return [j.state for j in jobs], list(outs)
        by_id = {j.state.obj_id: (j.state, o) for j, o in zip(jobs, outs, strict=True)}
        absent = absent_output(bf.features, self.model.device)
        for oid in lost:
            by_id[oid] = (self._objects[oid], absent)
        order = [o for o in self._objects if o in by_id]
        return [by_id[o][0] for o in order], [by_id[o][1] for o in order]

    def _forget_motion(self, oid: int) -> None:
        if self._reprompter is not None:
            self._reprompter.forget(oid)
        self._heights.forget(oid)

    def _ceiling(
        self, oid: int, segment: np.ndarray, xyz: np.ndarray, world_from_lidar: np.ndarray
    ) -> np.ndarray:
        """(M, 3) LiDAR-frame points the object does not reach above on this sweep
        (:class:`~sam4d_core.tracking.mask_refine.HeightMemory`); (0, 3) for none, so that the
        camera guide does not look for them again."""
        cfg = self.config.mask_refine_config
        if not cfg.remember_height:
            out = ceiling_points(segment, xyz, cfg)
        else:
            out = self._heights.ceiling(oid, segment, xyz, world_from_lidar, cfg)
        return np.zeros((0, 3)) if out is None else out

    @staticmethod
    def _camera_prompts(
        prompts: ObjectPrompts | None, names: dict[int, str]
    ) -> dict[str, CameraPrompt] | None:
        """Camera name -> the user's prompt in it on a prompted frame (None: none)."""
        if prompts is None or not prompts.cameras:
            return None
        return {names[slot]: cp for slot, cp in prompts.cameras.items() if slot in names}

    def _held_to_prompts(
        self,
        prompts: ObjectPrompts | None,
        image_masks: dict[str, np.ndarray],
        names: dict[int, str],
    ) -> dict[str, np.ndarray]:
        """The camera masks of an object on a frame the user prompted, each prompted camera's
        held to its box and clicks
        (:func:`~sam4d_core.tracking.mask_refine.prompt_constrained_mask`)."""
        if prompts is None:
            return image_masks
        out = dict(image_masks)
        margin = self.config.mask_refine_config.prompt_box_margin_px
        for slot, cp in prompts.cameras.items():
            name = names.get(slot)
            if name in out and (cp.box is not None or cp.points is not None):
                out[name] = prompt_constrained_mask(out[name], cp, margin)
        return out

    def _carried(
        self,
        prompts: ObjectPrompts | None,
        image_masks: dict[str, np.ndarray],
        geometry: Mapping[str, CameraGeometry],
        names: dict[int, str],
        segment: np.ndarray | None,
        xyz: np.ndarray | None,
    ) -> dict[str, np.ndarray]:
        """The camera masks of an object on a frame the user prompted in a camera: each other
        camera the refined ``segment`` (over the sweep's ``xyz``) cannot guide takes the
        prompted camera's mask carried across at the object's depth (:mod:`.overlap`)."""
        if prompts is None or not prompts.cameras:
            return image_masks
        cfg = self.config.mask_refine_config
        prompted = {names.get(slot) for slot in prompts.cameras}
        pts = np.zeros((0, 3))
        if segment is not None and xyz is not None and segment.any():
            pts = np.asarray(xyz, np.float64)[segment, :3]
        out = dict(image_masks)
        for src in prompted:
            if src not in out or src not in geometry or not out[src].any():
                continue
            depth = mask_depth(out[src], geometry[src], pts, cfg.carry_default_depth)
            for name in image_masks:
                if name in prompted or name not in geometry:
                    continue
                if points_in_image(pts, geometry[name]) >= cfg.image_min_points:
                    continue  # the segment guides it
                carried = carry_mask(out[src], geometry[src], geometry[name], depth)
                if carried.any():
                    out[name] = carried
        return out

    def _zoomed(
        self,
        bf: BufferedFrame,
        prompts: ObjectPrompts | None,
        image_masks: dict[str, np.ndarray],
        geometry: Mapping[str, CameraGeometry],
        images: Mapping[str, np.ndarray],
        names: dict[int, str],
        segment: np.ndarray | None,
        xyz: np.ndarray | None,
        ceiling: np.ndarray | None = None,
    ) -> dict[str, np.ndarray]:
        """The camera masks of an object on a frame the user prompted, each prompted camera's
        decoded again on a window around the prompt (:mod:`~sam4d_core.tracking.zoom`; prompted
        in the LiDAR only: each camera seeing its refined ``segment`` over the sweep's ``xyz``,
        around the segment's projected box), the window's mask refined like a camera's (at the
        window's zoom) and pasted into the camera's."""
        if prompts is None:
            return image_masks
        out = dict(image_masks)
        thr = self.config.mask_logit_threshold
        cams = dict(prompts.cameras)
        if not cams and prompts.lidar is not None and segment is not None and xyz is not None:
            # Prompted in the LiDAR only: each camera seeing the refined segment is zoomed on
            # the segment's projected box, decoded from that box and the 3D clicks.
            seg_xyz = xyz[segment]
            least = self.config.mask_refine_config.image_min_points
            for cg in geometry.values():
                box = project_box(seg_xyz, cg, least)
                if box is not None:
                    cams[cg.slot] = CameraPrompt(box=box)
        for slot, cp in cams.items():
            name = names.get(slot)
            cam, image = geometry.get(name or ""), images.get(name or "")
            if name not in out or cam is None or image is None:
                continue
            extent = prompt_extent(cp, out[name])
            window = None
            if extent is not None:
                window = zoom_window(extent, cam.size, self.config.zoom_config)
            if window is None:
                continue
            view = window.view(image, cam.size)
            view_cam = dataclasses.replace(
                cam, intrinsics=window.intrinsics(cam.intrinsics, cam.size)
            )
            logits = zoomed_camera_logits(
                self.model,
                bf.features,
                view,
                view_cam.intrinsics,
                cam.cam_from_lidar,
                prompt_in_window(cp, window, cam.size),
                prompts,
            )
            mask = (logits > thr).cpu().numpy()
            if segment is not None and xyz is not None:
                mask = guide_camera_masks(
                    {name: mask},
                    segment,
                    xyz,
                    {name: view_cam},
                    self.config.mask_refine_config,
                    {},
                    {name: view},
                    self._refine_boundary,
                    {name: prompt_in_window(cp, window, cam.size)}
                    if slot in prompts.cameras
                    else None,
                    ceiling,
                )[name]
            out[name] = window.paste(out[name], mask)
        return out

    def _results(
        self,
        bf: BufferedFrame,
        states: Sequence[ObjectState],
        outs: Sequence[ObjectFrameOutput],
        timings: dict[str, float],
        lost: set[int] | None = None,
        refined: dict[int, np.ndarray] | None = None,
    ) -> list[ObjectResult]:
        """Per-object records at the sensors' resolution (numpy, on the CPU); ``refined``:
        object id -> (N,) bool refined point mask replacing the thresholded logits (and guiding
        the object's camera masks, :func:`~sam4d_core.tracking.mask_refine.guide_camera_masks`)."""
        t0 = self.model.clock.now()
        if not states:
            return []
        logits = sensor_logits(bf.features, outs)
        thr = self.config.mask_logit_threshold
        names = {slot: name for name, slot in self._camera_slots.items()}
        cam_masks = {
            names[cam]: (lg > thr).cpu().numpy() for cam, lg in logits.camera_logits.items()
        }
        if logits.point_logits is not None:
            pl = logits.point_logits.float()
            point_masks = (pl > thr).cpu().numpy()
            point_scores = torch.sigmoid(pl).cpu().numpy().astype(np.float32)
        else:
            point_masks = np.zeros((len(states), 0), bool)
            point_scores = np.zeros((len(states), 0), np.float32)
        results = []
        # Geometric refinement: each camera's pixel -> point map, built once for all objects.
        pixels: dict[str, PixelPoints] = {}
        geometry = {names[c.slot]: c for c in bf.cameras if c.slot in names}
        images = self._newest_images if self._buffer and bf is self._buffer[-1] else None
        xyz = None
        for i, (st, o) in enumerate(zip(states, outs, strict=True)):
            image_masks = {name: m[i] for name, m in cam_masks.items()}
            seg = (refined or {}).get(st.obj_id)
            ceiling = None
            if seg is not None and len(seg) == point_masks.shape[1]:
                point_masks[i], point_scores[i] = _with_refined(
                    point_masks[i], point_scores[i], seg, self.config.mask_threshold
                )
                if xyz is None:
                    lid = bf.features.lidar
                    xyz = lid.points_xyz.detach().float().cpu().numpy()  # type: ignore[union-attr]
                ceiling = self._ceiling(st.obj_id, seg, xyz, bf.world_from_lidar)
                image_masks = guide_camera_masks(
                    image_masks,
                    seg,
                    xyz,
                    geometry,
                    self.config.mask_refine_config,
                    pixels,
                    images,
                    self._refine_boundary,
                    self._camera_prompts(st.inputs.get(bf.index), names) if o.is_cond else None,
                    ceiling,
                )
            if self.config.zoom and o.is_cond and images is not None:
                image_masks = self._zoomed(
                    bf,
                    st.inputs.get(bf.index),
                    image_masks,
                    geometry,
                    images,
                    names,
                    seg,
                    xyz,
                    ceiling,
                )
            if o.is_cond:
                # A camera the user drew the mask in shows that mask (SAM 2's mask as output, at
                # the camera's resolution: the model's grid loses a pole).
                image_masks.update(
                    {
                        names[slot]: m
                        for slot, m in _user_camera_masks(st.inputs.get(bf.index)).items()
                        if slot in names
                    }
                )
            if self.config.refine_masks and o.is_cond:
                image_masks = self._held_to_prompts(st.inputs.get(bf.index), image_masks, names)
            if (
                self.config.refine_masks
                and o.is_cond
                and self.config.mask_refine_config.carry_across
            ):
                image_masks = self._carried(
                    st.inputs.get(bf.index), image_masks, geometry, names, seg, xyz
                )
            # Lost: no support (not run), or a mask nowhere (no pixel in any camera and no
            # point) whatever the presence score says: an object without a mask is not tracked.
            is_lost = (lost is not None and st.obj_id in lost) or not (
                point_masks[i].any() or any(m.any() for m in image_masks.values())
            )
            image_presence, image_ious = {}, {}
            if o.image_scores is not None and o.image_ious is not None:
                probs = torch.sigmoid(o.image_scores.float()).tolist()
                ious = o.image_ious.float().clamp(0, 1).tolist()
                for row, cam in enumerate(o.camera_ids):
                    image_presence[names[cam]] = 0.0 if is_lost else float(probs[row])
                    image_ious[names[cam]] = float(ious[row])
            lidar_presence = None
            if o.lidar_score is not None:
                lidar_presence = 0.0 if is_lost else float(torch.sigmoid(o.lidar_score.float()))
            results.append(
                ObjectResult(
                    object_id=st.obj_id,
                    # A lost object is absent: presence 0 (the decoder's score of an empty mask
                    # is no evidence of the object).
                    presence_score=0.0 if is_lost else float(torch.sigmoid(o.object_score.float())),
                    predicted_iou=o.predicted_iou(),
                    image_masks=image_masks,
                    point_mask=point_masks[i],
                    point_scores=point_scores[i],
                    image_presence=image_presence,
                    image_ious=image_ious,
                    lidar_presence=lidar_presence,
                    lidar_iou=None
                    if o.lidar_iou is None
                    else float(o.lidar_iou.float().clamp(0, 1)),
                    prompted=o.is_cond,
                    lost=is_lost,
                )
            )
        timings["postprocess"] = (
            timings.get("postprocess", 0.0) + (self.model.clock.now() - t0) * 1e3
        )
        return results


# ---------------------------------------------------------------------------------------------
# A user's masks.


def _lidar_mask_alone(prompts: ObjectPrompts | None) -> bool:
    """A user drew the LiDAR mask, with no click or box of theirs in the LiDAR (which the
    decoder would answer instead)."""
    lp = None if prompts is None else prompts.lidar
    return lp is not None and lp.mask is not None and lp.points is None and lp.box is None


def _user_point_mask(prompts: ObjectPrompts | None, num_points: int) -> np.ndarray | None:
    """(N,) bool: the LiDAR mask a user drew on a frame (:func:`_lidar_mask_alone`); else
    None."""
    if not _lidar_mask_alone(prompts):
        return None
    m = np.asarray(prompts.lidar.mask).reshape(-1)  # type: ignore[union-attr]
    if len(m) != num_points:
        return None
    return m.copy() if m.dtype == bool else m > 0.5


def _user_camera_masks(prompts: ObjectPrompts | None) -> dict[int, np.ndarray]:
    """Camera slot -> the (H, W) bool mask a user drew there on a frame."""
    if prompts is None:
        return {}
    return {
        slot: np.asarray(cp.mask) > 0.5
        for slot, cp in prompts.cameras.items()
        if cp.mask is not None
    }


def _with_user_masks(
    cams: dict[int, np.ndarray], prompts: ObjectPrompts | None
) -> dict[int, np.ndarray]:
    """The camera masks (slot -> (h, w) bool) a user-prompted frame's segment is checked
    against before it starts the object's motion: none when the user drew the LiDAR mask (it
    is the segment; the cameras, without memory, hold nothing yet), and in each camera the user
    drew a mask in, that mask, grown by 2 px (the LiDAR sees an object's edge from beside the
    camera)."""
    if _lidar_mask_alone(prompts):
        return {}
    kernel = np.ones((5, 5), np.uint8)
    grown = {
        slot: cv2.dilate(m.astype(np.uint8), kernel) > 0
        for slot, m in _user_camera_masks(prompts).items()
    }
    return {**cams, **grown}


# ---------------------------------------------------------------------------------------------
# Validation helpers.


def _with_refined(
    mask: np.ndarray, scores: np.ndarray, refined: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """An object's (N,) point mask and probabilities after its refinement: probabilities of
    points the refinement added are raised to just above ``threshold``, of those it removed
    lowered to just below, so that the mask is still the probabilities above the threshold."""
    scores = scores.copy()
    thr = np.float32(threshold)
    added, removed = refined & ~mask, mask & ~refined
    scores[added] = np.maximum(scores[added], np.nextafter(thr, np.float32(1)))
    scores[removed] = np.minimum(scores[removed], thr)
    return refined.copy(), scores


def _check_frame(frame: Frame) -> int:
    """Number of points of a frame that has something to track (ValueError otherwise)."""
    pts = frame.points
    n = 0 if pts is None else int(len(pts))
    if n and (pts.ndim != 2 or pts.shape[1] < 3):
        raise ValueError(f"frame points must be (N, C>=3), got {pts.shape}")
    for name, cam in frame.cameras.items():
        img = cam.image
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] == 0 or img.shape[1] == 0:
            raise ValueError(f"camera {name!r}: image must be (H, W, 3), got {img.shape}")
    if n == 0 and not frame.cameras:
        raise ValueError("a frame needs at least one camera image or a non-empty sweep")
    return n


def _check_object_id(oid: int) -> int:
    if not 1 <= int(oid) <= MAX_OBJECT_ID:
        raise PromptError(f"object id {oid} is outside [1, {MAX_OBJECT_ID}]")
    return int(oid)


def _points(
    points: np.ndarray | None, labels: np.ndarray | None, dim: int, where: str
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if points is None or np.size(points) == 0:
        return None, None
    pts = np.asarray(points, np.float64).reshape(-1, dim)
    lab = np.asarray(labels if labels is not None else [], np.int64).reshape(-1)
    if lab.shape[0] != pts.shape[0]:
        raise PromptError(f"{where}: {pts.shape[0]} points but {lab.shape[0]} labels")
    if not np.isfinite(pts).all():
        raise PromptError(f"{where}: points must be finite")
    bad = lab[(lab != 0) & (lab != 1)]
    if bad.size:
        raise PromptError(f"{where}: labels must be 0 (background) or 1 (foreground), got {bad[0]}")
    return pts, lab


def _box(box: np.ndarray | None, sizes: tuple[int, ...], where: str) -> np.ndarray | None:
    if box is None:
        return None
    b = np.asarray(box, np.float64).reshape(-1)
    if b.size not in sizes or not np.isfinite(b).all():
        raise PromptError(f"{where}: a box is {' or '.join(map(str, sizes))} finite values")
    half = b.size // 2
    if (b[half:] < b[:half]).any():
        raise PromptError(f"{where}: box maxima must not be below its minima: {b.tolist()}")
    return b


__all__ = [
    "BufferedFrame",
    "PromptError",
    "PromptOutOfBufferError",
    "StreamingTracker",
    "TrackerConfig",
]
