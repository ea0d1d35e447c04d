"""ONNX export of the tracker-step stages, with a manifest, checked against PyTorch.

Each stage of :mod:`sam4d_core.runtime.stages` is exported with the dynamo exporter
(``torch.onnx.export(..., dynamo=True)``, opset >= 18: the TorchScript exporter bakes attention
sequence lengths into the graph, opset 17 once gave an invalid Split) with its dynamic axes, the
axis names of the graph inputs and outputs set to the spec's names, then run in ONNX Runtime with
2 threads against the PyTorch module on random inputs of two size sets (the export's example sizes
and one with a single object and camera). The largest differences go to the manifest.

Scatter ops are the known danger (``../shared/ENVIRONMENT.md``: ScatterND with repeated indices
was wrong or racy): :func:`scatter_ops` lists them per stage; none of the current stages has one
(their index inputs are only gathered, and the parent indices of the LiDAR decoder repeat by
construction, so the check above exercises repeated indices with 2 threads).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.runtime.manifest import (
    Manifest,
    StageEntry,
    config_hash,
    exact_release_flags,
    sha256_file,
)
from sam4d_core.runtime.stages import (
    STAGE_NAMES,
    StageSpec,
    example_inputs,
    stage_module,
    stage_specs,
)

LOG = logging.getLogger(__name__)

MIN_OPSET = 18
SCATTER_OPS = ("ScatterND", "ScatterElements", "Scatter")
IN_PYTORCH = {
    "lidar_encoder": "voxelization, kernel-map hashing and MinkUNet sparse convolutions "
    "(data-dependent gather-matmul-scatter)",
    "lidar_memory_encoder": "full sparse convolutions (as the LiDAR encoder)",
    "umpe": "geometry encodings from calibration, token centroids and ego motion (small MLPs "
    "on Python-side bookkeeping), inputs of the stages",
    "prompt_encoding": "label embeddings + UMPE of ragged click lists, multimask selection",
}

# A second size set for the check: one object, one camera, the smallest click count.
SINGLE_SIZES = {
    "objects": 1,
    "cameras": 1,
    "clicks": 2,
    "memory_tokens": 50,
    "image_tokens": 30,
    "lidar_tokens": 40,
    "voxels_s8": 70,
    "voxels_s4": 200,
}


def _rename_dims(model_proto: Any, spec: StageSpec) -> None:
    """Gives the graph inputs' and outputs' symbolic dims the spec's axis names (the exporter
    names them s0, s1, ...); the same names are replaced in every value_info."""
    rename: dict[str, str] = {}
    graph = model_proto.graph
    for vi, ts in zip(graph.input, spec.inputs, strict=True):
        for d, axis in zip(vi.type.tensor_type.shape.dim, ts.axes, strict=True):
            if d.dim_param and isinstance(axis, str):
                rename.setdefault(d.dim_param, axis)
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param in rename:
                d.dim_param = rename[d.dim_param]


def scatter_ops(path: str | Path) -> list[str]:
    """The scatter nodes of an ONNX file (op type / node name)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    return [f"{n.op_type}/{n.name}" for n in m.graph.node if n.op_type in SCATTER_OPS]


