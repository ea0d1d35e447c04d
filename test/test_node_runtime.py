"""sam4d_node with ``model.runtime: onnxruntime`` (issue 21), over real DDS in its own process:
the same outputs (object ids and scores, label images, labeled cloud) as the PyTorch tracker in
this process on the bundled recording; a missing ONNX export, a missing stage file or an unknown
runtime stop the node at start-up with a clear message and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from node_harness import (
    Reference,
    assert_outputs_match,
    lidar_prompt,
    load_recording,
    make_parameters,
    make_tiny_checkpoint,
    start_node,
    stop_node,
)

pytest.importorskip("onnxruntime", reason="onnxruntime is in requirements.lock")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ROS_PROCESSES = Path(__file__).resolve().parent / "ros_processes"
OUTPUTS = ["objects", "points_labeled", "front/labels", "front_left/labels"]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The tiny checkpoint and its ONNX export."""
    import torch

    from sam4d_core.build_sam import build_sam4d
    from sam4d_export.onnx_export import export_onnx

    tmp = tmp_path_factory.mktemp("node_runtime")
    ckpt = make_tiny_checkpoint(tmp / "tiny.pt")
    torch.manual_seed(0)
    export_onnx(build_sam4d(checkpoint=ckpt), tmp / "onnx", checkpoint=ckpt, verify=False)
    return tmp, ckpt, tmp / "onnx"


def test_node_on_onnxruntime_publishes_the_torch_labels(export):
    from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt
    from sam4d_ros.conversions.stamps import stamp_to_ns

    tmp, ckpt, onnx_dir = export
    params = make_parameters(
        ckpt, **{"model.runtime": "onnxruntime", "model.onnx_dir": str(onnx_dir)}
    )
    torch_params = make_parameters(ckpt)
    rec = load_recording(6)
    proc, context, h = start_node(tmp, params, OUTPUTS)
    try:
        ref = Reference(torch_params, rec.static_tf)
        h.publish_static(rec.static_tf)
        h.publish_sweep(rec.sweeps[0], tf=False, cloud=False)
        h.spin_for(0.5)
        for k, sweep in enumerate(rec.sweeps):
            h.feed(sweep)
            ref.step(sweep)
            stamps = {c: stamp_to_ns(m.header.stamp) for c, m in sweep.images.items()}
            if k == 1:
                pts = ref.built.frame.points[:, :3].astype(np.float64)
                p = pts[int(np.argmin(np.linalg.norm(pts[:, :2] - [12.0, 0.0], axis=1)))]
                resp = h.add_prompts([lidar_prompt([p])])
                assert resp.success and list(resp.object_ids) == [1], resp.message
                ref.add_prompts([ObjectPrompt(1, lidar=LidarPrompt(p[None], np.array([1])))])

                def prompted(stamp_ns: int = sweep.stamp_ns) -> bool:
                    objs = h.latest_objects(stamp_ns)
                    return objs is not None and len(objs.objects) == 1

                assert h.spin_until(prompted, 20.0), h.describe()
                h.spin_for(1.0)
            assert_outputs_match(h, ref, sweep.stamp_ns, stamps)
        assert len(ref.result.objects) == 1  # tracked to the end
    finally:
        out = stop_node(proc, context, h)
    assert "Traceback" not in out
    # It really ran there (a node falling back to PyTorch would pass the comparison too).
    assert "runtime onnxruntime" in out, out[-3000:]


def _start_fails(tmp: Path, ckpt: Path, *params: str) -> str:
    cmd = [sys.executable, str(ROS_PROCESSES / "sam4d_node_process.py"),
           "--checkpoint", str(ckpt), "--ros-args", "-p", "model.device:=cpu",
           *[a for p in params for a in ("-p", p)]]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=dict(os.environ))
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out, out
    return out


def test_missing_export_or_runtime_is_a_clear_startup_error(export, tmp_path):
    _, ckpt, onnx_dir = export
    out = _start_fails(tmp_path, ckpt, "model.runtime:=onnxruntime")
    assert "model.runtime" in out and "model.onnx_dir" in out, out
    out = _start_fails(
        tmp_path, ckpt, "model.runtime:=onnxruntime", f"model.onnx_dir:={tmp_path / 'nothing'}"
    )
    assert "manifest.json" in out, out
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in onnx_dir.iterdir():
        if f.name != "memory_attention.onnx":
            (broken / f.name).write_bytes(f.read_bytes())
    out = _start_fails(tmp_path, ckpt, "model.runtime:=onnxruntime", f"model.onnx_dir:={broken}")
    assert "memory_attention" in out and "missing" in out, out
    out = _start_fails(tmp_path, ckpt, "model.runtime:=tensorrt", f"model.onnx_dir:={onnx_dir}")
    assert "model.runtime" in out and ("TensorRT" in out or "tensorrt" in out), out
