"""Strip a training checkpoint to the model's weights (our checkpoint format, config embedded),
optionally in half precision for shipping.

    python -m training.export_weights RUN/checkpoints/last.pt sam4d_small.pt --half

``--model-set KEY=VALUE`` changes the embedded model config on the way (an inference switch such
as ``cross_modal_selection=1.0``; a change of the module tree is refused: the weights must still
load). ``--half`` stores the large floating-point tensors as float16 (half the file size);
geometry tables (the UMPE frustum, the random Fourier matrix) and small tensors stay float32.
Loading (:func:`sam4d_core.checkpoint.load_state_dict_strict`) copies the values into the model's
own dtype, so a half file loads into a float32 model unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
import yaml

from sam4d_core.checkpoint import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CheckpointError,
    check_state_dict,
    read_checkpoint,
    save_atomic,
)
from sam4d_core.modeling.configs import config_from_dict, config_to_dict
from sam4d_core.modeling.sam4d_base import SAM4D

from .config import merge_config_data

# Kept in float32 whatever their size: metric geometry.
_KEEP_FP32 = ("frustum", "gaussian_matrix")


def half_state_dict(sd: dict[str, torch.Tensor], min_numel: int = 1024) -> dict[str, torch.Tensor]:
    """float32 tensors with at least ``min_numel`` values -> float16 (except geometry tables)."""
    out = {}
    for k, v in sd.items():
        if (
            v.dtype == torch.float32
            and v.numel() >= min_numel
            and not any(s in k for s in _KEEP_FP32)
        ):
            out[k] = v.half()
        else:
            out[k] = v
    return out


def parse_model_sets(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", ...]`` (YAML values) -> nested changes for :func:`export_weights`."""
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--model-set wants KEY=VALUE, got {item!r}")
        node = changes
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return changes


def export_weights(
    src: str | Path,
    dst: str | Path,
    half: bool = False,
    model_changes: dict[str, Any] | None = None,
    **meta: Any,
) -> Path:
    """Writes the weights of ``src`` (any checkpoint of our format) to ``dst``, with
    ``model_changes`` (nested) laid over the embedded model config."""
    ckpt = read_checkpoint(src)
    if ckpt.config is None:
        raise ValueError(f"{src}: not a checkpoint of our format (no embedded config)")
    config = ckpt.config
    if model_changes:
        config = config_from_dict(merge_config_data(config_to_dict(config), model_changes))
        with torch.device("meta"):
            model = SAM4D(config)
        try:
            check_state_dict(model, ckpt.state_dict, str(src))
        except CheckpointError as exc:
            raise ValueError(f"the changed config no longer fits the weights: {exc}") from exc
    sd = half_state_dict(ckpt.state_dict) if half else ckpt.state_dict
    step = ckpt.extra.get("train_state", {}).get("step", ckpt.extra.get("step"))
    payload = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config_to_dict(config),
        "model": sd,
        "step": step,
        **meta,
    }
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return save_atomic(payload, dst)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.export_weights", description=__doc__.splitlines()[0]
    )
    p.add_argument("src", type=Path, help="a training checkpoint (or model_final.pt)")
    p.add_argument("dst", type=Path)
    p.add_argument("--half", action="store_true", help="store large tensors as float16")
    p.add_argument(
        "--model-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="change the embedded model config (an inference switch), e.g. "
        "cross_modal_selection=1.0; repeatable",
    )
    args = p.parse_args(argv)
    out = export_weights(args.src, args.dst, args.half, parse_model_sets(args.model_set))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
