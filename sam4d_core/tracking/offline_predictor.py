"""The offline predictor: the official SAM4D video-predictor API on a whole recorded sequence.

For people porting the official notebooks: the method names, arguments and return formats of the
released ``SAM4DPredictor`` (read from the release): ``init_state(img_paths, pts_paths, metas)``,
``add_new_points_or_box(state, frame_idx, obj_id, point_prompts={'img'|'pts': {'point_coords',
'point_labels'}}, box_prompts=...)``, ``add_new_mask(state, frame_idx, obj_id, {'img': (H, W),
'pts': (N, 1)})``, ``propagate_in_video(state, start_frame_idx, max_frame_num_to_track, reverse)``
yielding ``(frame_idx, obj_ids, masks)``, ``clear_all_prompts_in_frame``, ``remove_object``,
``reset_state``. ``masks`` is a dict of logits: ``'img'`` (B, 1, H, W) at the camera's resolution,
``'pts'`` (B, 1, N, 1) per point, B = every object in ``obj_ids`` order (NO_OBJ_SCORE for an object
without a prediction on that frame).

Built on the same per-object logic as the streaming tracker (:mod:`sam4d_core.tracking.engine`), so
that prompting frame k here and propagating gives the tracker's results after a prompt on its
buffered frame k. Where that logic differs from the release it says so; in short:

- every prompted frame is a conditioning frame (SAM2.1's ``add_all_frames_to_correct_as_cond``);
  the release leaves corrections on tracked frames non-conditioning, where a later propagation
  overwrites them;
- a correction on a frame does not attend to that frame's own earlier memory;
- objects are batched through memory attention and the decoder (the release runs them one by
  one); memories are kept in float32 (the release stores them as bfloat16);
- ``fill_hole_area`` is not implemented; ``non_overlap_masks`` is (on the returned masks only,
  as released).

Beyond the release: any number of cameras (the camera of the flat official meta is named ``img``;
with several cameras, prompts and masks of camera ``name`` use the key ``'img/<name>'``, and
``'img'`` means the first camera), frames without LiDAR or without a camera, a
:class:`~sam4d_core.data.sequence.Sequence` as input
(:meth:`SAM4DPredictor.init_state_from_sequence`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sam4d_core.data.sequence import CameraFrame, Frame
from sam4d_core.data.sequence import Sequence as SensorSequence
from sam4d_core.data.waymo4dseg import _load_image, _load_points
from sam4d_core.modeling.memory_bank import MemoryBankConfig
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.modeling.records import FrameFeatures
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.tracking.engine import (
    NO_OBJ_SCORE,
    ObjectFrameOutput,
    ObjectJob,
    ObjectState,
    absent_output,
    encode_sensor_frame,
    merge_prompts,
    prepare_prompt_job,
    run_frame,
    sensor_logits,
    snap_to_model_grid,
)

# The camera of the official flat meta ({'pose', 'camera_intrinsics', 'camera2lidar'}).
DEFAULT_CAMERA = "img"
Masks = dict[str, torch.Tensor]


@dataclass(eq=False)
class InferenceState:
    """A sequence and everything the predictor keeps about it.

    The release keeps a dict; the few keys notebooks read are available by indexing
    (``state["num_frames"]``, ``["obj_ids"]``, ``["video_height"]``, ``["video_width"]``).

    Attributes:
        frames: the sequence, loaded up front (as released).
        camera_slots: camera name -> slot (order of first appearance).
        primary_camera: the camera of the ``'img'`` key (None: no camera).
        objects: object id -> state, in order of creation (the release's object index order).
        tracked_reverse: object id -> frame -> direction it was last tracked in.
        feature_cache: the most recently encoded frames' features (LRU).
        storage_device: where kept predictions live (None: the model's device).
        bank_config: memory selection; nothing is evicted (a whole sequence).
    """

    frames: list[Frame]
    camera_slots: dict[str, int]
    primary_camera: str | None
    bank_config: MemoryBankConfig
    storage_device: torch.device | None = None
    objects: dict[int, ObjectState] = field(default_factory=dict)
    tracked_reverse: dict[int, dict[int, bool]] = field(default_factory=dict)
    feature_cache: collections.OrderedDict[int, FrameFeatures] = field(
        default_factory=collections.OrderedDict
    )

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def obj_ids(self) -> list[int]:
        return list(self.objects)

    @property
    def camera_names(self) -> list[str]:
        return sorted(self.camera_slots, key=self.camera_slots.__getitem__)

    def __getitem__(self, key: str) -> Any:
        if key == "num_frames":
            return self.num_frames
        if key == "obj_ids":
            return self.obj_ids
        if key in ("video_height", "video_width"):
            out: dict[int, dict[str, int]] = {}
            for i, f in enumerate(self.frames):
                d: dict[str, int] = {}
                cam = f.cameras.get(self.primary_camera) if self.primary_camera else None
                if cam is not None:
                    d["img"] = int(cam.image.shape[0 if key == "video_height" else 1])
                if len(f.points):
                    d["pts"] = int(len(f.points)) if key == "video_height" else 1
                out[i] = d
            return out
        raise KeyError(f"{key!r} (InferenceState is a dataclass; see its attributes)")

    def __contains__(self, key: str) -> bool:
        if key == "images":
            return any(f.cameras for f in self.frames)
        if key == "points":
            return any(len(f.points) for f in self.frames)
        return key in ("num_frames", "obj_ids", "video_height", "video_width")


class SAM4DPredictor:
    """The official offline predictor API (module docstring) around a SAM4D model.

    Args:
        model: the model (put in eval mode).
        non_overlap_masks: in the returned masks, each pixel / point keeps only its
            highest-scoring object (others clamped to -10), as released.
        snap_clicks_to_model_grid: floor clicks and box corners to the model-input pixel grid,
            as released.
        max_cached_frames: frames whose features are kept (the release keeps one).
    """

    def __init__(
        self,
        model: SAM4D,
        non_overlap_masks: bool = False,
        snap_clicks_to_model_grid: bool = True,
        max_cached_frames: int = 2,
    ) -> None:
        self.model = model.eval()
        self.non_overlap_masks = non_overlap_masks
        self.snap_clicks_to_model_grid = snap_clicks_to_model_grid
        self.max_cached_frames = max(1, int(max_cached_frames))

    @property
    def device(self) -> torch.device:
        return self.model.device

    # ================================================================== state
    @torch.inference_mode()
    def init_state(
        self,
        img_paths: Sequence[str | Path | Sequence[str | Path] | Mapping[str, str | Path] | None]
        | None = None,
        pts_paths: Sequence[str | Path | None] | None = None,
        metas: Sequence[Mapping[str, Any]] | None = None,
        offload_video_to_cpu: bool = True,
        offload_state_to_cpu: bool = False,
        data_root: str | Path | None = None,
        timestamps: Sequence[float] | None = None,
    ) -> InferenceState:
        """Loads a whole sequence from files (as released: everything up front).

        Args:
            img_paths: per frame the image file of the one camera, a list of files in the order
                of the meta's ``cams_info``, or a dict camera -> file; None: the ``cams_info``
                ``data_path`` under ``data_root`` (or no camera when the meta has none).
            pts_paths: per frame a point file: ``.npz`` with key ``data`` (Waymo-4DSeg), ``.npy``
                (N, C), or ``.bin`` float32 (N, 4) (KITTI); xyz first. None: no LiDAR.
            metas: per frame either the official notebook's flat meta ``{'pose' (or
                'lidar2world'), 'camera_intrinsics' 3x3 / 4x4, 'camera2lidar' 4x4}`` or a
                Waymo-4DSeg ``meta_infos`` frame ``{'cams_info': {cam: {'camera_intrinsics',
                'camera2lidar', 'data_path'}}, 'lidar2world', 'path': {'pcd'}}``.
            offload_video_to_cpu: accepted for compatibility (frames always stay on the CPU).
            offload_state_to_cpu: keep predictions on the CPU (memories stay on the device).
            data_root: root of relative paths (``data_path`` and ``path.pcd`` of the metas).
            timestamps: per frame time (s); default from the meta (``timestamp`` in us) or 0.1 s
                steps.
        """
        del offload_video_to_cpu
        n = _num_frames(img_paths, pts_paths, metas)
        root = Path(data_root) if data_root is not None else None
        frames = []
        for i in range(n):
            meta = metas[i] if metas is not None else {}
            cams = _meta_cameras(meta, i)
            images = _image_files(
                img_paths[i] if img_paths is not None else None, meta, cams, root, i
            )
            cameras = {}
            for name, path in images.items():
                k, cam_to_lidar = cams[name]
                cameras[name] = CameraFrame(
                    name=name,
                    image=_load_image(Path(path)),
                    intrinsics=k,
                    cam_from_lidar=np.linalg.inv(cam_to_lidar),
                )
            pts_file = pts_paths[i] if pts_paths is not None else None
            if pts_file is None and pts_paths is None and root is not None:
                pcd = meta.get("path", {}).get("pcd") if isinstance(meta, Mapping) else None
                pts_file = root / pcd if pcd else None
            points = (
                _read_points(Path(pts_file))
                if pts_file is not None
                else np.zeros((0, 4), np.float32)
            )
            pose = meta.get("lidar2world", meta.get("pose")) if isinstance(meta, Mapping) else None
            stamp = (
                float(timestamps[i])
                if timestamps is not None
                else float(meta["timestamp"]) * 1e-6
                if isinstance(meta, Mapping) and meta.get("timestamp") is not None
                else 0.1 * i
            )
            frames.append(
                Frame(
                    timestamp=stamp,
                    points=points,
                    cameras=cameras,
                    world_from_lidar=np.eye(4) if pose is None else np.asarray(pose, np.float64),
                    index=i,
                )
            )
        return self._new_state(frames, offload_state_to_cpu)

    @torch.inference_mode()
    def init_state_from_sequence(
        self,
        seq: SensorSequence | Sequence[Frame],
        offload_state_to_cpu: bool = False,
        primary_camera: str | None = None,
    ) -> InferenceState:
        """The state of an in-memory sequence (e.g. from a data set reader or the synthetic
        generator). ``primary_camera``: the camera of the ``'img'`` key (default: the first)."""
        frames = list(seq.frames if isinstance(seq, SensorSequence) else seq)
        return self._new_state(frames, offload_state_to_cpu, primary_camera)

    def _new_state(
        self, frames: list[Frame], offload: bool, primary: str | None = None
    ) -> InferenceState:
        if not frames:
            raise ValueError("the sequence has no frame")
        slots: dict[str, int] = {}
        for f in frames:
            for name in f.cameras:
                slots.setdefault(name, len(slots))
        if primary is not None and primary not in slots:
            raise ValueError(f"primary camera {primary!r} is not in the sequence ({list(slots)})")
        # Offline every frame may be revisited: nothing is evicted from the banks.
        bank = dataclasses.replace(self.model.config.memory, extra_history=len(frames))
        state = InferenceState(
            frames=frames,
            camera_slots=slots,
            primary_camera=primary or (next(iter(slots)) if slots else None),
            bank_config=bank,
            storage_device=torch.device("cpu") if offload else None,
        )
        # Warm up as released (the first frame's features).
        self._features(state, 0)
        return state

    @torch.inference_mode()
    def reset_state(self, inference_state: InferenceState) -> None:
        """Removes every object with its prompts and predictions."""
        inference_state.objects.clear()
        inference_state.tracked_reverse.clear()

    # ================================================================== prompts
    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        obj_id: int,
        point_prompts: Mapping[str, Mapping[str, Any]] | None = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box_prompts: Mapping[str, Any] | None = None,
    ) -> tuple[int, list[int], Masks]:
        """Clicks and / or a box for one object on one frame; returns that frame's masks.

        Args:
            inference_state: from :meth:`init_state`.
            frame_idx: the frame.
            obj_id: the object (a new id adds an object, at any time).
            point_prompts: ``{'img' | 'img/<camera>' | 'pts': {'point_coords': (1, P, 2|3),
                'point_labels': (1, P)}}`` (labels 1 foreground, 0 background; 2 / 3 mark box
                corners as in SAM2). Image coordinates in pixels of the original image
                (``normalize_coords=True``) or relative to its size (False); LiDAR in metres.
            clear_old_points: replace the object's earlier prompts on this frame (else add).
            normalize_coords: image coordinates are pixels (True) or already in [0, 1].
            box_prompts: ``{'img': {'point_coords': (1, 2, 2), 'point_labels': [[2, 3]]}}`` (the
                release's form) or ``{'img': [x0, y0, x1, y1]}``; ``'pts'``: corners (1, 2, 3)
                or a (6,) 3D / (4,) bird's-eye box.

        Returns:
            (frame_idx, obj_ids, masks) (module docstring).
        """
        if point_prompts is None and box_prompts is None:
            raise ValueError("at least one of points or box must be provided as input")
        if box_prompts is not None and not clear_old_points:
            raise ValueError(
                "cannot add box without clearing old points, since box prompt must be provided "
                "before any point prompt (please use clear_old_points=True instead)"
            )
        state = inference_state
        frame = self._frame(state, frame_idx)
        prompts = self._release_prompts(state, frame, point_prompts, box_prompts, normalize_coords)
        return self._apply(state, frame_idx, obj_id, prompts, keep_old=not clear_old_points)

    def add_new_points(self, *args: Any, **kwargs: Any) -> tuple[int, list[int], Masks]:
        """Deprecated alias of :meth:`add_new_points_or_box` (as released)."""
        return self.add_new_points_or_box(*args, **kwargs)

    @torch.inference_mode()
    def add_new_mask(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        obj_id: int,
        mask: Mapping[str, Any],
    ) -> tuple[int, list[int], Masks]:
        """A mask for one object on one frame (it replaces the frame's clicks; without clicks it
        is taken as the output); returns that frame's masks.

        Args:
            mask: ``{'img' | 'img/<camera>': (H, W) bool / 0-1, 'pts': (N, 1) or (N,)}``.
        """
        if not isinstance(mask, Mapping):
            raise TypeError(f"mask must be a dict keyed 'img' / 'pts', got {type(mask).__name__}")
        state = inference_state
        frame = self._frame(state, frame_idx)
        prompts = ObjectPrompts()
        for key, m in mask.items():
            arr = _np(m)
            if key == "pts":
                arr = arr.reshape(-1)
                if arr.shape[0] != len(frame.points):
                    raise ValueError(
                        f"'pts' mask of {arr.shape[0]} values, frame {frame_idx} has "
                        f"{len(frame.points)} points"
                    )
                prompts.lidar = LidarPrompt(mask=arr.astype(np.float32))
                continue
            name = self._camera_of(state, key, frame, frame_idx)
            if arr.ndim != 2:
                raise ValueError(f"{key!r} mask must be (H, W), got {arr.shape}")
            prompts.cameras[state.camera_slots[name]] = CameraPrompt(mask=arr.astype(np.float32))
        if prompts.is_empty:
            raise ValueError("the mask dict is empty")
        return self._apply(state, frame_idx, obj_id, prompts, keep_old=False)

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self,
        inference_state: InferenceState,
        frame_idx: int,
        obj_id: int,
        need_output: bool = True,
    ) -> tuple[int, list[int], Masks] | None:
        """Removes an object's prompts on a frame; its prediction there becomes an ordinary
        (non-conditioning) one until the next propagation re-tracks it."""
        state = inference_state
        st = self._object(state, obj_id)
        st.inputs.pop(frame_idx, None)
        out = st.outputs.get(frame_idx)
        if out is not None and out.is_cond:
            mem = out.memory
            st.outputs[frame_idx] = dataclasses.replace(out, is_cond=False, memory=None)
            st.bank.remove(frame_idx)
            if mem is not None:
                st.bank.add(frame_idx, mem, is_cond=False)
            state.tracked_reverse.get(obj_id, {}).pop(frame_idx, None)
        if not need_output:
            return None
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx)

    @torch.inference_mode()
    def remove_object(
        self,
        inference_state: InferenceState,
        obj_id: int,
        strict: bool = False,
        need_output: bool = True,
    ) -> tuple[list[int], list[tuple[int, Masks]]]:
        """Removes an object; returns the remaining ids and, for each frame where it had prompts,
        that frame's masks of the remaining objects (as released)."""
        state = inference_state
        if obj_id not in state.objects:
            if strict:
                raise RuntimeError(
                    f"Cannot remove object id {obj_id} as it doesn't exist. All existing object "
                    f"ids: {state.obj_ids}."
                )
            return state.obj_ids, []
        frames = sorted(state.objects[obj_id].inputs)
        del state.objects[obj_id]
        state.tracked_reverse.pop(obj_id, None)
        updated = []
        if need_output and state.objects:
            updated = [(f, self._frame_masks(state, f)) for f in frames]
        return state.obj_ids, updated

    # ================================================================== propagation
    def propagate_in_video_preflight(self, inference_state: InferenceState) -> None:
        """Checks that every object has prompts (as released)."""
        state = inference_state
        if not state.objects:
            raise RuntimeError(
                "No input points or masks are provided for any object; please add inputs first."
            )
        for oid, st in state.objects.items():
            if not st.inputs:
                raise RuntimeError(
                    f"No input points or masks are provided for object id {oid}; please add "
                    "inputs first."
                )

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: InferenceState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
    ) -> Iterator[tuple[int, list[int], Masks]]:
        """Tracks every object through the sequence; yields ``(frame_idx, obj_ids, masks)`` per
        frame.

        Frames run from ``start_frame_idx`` (default: the earliest prompted frame) for
        ``max_frame_num_to_track`` more frames (default: all), backwards with ``reverse``.
        Prompted frames keep their outputs; all other objects of a frame run in one batch.
        """
        state = inference_state
        self.propagate_in_video_preflight(state)
        n = state.num_frames
        if start_frame_idx is None:
            start_frame_idx = min(min(st.inputs) for st in state.objects.values())
        if max_frame_num_to_track is None:
            max_frame_num_to_track = n
        if reverse:
            end = max(start_frame_idx - max_frame_num_to_track, 0)
            order = range(start_frame_idx, end - 1, -1) if start_frame_idx > 0 else range(0)
        else:
            end = min(start_frame_idx + max_frame_num_to_track, n - 1)
            order = range(start_frame_idx, end + 1)
        for f in order:
            with torch.inference_mode():
                features = self._features(state, f)
                jobs = []
                for oid, st in state.objects.items():
                    kept = st.outputs.get(f)
                    if not (f in st.inputs and kept is not None):
                        jobs.append(ObjectJob(st))
                    state.tracked_reverse.setdefault(oid, {})[f] = reverse
                if jobs:
                    run_frame(
                        self.model,
                        features,
                        f,
                        jobs,
                        reverse=reverse,
                        num_frames=n,
                        keep_point_logits=True,
                        storage=state.storage_device,
                    )
                masks = self._frame_masks(state, f, features)
            yield f, state.obj_ids, masks

    # ================================================================== internals
    def _frame(self, state: InferenceState, frame_idx: int) -> Frame:
        if not 0 <= frame_idx < state.num_frames:
            raise IndexError(f"frame_idx {frame_idx} outside [0, {state.num_frames})")
        return state.frames[frame_idx]

    def _object(self, state: InferenceState, obj_id: int) -> ObjectState:
        st = state.objects.get(obj_id)
        if st is None:
            raise KeyError(f"unknown object id {obj_id} (objects: {state.obj_ids})")
        return st

    def _features(self, state: InferenceState, frame_idx: int) -> FrameFeatures:
        cache = state.feature_cache
        hit = cache.get(frame_idx)
        if hit is not None:
            cache.move_to_end(frame_idx)
            return hit
        feats = encode_sensor_frame(self.model, self._frame(state, frame_idx), state.camera_slots)
        cache[frame_idx] = feats
        while len(cache) > self.max_cached_frames:
            cache.popitem(last=False)
        return feats

    def _apply(
        self,
        state: InferenceState,
        frame_idx: int,
        obj_id: int,
        prompts: ObjectPrompts,
        keep_old: bool,
    ) -> tuple[int, list[int], Masks]:
        st = state.objects.get(obj_id)
        if st is None:
            st = state.objects[obj_id] = ObjectState.new(obj_id, state.bank_config)
        features = self._features(state, frame_idx)
        cams = features.image.camera_ids if features.image is not None else ()
        reverse = state.tracked_reverse.get(obj_id, {}).get(frame_idx, False)
        job = prepare_prompt_job(
            st, frame_idx, prompts, cams, keep_old, reverse=reverse, num_frames=state.num_frames
        )
        run_frame(
            self.model,
            features,
            frame_idx,
            [job],
            reverse=reverse,
            num_frames=state.num_frames,
            keep_point_logits=True,
            storage=state.storage_device,
        )
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, features)

    def _frame_masks(
        self, state: InferenceState, frame_idx: int, features: FrameFeatures | None = None
    ) -> Masks:
        """Every object's logits on a frame at the sensors' resolution (module docstring)."""
        if features is None:
            features = self._features(state, frame_idx)
        outs: list[ObjectFrameOutput] = []
        for st in state.objects.values():
            o = st.outputs.get(frame_idx)
            outs.append(o if o is not None else absent_output(features, self.device))
        masks: Masks = {}
        if not outs:
            return masks
        logits = sensor_logits(features, outs)
        names = {slot: name for name, slot in state.camera_slots.items()}
        for slot, lg in logits.camera_logits.items():
            x = lg[:, None]
            if names[slot] == state.primary_camera:
                masks["img"] = x
            if len(state.camera_slots) > 1:
                masks[f"img/{names[slot]}"] = x
        if logits.point_logits is not None:
            masks["pts"] = logits.point_logits[:, None, :, None]
        if self.non_overlap_masks:
            masks = {k: _non_overlapping(v) for k, v in masks.items()}
        return masks

    def _camera_of(self, state: InferenceState, key: str, frame: Frame, frame_idx: int) -> str:
        if key == "img":
            name = state.primary_camera
        elif key.startswith("img/"):
            name = key[4:]
        else:
            raise ValueError(f"prompt keys are 'img', 'img/<camera>' or 'pts', got {key!r}")
        if name is None or name not in frame.cameras:
            raise ValueError(
                f"camera {name!r} ({key!r}) is not in frame {frame_idx} "
                f"(cameras: {list(frame.cameras)})"
            )
        return name

    def _release_prompts(
        self,
        state: InferenceState,
        frame: Frame,
        point_prompts: Mapping[str, Mapping[str, Any]] | None,
        box_prompts: Mapping[str, Any] | None,
        normalize_coords: bool,
    ) -> ObjectPrompts:
        """The release's prompt dicts -> model prompts (camera pixels, LiDAR metres)."""
        out = ObjectPrompts()
        point_prompts = point_prompts or {}
        keys = list(point_prompts) + [k for k in (box_prompts or {}) if k not in point_prompts]
        for key in keys:
            coords, labels = _coords_labels(point_prompts.get(key), key)
            box = None
            if box_prompts is not None and key in box_prompts:
                box = _box_of(box_prompts[key], key)
            # Labels 2 / 3 among the points are a box's corners (SAM2's convention).
            corner = (labels == 2) | (labels == 3)
            if corner.any():
                if box is not None or corner.sum() != 2:
                    raise ValueError(f"{key!r}: one box (labels 2 and 3) per view")
                box = coords[corner][np.argsort(labels[corner])].reshape(-1)
                coords, labels = coords[~corner], labels[~corner]
            if ((labels != 0) & (labels != 1)).any():
                raise ValueError(f"{key!r}: point labels must be 0, 1 (or 2 / 3 for a box)")
            if key == "pts":
                if not len(frame.points):
                    raise ValueError(f"frame {frame.index} has no LiDAR points")
                pts = coords.reshape(-1, 3) if len(coords) else None
                if box is not None and box.size not in (4, 6):
                    raise ValueError("a 'pts' box is (4,) bird's-eye or 2 corners / (6,) 3D")
                lp = LidarPrompt(pts, labels if pts is not None else None, box)
                out = merge_prompts(out, ObjectPrompts(lidar=lp))
                continue
            name = self._camera_of(state, key, frame, frame.index)
            h, w = frame.cameras[name].image.shape[:2]
            pts = coords.reshape(-1, 2) if len(coords) else None
            if box is not None and box.size != 4:
                raise ValueError(f"{key!r}: an image box is [x0, y0, x1, y1]")
            if not normalize_coords:
                if pts is not None:
                    pts = pts * np.array([w, h])
                if box is not None:
                    box = box * np.array([w, h, w, h])
            if self.snap_clicks_to_model_grid:
                size = self.model.image_size
                if pts is not None:
                    pts = snap_to_model_grid(pts, (h, w), size)
                if box is not None:
                    box = snap_to_model_grid(box.reshape(2, 2), (h, w), size).reshape(4)
            cp = CameraPrompt(pts, labels if pts is not None else None, box)
            out = merge_prompts(out, ObjectPrompts(cameras={state.camera_slots[name]: cp}))
        if out.is_empty:
            raise ValueError("the prompts have no points or box")
        return out


