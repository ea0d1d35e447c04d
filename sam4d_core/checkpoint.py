"""SAM4D checkpoints: the official format, our own format with the config embedded, inspection.

Two formats, both ``torch.save`` zip files read with ``weights_only=True``:

- official (``sam4d_hieraS_mink34w32.pth``): ``{"model": state_dict, ...}`` with the keys of the
  released module tree (DESIGN.md); it carries no config, so it is loaded into
  ``sam4d_hiera_s_mink34`` (whose UMPE reproduces the released sine-PE quirk);
- ours: ``{"format": "sam4d_ros.checkpoint", "version": 1, "config": <config dict>,
  "model": state_dict, ...extra}``, so :func:`sam4d_core.build_sam.build_sam4d` needs no config
  name.

Loading is strict: the checkpoint's keys and shapes must equal the model's exactly. Missing,
unexpected and mis-shaped keys are reported together, grouped by module prefix, with shapes
(:class:`CheckpointError`). The check (:func:`check_state_dict`) works on a model built on the
meta device too, which is how the tests validate the official key set without 487 MB of weights.

Command line::

    python -m sam4d_core.checkpoint inspect PATH [--keys]

prints the format, the embedded config (or the config an official file implies), the parameter
count and a summary by prefix (entries, parameter / buffer entries, values), and whether the file
matches that config's module tree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sam4d_core.modeling.configs import (
    SAM4DConfig,
    config_from_dict,
    config_to_dict,
    get_config,
)

FORMAT_NAME = "sam4d_ros.checkpoint"
FORMAT_VERSION = 1
OFFICIAL_CONFIG = "sam4d_hiera_s_mink34"

# Module prefixes of the official tree (DESIGN.md), longest first; used to group key listings.
KNOWN_PREFIXES = (
    "pure_model.backbone.image.0",
    "pure_model.backbone.image.1",
    "pure_model.backbone.point.sparse_3d.0",
    "pure_model.fusion.memory_attention",
    "pure_model.fusion.memory_encoder.image",
    "pure_model.fusion.memory_encoder.point",
    "pure_model.head.sam.sam_prompt_encoder",
    "pure_model.head.sam.psam_prompt_encoder",
    "pure_model.head.sam.sam_mask_decoder",
    "pure_model.head.sam.obj_ptr_proj",
    "pure_model.head.sam.obj_ptr_tpos_proj",
    "pure_model.head.sam.no_obj_ptr",
    "union_pe_func",
    "ego_pose_encoder",
    "mask_downsample_img",
    "mask_downsample_pts",
)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not match the model (the message says why)."""


def key_prefix(key: str) -> str:
    """The module prefix a key is grouped under (a known official prefix, else its first part)."""
    for prefix in KNOWN_PREFIXES:
        if key == prefix or key.startswith(prefix + "."):
            return prefix
    parts = key.split(".")
    return ".".join(parts[:3]) if parts[0] == "pure_model" else parts[0]


# ---------------------------------------------------------------------------------------------
# Reading and writing.


@dataclass
class Checkpoint:
    """A checkpoint read from disk.

    Attributes:
        path: the file.
        state_dict: the model's tensors.
        config: the embedded config (our format), or None (official format).
        extra: the other top-level entries (e.g. training state, metadata).
    """

    path: Path
    state_dict: dict[str, torch.Tensor]
    config: SAM4DConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_official_format(self) -> bool:
        return self.config is None


