"""Where the model comes from and where it runs: ``model.checkpoint`` -> a file, ``model.device`` ->
a torch device, and the registered ``model.config`` names. The one module of the parameters that
asks torch (imported only when a CUDA device count is needed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

from sam4d_core.weights import BUNDLED_MODEL

__all__ = [
    "BUNDLED_CHECKPOINT",
    "DEVICE_PATTERN",
    "bundled_checkpoint_candidates",
    "known_configs",
    "resolve_checkpoint",
    "resolve_device",
]

PACKAGE = "sam4d_ros"
# The default model ships inside the sam4d_core Python package (sam4d_core/weights), so every
# install finds it next to the code that loads it.
BUNDLED_CHECKPOINT = BUNDLED_MODEL
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


def _repo_root() -> Path:
    # resolve(): in a colcon --symlink-install space this file is a link into the checkout.
    return Path(__file__).resolve().parents[2]


def _share_dir() -> Path | None:
    try:
        from ament_index_python.packages import get_package_share_directory

        return Path(get_package_share_directory(PACKAGE))
    except Exception:  # not installed, or no ament_index: the repository is the fallback
        return None


def bundled_checkpoint_candidates() -> list[Path]:
    """Where the bundled model is looked for, in order."""
    return [BUNDLED_CHECKPOINT]


def resolve_checkpoint(value: str) -> Path:
    """The checkpoint file of ``model.checkpoint``; raises FileNotFoundError listing the places
    tried (empty value = the bundled model)."""
    if not value:
        candidates = bundled_checkpoint_candidates()
        what = "the bundled default model"
    else:
        path = Path(os.path.expandvars(os.path.expanduser(value)))
        if path.is_absolute():
            candidates = [path]
        else:
            candidates = [Path.cwd() / path]
            share = _share_dir()
            if share is not None:
                candidates.append(share / path)
            candidates.append(_repo_root() / path)
        what = f"'{value}'"
    for c in candidates:
        if c.is_file():
            return c
    tried = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise FileNotFoundError(f"{what} not found (tried: {tried})")


def _torch_cuda_count() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def resolve_device(device: str, cuda_device_count: Callable[[], int] | None = None) -> str:
    """ "auto" / "cpu" / "cuda" / "cuda:N" -> a concrete device; raises ValueError when CUDA is
    asked for but not available (or the index is out of range)."""
    if not isinstance(device, str) or not DEVICE_PATTERN.match(device):
        raise ValueError(f"'{device}' is not a device; use auto, cpu, cuda or cuda:N")
    if device == "cpu":
        return "cpu"
    count = (cuda_device_count or _torch_cuda_count)()
    if device == "auto":
        return "cuda:0" if count > 0 else "cpu"
    if count == 0:
        raise ValueError(
            f"'{device}' requested but CUDA is not available (no GPU visible to torch, or a CPU "
            f"build of torch); use cpu or auto"
        )
    index = 0 if device == "cuda" else int(device.split(":")[1])
    if index >= count:
        raise ValueError(f"'{device}' requested but only {count} CUDA device(s) are visible")
    return f"cuda:{index}"


def known_configs() -> list[str] | None:
    try:
        from sam4d_core.modeling.configs import CONFIGS
    except Exception:  # the model package may be unavailable (e.g. without torch): skip the check
        return None
    return sorted(CONFIGS)
