"""The model and optimizer side of a training run: building the model (init checkpoint, reinit,
freeze, dropout), AdamW parameter groups, the learning-rate schedule, the AMP dtype and the step
count of a time-budgeted run. Used by :class:`training.train.Trainer`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from sam4d_core.checkpoint import (
    load_official_checkpoint,
    load_state_dict_strict,
    read_checkpoint,
)
from sam4d_core.modeling.configs import (
    SAM4DConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)
from sam4d_core.modeling.sam4d_base import SAM4D

from .config import TrainConfig, merge_config_data

__all__ = [
    "BUDGET_PROBE_STEPS",
    "BUDGET_WARMUP_STEPS",
    "COMPONENT_PREFIXES",
    "DERIVED_GEOMETRY_KEYS",
    "REINIT_COMPONENTS",
    "budget_total_steps",
    "build_model",
    "component_modules",
    "freeze_components",
    "init_state_dict",
    "lr_factor",
    "model_config",
    "param_groups",
    "resolve_amp",
    "set_dropout",
]


REINIT_COMPONENTS: dict[str, Callable[[SAM4D], None]] = {
    "memory_attention": lambda m: m.memory_attention.reset_parameters(),
    "umpe": lambda m: m.union_pe_func.reset_parameters(),
}
"""Components ``TrainConfig.reinit`` can draw anew, and how."""

COMPONENT_PREFIXES: dict[str, str] = {
    "image_encoder": "pure_model.backbone.image.",
    "point_encoder": "pure_model.backbone.point.",
    "memory_attention": "pure_model.fusion.memory_attention.",
    "memory_encoder": "pure_model.fusion.memory_encoder.",
    "sam_head": "pure_model.head.sam.",
    "umpe": "union_pe_func.",
}
"""State-dict prefix of each component ``TrainConfig.reinit`` and ``TrainConfig.freeze`` name."""


def component_modules(model: SAM4D, names: list[str]) -> list[nn.Module]:
    """The modules of the named components (see :data:`COMPONENT_PREFIXES`)."""
    modules = dict(model.named_modules())
    return [modules[COMPONENT_PREFIXES[n].rstrip(".")] for n in names]


DERIVED_GEOMETRY_KEYS = ("union_pe_func.union_pe_layer.frustum",)
"""State-dict entries computed from the model config alone (the UMPE frustum follows the input
size): an init checkpoint of another input size gives the new model its own values."""


def init_state_dict(
    model: SAM4D, state_dict: dict[str, torch.Tensor], reinit: list[str]
) -> dict[str, torch.Tensor]:
    """``state_dict`` completed for ``model``: the keys of components about to be drawn anew
    may be missing (or extra) in the init checkpoint, e.g. parameters an option of the new
    model config adds to MCMA; derived geometry (:data:`DERIVED_GEOMETRY_KEYS`) of another
    input size is recomputed. Everything else must still match exactly (Hiera's position
    embeddings are interpolated to the token grid, so its weights fit any input size)."""
    own = model.state_dict()
    state_dict = dict(state_dict)
    for key in DERIVED_GEOMETRY_KEYS:
        if key in state_dict and key in own and state_dict[key].shape != own[key].shape:
            state_dict[key] = own[key]
    prefixes = tuple(COMPONENT_PREFIXES[name] for name in reinit)
    if not prefixes:
        return state_dict
    out = {k: v for k, v in state_dict.items() if not k.startswith(prefixes) or k in own}
    for k, v in own.items():
        if k.startswith(prefixes) and k not in out:
            out[k] = v
    return out


def freeze_components(model: SAM4D, names: list[str]) -> int:
    """Stops the parameters of the named components from training; returns how many tensors.
    (Their normalisation statistics are kept by :meth:`Trainer.train_step`, which runs them in
    eval mode.)"""
    unknown = [n for n in names if n not in COMPONENT_PREFIXES]
    if unknown:
        raise ValueError(
            f"freeze: unknown components {unknown}; known: {sorted(COMPONENT_PREFIXES)}"
        )
    prefixes = tuple(COMPONENT_PREFIXES[n] for n in names)
    count = 0
    for name, p in model.named_parameters():
        if prefixes and name.startswith(prefixes) and p.requires_grad:
            p.requires_grad_(False)
            count += 1
    return count


def model_config(cfg: TrainConfig) -> SAM4DConfig:
    """``cfg.model`` with ``cfg.model_overrides`` laid over it (unknown keys are errors)."""
    base = load_config(cfg.model)
    if not cfg.model_overrides:
        return base
    data = merge_config_data(config_to_dict(base), cfg.model_overrides)
    return config_from_dict(data)


def build_model(cfg: TrainConfig, device: torch.device) -> SAM4D:
    """The model of :func:`model_config`, optionally initialised from ``cfg.init_checkpoint``
    (ours, or the official one for the official config), then ``cfg.reinit`` drawn anew."""
    unknown = [name for name in cfg.reinit if name not in REINIT_COMPONENTS]
    if unknown:
        known = sorted(REINIT_COMPONENTS)
        raise ValueError(f"reinit: unknown components {unknown}; known: {known}")
    model = SAM4D(model_config(cfg))
    if cfg.init_checkpoint:
        ckpt = read_checkpoint(cfg.init_checkpoint)
        if ckpt.is_official_format:
            load_official_checkpoint(model, cfg.init_checkpoint)
        else:
            state = init_state_dict(model, dict(ckpt.state_dict), cfg.reinit)
            load_state_dict_strict(model, state, str(ckpt.path))
    for name in cfg.reinit:
        REINIT_COMPONENTS[name](model)
    freeze_components(model, cfg.freeze)
    if cfg.dropout is not None:
        set_dropout(model.memory_attention, cfg.dropout)
    return model.to(device).train()


BUDGET_WARMUP_STEPS = 3
"""Steps of a time-budgeted run left out of the step-time estimate (allocator, kernel caches)."""
BUDGET_PROBE_STEPS = 10
"""Steps timed before a time-budgeted run first sets its length."""


def budget_total_steps(step: int, remaining_s: float, step_s: float, upper: int) -> int:
    """The step a run at ``step`` can reach in ``remaining_s`` seconds at ``step_s`` per step,
    at most ``upper`` (and never before ``step``: a spent budget ends the run now)."""
    if remaining_s <= 0 or step_s <= 0:
        return step
    return max(step, min(upper, step + int(remaining_s / step_s)))


def set_dropout(module: nn.Module, p: float) -> None:
    """Sets every dropout of ``module`` (``nn.Dropout`` layers and attention ``dropout_p``).

    Training-time only: the checkpoint's config keeps its value, which inference ignores."""
    for m in module.modules():
        if isinstance(m, nn.Dropout):
            m.p = p
        if hasattr(m, "dropout_p"):
            m.dropout_p = p


_NO_DECAY_NAMES = (
    "pos_embed",
    "no_mem_embed",
    "no_mem_pos_enc",
    "no_obj_ptr",
    "no_obj_embed_spatial",
    "maskmem_tpos_enc",
)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: no weight decay on biases, norms, 1-D parameters, embeddings and learned
    tokens (SAM2's practice); trainable parameters only."""
    embed_params = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        leaf = name.rsplit(".", 1)[-1]
        if p.ndim <= 1 or id(p) in embed_params or any(k in leaf for k in _NO_DECAY_NAMES):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def lr_factor(step: int, total: int, warmup: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up from 0, then cosine / linear decay to
    ``min_ratio`` at ``total`` (or constant)."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(1, total - warmup)
    frac = min(1.0, max(0.0, (step - warmup) / span))
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - frac)
    raise ValueError(f"unknown schedule {schedule!r} (cosine, linear, constant)")


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (None: full precision)."""
    if mode == "off":
        return None
    if mode == "auto":
        if device.type != "cuda":
            return None  # CPU autocast is slower than fp32 here, and the sparse path is fp32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if mode == "fp16":
        return torch.float16
    raise ValueError(f"unknown amp mode {mode!r} (auto, bf16, fp16, off)")
