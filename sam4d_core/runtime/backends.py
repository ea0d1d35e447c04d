"""One stage, several backends: PyTorch modules and ONNX Runtime sessions behind ``run``.

Every backend takes and returns torch tensors ({input name: tensor} -> outputs in the stage's
output order), so the tracker's bookkeeping around the stages is the same whichever runs them.
The TensorRT backend is in :mod:`sam4d_core.runtime.tensorrt_backend`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch import nn

from sam4d_core.runtime import RUNTIMES  # noqa: E402 - re-exported
from sam4d_core.runtime.manifest import RuntimeSetupError


class StageBackend(Protocol):
    """A stage ready to run.

    Attributes:
        name: the stage (:data:`~sam4d_core.runtime.stages.STAGE_NAMES`).
        backend: "torch", "onnxruntime" or "tensorrt".
    """

    name: str
    backend: str

    def run(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Runs the stage on ``inputs`` (every input of its spec, by name); outputs in order."""
        ...


class TorchStage:
    """A stage as its PyTorch module (:func:`~sam4d_core.runtime.stages.stage_module`)."""

    backend = "torch"

    def __init__(self, name: str, module: nn.Module, input_names: list[str]) -> None:
        self.name = name
        self.module = module
        self.input_names = input_names

    def run(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        with torch.no_grad():
            out = self.module(*[inputs[n] for n in self.input_names if n in inputs])
        return list(out) if isinstance(out, tuple | list) else [out]


def require_onnxruntime() -> None:
    """RuntimeSetupError unless onnxruntime imports."""
    if importlib.util.find_spec("onnxruntime") is None:
        raise RuntimeSetupError(
            "model.runtime 'onnxruntime' needs the onnxruntime package: "
            "pip install onnxruntime (or onnxruntime-gpu on a CUDA machine)"
        )


def onnxruntime_providers(device: str, include_tensorrt: bool = False) -> list[str]:
    """ONNX Runtime execution providers for ``device`` among those this install has: CUDA (and
    optionally TensorRT) first on a CUDA device, CPU always last."""
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    wanted = []
    if device.startswith("cuda"):
        if include_tensorrt:
            wanted.append("TensorrtExecutionProvider")
        wanted.append("CUDAExecutionProvider")
    wanted.append("CPUExecutionProvider")
    return [p for p in wanted if p in have]


class OnnxRuntimeStage:
    """A stage as an ONNX Runtime session.

    Args:
        name: the stage.
        path: its ONNX file.
        threads: intra-op threads (0: ONNX Runtime's default, one per core).
        device: "cpu" or "cuda[:N]": which execution providers to ask for (see
            :func:`onnxruntime_providers`); outputs come back on this device.
        tensorrt_ep: also ask for the TensorRT execution provider on CUDA.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        name: str,
        path: str | Path,
        threads: int = 0,
        device: str = "cpu",
        tensorrt_ep: bool = False,
    ) -> None:
        require_onnxruntime()
        import onnxruntime as ort

        self.name = name
        self.device = torch.device(device)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: the PyTorch stages between two ONNX Runtime calls (LiDAR
        # encoder, UMPE) need the same few cores, and spinning pool threads take them away.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.providers = onnxruntime_providers(device, tensorrt_ep)
        try:
            self.session = ort.InferenceSession(str(path), so, providers=self.providers)
        except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
            raise RuntimeSetupError(f"ONNX Runtime cannot load {path}: {e}") from e
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        feed = {}
        for n in self.input_names:
            t = inputs[n].detach()
            if t.is_floating_point() and t.dtype != torch.float32:
                t = t.float()
            feed[n] = np.ascontiguousarray(t.cpu().numpy())
        outs = self.session.run(self.output_names, feed)
        return [torch.from_numpy(o).to(self.device) for o in outs]


__all__ = [
    "RUNTIMES",
    "OnnxRuntimeStage",
    "StageBackend",
    "TorchStage",
    "onnxruntime_providers",
    "require_onnxruntime",
]