# ---------------------------------------------------------------------------------------------
# Helpers.


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _coords_labels(d: Mapping[str, Any] | None, key: str) -> tuple[np.ndarray, np.ndarray]:
    dim = 3 if key == "pts" else 2
    if d is None:
        return np.zeros((0, dim)), np.zeros((0,), np.int64)
    if "point_coords" not in d or "point_labels" not in d:
        raise ValueError(f"{key!r} prompts need 'point_coords' and 'point_labels'")
    coords = _np(d["point_coords"]).astype(np.float64).reshape(-1, dim)
    labels = _np(d["point_labels"]).astype(np.int64).reshape(-1)
    if len(coords) != len(labels):
        raise ValueError(f"{key!r}: {len(coords)} points but {len(labels)} labels")
    return coords, labels


def _box_of(b: Any, key: str) -> np.ndarray:
    if isinstance(b, Mapping):
        coords, labels = _coords_labels(b, key)
        if sorted(labels.tolist()) != [2, 3]:
            raise ValueError(f"{key!r} box prompt: two corners with labels 2 and 3")
        return coords[np.argsort(labels)].reshape(-1)
    return _np(b).astype(np.float64).reshape(-1)


def _non_overlapping(x: torch.Tensor) -> torch.Tensor:
    """SAM2's non-overlap constraint: at each location only the best object keeps its logit."""
    if x.shape[0] <= 1:
        return x
    best = x.argmax(dim=0, keepdim=True)
    keep = best == torch.arange(x.shape[0], device=x.device)[:, None, None, None]
    return torch.where(keep, x, x.clamp(max=-10.0))


