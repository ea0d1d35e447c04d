"""The one entry point that builds a SAM4D model: from a config name / file, a checkpoint, or both.

    build_sam4d("sam4d_small")                            # random weights
    build_sam4d(checkpoint="runs/small/last.pt")          # our format: the config is inside
    build_sam4d(checkpoint="sam4d_hieraS_mink34w32.pth")  # official: sam4d_hiera_s_mink34
    build_sam4d("sam4d_hiera_s_mink34", "sam4d_hieraS_mink34w32.pth", device="cuda")

Loading is always strict (:mod:`sam4d_core.checkpoint`). The model is returned in eval mode.
"""

from __future__ import annotations

from pathlib import Path

import torch

from sam4d_core.checkpoint import (
    OFFICIAL_CONFIG,
    CheckpointError,
    load_state_dict_strict,
    read_checkpoint,
    warn_if_not_exact_release,
)
from sam4d_core.modeling.configs import SAM4DConfig, config_to_dict, get_config, load_config
from sam4d_core.modeling.sam4d_base import SAM4D


def build_sam4d(
    config: str | Path | SAM4DConfig | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    eval_mode: bool = True,
) -> SAM4D:
    """Builds a SAM4D model and optionally loads weights.

    Args:
        config: a registered config name (``sam4d_hiera_s_mink34``, ``sam4d_small``,
            ``sam4d_tiny``), a JSON config file, or a config. Optional with a checkpoint: ours
            embeds its config, an official one implies ``sam4d_hiera_s_mink34``.
        checkpoint: a checkpoint file of either format (loaded strictly).
        device: where the model lives.
        eval_mode: return the model in eval mode (BatchNorm running statistics, no dropout).

    Raises:
        ValueError: neither config nor checkpoint; an unknown config.
        CheckpointError: unreadable checkpoint, a config that contradicts the embedded one, or
            keys / shapes that do not match.
    """
    ckpt = read_checkpoint(checkpoint) if checkpoint is not None else None
    if config is not None:
        cfg = load_config(config)
        if ckpt is not None and ckpt.config is not None:
            if config_to_dict(cfg) != config_to_dict(ckpt.config):
                raise CheckpointError(
                    f"{ckpt.path}: the embedded config {ckpt.config.name!r} differs from the "
                    f"requested {cfg.name!r}; pass config=None to use the embedded one"
                )
    elif ckpt is not None:
        cfg = ckpt.config if ckpt.config is not None else get_config(OFFICIAL_CONFIG)
    else:
        raise ValueError("build_sam4d needs a config (name, file or object) or a checkpoint")
    if ckpt is not None and ckpt.is_official_format and not cfg.umpe.released_frequency_quirk:
        raise CheckpointError(
            f"{ckpt.path}: an official checkpoint needs umpe.released_frequency_quirk=True (use "
            f"the {OFFICIAL_CONFIG!r} config)"
        )
    if ckpt is not None and ckpt.is_official_format:
        warn_if_not_exact_release(cfg, ckpt.path)
    model = SAM4D(cfg)
    if ckpt is not None:
        load_state_dict_strict(model, ckpt.state_dict, str(ckpt.path))
    model = model.to(device)
    return model.eval() if eval_mode else model.train()


__all__ = ["build_sam4d"]
