"""The manifest of an ONNX export: which stages, their I/O, and what model they came from.

``manifest.json`` sits next to the stage files written by ``python -m sam4d_export onnx``. The
runtimes read it to find the files, to check that they belong to the model being run (config hash,
checkpoint hash) and that a file was not replaced afterwards (its SHA-256).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sam4d_core.modeling.configs import SAM4DConfig, config_to_dict

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1


class RuntimeSetupError(RuntimeError):
    """A runtime cannot start: a package, a file, or a match between files and model is missing.

    The message says what is missing and the command that makes it.
    """


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def config_hash(config: SAM4DConfig) -> str:
    """Hex SHA-256 of the config's canonical JSON (sorted keys)."""
    text = json.dumps(config_to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def exact_release_flags(config: SAM4DConfig) -> dict[str, Any]:
    """Every exact-release switch of the config (fields named ``exact_release`` or
    ``released_*``), by dotted path."""
    out: dict[str, Any] = {}

    def walk(d: dict[str, Any], prefix: str) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            elif k == "exact_release" or k.startswith("released_"):
                out[f"{prefix}{k}"] = v

    walk(config_to_dict(config), "")
    return out


@dataclass
class StageEntry:
    """One stage file of the export.

    Attributes:
        file: file name relative to the manifest.
        sha256: the file's SHA-256 (also the TensorRT engine cache key's ONNX part).
        inputs, outputs: per tensor {"name", "shape" (ints and axis names), "dtype"}.
        dynamic_axes: {tensor name: {dimension (as a string): axis name}}.
        max_abs_error: the largest difference to PyTorch measured at export, per output.
    """

    file: str
    sha256: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    dynamic_axes: dict[str, dict[str, str]]
    max_abs_error: dict[str, float] = field(default_factory=dict)


@dataclass
class Manifest:
    """``manifest.json`` of an export directory."""

    format: int
    opset: int
    config_name: str
    config_hash: str
    checkpoint: str | None
    checkpoint_sha256: str | None
    exact_release: dict[str, Any]
    torch_version: str
    stages: dict[str, StageEntry]
    in_pytorch: dict[str, str] = field(default_factory=dict)

    def write(self, directory: str | Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        path.write_text(json.dumps(asdict(self), indent=2, sort_keys=False) + "\n")
        return path

    @classmethod
    def read(cls, directory: str | Path) -> Manifest:
        """Reads ``<directory>/manifest.json``; RuntimeSetupError when missing or unreadable."""
        path = Path(directory) / MANIFEST_NAME
        if not path.is_file():
            raise RuntimeSetupError(
                f"no ONNX export at {directory}: {path} is missing; make it with "
                "`python -m sam4d_export onnx --checkpoint CK --out DIR`"
            )
        try:
            data = json.loads(path.read_text())
            stages = {k: StageEntry(**v) for k, v in data.pop("stages").items()}
            return cls(stages=stages, **data)
        except (ValueError, TypeError, KeyError) as e:
            raise RuntimeSetupError(f"{path} is not a valid export manifest: {e}") from e

    def stage_path(self, directory: str | Path, stage: str) -> Path:
        """The file of ``stage``, checked to exist and to have the recorded hash."""
        if stage not in self.stages:
            raise RuntimeSetupError(
                f"the export at {directory} has no stage {stage!r} (it has {sorted(self.stages)})"
            )
        path = Path(directory) / self.stages[stage].file
        if not path.is_file():
            raise RuntimeSetupError(
                f"ONNX file of stage {stage!r} is missing: {path}; re-run "
                "`python -m sam4d_export onnx` for this model"
            )
        return path

    def check_model(self, config: SAM4DConfig) -> None:
        """RuntimeSetupError unless the export was made from a model of this config."""
        if config_hash(config) != self.config_hash:
            raise RuntimeSetupError(
                f"the ONNX export is of config {self.config_name!r} (hash "
                f"{self.config_hash[:12]}) but the model is {config.name!r} (hash "
                f"{config_hash(config)[:12]}); export this model again"
            )


__all__ = [
    "MANIFEST_NAME",
    "Manifest",
    "RuntimeSetupError",
    "StageEntry",
    "config_hash",
    "exact_release_flags",
    "sha256_file",
]
