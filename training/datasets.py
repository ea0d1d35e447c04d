"""Training clips: sources of sequences, label filters, object choice, augmentation, targets.

A *clip* is T consecutive frames (a temporal stride may skip frames) of one sequence with up to
``max_objects`` target objects that appear on its first frame (in a camera or in the LiDAR) and
pass the label filters. Sources (:class:`SequenceSource`):

- :class:`SyntheticSource`: synthetic sequences rendered on the fly (slow: for tests and small
  runs; pre-generate with :mod:`.generate_data` for real runs);
- :class:`Waymo4DSegSource`: a Waymo-4DSeg root, frames loaded lazily (also what the
  pre-generated synthetic set is);
- :class:`BagSource`: rosbag2 recordings with ground truth (read whole, cached);
- :class:`InMemorySource`: :class:`~sam4d_core.data.sequence.Sequence` objects (tests).

Determinism (exact resume, identical DDP replicas): clip number ``g`` of a run is a pure function
of ``(seed, g)``: the window comes from a per-epoch permutation seeded by ``(seed, epoch)``, the
augmentation and the object choice from a generator seeded by ``(seed, g)``. No sampler or worker
state needs saving; resuming at step ``s`` restarts the clip counter at ``s * world * batch``.

Augmentation (:func:`augment_frames`, one draw per clip, applied to every frame so that motion
stays coherent):

- cameras: colour jitter (brightness, contrast, saturation, hue) and a random crop resized back
  (a zoom), with the intrinsics and the instance masks (nearest neighbour) following;
- LiDAR: a global rotation ``R`` about z (+-25 deg) and a scaling ``s``, i.e. every LiDAR-frame
  point ``p -> s R p``. To keep the geometry exact, the whole world is scaled by ``s`` with it:
  for any rigid ``X_from_lidar = [Rx | tx]`` the new one is ``[Rx R^T | s tx]``. That keeps
  ``cam_from_lidar`` rigid and the camera projection of every point unchanged (a pinhole
  projection is invariant to scaling the scene and the camera centre together), and keeps
  ``world_from_lidar`` rigid with relative ego motions rotated and scaled consistently; plus
  random point dropout (labels follow).

Targets (:class:`FrameTargets`): per camera slot a (B, H, W) bool mask stack, per point a (B, N)
bool stack and the (N,) valid mask (label != -1); views without ground truth carry None.
"""

from __future__ import annotations

import functools
import re
from collections import OrderedDict
from collections.abc import Sequence as SequenceABC
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from sam4d_core.data.sequence import IGNORE_ID, CameraFrame, Frame, ObjectInfo, Sequence

from .config import AugmentConfig, DataConfig, SourceConfig

# ---------------------------------------------------------------------------------------------
# Sources.


class SequenceSource(Protocol):
    """Where sequences come from: names with lengths, and frames on demand."""

    name: str

    def sequences(self) -> list[tuple[str, int]]:
        """(sequence name, number of frames) of every sequence."""
        ...

    def load_frames(self, sequence: str, indices: SequenceABC[int]) -> list[Frame]:
        """The frames ``indices`` of ``sequence`` (never modified by the caller)."""
        ...


class InMemorySource:
    """Sequences already in memory."""

    def __init__(self, sequences: SequenceABC[Sequence], name: str = "memory") -> None:
        self.name = name
        self._seqs = {s.name: s for s in sequences}
        if len(self._seqs) != len(sequences):
            raise ValueError("sequence names must be unique")

    def sequences(self) -> list[tuple[str, int]]:
        return [(n, len(s)) for n, s in self._seqs.items()]

    def load_frames(self, sequence: str, indices: SequenceABC[int]) -> list[Frame]:
        s = self._seqs[sequence]
        return [s.frames[i] for i in indices]


