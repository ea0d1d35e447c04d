"""On-disk cache of TensorRT engines, keyed like the ROS nodes that do it well.

An engine is only valid for the ONNX file it was built from, the precision it was built with, the
TensorRT version that built it and the GPU (name and compute capability) it was built on. The cache
keeps one engine per stage and precision (``<stage>.<precision>.engine``) with a JSON sidecar that
records that key and the SHA-256 of the engine bytes. On load, an engine whose sidecar is missing,
unreadable or whose bytes do not match it is *corrupt*; one whose key differs is *stale* (other
ONNX file or precision), *foreign* (other GPU) or of *another TensorRT version*; an engine that
TensorRT refuses to deserialize is corrupt too. Each of these is rebuilt with a warning (and the
reason is returned for diagnostics), never raised. Files are written to a temporary name and
renamed, so a crash mid-write leaves no half engine under the real name.

The cache itself does not import TensorRT: building and deserializing are callables, so its
logic is testable with real files anywhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Generic, TypeVar

LOG = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class EngineKey:
    """What an engine is valid for.

    Attributes:
        onnx_sha256: SHA-256 of the ONNX file.
        precision: "fp32", "fp16" or "bf16".
        tensorrt_version: ``tensorrt.__version__`` of the builder.
        gpu_name: the device name (``torch.cuda.get_device_name``).
        compute_capability: "major.minor".
    """

    onnx_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str


@dataclass(frozen=True)
class CacheEvent:
    """What a load did: ``status`` "hit", "built" (nothing cached) or "rebuilt"; ``reason`` why
    a cached engine was not used ("corrupt", "stale", "foreign_gpu", "tensorrt_version")."""

    stage: str
    status: str
    reason: str = ""
    detail: str = ""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class EngineCache(Generic[T]):
    """Engines of one export (directory created on first write)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def engine_path(self, stage: str, precision: str) -> Path:
        return self.directory / f"{stage}.{precision}.engine"

    def meta_path(self, stage: str, precision: str) -> Path:
        return self.directory / f"{stage}.{precision}.json"

    def check(self, stage: str, key: EngineKey) -> tuple[str, str]:
        """("", "") when a valid engine for ``key`` is cached, else (reason, detail); reason ""
        with detail "missing" when there is nothing cached."""
        ep, mp = self.engine_path(stage, key.precision), self.meta_path(stage, key.precision)
        if not ep.exists() and not mp.exists():
            return "", "missing"
        try:
            meta = json.loads(mp.read_text())
            cached = EngineKey(**meta["key"])
            digest = meta["engine_sha256"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            return "corrupt", f"sidecar {mp.name} unreadable ({e})"
        try:
            data = ep.read_bytes()
        except OSError as e:
            return "corrupt", f"engine {ep.name} unreadable ({e})"
        if _sha256(data) != digest:
            return "corrupt", f"engine {ep.name} does not match its recorded SHA-256"
        if cached.onnx_sha256 != key.onnx_sha256 or cached.precision != key.precision:
            return "stale", "built from another ONNX file or precision"
        if (cached.gpu_name, cached.compute_capability) != (key.gpu_name, key.compute_capability):
            return "foreign_gpu", (
                f"built on {cached.gpu_name} (sm {cached.compute_capability}), this is "
                f"{key.gpu_name} (sm {key.compute_capability})"
            )
        if cached.tensorrt_version != key.tensorrt_version:
            return "tensorrt_version", (
                f"built by TensorRT {cached.tensorrt_version}, this is {key.tensorrt_version}"
            )
        return "", ""

    def store(self, stage: str, key: EngineKey, data: bytes) -> Path:
        """Writes an engine and its sidecar (engine first: a sidecar never points at nothing)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        ep = self.engine_path(stage, key.precision)
        _write_atomic(ep, data)
        meta = {"key": asdict(key), "engine_sha256": _sha256(data), "bytes": len(data)}
        _write_atomic(self.meta_path(stage, key.precision), json.dumps(meta, indent=2).encode())
        return ep

    def load_or_build(
        self,
        stage: str,
        key: EngineKey,
        build: Callable[[], bytes],
        deserialize: Callable[[bytes], T | None],
    ) -> tuple[T, CacheEvent]:
        """The cached engine of ``stage`` for ``key``, or a freshly built (and stored) one.

        Args:
            build: serializes a new engine (TensorRT's builder).
            deserialize: engine bytes -> engine, None or an exception when it cannot.

        Returns:
            (engine, what happened). A failed build raises; nothing else does.
        """
        reason, detail = self.check(stage, key)
        if not reason and detail != "missing":
            data = self.engine_path(stage, key.precision).read_bytes()
            try:
                engine = deserialize(data)
            except Exception as e:  # noqa: BLE001 - any failure means: rebuild
                engine, detail = None, f"deserialization failed: {e}"
            else:
                detail = "deserialization returned nothing"
            if engine is not None:
                return engine, CacheEvent(stage, "hit")
            reason = "corrupt"
        if reason:
            LOG.warning("TensorRT engine of %s is %s (%s): rebuilding", stage, reason, detail)
        data = build()
        self.store(stage, key, data)
        engine = deserialize(data)
        if engine is None:
            raise RuntimeError(f"a freshly built engine of {stage} does not deserialize")
        status = "rebuilt" if reason else "built"
        return engine, CacheEvent(stage, status, reason, "" if not reason else detail)


__all__ = ["CacheEvent", "EngineCache", "EngineKey"]
