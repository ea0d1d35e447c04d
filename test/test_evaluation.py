"""The streaming evaluation end to end: the CLI on a tiny model and tiny synthetic sequences
(JSON + Markdown, structure, determinism, prefetching), shared frame encodings equal separate
tracker runs, report lookups, the ROS demo's object in the bundled report, and the bundled
model's committed report regenerated on one held-out sequence."""

from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sam4d_core.build_sam import build_sam4d
from sam4d_core.checkpoint import save_checkpoint
from sam4d_core.data.synthetic import generate_sequence, make_config
from sam4d_core.evaluation import load_report, object_result, pick_demo_object
from sam4d_core.evaluation import streaming_eval as se
from sam4d_core.evaluation.report import prompted_frame_cells
from sam4d_core.evaluation.streaming_eval import EvalConfig, evaluate_sequence
from sam4d_core.weights import BUNDLED_EVAL_JSON, BUNDLED_EVAL_MD, BUNDLED_MODEL

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO_ROOT))  # the repository's training/ package

from training.evaluate import main  # noqa: E402

TOL = 1e-3


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_sam4d("sam4d_tiny")
    return save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _tiny_argv(ckpt: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--checkpoint",
        str(ckpt),
        "--synthetic-seeds",
        "3",
        "5",
        "--preset",
        "tiny",
        "--frames",
        "3",
        "--max-objects-per-sequence",
        "3",
        "--json",
        str(out / "r.json"),
        "--md",
        str(out / "r.md"),
        "--quiet",
        *extra,
    ]


def _numbers(report: dict) -> dict:
    """The report without what legitimately differs between identical runs."""
    return {k: v for k, v in report.items() if k not in ("timing", "argv", "command")}


@pytest.fixture(scope="module")
def tiny_reports(tiny_checkpoint, tmp_path_factory):
    a = tmp_path_factory.mktemp("a")
    b = tmp_path_factory.mktemp("b")
    assert main(_tiny_argv(tiny_checkpoint, a, "--no-prefetch")) == 0
    assert main(_tiny_argv(tiny_checkpoint, b)) == 0  # synthetic sequences rendered in a worker
    return a, b