def read_checkpoint(path: str | Path, verify: bool = True) -> Checkpoint:
    """Reads a checkpoint of either format (on the CPU, ``weights_only=True``).

    ``verify`` checks the CRC of every record of the zip archive first (torch.load does not).

    Raises:
        CheckpointError: no such file; not a readable PyTorch file (truncated, corrupted, CRC
            error, not a zip archive); no ``"model"`` state dict; an unreadable embedded config.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint (not a zip archive: truncated, corrupted, or saved "
            "with the legacy non-zip format)"
        )
    if verify:
        # torch.load does not check the CRCs of the tensor records: a damaged byte in the
        # weights would load silently. One pass over the file (~0.5 s for the official one).
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise CheckpointError(f"{path}: corrupted zip archive: {exc}") from exc
        if bad is not None:
            raise CheckpointError(f"{path}: corrupted checkpoint (CRC error in record {bad!r})")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise CheckpointError(
            f"{path}: cannot read the checkpoint (truncated or corrupted?): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(obj, Mapping) or "model" not in obj:
        found = sorted(obj)[:10] if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: no 'model' state dict in the checkpoint (found {found})")
    sd = obj["model"]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: 'model' is not a state dict of tensors")
    config = None
    extra = {k: v for k, v in obj.items() if k not in ("model", "config", "format", "version")}
    if obj.get("format") == FORMAT_NAME:
        version = obj.get("version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"{path}: checkpoint format version {version}, this code reads {FORMAT_VERSION}"
            )
        try:
            config = config_from_dict(obj["config"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: unreadable embedded config: {exc}") from exc
    return Checkpoint(path=path, state_dict=dict(sd), config=config, extra=extra)


def save_checkpoint(
    model: nn.Module, path: str | Path, extra: Mapping[str, Any] | None = None
) -> Path:
    """Saves ``model`` (a :class:`~sam4d_core.modeling.sam4d_base.SAM4D`) in our format, with its
    config embedded; the file is written atomically (temporary file, then rename).

    Args:
        extra: more top-level entries (tensors, numbers, strings, lists, dicts; loadable with
            ``weights_only=True``).
    """
    config = getattr(model, "config", None)
    if not isinstance(config, SAM4DConfig):
        raise TypeError("save_checkpoint needs a SAM4D model (with a .config)")
    reserved = {"model", "config", "format", "version"} & set(extra or {})
    if reserved:
        raise ValueError(f"extra entries may not use the reserved names {sorted(reserved)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": config_to_dict(config),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    payload.update(extra or {})
    return save_atomic(payload, path)


def save_atomic(payload: dict[str, Any], path: Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, renamed over it when complete (a
    reader never sees a half-written checkpoint); returns ``path``."""
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------
# Strict comparison with a model.


@dataclass
class StateDictDiff:
    """Keys of a state dict that do not fit a model.

    Attributes:
        missing: key -> the model's shape, for keys the state dict lacks.
        unexpected: key -> the state dict's shape, for keys the model does not have.
        mismatched: key -> (model shape, state dict shape).
    """

    missing: dict[str, tuple[int, ...]] = field(default_factory=dict)
    unexpected: dict[str, tuple[int, ...]] = field(default_factory=dict)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def format(self, max_per_group: int = 12) -> str:
        """A readable report, grouped by module prefix, with shapes."""
        lines: list[str] = []

        def section(title: str, items: dict[str, str]) -> None:
            if not items:
                return
            lines.append(f"{title} ({len(items)}):")
            groups: dict[str, list[str]] = {}
            for key in sorted(items):
                groups.setdefault(key_prefix(key), []).append(key)
            for prefix, keys in groups.items():
                lines.append(f"  {prefix}: {len(keys)}")
                for key in keys[:max_per_group]:
                    lines.append(f"    {key} {items[key]}")
                if len(keys) > max_per_group:
                    lines.append(f"    ... and {len(keys) - max_per_group} more")

        section("missing keys (model shape)", {k: str(list(v)) for k, v in self.missing.items()})
        section(
            "unexpected keys (checkpoint shape)",
            {k: str(list(v)) for k, v in self.unexpected.items()},
        )
        section(
            "mis-shaped keys (model shape != checkpoint shape)",
            {k: f"{list(a)} != {list(b)}" for k, (a, b) in self.mismatched.items()},
        )
        return "\n".join(lines)