def export_stage(
    model: SAM4D, name: str, path: str | Path, opset: int = MIN_OPSET
) -> tuple[StageSpec, Path]:
    """Exports stage ``name`` of ``model`` (float32) to ``path``."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} < {MIN_OPSET} (the dynamo exporter needs >= 18)")
    spec = stage_specs(model)[name]
    module = stage_module(model, name)
    ex = example_inputs(model, name)
    dyn = tuple({i: torch.export.Dim.AUTO for i in t.dynamic_axes()} or None for t in spec.inputs)
    path = Path(path)
    with torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(
            module,
            tuple(ex[n] for n in spec.input_names),
            str(path),
            dynamo=True,
            opset_version=opset,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_shapes=dyn,
            external_data=False,
            verbose=False,
        )
    proto = onnx.load(str(path))
    _rename_dims(proto, spec)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))
    return spec, path


def compare_stage(
    model: SAM4D,
    name: str,
    path: str | Path,
    inputs: dict[str, torch.Tensor] | None = None,
    threads: int = 2,
) -> dict[str, float]:
    """Max |ONNX Runtime - PyTorch| per output of stage ``name`` on ``inputs`` (default: random
    inputs of both size sets, the larger error kept)."""
    from sam4d_core.runtime.backends import OnnxRuntimeStage, TorchStage

    spec = stage_specs(model)[name]
    ort_stage = OnnxRuntimeStage(name, path, threads=threads)
    torch_stage = TorchStage(name, stage_module(model, name), spec.input_names)
    cases = (
        [inputs]
        if inputs is not None
        else [example_inputs(model, name), example_inputs(model, name, SINGLE_SIZES)]
    )
    errors = dict.fromkeys(spec.output_names, 0.0)
    for case in cases:
        case = {k: v.float() if v.is_floating_point() else v for k, v in case.items()}
        ref = torch_stage.run(case)
        got = ort_stage.run(case)
        for n, r, g in zip(spec.output_names, ref, got, strict=True):
            if r.shape != g.shape:
                raise AssertionError(f"{name}.{n}: ONNX shape {tuple(g.shape)} != {tuple(r.shape)}")
            errors[n] = max(errors[n], float((g.float() - r.float()).abs().max()))
    return errors


def export_onnx(
    model: SAM4D,
    out_dir: str | Path,
    opset: int = MIN_OPSET,
    checkpoint: str | Path | None = None,
    stages: tuple[str, ...] = STAGE_NAMES,
    verify: bool = True,
) -> Manifest:
    """Exports every stage of ``model`` to ``out_dir`` and writes ``manifest.json``.

    Args:
        model: the model (exported in float32 on the CPU; its weights are baked in).
        out_dir: created when missing.
        opset: ONNX opset (>= 18).
        checkpoint: the checkpoint the weights came from (its SHA-256 goes to the manifest).
        stages: a subset of :data:`STAGE_NAMES` (default all).
        verify: compare each stage with PyTorch in ONNX Runtime (2 threads) and record the
            errors in the manifest.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.float().cpu().eval()
    entries: dict[str, StageEntry] = {}
    for name in stages:
        spec, path = export_stage(model, name, out / f"{name}.onnx", opset)
        scatters = scatter_ops(path)
        if scatters:
            # Not expected (module docstring); the comparison below uses repeated indices.
            LOG.warning("stage %s has scatter ops %s", name, scatters)
        errors = compare_stage(model, name, path) if verify else {}
        entries[name] = StageEntry(
            file=path.name,
            sha256=sha256_file(path),
            inputs=[{"name": t.name, "shape": list(t.axes), "dtype": t.dtype} for t in spec.inputs],
            outputs=[
                {"name": t.name, "shape": list(t.axes), "dtype": t.dtype} for t in spec.outputs
            ],
            dynamic_axes={
                t.name: {str(k): v for k, v in t.dynamic_axes().items()}
                for t in spec.inputs + spec.outputs
                if t.dynamic_axes()
            },
            max_abs_error=errors,
        )
        LOG.info("exported %s -> %s (max abs error %s)", name, path, errors)
    manifest = Manifest(
        format=1,
        opset=opset,
        config_name=model.config.name,
        config_hash=config_hash(model.config),
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=None if checkpoint is None else sha256_file(checkpoint),
        exact_release=exact_release_flags(model.config),
        torch_version=torch.__version__,
        stages=entries,
        in_pytorch=dict(IN_PYTORCH),
    )
    manifest.write(out)
    return manifest


__all__ = ["MIN_OPSET", "compare_stage", "export_onnx", "export_stage", "scatter_ops"]