def test_cli_writes_json_and_markdown(tiny_reports) -> None:
    a, _ = tiny_reports
    report = load_report(a / "r.json")
    assert report["checkpoint"]["config"] == "sam4d_tiny"
    assert (
        report["checkpoint"]["sha256"]
        == hashlib.sha256(Path(report["checkpoint"]["path"]).read_bytes()).hexdigest()
    )
    assert report["settings"]["prompt_types"] == ["1click", "3click", "box", "mask"]
    (src,) = report["sources"]
    assert src["name"] == "synthetic:tiny" and src["held_out"]
    assert [s["name"] for s in src["sequences"]] == ["tiny_00003", "tiny_00004"]
    cells = report["aggregate"]["cells"]
    assert set(cells) == {
        f"{p}/{m}" for p in ("1click", "3click", "box", "mask") for m in ("img", "pts")
    }
    assert report["settings"]["tracker_modes"] == ["memory", "reprompt"]  # the CLI's default
    assert set(report["aggregate"]["cells_by_mode"]) == {"memory", "reprompt"}
    assert report["aggregate"]["cells_by_mode"]["memory"] == cells
    for seq in src["sequences"]:
        assert seq["objects"] and len(seq["objects"]) == min(3, seq["num_candidates"])
        # Every (prompt, modality) in both tracker modes, on the same prompts.
        assert len(seq["runs"]) == 2 * 8 * len(seq["objects"])
        by_mode = {m: [r for r in seq["runs"] if r["mode"] == m] for m in ("memory", "reprompt")}
        assert [r["prompt_detail"] for r in by_mode["memory"]] == [
            r["prompt_detail"] for r in by_mode["reprompt"]
        ]
        assert all(r["lost_frames"] == 0 for r in by_mode["memory"])
        for r in seq["runs"]:
            assert r["frames"] == list(range(r["first_frame"], seq["num_frames"]))
            assert r["prompt_detail"]["frame"] == r["first_frame"]
            for key in ("image_iou", "boundary_f", "lidar_iou"):
                assert len(r[key]) == len(r["frames"])
                assert all(v is None or 0.0 <= v <= 1.0 for v in r[key])
            for key in ("image_miou", "j", "f", "jf", "lidar_miou"):
                assert r[key] is None or 0.0 <= r[key] <= 1.0
            if r["prompt"] in ("1click", "3click"):
                n = 1 if r["prompt"] == "1click" else 3
                assert 1 <= len(r["prompt_detail"]["points"]) <= n
            if r["modality"] == "img":
                assert r["prompt_detail"]["camera"] in seq["cameras"]
    for c in cells.values():
        for key in ("image_miou", "jf", "lidar_miou"):
            assert c[key] is None or 0.0 <= c[key] <= 1.0
    # The cell pools the objects of both sequences.
    runs = [
        r
        for s in src["sequences"]
        for r in s["runs"]
        if r["prompt"] == "1click" and r["mode"] == "memory"
    ]
    img = [r["image_miou"] for r in runs if r["modality"] == "img" and r["image_miou"] is not None]
    assert cells["1click/img"]["image_miou"] == pytest.approx(float(np.mean(img)))
    assert len(report["targets"]) == 6 + 2 * 4 and all(
        isinstance(t["met"], bool) for t in report["targets"]
    )
    assert [(t["stage"], t["mode"]) for t in report["targets"]] == [("prompted", "memory")] * 6 + [
        ("tracked", "memory")
    ] * 4 + [("tracked", "reprompt")] * 4
    # The prompted-frame cell: the objects' scores on their prompted frame alone.
    first = prompted_frame_cells(runs, "memory")["1click/img"]
    on_prompt = [r["image_iou"][0] for r in runs if r["modality"] == "img"]
    assert first["image_miou"] == pytest.approx(
        float(np.mean([v for v in on_prompt if v is not None]))
    )
    assert all(r["frames"][0] == r["first_frame"] for r in runs)
    md = (a / "r.md").read_text()
    assert "| prompt | prompted in | image mIoU | image J&F (J / F) | LiDAR mIoU | objects |" in md
    assert "| 1 click | image (2D) |" in md and "x-modal 2D->3D" in md
    assert "Targets over the sequence" in md
    assert "### Tracker modes side by side" in md
    assert "### Prompted frame alone" in md and "Targets on the prompted frame" in md
    assert "| prompt | prompted in | image mIoU memory only | image mIoU re-prompting |" in md
    assert "--tracker-modes memory,reprompt" in md
    assert "--refine-masks on" in md and "Masks are refined with the sweep's geometry" in md
    assert "--lift-image-clicks on" in md and "3D click on the LiDAR point" in md
    assert "python -m training.evaluate" in md and "--synthetic-seeds 3 5" in md


def test_cli_is_deterministic(tiny_reports) -> None:
    a, b = tiny_reports
    ra = json.loads((a / "r.json").read_text())
    rb = json.loads((b / "r.json").read_text())
    assert _numbers(ra) == _numbers(rb)


def test_report_lookup(tiny_reports, tmp_path) -> None:
    a, _ = tiny_reports
    report = load_report(a / "r.json")
    seq = report["sources"][0]["sequences"][0]
    oid = seq["objects"][0]
    entry = object_result(report, seq["name"], oid, "3click", "pts")
    assert entry["object_id"] == oid and entry["prompt"] == "3click" and entry["modality"] == "pts"
    assert object_result(report, seq["name"], oid) == next(
        r
        for r in seq["runs"]
        if r["object_id"] == oid and r["prompt"] == "1click" and r["modality"] == "img"
    )
    again = object_result(report, seq["name"], oid, "3click", "pts", mode="reprompt")
    assert again["mode"] == "reprompt" and entry["mode"] == "memory"
    assert again["prompt_detail"] == entry["prompt_detail"]
    with pytest.raises(KeyError, match="no 1click/img entry"):
        object_result(report, seq["name"], 60000)
    with pytest.raises(KeyError, match="no sequence"):
        object_result(report, "nope", oid)
    bad = tmp_path / "x.json"
    bad.write_text("{}")
    with pytest.raises(ValueError, match="not an evaluation report"):
        load_report(bad)


