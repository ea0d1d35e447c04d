"""The TensorRT engine cache with real files (issue 21): hit, first build, stale ONNX / precision,
foreign GPU, TensorRT version change, corrupt engine bytes, corrupt sidecar, an engine that does
not deserialize. Every bad case rebuilds with a warning and never raises. TensorRT itself is not
needed: building and deserializing are the callables the TensorRT backend passes."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from sam4d_core.runtime.engine_cache import EngineCache, EngineKey

KEY = EngineKey(
    onnx_sha256="a" * 64,
    precision="fp16",
    tensorrt_version="10.13.0",
    gpu_name="NVIDIA H200",
    compute_capability="9.0",
)


class Builder:
    """Counts builds; an engine is its bytes, and "deserializes" when it starts with ENGINE."""

    def __init__(self) -> None:
        self.builds = 0

    def build(self) -> bytes:
        self.builds += 1
        return b"ENGINE" + bytes([self.builds]) * 100

    @staticmethod
    def deserialize(data: bytes) -> bytes | None:
        return data if data.startswith(b"ENGINE") else None


def _load(cache: EngineCache, b: Builder, key: EngineKey = KEY):
    return cache.load_or_build("memory_attention", key, b.build, b.deserialize)


def test_first_build_then_hit(tmp_path: Path) -> None:
    cache: EngineCache[bytes] = EngineCache(tmp_path / "engines")
    b = Builder()
    engine, ev = _load(cache, b)
    assert ev.status == "built" and b.builds == 1
    assert cache.engine_path("memory_attention", "fp16").read_bytes() == engine
    meta = json.loads(cache.meta_path("memory_attention", "fp16").read_text())
    assert meta["key"] == dataclasses.asdict(KEY)
    engine2, ev = _load(cache, b)
    assert ev.status == "hit" and engine2 == engine and b.builds == 1
    # No temporary files are left behind.
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == [
        "memory_attention.fp16.engine",
        "memory_attention.fp16.json",
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"onnx_sha256": "b" * 64}, "stale"),
        ({"gpu_name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}, "foreign_gpu"),
        ({"compute_capability": "8.9"}, "foreign_gpu"),
        ({"tensorrt_version": "10.14.1"}, "tensorrt_version"),
    ],
)
def test_mismatched_key_rebuilds_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, change: dict, reason: str
) -> None:
    cache: EngineCache[bytes] = EngineCache(tmp_path)
    b = Builder()
    _load(cache, b)
    new_key = dataclasses.replace(KEY, **change)
    with caplog.at_level(logging.WARNING):
        engine, ev = _load(cache, b, new_key)
    assert (ev.status, ev.reason) == ("rebuilt", reason) and b.builds == 2
    assert reason in caplog.text
    # The new engine replaced the old one and is now a hit under the new key.
    assert _load(cache, b, new_key)[1].status == "hit"
    assert _load(cache, b, KEY)[1].status == "rebuilt"


def test_other_precision_is_its_own_file(tmp_path: Path) -> None:
    cache: EngineCache[bytes] = EngineCache(tmp_path)
    b = Builder()
    _load(cache, b)
    _, ev = _load(cache, b, dataclasses.replace(KEY, precision="bf16"))
    assert ev.status == "built"
    assert _load(cache, b)[1].status == "hit"


def test_corrupt_engine_bytes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache: EngineCache[bytes] = EngineCache(tmp_path)
    b = Builder()
    _load(cache, b)
    path = cache.engine_path("memory_attention", "fp16")
    path.write_bytes(path.read_bytes()[:50])  # truncated (a crash mid-copy)
    with caplog.at_level(logging.WARNING):
        engine, ev = _load(cache, b)
    assert (ev.status, ev.reason) == ("rebuilt", "corrupt") and "SHA-256" in ev.detail
    assert engine.startswith(b"ENGINE") and len(engine) == 106


def test_corrupt_or_missing_sidecar(tmp_path: Path) -> None:
    cache: EngineCache[bytes] = EngineCache(tmp_path)
    b = Builder()
    _load(cache, b)
    meta = cache.meta_path("memory_attention", "fp16")
    meta.write_text("{not json")
    assert _load(cache, b)[1].reason == "corrupt"
    meta.unlink()
    assert _load(cache, b)[1].reason == "corrupt"  # an engine without sidecar is not trusted
    assert _load(cache, b)[1].status == "hit"


def test_engine_that_does_not_deserialize(tmp_path: Path) -> None:
    """Bytes and sidecar agree but TensorRT refuses the engine (e.g. a plugin changed)."""
    cache: EngineCache[bytes] = EngineCache(tmp_path)
    cache.store("memory_attention", KEY, b"GARBAGE")
    b = Builder()
    engine, ev = _load(cache, b)
    assert (ev.status, ev.reason) == ("rebuilt", "corrupt") and engine.startswith(b"ENGINE")

    def raising(data: bytes) -> bytes:
        if data.startswith(b"GARBAGE"):
            raise RuntimeError("Serialization assertion failed")
        return data

    cache.store("memory_attention", KEY, b"GARBAGE")
    _, ev = cache.load_or_build("memory_attention", KEY, b.build, raising)
    assert ev.reason == "corrupt" and "Serialization assertion" in ev.detail