class SyntheticSource:
    """Synthetic sequences rendered on the fly, one per seed (generators cached, LRU)."""

    def __init__(self, preset: str, seeds: SequenceABC[int], num_frames: int, cache: int = 4):
        from sam4d_core.data.synthetic import make_config

        self.name = f"synthetic:{preset}"
        self.preset = preset
        self.num_frames = int(num_frames)
        self._configs = {
            f"{preset}_{s:05d}": make_config(
                preset, seed=int(s), num_frames=self.num_frames, name=f"{preset}_{s:05d}"
            )
            for s in seeds
        }
        self._cache: OrderedDict[str, object] = OrderedDict()
        self._cache_size = cache

    def sequences(self) -> list[tuple[str, int]]:
        return [(n, self.num_frames) for n in self._configs]

    def _generator(self, name: str):
        from sam4d_core.data.synthetic import SyntheticGenerator

        gen = self._cache.pop(name, None)
        if gen is None:
            gen = SyntheticGenerator(self._configs[name])
        self._cache[name] = gen
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return gen

    def load_frames(self, sequence: str, indices: SequenceABC[int]) -> list[Frame]:
        gen = self._generator(sequence)
        return [gen.render(int(i)).frame for i in indices]  # type: ignore[attr-defined]


class Waymo4DSegSource:
    """A Waymo-4DSeg root (frames loaded lazily)."""

    def __init__(self, root: str | Path, sequences: SequenceABC[str] | None = None) -> None:
        from sam4d_core.data.waymo4dseg import Waymo4DSegDataset

        self.ds = Waymo4DSegDataset(root)
        self.name = f"waymo4dseg:{root}"
        names = self.ds.sequence_names()
        if sequences is not None:
            missing = sorted(set(sequences) - set(names))
            if missing:
                raise ValueError(f"{root}: no sequences {missing}")
            names = [n for n in names if n in set(sequences)]
        self._names = names

    def sequences(self) -> list[tuple[str, int]]:
        return [(n, self.ds.num_frames(n)) for n in self._names]

    def load_frames(self, sequence: str, indices: SequenceABC[int]) -> list[Frame]:
        return [self.ds.load_frame(sequence, int(i)) for i in indices]


class BagSource:
    """rosbag2 recordings with ground truth: a bag, or a directory holding bags (each read whole
    on first use and cached, LRU)."""

    def __init__(self, path: str | Path, cache: int = 2) -> None:
        from sam4d_core.data.sequence_bag import read_sequence_bag

        self._read = read_sequence_bag
        p = Path(path)
        if (p / "metadata.yaml").is_file() or p.suffix in (".mcap", ".db3"):
            bags = [p]
        else:
            bags = sorted(q.parent for q in p.glob("*/metadata.yaml"))
        if not bags:
            raise ValueError(f"{path}: no rosbag2 recordings")
        self.name = f"bag:{path}"
        self._bags = {b.name: b for b in bags}
        self._lengths: dict[str, int] = {}
        self._cache: OrderedDict[str, Sequence] = OrderedDict()
        self._cache_size = cache

    def _load(self, name: str) -> Sequence:
        seq = self._cache.pop(name, None)
        if seq is None:
            seq = self._read(self._bags[name], name=name)
            if not any(f.has_ground_truth for f in seq.frames):
                raise ValueError(f"{self._bags[name]}: the recording has no ground truth")
        self._cache[name] = seq
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        self._lengths[name] = len(seq)
        return seq

    def sequences(self) -> list[tuple[str, int]]:
        return [(n, self._lengths.get(n) or len(self._load(n))) for n in self._bags]

    def load_frames(self, sequence: str, indices: SequenceABC[int]) -> list[Frame]:
        seq = self._load(sequence)
        return [seq.frames[i] for i in indices]


def build_source(cfg: SourceConfig) -> SequenceSource:
    """The source a :class:`~.config.SourceConfig` describes."""
    if cfg.kind == "synthetic":
        return SyntheticSource(cfg.preset, range(cfg.seeds[0], cfg.seeds[1]), cfg.num_frames)
    if cfg.kind == "waymo4dseg":
        if not cfg.path:
            raise ValueError("a waymo4dseg source needs a path")
        return Waymo4DSegSource(cfg.path, cfg.sequences)
    if cfg.kind == "bag":
        if not cfg.path:
            raise ValueError("a bag source needs a path")
        return BagSource(cfg.path)
    raise ValueError(f"unknown source kind {cfg.kind!r} (synthetic, waymo4dseg, bag)")


# ---------------------------------------------------------------------------------------------
# Label filters.


def _norm_class(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower())