def test_shared_encoding_equals_separate_trackers(tiny_checkpoint, monkeypatch) -> None:
    model = build_sam4d(checkpoint=tiny_checkpoint)
    seq = generate_sequence(make_config("tiny", seed=3, num_frames=3))
    together = evaluate_sequence(model, seq, EvalConfig(max_objects=2))
    assert together.encodings == len(seq)  # once per frame for all 8 trackers

    class NoSharing:
        encodings = 0

        def __init__(self, model):
            pass

        def new_frame(self, token):
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

    monkeypatch.setattr(se, "SharedFrameEncoding", NoSharing)
    alone = evaluate_sequence(
        model, seq, EvalConfig(max_objects=2, prompt_types=("box",), modalities=("pts",))
    )
    mine = [r.to_dict() for r in together.runs if (r.prompt_type, r.modality) == ("box", "pts")]
    assert mine == [r.to_dict() for r in alone.runs] and mine
    assert "encode_frame" not in model.__dict__  # the model's own method is back


# ---------------------------------------------------------------------------------------------
# The bundled model's committed report.


@pytest.fixture(scope="module")
def bundled_report() -> dict:
    assert BUNDLED_EVAL_JSON.is_file() and BUNDLED_EVAL_MD.is_file(), (
        "the bundled model's evaluation report is missing; regenerate it with "
        "`test/env/ros_env.sh python -m training.evaluate --json "
        "sam4d_core/weights/sam4d_small_synthetic_eval.json --md "
        "sam4d_core/weights/sam4d_small_synthetic_eval.md`"
    )
    return load_report(BUNDLED_EVAL_JSON)


def test_bundled_report_is_of_the_bundled_model(bundled_report) -> None:
    ck = bundled_report["checkpoint"]
    assert ck["sha256"] == hashlib.sha256(BUNDLED_MODEL.read_bytes()).hexdigest(), (
        "the bundled model changed: regenerate its report with: " + bundled_report["command"]
    )
    src = bundled_report["sources"][0]
    assert src["held_out"] and src["details"] == {
        "preset": "bundled_sample",
        "seeds": [950000, 950008],
        "frames": 20,
    }
    assert len(src["sequences"]) == 8
    md = BUNDLED_EVAL_MD.read_text()
    assert bundled_report["command"] in md
    cell = bundled_report["aggregate"]["cells"]["1click/img"]
    assert f"| 1 click | image (2D) | **{cell['image_miou']:.3f}** |" in md


def test_bundled_report_has_the_demo_object(bundled_report) -> None:
    from sam4d_core.data.sequence_bag import read_sequence_bag

    seq = read_sequence_bag(REPO_ROOT / "test" / "data" / "synthetic_drive")
    oid = pick_demo_object(seq, "front")
    assert oid is not None
    (bag,) = [s for s in bundled_report["sources"] if s["kind"] == "bag"]
    assert not bag["held_out"]
    assert bag["sequences"][0]["demo_objects"]["front"] == oid
    entry = object_result(bundled_report, seq.name, oid, "1click", "img")
    assert entry["first_frame"] == 0
    assert entry["prompt_detail"]["camera"] in seq.camera_names
    assert len(entry["prompt_detail"]["points"]) == 1
    assert len(entry["image_iou"]) == len(seq) and entry["frames"][-1] == len(seq) - 1


def _close(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, abs_tol=TOL)