def diff_state_dict(
    expected: Mapping[str, torch.Tensor | torch.Size | tuple[int, ...]],
    state_dict: Mapping[str, torch.Tensor],
) -> StateDictDiff:
    """Compares a state dict with the expected keys / shapes (tensors or shapes)."""

    def shape(v: Any) -> tuple[int, ...]:
        return tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v)

    diff = StateDictDiff()
    for key, v in expected.items():
        if key not in state_dict:
            diff.missing[key] = shape(v)
        elif shape(state_dict[key]) != shape(v):
            diff.mismatched[key] = (shape(v), shape(state_dict[key]))
    for key, v in state_dict.items():
        if key not in expected:
            diff.unexpected[key] = shape(v)
    return diff


def check_state_dict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict"
) -> None:
    """Raises :class:`CheckpointError` unless ``state_dict`` has exactly the model's keys and
    shapes. Works for a model on the meta device."""
    diff = diff_state_dict(model.state_dict(), state_dict)
    if not diff.ok:
        raise CheckpointError(f"{source} does not match the model:\n{diff.format()}")


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "state dict"
) -> nn.Module:
    """:func:`check_state_dict`, then ``load_state_dict(strict=True)``. A model on the meta
    device takes the tensors themselves (``assign=True``); otherwise values are copied (dtype and
    device of the model kept)."""
    check_state_dict(model, state_dict, source)
    on_meta = any(t.is_meta for t in model.state_dict().values())
    model.load_state_dict(state_dict, strict=True, assign=on_meta)
    return model


