"""Training configuration: plain dataclasses, YAML (de)serialization, named configs.

A run is fully described by one :class:`TrainConfig` (data, augmentation, prompt simulation,
losses, optimisation, validation, logging). Configs are written as YAML; every field has a
default, so a YAML file only lists what differs: from the defaults or, with ``base: <config>``,
from another config (the continuation stages of one recipe list only what they change). Named
configs are the YAML files of ``training/configs/`` (``--config sam4d_small_synthetic`` or
``--config path/to/file.yaml``); ``--set data.clip_length=4`` style overrides are applied on
top (:func:`apply_overrides`).

Defaults follow the official recipe where it is known (DESIGN.md, "Training recipe"; SAM2's
training config for what SAM4D takes from it): <= 6 objects per sample, clicks or a box (50/50)
on the first frame in a random modality, corrective clicks on up to 2 frames (7 per frame),
SAM2 loss weights (focal 20, dice 1, IoU 1, presence 1), AdamW, gradient clipping 0.1.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The official recipe's semantic blacklist (classes that are never prompted objects): one list for
# training and evaluation, defined in the core (which cannot import training).
from sam4d_core.evaluation.streaming_eval import DEFAULT_SEMANTIC_BLACKLIST

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
BASE_KEY = "base"
"""The key of a config file that names the config it changes (:func:`read_config_data`)."""


@dataclass
class SourceConfig:
    """One source of sequences.

    Attributes:
        kind: ``"synthetic"`` (generated on the fly), ``"waymo4dseg"`` (a Waymo-4DSeg root, e.g.
            a pre-generated synthetic set), or ``"bag"`` (rosbag2 recordings with ground truth).
        path: root (waymo4dseg) or a bag / a directory of bags (bag).
        sequences: only these sequence names (waymo4dseg; None: all).
        preset: synthetic preset (:func:`sam4d_core.data.synthetic.make_config`).
        seeds: synthetic seeds ``[start, stop)``; one sequence per seed.
        num_frames: frames per synthetic sequence.
        weight: relative sampling weight of this source's clip windows (1: by window count).
    """

    kind: str = "synthetic"
    path: str | None = None
    sequences: list[str] | None = None
    preset: str = "bundled_sample"
    seeds: tuple[int, int] = (0, 16)
    num_frames: int = 20
    weight: float = 1.0


@dataclass
class AugmentConfig:
    """Augmentation (one set of parameters per clip, applied to all its frames).

    Attributes:
        enabled: off for validation.
        brightness, contrast, saturation: colour jitter factors drawn in ``[1 - x, 1 + x]``.
        hue: hue shift in ``[-hue, hue]`` of a full turn.
        prob_crop: probability of a random crop per camera (then resized back: a zoom).
        crop_scale: side fraction range of the crop.
        rotation_deg: LiDAR global rotation about z in ``[-x, x]`` degrees.
        scale: global scaling range (points, poses and camera positions scale together).
        point_dropout: range of the fraction of points dropped (per frame).
    """

    enabled: bool = True
    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    hue: float = 0.02
    prob_crop: float = 0.5
    crop_scale: tuple[float, float] = (0.7, 1.0)
    rotation_deg: float = 25.0
    scale: tuple[float, float] = (0.95, 1.05)
    point_dropout: tuple[float, float] = (0.0, 0.2)


@dataclass
class DataConfig:
    """Clips and their objects.

    Attributes:
        sources: where sequences come from.
        clip_length: frames per clip (T).
        frame_stride: ``(min, max)`` temporal stride between clip frames; a stride of 0
            repeats the first frame (a static clip: propagation through memory without motion,
            the easiest case of it).
        max_objects: objects per clip (official: 6).
        min_score, min_volume: label filters (objects below are never targets; a missing volume
            passes).
        semantic_blacklist: semantic classes never used as targets (compared case-, space- and
            underscore-insensitively).
        min_pixels, min_points: an object "appears" on a view with at least this many pixels /
            points (after augmentation); targets must appear on the first frame.
        cameras: only these cameras (None: all).
        max_cameras: at most this many cameras per clip, a random subset (None: all).
        image_size: ``(width, height)`` the images are resized to (None: unchanged). Setting it to
            the model input saves the model's own resize and fixes the loss resolution.
        num_workers: DataLoader worker processes (0: in the main process).
    """

    sources: list[SourceConfig] = field(default_factory=lambda: [SourceConfig()])
    clip_length: int = 8
    frame_stride: tuple[int, int] = (1, 1)
    max_objects: int = 6
    min_score: float = 0.0
    min_volume: float = 0.0
    semantic_blacklist: tuple[str, ...] = DEFAULT_SEMANTIC_BLACKLIST
    min_pixels: int = 20
    min_points: int = 5
    cameras: list[str] | None = None
    max_cameras: int | None = None
    image_size: tuple[int, int] | None = None
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    num_workers: int = 0


@dataclass
class PromptConfig:
    """Interactive prompt simulation (SAM2 / SAM4D training).

    Attributes:
        prob_mask: probability that the first-frame prompt is the ground-truth mask (taken as the
            output, as at inference; no correction clicks then).
        prob_box: probability of a box rather than clicks (among click-type prompts; 0.5).
        prob_lidar: probability that the first prompt is in the LiDAR (else a camera).
        initial_clicks: ``(min, max)`` positive clicks of a click prompt.
        click_mode: how clicks are taken from a region: ``"uniform"`` (SAM2 training),
            ``"center"`` (farthest from the region's boundary; SAM's evaluation) or ``"mixed"``
            (either, 50/50 per click).
        box_noise: box corner jitter as a fraction of the box size...
        box_noise_px, box_noise_m: ...bounded by this many pixels / metres.
        num_correction_frames: frames that get corrective clicks, the first frame included.
        rand_correction_frames: draw the number in ``[1, num_correction_frames]``.
        correction_clicks: corrective clicks per correction frame (official: 7).
        rand_correction_clicks: draw the number in ``[1, correction_clicks]``.
        correction_modality: ``"any"`` (a random view with errors) or ``"same"`` (the modality of
            the first prompt when it has errors).
        prob_correct_from_gt: probability that a corrective click is taken from the ground truth
            instead of the error region (SAM2's ``prob_to_sample_from_gt_for_train``).
        corrections_as_cond: a corrected frame becomes a conditioning frame.
    """

    prob_mask: float = 0.0
    prob_box: float = 0.5
    prob_lidar: float = 0.5
    initial_clicks: tuple[int, int] = (1, 1)
    click_mode: str = "uniform"
    box_noise: float = 0.1
    box_noise_px: float = 20.0
    box_noise_m: float = 1.0
    num_correction_frames: int = 2
    rand_correction_frames: bool = True
    correction_clicks: int = 7
    rand_correction_clicks: bool = False
    correction_modality: str = "any"
    prob_correct_from_gt: float = 0.1
    corrections_as_cond: bool = True


@dataclass
class LossConfig:
    """Loss weights and options (SAM2's defaults).

    Attributes:
        focal, dice, iou, presence: weights of the focal, dice, IoU-prediction and
            object-presence terms.
        focal_alpha, focal_gamma: of the sigmoid focal loss on masks.
        iou_l1: L1 (SAM2.1) instead of MSE for the IoU prediction.
        supervise_all_iou: IoU loss on every multimask output (else on the best one only).
        image_weight, lidar_weight: weights of the two modalities.
        image_loss_at: ``"gt"``: mask logits (stride 4 of the model input) upsampled bilinearly to
            the ground-truth resolution (as SAM2); ``"logits"``: ground truth area-downsampled to
            the logits' grid (soft targets, cheaper).
        mask_loss_on: ``"raw"``: the decoder's masks before an object predicted absent gets the
            constant NO_OBJ_SCORE mask, so a present object's mask is supervised even while its
            presence is still wrong (better for training from scratch; the logged mask losses
            stay meaningful); ``"sam2"``: the replaced masks, as SAM2 (no mask gradient for such
            objects, and a large constant in the focal loss).
    """

    focal: float = 20.0
    dice: float = 1.0
    iou: float = 1.0
    presence: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    iou_l1: bool = True
    supervise_all_iou: bool = True
    image_weight: float = 1.0
    lidar_weight: float = 1.0
    image_loss_at: str = "gt"
    mask_loss_on: str = "raw"


@dataclass
class OptimConfig:
    """AdamW with warm-up and decay.

    Attributes:
        lr: peak learning rate; min_lr_ratio: final lr as a fraction of it.
        weight_decay: AdamW weight decay (not on biases, norms, embeddings, 1-D parameters).
        betas: AdamW betas.
        warmup_steps: linear warm-up from 0.
        schedule: ``"cosine"`` or ``"linear"`` decay after the warm-up, or ``"constant"``.
        grad_clip: max gradient norm (0: off).
        amp: ``"auto"`` (bf16 on CUDA when supported, else fp16; off on CPU), ``"bf16"``,
            ``"fp16"`` or ``"off"``.
    """

    lr: float = 3e-4
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 200
    schedule: str = "cosine"
    grad_clip: float = 0.1
    amp: str = "auto"


@dataclass
class ValConfig:
    """Validation on held-out clips with a first-frame prompt (1 click, "center").

    Attributes:
        every: validate every N steps and at the end (0: never).
        sources: held-out sources (other seeds); None: no validation.
        num_clips: clips per validation.
        clip_length: frames per validation clip.
        prompt: ``"click"`` (1 centre click) or ``"mask"`` (the ground-truth mask: the tracked
            frames then measure propagation through memory alone).
    """

    every: int = 500
    sources: list[SourceConfig] | None = None
    num_clips: int = 8
    clip_length: int = 8
    prompt: str = "click"


@dataclass
class TrainConfig:
    """One training run.

    Attributes:
        model: SAM4D config name (``sam4d_small``) or a JSON config file.
        model_overrides: changes to that model config, nested like it (e.g. ``{memory_attention:
            {pos_scale: 0.3}}``); mappings merge key by key. The resulting config is what the
            run's checkpoints hold, so exported weights rebuild the same model.
        init_checkpoint: start from these weights (our format or official), or None.
        reinit: components drawn anew after ``init_checkpoint`` is loaded (see
            ``training.model_setup.REINIT_COMPONENTS``), e.g. ``[memory_attention]`` to retrain
            MCMA on top of trained encoders and decoders. Their keys may be missing from (or
            extra in) ``init_checkpoint``.
        freeze: components whose parameters do not train
            (``training.model_setup.COMPONENT_PREFIXES``: image_encoder, point_encoder,
            memory_attention, memory_encoder, sam_head, umpe), e.g. the backbones while MCMA and
            the decoder learn to track (cheaper steps, and the prompted frame's features cannot
            drift).
        seed: everything random derives from it (data order, augmentation, prompts, init).
        steps: optimizer steps.
        batch_size: clips per step and rank (each clip is one SAM2-style video sample).
        log_every, ckpt_every: in steps; keep_checkpoints: periodic checkpoints kept.
        num_threads: torch CPU threads (0: torch's default).
        dropout: dropout probability of the memory attention during training (None: the model
            config's, 0.1). On the CPU, attention with dropout takes PyTorch's slow path (about
            8x the cost of the attention without it), so CPU runs use 0.
        deterministic: ``torch.use_deterministic_algorithms`` (bitwise resume on GPU).
        time_budget_s: wall-clock budget of the run (0: none). The run's length in steps is then
            re-estimated from the measured step time (first after ``BUDGET_PROBE_STEPS`` steps,
            then every ``log_every`` steps) so that the learning-rate schedule ends when the
            budget does; ``steps`` is the upper bound. For a GPU lent for a fixed time.
        phases: a recipe of several runs in one config (None: a single run). Each entry is a
            mapping with a ``name`` and the settings that phase changes, laid over this config
            (:func:`merge_config_data`); phase k starts from phase k-1's trained weights
            (:func:`phase_configs`).
    """

    model: str = "sam4d_small"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_checkpoint: str | None = None
    reinit: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)
    seed: int = 0
    steps: int = 10000
    batch_size: int = 1
    log_every: int = 10
    ckpt_every: int = 250
    keep_checkpoints: int = 3
    num_threads: int = 0
    dropout: float | None = None
    deterministic: bool = False
    time_budget_s: float = 0.0
    phases: list[dict[str, Any]] | None = None
    data: DataConfig = field(default_factory=DataConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    val: ValConfig = field(default_factory=ValConfig)


# ---------------------------------------------------------------------------------------------
# (De)serialization.


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain nested dict (JSON/YAML-serializable; tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


RESUME_MAY_CHANGE = ("steps", "num_threads", "data.num_workers", "time_budget_s")
"""Settings a resumed run may change (machine settings, and the length of the run)."""


def config_differences(
    a: TrainConfig, b: TrainConfig, ignore: tuple[str, ...] = RESUME_MAY_CHANGE
) -> list[str]:
    """Dotted keys whose values differ between ``a`` and ``b`` (``ignore`` left out)."""
    out: list[str] = []

    def walk(x: Any, y: Any, where: str) -> None:
        if where in ignore:
            return
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{where}.{k}" if where else k)
        elif x != y:
            out.append(where)

    walk(to_dict(a), to_dict(b), "")
    return out


def _convert(tp: Any, value: Any, where: str) -> Any:
    """``value`` (from YAML) as type ``tp`` (dataclasses, lists of them, tuples, optionals)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where + ".")  # type: ignore[arg-type]
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_convert(a, v, where) for a, v in zip(args, value, strict=True))
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):
        # YAML 1.1 (PyYAML) reads "8e-4" (no dot) as a string; it is meant as a number.
        try:
            return float(value)
        except ValueError:
            pass
    if tp is str and isinstance(value, bool):
        # YAML 1.1 (PyYAML) reads on/off/yes/no as booleans: ``amp: off`` means the string.
        return "on" if value else "off"
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Builds dataclass ``cls`` from a nested dict; unknown keys are errors, missing keys keep
    their defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"unknown config keys in {where or 'config'}: {sorted(unknown)}")
    kwargs = {k: _convert(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)


def named_configs() -> list[str]:
    """Names of the YAML configs in ``training/configs/``."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _config_path(name_or_path: str | Path, relative_to: Path | None = None) -> Path:
    """A YAML file (relative to ``relative_to`` when given, else to the working directory) or a
    named config."""
    path = Path(name_or_path)
    if relative_to is not None and not path.is_absolute():
        path = relative_to / path
    if path.is_file():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    raise FileNotFoundError(
        f"no training config {str(name_or_path)!r} (a YAML file, or one of {named_configs()})"
    )


def merge_config_data(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` laid over ``base`` (nested dicts from YAML): mappings merge key by key, any
    other value (a list included, e.g. ``data.sources``) replaces the base's."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge_config_data(out[key], value)
        else:
            out[key] = value
    return out


def read_config_data(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's settings with its ``base:`` chain resolved (a plain nested dict).

    ``base: <name>`` (a named config) or ``base: <file>.yaml`` (relative to this file) makes the
    file list only what it changes from that config (:func:`merge_config_data`).
    """
    path = path.resolve()
    if path in _chain:
        cycle = " -> ".join(p.name for p in (*_chain, path))
        raise ValueError(f"training config base cycle: {cycle}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a training config is a YAML mapping")
    if BASE_KEY not in data:
        return data
    base = data.pop(BASE_KEY)
    if not isinstance(base, str) or not base:
        raise ValueError(f"{path}: {BASE_KEY!r} is a config name or a YAML path, got {base!r}")
    try:
        base_path = _config_path(base, relative_to=path.parent)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{path}: base {base!r}: {e}") from None
    return merge_config_data(read_config_data(base_path, (*_chain, path)), data)


def load_train_config(name_or_path: str | Path) -> TrainConfig:
    """A named config (``training/configs/<name>.yaml``) or a YAML file, with its ``base:``
    chain resolved (:func:`read_config_data`)."""
    path = _config_path(name_or_path)
    return from_dict(TrainConfig, read_config_data(path))


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """``["optim.lr=1e-4", "data.sources[0].seeds=[0, 4]"]`` -> a new config (values are YAML)."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not KEY=VALUE")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        node: Any = data
        parts = key.strip().split(".")
        for i, part in enumerate(parts):
            name, index = part, None
            if part.endswith("]") and "[" in part:
                name, idx = part[:-1].split("[", 1)
                index = int(idx)
            last = i == len(parts) - 1
            if name not in node:
                raise ValueError(f"override {item!r}: unknown key {name!r}")
            if index is None:
                if last:
                    node[name] = value
                else:
                    node = node[name]
            else:
                if last:
                    node[name][index] = value
                else:
                    node = node[name][index]
    return from_dict(TrainConfig, data)


def phase_configs(cfg: TrainConfig) -> list[tuple[str, TrainConfig]]:
    """The runs of a recipe, in order: ``(phase name, its config)`` with the phase's settings
    laid over ``cfg`` (without ``phases``). A phase's ``init_checkpoint`` is left to the caller
    (the previous phase's weights). A config without phases is one unnamed run."""
    if not cfg.phases:
        return [("", cfg)]
    base = to_dict(cfg)
    base.pop("phases")
    out: list[tuple[str, TrainConfig]] = []
    for i, phase in enumerate(cfg.phases):
        changes = dict(phase)
        name = changes.pop("name", None)
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"phases[{i}]: every phase needs a plain name, got {name!r}")
        if "phases" in changes:
            raise ValueError(f"phases[{i}] ({name}): phases do not nest")
        if any(n == name for n, _ in out):
            raise ValueError(f"phases[{i}]: the name {name!r} is used twice")
        out.append((name, from_dict(TrainConfig, merge_config_data(base, changes), f"{name}.")))
    return out


def dump_yaml(cfg: TrainConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


__all__ = [
    "BASE_KEY",
    "CONFIG_DIR",
    "DEFAULT_SEMANTIC_BLACKLIST",
    "AugmentConfig",
    "DataConfig",
    "LossConfig",
    "OptimConfig",
    "PromptConfig",
    "RESUME_MAY_CHANGE",
    "SourceConfig",
    "TrainConfig",
    "ValConfig",
    "apply_overrides",
    "config_differences",
    "dump_yaml",
    "from_dict",
    "load_train_config",
    "phase_configs",
    "merge_config_data",
    "named_configs",
    "read_config_data",
    "to_dict",
]