@dataclass(frozen=True)
class LabelFilter:
    """The official recipe's label filters: score, volume, semantic blacklist."""

    min_score: float = 0.0
    min_volume: float = 0.0
    semantic_blacklist: tuple[str, ...] = ()

    @functools.cached_property
    def _blacklist(self) -> frozenset[str]:
        return frozenset(_norm_class(s) for s in self.semantic_blacklist)

    def accepts(self, info: ObjectInfo | None) -> bool:
        """An object without info passes (nothing is known against it)."""
        if info is None:
            return True
        if info.score < self.min_score:
            return False
        if info.volume is not None and info.volume < self.min_volume:
            return False
        return _norm_class(info.semantic) not in self._blacklist

    @classmethod
    def from_config(cls, cfg: DataConfig) -> LabelFilter:
        return cls(cfg.min_score, cfg.min_volume, tuple(cfg.semantic_blacklist))


# ---------------------------------------------------------------------------------------------
# Augmentation.


def _rot_z(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def transform_rigid_for_similarity(
    x_from_lidar: np.ndarray, rotation: np.ndarray, scale: float
) -> np.ndarray:
    """``X_from_lidar`` after the LiDAR frame (and the world) changed by ``p -> s R p``.

    Returns ``[Rx R^T | s tx]``: rigid, and ``X_new(p_new) = s X_old(p_old)`` (module docstring).
    """
    out = np.eye(4)
    out[:3, :3] = x_from_lidar[:3, :3] @ rotation.T
    out[:3, 3] = scale * x_from_lidar[:3, 3]
    return out


@dataclass
class CameraAugment:
    """One camera's image transform: crop ``(x0, y0, w, h)`` then resize to ``out_wh``."""

    crop: tuple[int, int, int, int]
    out_wh: tuple[int, int]

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """K of the output image. Pixel centres at integer coordinates (OpenCV, the synthetic
        renderer): the crop shifts by (x0, y0), the resize maps ``u -> (u + 0.5) s - 0.5``."""
        x0, y0, w, h = self.crop
        sx, sy = self.out_wh[0] / w, self.out_wh[1] / h
        A = np.array(
            [
                [sx, 0.0, 0.5 * (sx - 1.0) - sx * x0],
                [0.0, sy, 0.5 * (sy - 1.0) - sy * y0],
                [0.0, 0.0, 1.0],
            ]
        )
        return A @ np.asarray(K, np.float64)

    def is_identity(self, size_wh: tuple[int, int]) -> bool:
        return self.crop == (0, 0, *size_wh) and self.out_wh == size_wh

    def image(self, img: np.ndarray, nearest: bool = False) -> np.ndarray:
        x0, y0, w, h = self.crop
        out = img[y0 : y0 + h, x0 : x0 + w]
        if (w, h) != self.out_wh:
            if nearest:
                interp = cv2.INTER_NEAREST
            elif self.out_wh[0] < w:
                interp = cv2.INTER_AREA  # downscaling: no aliasing
            else:
                interp = cv2.INTER_LINEAR
            out = cv2.resize(out, self.out_wh, interpolation=interp)
        return np.ascontiguousarray(out)


@dataclass
class ClipAugment:
    """The augmentation drawn for one clip (applied identically to each of its frames)."""

    rotation: np.ndarray  # (3, 3) about z
    scale: float
    dropout: float
    colour: tuple[float, float, float, float] | None  # brightness, contrast, saturation, hue
    cameras: dict[str, CameraAugment]
    seed: int  # of the per-frame point dropout draws


def draw_augment(
    cfg: AugmentConfig,
    camera_sizes: dict[str, tuple[int, int]],
    image_size: tuple[int, int] | None,
    rng: np.random.Generator,
) -> ClipAugment:
    """Draws one clip's augmentation. ``camera_sizes``: name -> (W, H)."""
    cams: dict[str, CameraAugment] = {}
    enabled = cfg.enabled
    for name in sorted(camera_sizes):
        w, h = camera_sizes[name]
        out = tuple(image_size) if image_size is not None else (w, h)
        crop = (0, 0, w, h)
        if enabled and cfg.prob_crop > 0 and rng.random() < cfg.prob_crop:
            s = rng.uniform(*cfg.crop_scale)
            cw, ch = max(8, round(w * s)), max(8, round(h * s))
            x0 = int(rng.integers(0, w - cw + 1))
            y0 = int(rng.integers(0, h - ch + 1))
            crop = (x0, y0, cw, ch)
        cams[name] = CameraAugment(crop, (int(out[0]), int(out[1])))
    if not enabled:
        return ClipAugment(np.eye(3), 1.0, 0.0, None, cams, 0)
    angle = np.deg2rad(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg))
    scale = float(rng.uniform(*cfg.scale))
    dropout = float(rng.uniform(*cfg.point_dropout))
    colour = (
        float(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)),
        float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)),
        float(rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)),
        float(rng.uniform(-cfg.hue, cfg.hue)),
    )
    return ClipAugment(_rot_z(angle), scale, dropout, colour, cams, int(rng.integers(2**31)))


