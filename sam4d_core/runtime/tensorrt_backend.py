"""TensorRT 10 backend: engines built from the stage ONNX files, cached, run on torch CUDA tensors.

Engines are built with one optimization profile per stage whose min / opt / max shapes come from
:func:`dynamic_ranges` (per symbolic axis of :mod:`~sam4d_core.runtime.stages`), in FP32, FP16 or
BF16 (the graph's I/O stays float32; the flags let TensorRT choose lower-precision kernels).
They are cached by :class:`~sam4d_core.runtime.engine_cache.EngineCache` under the key ONNX hash,
precision, TensorRT version, GPU name and compute capability. Execution binds the addresses of
torch CUDA tensors (``set_tensor_address`` + ``execute_async_v3`` on torch's current stream), so
no pycuda is needed.

This module is type-checked against the ``tensorrt-stubs`` package (test/test_export_runtime.py);
``import tensorrt`` happens only inside the functions so that the rest of the runtime package
imports everywhere.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sam4d_core.runtime.engine_cache import CacheEvent, EngineCache, EngineKey
from sam4d_core.runtime.manifest import RuntimeSetupError, sha256_file
from sam4d_core.runtime.stages import StageSpec

if TYPE_CHECKING:
    import tensorrt as trt

    from sam4d_core.modeling.sam4d_base import SAM4D

LOG = logging.getLogger(__name__)
PRECISIONS = ("fp32", "fp16", "bf16")
WORKSPACE_BYTES = 4 << 30


def require_tensorrt() -> None:
    """RuntimeSetupError unless ``import tensorrt`` works and a CUDA device is present."""
    if importlib.util.find_spec("tensorrt") is None:
        raise RuntimeSetupError(
            "model.runtime 'tensorrt' needs TensorRT 10 (the 'tensorrt' Python package with its "
            "libraries) and a CUDA GPU; neither is optional"
        )
    try:
        import tensorrt
    except Exception as e:  # noqa: BLE001 - bindings without libraries raise ImportError/OSError
        raise RuntimeSetupError(f"the tensorrt package does not import: {e}") from e
    if not hasattr(tensorrt, "Builder"):
        # tensorrt-stubs alone makes ``import tensorrt`` succeed as an empty namespace package.
        raise RuntimeSetupError("the tensorrt package here is only type stubs, not TensorRT")
    if not torch.cuda.is_available():
        raise RuntimeSetupError("model.runtime 'tensorrt' needs a CUDA GPU; none is visible")


def dynamic_ranges(model: SAM4D, max_cameras: int = 8, max_objects: int = 16) -> dict[str, Any]:
    """(min, opt, max) per symbolic axis for ``model``: opt is the reference case (1 camera,
    1 object, a 30k-point sweep), max what a vehicle needs (cameras, objects, a dense sweep)."""
    h, w = model.config.grid_size
    mem = model.config.memory
    lidar = (1, 1024, 8192)
    img = (h * w, h * w, max_cameras * h * w)
    slots = max(mem.num_maskmem, 1)
    ptrs = max(mem.max_obj_ptrs_in_encoder, 1)
    memory = (1, slots * (h * w + lidar[1]), slots * (img[2] + lidar[2]) + 2 * ptrs)
    return {
        "cameras": (1, 1, max_cameras),
        "objects": (1, 1, max_objects),
        "image_tokens": img,
        "lidar_tokens": lidar,
        "memory_tokens": memory,
        "keys_image": (memory[0] + 1, memory[1] + lidar[1], memory[2] + lidar[2]),
        "keys_lidar": (memory[0] + 1, memory[1] + img[1], memory[2] + img[2]),
        "clicks": (1, 4, 64),
        "voxels_s8": (1, 8 * lidar[1], 8 * lidar[2]),
        "voxels_s4": (1, 64 * lidar[1], 64 * lidar[2]),
    }


def current_key(onnx_path: str | Path, precision: str, device: int = 0) -> EngineKey:
    """The cache key of an engine built here and now."""
    import tensorrt as trt

    major, minor = torch.cuda.get_device_capability(device)
    return EngineKey(
        onnx_sha256=sha256_file(onnx_path),
        precision=precision,
        tensorrt_version=str(trt.__version__),
        gpu_name=torch.cuda.get_device_name(device),
        compute_capability=f"{major}.{minor}",
    )


def build_engine(
    onnx_path: str | Path,
    spec: StageSpec,
    precision: str,
    ranges: dict[str, Any],
    workspace_bytes: int = WORKSPACE_BYTES,
) -> bytes:
    """A serialized engine of one stage (one optimization profile over its dynamic axes)."""
    import tensorrt as trt

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == "bf16":
        config.set_flag(trt.BuilderFlag.BF16)
    profile = builder.create_optimization_profile()
    for t in spec.inputs:
        shapes = []
        for pick in range(3):
            shapes.append(trt.Dims([ranges[a][pick] if isinstance(a, str) else a for a in t.axes]))
        profile.set_shape(t.name, shapes[0], shapes[1], shapes[2])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build an engine of {onnx_path}")
    return bytes(memoryview(serialized))


def _torch_dtype(dt: trt.DataType) -> torch.dtype:
    import tensorrt as trt

    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.BOOL: torch.bool,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
    }
    return table[dt]


class TensorRTStage:
    """A stage as a TensorRT engine (built or loaded from the cache at construction).

    Attributes:
        cache_event: what the cache did (hit, built, rebuilt and why): for diagnostics.
        engine_path: the cached engine file.
    """

    backend = "tensorrt"

    def __init__(
        self,
        name: str,
        onnx_path: str | Path,
        spec: StageSpec,
        cache_dir: str | Path,
        precision: str = "fp16",
        ranges: dict[str, Any] | None = None,
        device: int = 0,
    ) -> None:
        import tensorrt as trt

        self.name = name
        self.spec = spec
        self.device = torch.device("cuda", device)
        logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(logger)
        cache: EngineCache[trt.ICudaEngine] = EngineCache(cache_dir)
        key = current_key(onnx_path, precision, device)
        if ranges is None:
            raise ValueError("TensorRTStage needs the dynamic axis ranges (dynamic_ranges)")
        rng = ranges

        def build() -> bytes:
            LOG.info("building the TensorRT engine of %s (%s)", name, precision)
            return build_engine(onnx_path, spec, precision, rng)

        def deserialize(data: bytes) -> trt.ICudaEngine | None:
            return self._runtime.deserialize_cuda_engine(data)

        self.engine, self.cache_event = cache.load_or_build(name, key, build, deserialize)
        self.engine_path = cache.engine_path(name, precision)
        self.context = self.engine.create_execution_context()
        self._names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]

    @property
    def event(self) -> CacheEvent:
        return self.cache_event

    def run(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        import tensorrt as trt

        ctx = self.context
        keep: list[torch.Tensor] = []
        for n in self.spec.input_names:
            want = _torch_dtype(self.engine.get_tensor_dtype(n))
            t = inputs[n].to(self.device, want).contiguous()
            keep.append(t)
            ctx.set_input_shape(n, tuple(t.shape))
            ctx.set_tensor_address(n, t.data_ptr())
        outs = []
        for n in self.spec.output_names:
            dims = ctx.get_tensor_shape(n)
            shape = tuple(dims[i] for i in range(len(dims)))
            dt = _torch_dtype(self.engine.get_tensor_dtype(n))
            o = torch.empty(shape, dtype=dt, device=self.device)
            ctx.set_tensor_address(n, o.data_ptr())
            outs.append(o)
        assert all(self.engine.get_tensor_mode(n) != trt.TensorIOMode.NONE for n in self._names)
        stream = torch.cuda.current_stream(self.device)
        if not ctx.execute_async_v3(stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {self.name} failed")
        # The inputs in ``keep`` must outlive the launch: wait for it.
        stream.synchronize()
        return outs


__all__ = [
    "PRECISIONS",
    "TensorRTStage",
    "build_engine",
    "current_key",
    "dynamic_ranges",
    "require_tensorrt",
]
