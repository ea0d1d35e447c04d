"""Stage runtimes of a tracker step: PyTorch, ONNX Runtime and TensorRT behind one interface."""

from __future__ import annotations

import importlib.util
from pathlib import Path

RUNTIMES = ("torch", "onnxruntime", "tensorrt")
"""The runtimes a tracker can run its dense stages on (sam4d_core.runtime.backends)."""


def runtime_setup_problems(runtime: str, onnx_dir: str, check_files: bool = True) -> list[str]:
    """What keeps ``runtime`` from starting with the export at ``onnx_dir`` (empty: nothing
    found; the model / export match is checked when the model is loaded). Cheap: no import of
    the runtime itself, only a look for the package and the files."""
    if runtime not in RUNTIMES:
        return [f"unknown runtime '{runtime}' (choose one of {list(RUNTIMES)})"]
    if runtime == "torch":
        return []
    problems = []
    pkg = "onnxruntime" if runtime == "onnxruntime" else "tensorrt"
    if importlib.util.find_spec(pkg) is None:
        hint = (
            "pip install onnxruntime (onnxruntime-gpu on CUDA)"
            if pkg == "onnxruntime"
            else "TensorRT 10 with its Python bindings and a CUDA GPU"
        )
        problems.append(f"runtime '{runtime}' needs the '{pkg}' package, not installed: {hint}")
    if not onnx_dir:
        problems.append(
            f"runtime '{runtime}' needs model.onnx_dir, the ONNX export of the model (make it "
            "with `python -m sam4d_export onnx --checkpoint CK --out DIR`)"
        )
    elif check_files:
        manifest = Path(onnx_dir).expanduser() / "manifest.json"
        if not manifest.is_file():
            problems.append(
                f"model.onnx_dir '{onnx_dir}' has no manifest.json (not an export of "
                "`python -m sam4d_export onnx`)"
            )
    return problems