_GRAY = np.array([0.299, 0.587, 0.114], np.float32)


def colour_jitter(img: np.ndarray, params: tuple[float, float, float, float]) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> jittered copy (brightness, contrast, saturation, hue)."""
    b, c, s, hue = params
    x = img.astype(np.float32) * b
    gray = x @ _GRAY
    x = (x - gray.mean()) * c + gray.mean()
    gray = (x @ _GRAY)[..., None]
    x = (x - gray) * s + gray
    x = np.clip(x, 0, 255).astype(np.uint8)
    if hue != 0.0:
        hsv = cv2.cvtColor(x, cv2.COLOR_RGB2HSV)  # H in [0, 180) for uint8
        hsv[..., 0] = ((hsv[..., 0].astype(np.int32) + round(hue * 180)) % 180).astype(np.uint8)
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return x


def augment_frames(frames: SequenceABC[Frame], aug: ClipAugment) -> list[Frame]:
    """New frames (inputs untouched) with ``aug`` applied (module docstring)."""
    out = []
    rot, s = aug.rotation, aug.scale
    A = s * rot  # p_new = A p_old
    for k, f in enumerate(frames):
        pts = np.array(f.points, dtype=np.float32, copy=True)
        labels = None if f.point_labels is None else np.asarray(f.point_labels)
        if aug.dropout > 0 and len(pts):
            rng = np.random.default_rng([aug.seed, k])
            keep = rng.random(len(pts)) >= aug.dropout
            if keep.sum() < max(1, len(pts) // 10):  # never drop a sweep (almost) entirely
                keep[:] = True
            pts = pts[keep]
            labels = None if labels is None else labels[keep]
        pts[:, :3] = pts[:, :3].astype(np.float64) @ A.T
        cams = {}
        for name, cam in f.cameras.items():
            ca = aug.cameras.get(name)
            img = cam.image
            K = np.asarray(cam.intrinsics, np.float64)
            mask = cam.instance_mask
            if ca is not None and not ca.is_identity(cam.size_wh):
                img = ca.image(img)
                K = ca.intrinsics(K)
                mask = None if mask is None else ca.image(mask, nearest=True)
            if aug.colour is not None:
                img = colour_jitter(img, aug.colour)
            cams[name] = CameraFrame(
                name=name,
                image=img,
                intrinsics=K,
                cam_from_lidar=transform_rigid_for_similarity(
                    np.asarray(cam.cam_from_lidar, np.float64), rot, s
                ),
                timestamp=cam.timestamp,
                instance_mask=mask,
            )
        out.append(
            replace(
                f,
                points=pts,
                cameras=cams,
                world_from_lidar=transform_rigid_for_similarity(
                    np.asarray(f.world_from_lidar, np.float64), rot, s
                ),
                point_labels=labels,
            )
        )
    return out


# ---------------------------------------------------------------------------------------------
# Targets.


@dataclass
class FrameTargets:
    """Ground truth of B objects on one frame.

    Attributes:
        camera_masks: per camera slot (B, H, W) bool, or None (camera absent or unlabeled).
        point_masks: (B, N) bool, or None (no LiDAR labels).
        point_valid: (N,) bool, label != -1 (None with ``point_masks``).
    """

    camera_masks: list[np.ndarray | None]
    point_masks: np.ndarray | None
    point_valid: np.ndarray | None

    def camera_present(self, slot: int) -> np.ndarray | None:
        """(B,) bool: the object has pixels on camera ``slot`` (None: no ground truth)."""
        m = self.camera_masks[slot]
        return None if m is None else m.reshape(m.shape[0], -1).any(axis=1)

    def lidar_present(self) -> np.ndarray | None:
        """(B,) bool: the object has (non-ignored) points."""
        if self.point_masks is None:
            return None
        return (self.point_masks & self.point_valid[None]).any(axis=1)


def frame_targets(frame: Frame, camera_names: SequenceABC[str], ids: SequenceABC[int]):
    """:class:`FrameTargets` of objects ``ids`` on ``frame`` (camera slots in ``camera_names``)."""
    ids_arr = np.asarray(ids, np.int64)
    cams: list[np.ndarray | None] = []
    for name in camera_names:
        cam = frame.cameras.get(name)
        if cam is None or cam.instance_mask is None:
            cams.append(None)
        else:
            cams.append(np.asarray(cam.instance_mask)[None] == ids_arr[:, None, None])
    if frame.point_labels is None:
        return FrameTargets(cams, None, None)
    labels = np.asarray(frame.point_labels)
    return FrameTargets(cams, labels[None] == ids_arr[:, None], labels != IGNORE_ID)


# ---------------------------------------------------------------------------------------------
# Clips.


@dataclass
class ClipSample:
    """One training sample.

    Attributes:
        name: ``<sequence>@<first frame>/<stride>``.
        frames: the (augmented) frames.
        camera_names: camera slot order (a frame lacking one gives None in that slot).
        object_ids: the B target objects (appear on the first frame).
        targets: per frame.
        index: the clip number ``g`` (keys the prompt simulation's random stream).
    """

    name: str
    frames: list[Frame]
    camera_names: list[str]
    object_ids: list[int]
    targets: list[FrameTargets]
    index: int

    @property
    def num_frames(self) -> int:
        return len(self.frames)

    @property
    def num_objects(self) -> int:
        return len(self.object_ids)

    def model_inputs(self, t: int) -> dict:
        """Keyword arguments of ``SAM4D.encode_frame`` for frame ``t``."""
        f = self.frames[t]
        cams = [f.cameras.get(n) for n in self.camera_names]
        return {
            "images": [None if c is None else c.image for c in cams],
            "intrinsics": [None if c is None else c.intrinsics for c in cams],
            "cam_from_lidar": [None if c is None else c.cam_from_lidar for c in cams],
            "points": f.points if len(f.points) else None,
            "pose": f.world_from_lidar,
        }


@dataclass(frozen=True)
class _Window:
    source: int
    sequence: str
    start: int
    length: int  # frames of the sequence


class ClipDataset:
    """Clip number ``g`` -> :class:`ClipSample`, deterministic in ``(seed, g)`` (module doc).

    Args:
        sources: the sequence sources.
        cfg: clip settings (length, objects, filters, cameras, augmentation, image size).
        seed: of the run.
        max_tries: windows tried per sample before giving up (a window without any usable
            object on its first frame is skipped for a random other one).
    """

    def __init__(
        self,
        sources: SequenceABC[SequenceSource],
        cfg: DataConfig,
        seed: int = 0,
        max_tries: int = 20,
        weights: SequenceABC[float] | None = None,
    ) -> None:
        self.sources = list(sources)
        self.cfg = cfg
        self.seed = int(seed)
        self.max_tries = max_tries
        self.filter = LabelFilter.from_config(cfg)
        t = cfg.clip_length
        if t < 1:
            raise ValueError("clip_length must be >= 1")
        windows: list[_Window] = []
        window_weights: list[float] = []
        for si, src in enumerate(self.sources):
            w = 1.0 if weights is None else float(weights[si])
            for name, n in src.sequences():
                for start in range(0, n - t + 1):
                    windows.append(_Window(si, name, start, n))
                    window_weights.append(w)
        if not windows:
            raise ValueError(f"no sequence has {t} frames (clip_length) in the given sources")
        self.windows = windows
        p = np.asarray(window_weights, np.float64)
        self._uniform = bool(np.all(p == p[0]))
        self._p = p / p.sum()
        self._perm_cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        """Windows per epoch."""
        return len(self.windows)

    def _window(self, g: int) -> _Window:
        n = len(self.windows)
        epoch, pos = divmod(g, n)
        perm = self._perm_cache.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed, 7919, epoch])
            if self._uniform:
                perm = rng.permutation(n)
            else:
                perm = rng.choice(n, size=n, replace=True, p=self._p)
            self._perm_cache = {epoch: perm}  # one epoch at a time
        return self.windows[int(perm[pos])]

    def __getitem__(self, g: int) -> ClipSample:
        return self.sample(int(g))

    def sample(self, g: int) -> ClipSample:
        """Clip number ``g`` (any non-negative integer; epochs wrap around)."""
        rng = np.random.default_rng([self.seed, 104729, g])
        win = self._window(g)
        for _ in range(self.max_tries):
            clip = self._try_window(win, g, rng)
            if clip is not None:
                return clip
            win = self.windows[int(rng.choice(len(self.windows), p=self._p))]
        raise RuntimeError(
            f"no usable object on the first frame of {self.max_tries} windows (clip {g}); "
            "check the label filters and min_pixels / min_points"
        )

    def _try_window(self, win: _Window, g: int, rng: np.random.Generator) -> ClipSample | None:
        cfg = self.cfg
        t = cfg.clip_length
        lo, hi = cfg.frame_stride
        max_stride = (win.length - 1 - win.start) // max(t - 1, 1) if t > 1 else 1
        stride = int(rng.integers(lo, max(lo, min(hi, max_stride)) + 1)) if t > 1 else 1
        # Stride 0 (allowed only when asked for) repeats the first frame: a static clip.
        stride = max(0 if lo == 0 else 1, min(stride, max(1, max_stride)))
        indices = [win.start + k * stride for k in range(t)]
        src = self.sources[win.source]
        frames = src.load_frames(win.sequence, indices)
        names: list[str] = []
        sizes: dict[str, tuple[int, int]] = {}
        for f in frames:
            for n, c in f.cameras.items():
                if cfg.cameras is not None and n not in cfg.cameras:
                    continue
                if n not in names:
                    names.append(n)
                    sizes[n] = c.size_wh
        if cfg.max_cameras is not None and len(names) > cfg.max_cameras:
            keep = sorted(rng.choice(len(names), cfg.max_cameras, replace=False).tolist())
            names = [names[i] for i in keep]
            sizes = {n: sizes[n] for n in names}
        aug = draw_augment(cfg.augment, sizes, cfg.image_size, rng)
        frames = [_select_cameras(f, names) for f in frames]
        frames = augment_frames(frames, aug)
        ids = self._first_frame_objects(frames, names)
        if not ids:
            return None
        if len(ids) > cfg.max_objects:
            ids = sorted(rng.choice(ids, cfg.max_objects, replace=False).tolist())
        targets = [frame_targets(f, names, ids) for f in frames]
        return ClipSample(
            name=f"{win.sequence}@{win.start}/{stride}",
            frames=frames,
            camera_names=names,
            object_ids=[int(i) for i in ids],
            targets=targets,
            index=g,
        )

    def _first_frame_objects(self, frames: list[Frame], names: list[str]) -> list[int]:
        """Ids passing the filters with >= min_pixels on some camera or >= min_points on the
        first frame."""
        f0 = frames[0]
        infos: dict[int, ObjectInfo] = {}
        for f in frames:
            for oid, info in f.objects.items():
                infos.setdefault(int(oid), info)
        counts: dict[int, bool] = {}
        for n in names:
            cam = f0.cameras.get(n)
            if cam is None or cam.instance_mask is None:
                continue
            ids, cnt = np.unique(cam.instance_mask, return_counts=True)
            for i, c in zip(ids.tolist(), cnt.tolist(), strict=True):
                if i > 0 and c >= self.cfg.min_pixels:
                    counts[i] = True
        if f0.point_labels is not None:
            ids, cnt = np.unique(f0.point_labels, return_counts=True)
            for i, c in zip(ids.tolist(), cnt.tolist(), strict=True):
                if i > 0 and c >= self.cfg.min_points:
                    counts[i] = True
        return sorted(i for i in counts if self.filter.accepts(infos.get(i)))


def _select_cameras(frame: Frame, names: SequenceABC[str]) -> Frame:
    return replace(frame, cameras={n: c for n, c in frame.cameras.items() if n in names})


def build_dataset(sources: SequenceABC[SourceConfig], cfg: DataConfig, seed: int) -> ClipDataset:
    """A :class:`ClipDataset` over the configured sources."""
    return ClipDataset(
        [build_source(s) for s in sources], cfg, seed, weights=[s.weight for s in sources]
    )


__all__ = [
    "BagSource",
    "CameraAugment",
    "ClipAugment",
    "ClipDataset",
    "ClipSample",
    "FrameTargets",
    "InMemorySource",
    "LabelFilter",
    "SequenceSource",
    "SyntheticSource",
    "Waymo4DSegSource",
    "augment_frames",
    "build_dataset",
    "build_source",
    "colour_jitter",
    "draw_augment",
    "frame_targets",
    "transform_rigid_for_similarity",
]