def _num_frames(*lists: Sequence[Any] | None) -> int:
    lengths = {len(x) for x in lists if x is not None}
    if not lengths:
        raise ValueError("init_state needs img_paths, pts_paths or metas")
    if len(lengths) != 1:
        raise ValueError(f"img_paths, pts_paths and metas differ in length: {sorted(lengths)}")
    return lengths.pop()


def _meta_cameras(meta: Mapping[str, Any], i: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """camera -> (K 3x3, camera2lidar 4x4) of a frame's meta (either form)."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"metas[{i}] must be a dict")
    out = {}
    if "cams_info" in meta:
        for name, ci in meta["cams_info"].items():
            out[str(name)] = (
                np.asarray(ci["camera_intrinsics"], np.float64)[:3, :3],
                np.asarray(ci["camera2lidar"], np.float64).reshape(4, 4),
            )
    elif "camera_intrinsics" in meta:
        out[DEFAULT_CAMERA] = (
            np.asarray(meta["camera_intrinsics"], np.float64)[:3, :3],
            np.asarray(meta["camera2lidar"], np.float64).reshape(4, 4),
        )
    return out


def _image_files(
    entry: Any, meta: Mapping[str, Any], cams: Mapping[str, Any], root: Path | None, i: int
) -> dict[str, str | Path]:
    names = list(cams)
    if entry is None:
        # No explicit files: the Waymo-4DSeg meta's data_path under the data root.
        if root is None or "cams_info" not in meta:
            return {}
        return {str(n): root / ci["data_path"] for n, ci in meta["cams_info"].items()}
    if isinstance(entry, str | Path):
        if len(names) != 1:
            raise ValueError(
                f"frame {i}: one image file for {len(names)} cameras ({names}); give a list or a "
                "dict camera -> file"
            )
        return {names[0]: entry}
    if isinstance(entry, Mapping):
        unknown = [k for k in entry if k not in cams]
        if unknown:
            raise ValueError(f"frame {i}: images of cameras {unknown} without calibration")
        return {str(k): v for k, v in entry.items() if v is not None}
    files = list(entry)
    if len(files) != len(names):
        raise ValueError(f"frame {i}: {len(files)} image files for cameras {names}")
    return {n: f for n, f in zip(names, files, strict=True) if f is not None}


def _read_points(path: Path) -> np.ndarray:
    if path.suffix == ".npz":
        return _load_points(path)
    if path.suffix == ".npy":
        data = np.load(path, allow_pickle=False)
    elif path.suffix == ".bin":
        data = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    else:
        raise ValueError(f"unknown point file type {path.suffix!r} (.npz, .npy, .bin)")
    if data.ndim != 2 or data.shape[1] < 3:
        raise ValueError(f"{path}: points must be (N, C>=3), got {data.shape}")
    return np.ascontiguousarray(data, dtype=np.float32)


__all__ = [
    "DEFAULT_CAMERA",
    "NO_OBJ_SCORE",
    "InferenceState",
    "SAM4DPredictor",
]