def load_official_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Loads the official ``sam4d_hieraS_mink34w32.pth`` (or any official-format file) strictly.

    The model must reproduce the released sine-PE behaviour (``released_frequency_quirk``), as
    ``sam4d_hiera_s_mink34`` does; otherwise the weights would load but not mean what they were
    trained for.
    """
    ckpt = read_checkpoint(path)
    config = getattr(model, "config", None)
    if config is not None and not config.umpe.released_frequency_quirk:
        raise CheckpointError(
            f"{ckpt.path}: an official checkpoint needs umpe.released_frequency_quirk=True (use "
            f"the {OFFICIAL_CONFIG!r} config)"
        )
    if config is not None:
        warn_if_not_exact_release(config, ckpt.path)
    return load_state_dict_strict(model, ckpt.state_dict, str(ckpt.path))


def warn_if_not_exact_release(config: Any, path: str | Path) -> None:
    """Warns when official weights go into a model that is not in exact-release mode
    (``image.exact_release`` and ``point.exact_release``): they load, but the LiDAR path (and the
    image resize) then differ from what the weights were trained with."""
    if not (config.image.exact_release and config.point.exact_release):
        warnings.warn(
            f"{path}: official weights in a model without exact-release mode "
            f"(image.exact_release={config.image.exact_release}, "
            f"point.exact_release={config.point.exact_release}): results will differ from the "
            f"released code's (use the {OFFICIAL_CONFIG!r} config)",
            stacklevel=3,
        )


# ---------------------------------------------------------------------------------------------
# Inspection.


@dataclass
class PrefixSummary:
    """Per-prefix counts of a state dict (see :func:`summarize_state_dict`)."""

    prefix: str
    entries: int = 0
    parameter_entries: int = 0
    buffer_entries: int = 0
    unknown_entries: int = 0
    values: int = 0
    parameter_values: int = 0


def summarize_state_dict(
    state_dict: Mapping[str, torch.Tensor | torch.Size],
    buffer_keys: set[str] | None = None,
    parameter_keys: set[str] | None = None,
) -> list[PrefixSummary]:
    """Counts entries and values per :func:`key_prefix`, in first-seen order.

    ``buffer_keys`` / ``parameter_keys`` (from a model of the same config) classify the entries;
    without them every entry counts as unknown.
    """
    rows: dict[str, PrefixSummary] = {}
    for key, v in state_dict.items():
        n = int(torch.Size(v.shape if isinstance(v, torch.Tensor) else v).numel())
        row = rows.setdefault(key_prefix(key), PrefixSummary(key_prefix(key)))
        row.entries += 1
        row.values += n
        if parameter_keys is not None and key in parameter_keys:
            row.parameter_entries += 1
            row.parameter_values += n
        elif buffer_keys is not None and key in buffer_keys:
            row.buffer_entries += 1
        else:
            row.unknown_entries += 1
    return list(rows.values())


def _meta_model(config: SAM4DConfig) -> nn.Module:
    from sam4d_core.modeling.sam4d_base import SAM4D

    with torch.device("meta"):
        return SAM4D(config)


def inspect_checkpoint(path: str | Path, show_keys: bool = False, out: Any = None) -> int:
    """Prints a report about a checkpoint; returns 0 when it matches its config's model, else 1."""
    out = out or sys.stdout
    ckpt = read_checkpoint(path)
    size = ckpt.path.stat().st_size
    print(f"file: {ckpt.path} ({size / 2**20:.1f} MiB)", file=out)
    if ckpt.config is None:
        config = get_config(OFFICIAL_CONFIG)
        print(f"format: official (no embedded config; loads into {OFFICIAL_CONFIG!r})", file=out)
    else:
        config = ckpt.config
        print(f"format: {FORMAT_NAME} v{FORMAT_VERSION}, config {config.name!r}:", file=out)
        print(json.dumps(config_to_dict(config), indent=2), file=out)
    if ckpt.extra:
        print(f"extra entries: {sorted(ckpt.extra)}", file=out)
    model = _meta_model(config)
    params = {k for k, _ in model.named_parameters()}
    buffers = {k for k, _ in model.named_buffers()} & set(model.state_dict())
    rows = summarize_state_dict(ckpt.state_dict, buffers, params)
    total = PrefixSummary("total")
    for r in rows:
        for f in (
            "entries",
            "parameter_entries",
            "buffer_entries",
            "unknown_entries",
            "values",
            "parameter_values",
        ):
            setattr(total, f, getattr(total, f) + getattr(r, f))
    print(
        f"entries: {total.entries} ({total.parameter_entries} parameters, "
        f"{total.buffer_entries} buffers, {total.unknown_entries} not in the model); "
        f"parameters: {total.parameter_values / 1e6:.2f} M ({total.parameter_values:,} values)",
        file=out,
    )
    width = max(len(r.prefix) for r in [*rows, total])
    header = f"{'prefix':<{width}}  {'entries':>7}  {'params':>6}  {'buffers':>7}  {'values':>12}"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in [*rows, total]:
        print(
            f"{r.prefix:<{width}}  {r.entries:>7}  {r.parameter_entries:>6}  "
            f"{r.buffer_entries:>7}  {r.values:>12,}",
            file=out,
        )
    if show_keys:
        for key, v in ckpt.state_dict.items():
            print(f"  {key} {list(v.shape)} {str(v.dtype).replace('torch.', '')}", file=out)
    diff = diff_state_dict(model.state_dict(), ckpt.state_dict)
    if diff.ok:
        print(f"matches the {config.name!r} module tree: yes", file=out)
        return 0
    print(f"matches the {config.name!r} module tree: NO\n{diff.format()}", file=out)
    return 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sam4d_core.checkpoint", description="SAM4D checkpoint tools"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_inspect = sub.add_parser("inspect", help="print a checkpoint's config and key summary")
    p_inspect.add_argument("path", type=Path)
    p_inspect.add_argument("--keys", action="store_true", help="also list every key")
    args = parser.parse_args(argv)
    try:
        return inspect_checkpoint(args.path, show_keys=args.keys)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "PrefixSummary",
    "StateDictDiff",
    "check_state_dict",
    "diff_state_dict",
    "inspect_checkpoint",
    "key_prefix",
    "load_official_checkpoint",
    "load_state_dict_strict",
    "read_checkpoint",
    "save_atomic",
    "save_checkpoint",
    "summarize_state_dict",
]


if __name__ == "__main__":
    sys.exit(main())