def test_bundled_report_regenerates(bundled_report, tmp_path) -> None:
    """Re-runs one held-out sequence with the 1-click prompts and compares with the committed
    numbers (fails when the model, the code or the committed report changed)."""
    st = bundled_report["settings"]
    src = bundled_report["sources"][0]
    committed = src["sequences"][0]
    d = src["details"]
    argv = [
        "--checkpoint",
        str(BUNDLED_MODEL),
        "--synthetic-seeds",
        *map(str, d["seeds"]),
        "--preset",
        d["preset"],
        "--frames",
        str(d["frames"]),
        "--sequences",
        committed["name"],
        "--prompts",
        "1click",
        "--modalities",
        ",".join(st["modalities"]),
        "--max-objects-per-sequence",
        str(st["max_objects"] or 0),
        "--min-pixels",
        str(st["min_pixels"]),
        "--min-points",
        str(st["min_points"]),
        "--threads",
        str(st["threads"]),
        "--tracker-modes",
        ",".join(st.get("tracker_modes", ["memory"])),
        "--refine-masks",
        "on" if st.get("refine_masks") else "off",
        "--lift-image-clicks",
        "on" if st.get("lift_image_clicks") else "off",
        "--zoom",
        "on" if st.get("zoom") else "off",
        "--boundary-refine",
        "on" if st.get("boundary_refine") else "off",
        "--json",
        str(tmp_path / "r.json"),
        "--quiet",
    ]
    assert main(argv) == 0
    new = load_report(tmp_path / "r.json")
    assert new["checkpoint"]["sha256"] == bundled_report["checkpoint"]["sha256"]
    (seq,) = new["sources"][0]["sequences"]
    assert seq["name"] == committed["name"] and seq["objects"] == committed["objects"]
    assert seq["runs"], "nothing evaluated"
    for r in seq["runs"]:
        old = object_result(
            bundled_report,
            seq["name"],
            r["object_id"],
            r["prompt"],
            r["modality"],
            mode=r["mode"],
        )
        where = f"{seq['name']} object {r['object_id']} {r['prompt']}/{r['modality']} {r['mode']}"
        assert r["first_frame"] == old["first_frame"] and r["frames"] == old["frames"], where
        assert r["prompt_detail"]["camera"] == old["prompt_detail"]["camera"], where
        np.testing.assert_allclose(
            r["prompt_detail"]["points"], old["prompt_detail"]["points"], atol=TOL, err_msg=where
        )
        for key in ("image_iou", "boundary_f", "lidar_iou"):
            pairs = list(zip(r[key], old[key], strict=True))
            assert all(_close(x, y) for x, y in pairs), f"{where} {key}: {r[key]} vs {old[key]}"
        for cam, ious in r["camera_iou"].items():
            pairs = list(zip(ious, old["camera_iou"][cam], strict=True))
            assert all(_close(x, y) for x, y in pairs), f"{where} camera {cam}"
        for key in ("image_miou", "f", "jf", "lidar_miou"):
            assert _close(r[key], old[key]), f"{where} {key}: {r[key]} vs {old[key]}"


def test_kitti_overlay_pictures_and_clicks() -> None:
    from training.analysis.kitti_overlays import CLICKS, RENDER_FRAMES, bev_panel, camera_panel

    rgb = np.full((375, 1242, 3), 100, np.uint8)
    m = np.zeros((375, 1242), bool)
    m[200:260, 600:660] = True
    pic = camera_panel(rgb, {1: m}, [(1, CLICKS[0])])
    assert pic.shape == rgb.shape and (pic[230, 610] != 100).any() and (pic[10, 10] == 100).all()
    pts = np.array([[10.0, 0.0, 0.0], [20.0, 5.0, 0.0], [500.0, 0.0, 0.0]])
    bev = bev_panel(pts, np.array([1, 0, 1]), 1242)
    assert bev.shape == (375, 1242, 3)
    from sam4d_core.codecs.image import label_color

    # Point 0 (object 1) at x = 10 m, y = 0: column (10 + 12) * 15, row 12.5 * 15.
    assert tuple(bev[188, 330]) == label_color(1)
    # The clicks are on the sample's frames and inside its 1242 x 375 images.
    for c in CLICKS:
        assert 0 <= c.frame < 24 and 0 <= c.u < 1242 and 0 <= c.v < 375 and c.what
    assert all(0 <= f < 24 for f in RENDER_FRAMES)
