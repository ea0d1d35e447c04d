"""ONNX export of the tiny config (issue 21): every stage matches PyTorch in ONNX Runtime (2
threads, random inputs of two size sets incl. one object / one camera), the manifest says what the
runtimes need, the tracker on ONNX Runtime equals the tracker on PyTorch on a short synthetic
drive, start-up errors are clear, and the TensorRT backend type-checks against tensorrt-stubs."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.modeling.configs import get_config
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.runtime.manifest import MANIFEST_NAME, Manifest, RuntimeSetupError, config_hash
from sam4d_core.runtime.model_runtime import install_runtime
from sam4d_core.runtime.stages import STAGE_NAMES, example_inputs
from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt
from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig
from sam4d_export.onnx_export import compare_stage, export_onnx, scatter_ops

pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements.lock")
torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def _tiny_model(distance_bias: bool) -> SAM4D:
    """The tiny config (with MCMA's distance bias, as the bundled model, when asked)."""
    cfg = get_config("sam4d_tiny")
    if distance_bias:
        cfg = dataclasses.replace(
            cfg, memory_attention=dataclasses.replace(cfg.memory_attention, distance_bias=True)
        )
    torch.manual_seed(0)
    m = build_sam4d(cfg)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module")
def model() -> SAM4D:
    return _tiny_model(distance_bias=True)


@pytest.fixture(scope="module")
def export_dir(model: SAM4D, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    export_onnx(model, out)
    return out


def test_manifest(model: SAM4D, export_dir: Path) -> None:
    data = json.loads((export_dir / MANIFEST_NAME).read_text())
    assert data["opset"] >= 18
    assert data["config_hash"] == config_hash(model.config)
    assert data["exact_release"] == {
        "image.exact_release": False,
        "point.exact_release": False,
        "umpe.released_frequency_quirk": False,
        "head.released_prompt_order": True,
    }
    assert set(data["stages"]) == set(STAGE_NAMES)
    assert "lidar_encoder" in data["in_pytorch"]
    man = Manifest.read(export_dir)
    for name, e in man.stages.items():
        assert (export_dir / e.file).is_file()
        # Exported errors in float32: well below any mask threshold.
        assert max(e.max_abs_error.values()) < 1e-4, (name, e.max_abs_error)
        # No scatter in any stage (../shared/ENVIRONMENT.md: ScatterND races with 2 threads).
        assert scatter_ops(export_dir / e.file) == [], name
    ma = man.stages["memory_attention"]
    assert ma.dynamic_axes["memory"] == {"0": "objects", "1": "memory_tokens"}
    assert {i["name"] for i in ma.inputs} >= {"image_distances", "points_distances"}
    assert man.stages["image_encoder"].dynamic_axes["images"] == {"0": "cameras"}
    assert man.stages["mask_decoder_image"].dynamic_axes["sparse"] == {
        "0": "objects",
        "1": "clicks",
    }
    # The graph inputs carry the manifest's axis names.
    import onnx

    g = onnx.load(str(export_dir / ma.file)).graph
    dims = {
        i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input
    }
    assert dims["memory"][:2] == ["objects", "memory_tokens"]


@pytest.mark.parametrize("stage", STAGE_NAMES)
def test_stage_matches_torch_other_sizes(model: SAM4D, export_dir: Path, stage: str) -> None:
    """Sizes the export never saw (more objects, clicks, tokens); repeated gather indices."""
    sizes = {
        "objects": 5,
        "cameras": 3,
        "clicks": 7,
        "memory_tokens": 90,
        "image_tokens": 64,
        "lidar_tokens": 13,
        "voxels_s8": 40,
        "voxels_s4": 300,
    }
    inputs = example_inputs(model, stage, sizes, torch.Generator().manual_seed(5))
    err = compare_stage(model, stage, export_dir / f"{stage}.onnx", inputs, threads=2)
    assert max(err.values()) < 1e-4, err


def _run(model: SAM4D, cfg: TrackerConfig, frames) -> list:
    tracker = StreamingTracker(model, cfg)
    out = [tracker.step(frames[0])]
    f0 = frames[0]
    xyz = f0.points[f0.point_labels == int(np.unique(f0.point_labels[f0.point_labels > 0])[0])]
    out.append(
        tracker.add_prompts(
            [ObjectPrompt(1, lidar=LidarPrompt(points=xyz[:1, :3], labels=np.array([1])))]
        )
    )
    for f in frames[1:]:
        out.append(tracker.step(f))
    install_runtime(model, "torch")
    return out


def test_tracker_onnxruntime_equals_torch(model: SAM4D, export_dir: Path) -> None:
    seq = generate_sequence(make_config("tiny", num_frames=5))
    frames = seq.frames
    ref = _run(model, TrackerConfig(), frames)
    got = _run(model, TrackerConfig(runtime="onnxruntime", onnx_dir=str(export_dir)), frames)
    tracked = 0
    for r, g in zip(ref[1:], got[1:], strict=True):
        assert [o.object_id for o in r.objects] == [o.object_id for o in g.objects]
        for ro, go in zip(r.objects, g.objects, strict=True):
            np.testing.assert_allclose(go.point_scores, ro.point_scores, atol=1e-4)
            assert abs(go.presence_score - ro.presence_score) < 1e-4
            for cam, m in ro.image_masks.items():
                assert (go.image_masks[cam] != m).mean() < 1e-3, cam
            tracked += 1
    assert tracked == len(frames)


def test_missing_file_and_wrong_model_errors(model: SAM4D, export_dir: Path, tmp_path) -> None:
    with pytest.raises(RuntimeSetupError, match="needs the ONNX export directory"):
        StreamingTracker(model, TrackerConfig(runtime="onnxruntime"))
    with pytest.raises(RuntimeSetupError, match="manifest.json is missing"):
        StreamingTracker(model, TrackerConfig(runtime="onnxruntime", onnx_dir=str(tmp_path)))
    broken = tmp_path / "broken"
    shutil.copytree(export_dir, broken)
    (broken / "mask_decoder_lidar.onnx").unlink()
    with pytest.raises(RuntimeSetupError, match="mask_decoder_lidar.*missing"):
        StreamingTracker(model, TrackerConfig(runtime="onnxruntime", onnx_dir=str(broken)))
    other = _tiny_model(distance_bias=False)
    with pytest.raises(RuntimeSetupError, match="export this model again"):
        StreamingTracker(other, TrackerConfig(runtime="onnxruntime", onnx_dir=str(export_dir)))
    with pytest.raises(RuntimeSetupError, match="unknown runtime"):
        StreamingTracker(model, TrackerConfig(runtime="tflite", onnx_dir=str(export_dir)))
    assert model.stage_runtime is None


def test_tensorrt_unavailable_is_a_clear_error(model: SAM4D, export_dir: Path) -> None:
    from sam4d_core.runtime.tensorrt_backend import require_tensorrt

    try:
        require_tensorrt()
        pytest.skip("TensorRT and a GPU are here: the build-and-run test covers this machine")
    except RuntimeSetupError:
        pass
    with pytest.raises(RuntimeSetupError, match="TensorRT|tensorrt|CUDA"):
        StreamingTracker(model, TrackerConfig(runtime="tensorrt", onnx_dir=str(export_dir)))


def _patched_stubs(dest: Path) -> Path | None:
    """A copy of the installed tensorrt-stubs that mypy can parse.

    The 10.13 stubs are generated by pybind11-stubgen and contain two kinds of invalid Python:
    parameters named ``in`` and a parameter without default after ones with defaults
    (``add_scale_nd``). Both are patched in the copy (renamed / given ``= ...``); nothing else.
    """
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        return None
    site = Path(spec.origin).parent.parent
    for pkg in ("tensorrt", "tensorrt_bindings"):
        if not (site / pkg).is_dir():
            return None
        shutil.copytree(site / pkg, dest / pkg, ignore=shutil.ignore_patterns("*.so", "*.py"))
    for pyi in dest.rglob("*.pyi"):
        text = re.sub(r"([(,] *)in: ", r"\1in_: ", pyi.read_text())
        lines = text.split("\n")
        for _ in range(50):
            try:
                compile("\n".join(lines), str(pyi), "exec", flags=0, dont_inherit=True)
                break
            except SyntaxError as e:
                i = (e.lineno or 1) - 1
                if "def " not in lines[i]:
                    raise
                head, _, rest = lines[i].partition("(")
                params, _, tail = rest.rpartition(")")
                fixed, seen_default = [], False
                for p in params.split(", "):
                    seen_default |= "=" in p
                    fixed.append(
                        p if "=" in p or not seen_default or p.startswith("*") else f"{p} = ..."
                    )
                lines[i] = f"{head}({', '.join(fixed)}){tail}"
        pyi.write_text("\n".join(lines))
    return dest


def test_tensorrt_backend_typechecks_against_stubs(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (requirements.lock pins it)")
    stubs = _patched_stubs(tmp_path / "stubs")
    if stubs is None:
        pytest.skip("tensorrt-stubs is not installed (requirements.lock pins it, with --no-deps)")
    probe = tmp_path / "probe.py"
    probe.write_text("import tensorrt as trt\nx: int = trt.Builder\n")
    env = dict(os.environ, MYPYPATH=str(stubs))
    args = [sys.executable, "-m", "mypy", "--ignore-missing-imports", "--no-incremental"]
    # The stubs are really used: a wrong use of the API is reported.
    r = subprocess.run([*args, str(probe)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "Incompatible types" in r.stdout, r.stdout + r.stderr
    target = ROOT / "sam4d_core" / "runtime" / "tensorrt_backend.py"
    r = subprocess.run(
        [*args, "--follow-imports=silent", str(target)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    # Only our module's errors count: the generated stubs have errors of their own (a class
    # named ``bool`` shadows the builtin in annotations), which mypy reports under their path.
    ours = [ln for ln in r.stdout.splitlines() if ln.startswith("sam4d_core/")]
    assert not ours, "\n".join(ours)
    assert "tensorrt_backend.py" not in r.stderr, r.stderr


def test_tensorrt_build_and_run(model: SAM4D, export_dir: Path, tmp_path: Path) -> None:
    from sam4d_core.runtime.tensorrt_backend import require_tensorrt

    try:
        require_tensorrt()
    except RuntimeSetupError as e:
        pytest.skip(f"TensorRT cannot run here: {e}")
    from sam4d_core.runtime.model_runtime import load_stages

    gpu = _tiny_model(distance_bias=True).cuda()
    stages = load_stages("tensorrt", gpu, export_dir, engine_dir=tmp_path, precision="fp32")
    for name, st in stages.items():
        inputs = example_inputs(gpu, name)
        ref = load_stages("torch", gpu)[name].run(inputs)
        got = st.run(inputs)
        for r, g in zip(ref, got, strict=True):
            assert float((r - g.float()).abs().max()) < 1e-3, name
    again = load_stages("tensorrt", gpu, export_dir, engine_dir=tmp_path, precision="fp32")
    assert all(s.cache_event.status == "hit" for s in again.values())  # type: ignore[attr-defined]
