"""The main job (``python -m sam4d_ros.tools.demo``, ``make demo``) as a user runs it: the CLI in a
subprocess with its defaults (the bundled recording, the bundled model, the automatic prompt), the
real node in its own process, real DDS. Checks the report, that the prompted object is tracked,
the recorded outputs bag, the video, and that the IoU the node reaches equals the bundled model's
own evaluation of the same object and prompt (within 0.05). Plus fast tests of ``--prompt``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

BAG = REPO_ROOT / "test" / "data" / "synthetic_drive"
NODE = "/sam4d_node"
CAMERAS = ("front", "front_left")
SEQUENCE = "synthetic_drive"
# Start-up, 3.9 s of recording at the default rate, report and video, on a loaded 2-core machine.
DEMO_TIMEOUT_S = 300


def _demo(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sam4d_ros.tools.demo", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ),
    )


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, dict, str]:
    """One run of the demo with its defaults: (output directory, report.json, its output)."""
    out = tmp_path_factory.mktemp("demo")
    proc = _demo("--out", str(out), timeout=DEMO_TIMEOUT_S)
    text = proc.stdout + proc.stderr
    node_log = out / "node.log"
    assert proc.returncode == 0, text + (node_log.read_text()[-4000:] if node_log.exists() else "")
    return out, json.loads((out / "report.json").read_text()), text


def test_the_report_says_what_happened(demo) -> None:
    out, rep, text = demo
    md = (out / "report.md").read_text()
    assert str(out / "report.md") in text and str(out / "overlay.mp4") in text
    for what in ("rate", "dropped", "p50", "p90", "p99", "mean image IoU", "mean LiDAR IoU"):
        assert what in md, what
    assert rep["rate"] > 0 and rep["machine"]["cores"] >= 1
    s = rep["sweeps"]
    assert s["in_bag"] == s["played"] == 40
    assert s["received_by_node"] == 40
    # Every processed sweep has outputs; the rest were dropped by design (or failed): all told.
    assert s["processed"] == s["with_outputs"]
    assert s["processed"] + s["dropped"] + s["failed"] + s["skipped"] == s["received_by_node"]
    for key in ("processing", "pipeline"):
        lat = rep["latency_ms"][key]
        assert lat["count"] == s["processed"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    # Pipeline latency (stamp -> published, wall ms) includes the processing.
    assert rep["latency_ms"]["pipeline"]["p50"] >= 0.8 * rep["latency_ms"]["processing"]["p50"]


def test_the_prompt_is_applied_on_its_frame_and_scored(demo) -> None:
    _, rep, _ = demo
    (p,) = rep["prompts"]
    assert p["source"] == "auto" and p["success"], p
    assert p["frame"] == 0 and p["gt_object_id"] is not None
    (e,) = rep["evaluation"]
    assert e["object_id"] == p["object_id"]
    assert e["frames_after_prompt"] == 40
    assert e["frames_before_prompt"] == []  # the prompt applied on its own frame
    # At the default rate the CPU node steps every sweep (0 of 40 dropped, in the suite too); a
    # few drops are allowed for a loaded machine (newest wins, by design: dropped frames are
    # listed and left out of the IoU). 4-17 of 40 dropped when rclpy's executor loop starved the
    # worker of the GIL (node.spin_yielding).
    assert e["frames_evaluated"] >= 32, e["frames_no_output"]
    assert e["mean_image_iou"] is not None and e["mean_lidar_iou"] is not None
    listed = {o["object_id"]: o for o in rep["objects"]}
    assert listed[p["object_id"]]["frames_tracked"] == e["frames_tracked"]
    # The first object of a run is object 1 (no id lost to a refused first attempt).
    assert p["object_id"] == 1 and min(listed) == 1


def test_the_report_tells_the_truth_without_ground_truth(demo) -> None:
    """Per object: frames with a non-empty mask per modality, cross-modal agreement per camera
    (both cameras are projected from the bag's CameraInfo and static TF), mask area and point
    count over time, lost; consistent with each other and with report.md."""
    out, rep, text = demo
    assert rep["cross_modal_cameras"] == sorted(CAMERAS)
    (o,) = rep["objects"]
    n = o["frames_with_output"]
    assert n == rep["sweeps"]["with_outputs"] and len(o["over_time"]) == 40
    assert set(o["frames_with_mask"]) == {"lidar", *CAMERAS}
    listed = [f for f in o["over_time"] if f["status"] == "output"]
    assert o["frames_with_mask"]["lidar"] == sum(1 for f in listed if f["points"] > 0)
    for cam in CAMERAS:
        assert o["frames_with_mask"][cam] == sum(1 for f in listed if f["mask_px"][cam] > 0)
        vals = [f["agreement"][cam] for f in listed if f["agreement"][cam] is not None]
        assert all(0.0 <= v <= 1.0 for v in vals)
        mean = o["cross_modal_agreement"][cam]
        assert (mean is None) == (not vals) and (
            not vals or abs(mean - sum(vals) / len(vals)) < 1e-9
        )
    lost = [f["frame"] for f in listed if f["lost"]]
    assert o["lost_frames"] == lost and o["frames_lost"] == len(lost)
    assert all(f["points"] == 0 and not any(f["mask_px"].values()) for f in listed if f["lost"])
    # On the first frame the clicked object has a mask in the clicked camera and points.
    first = o["over_time"][0]
    assert first["mask_px"]["front"] > 0 and first["points"] > 0 and not first["lost"]
    md = (out / "report.md").read_text()
    assert "## Objects (no ground truth needed)" in md and "### Object 1 over time" in md
    assert f"object 1: non-empty mask in lidar {o['frames_with_mask']['lidar']}/{n}" in text
    assert "everything of this run is in" in text


def test_the_prompted_object_is_tracked_over_the_sequence(demo) -> None:
    """Issue 18's bar for the main job: the clicked object followed over the whole recording
    (re-prompting, the node's default) at mean image IoU >= 0.55 and LiDAR IoU >= 0.60 (the
    bundled model: 0.555 / 0.801, tracked in 40 of 40 sweeps)."""
    _, rep, _ = demo
    (e,) = rep["evaluation"]
    assert e["frames_tracked"] == e["frames_evaluated"], e["lost_frames"]
    assert e["mean_image_iou"] >= 0.55 and e["mean_lidar_iou"] >= 0.60, e


def test_the_outputs_bag_holds_labels_with_the_input_stamps(demo) -> None:
    from rosbags.rosbag2 import Reader

    from sam4d_core.data.sequence_bag import TYPESTORE, open_bag
    from sam4d_ros.tools.bag_interop import header_stamp_ns

    out, rep, _ = demo
    reader = open_bag(BAG)
    try:
        conn = [c for c in reader.connections if c.topic == "/sensors/lidar/points"]
        inputs = {header_stamp_ns(bytes(raw)) for _, _, raw in reader.messages(connections=conn)}
    finally:
        reader.close()
    stamps: dict[str, set[int]] = {}
    with Reader(out / "outputs") as bag:
        topics = {c.topic: c.msgtype for c in bag.connections}
        for cam in CAMERAS:
            assert topics[f"{NODE}/{cam}/labels"] == "sensor_msgs/msg/Image"
            assert topics[f"{NODE}/{cam}/overlay"] == "sensor_msgs/msg/Image"
        assert topics[f"{NODE}/points_labeled"] == "sensor_msgs/msg/PointCloud2"
        assert topics[f"{NODE}/objects"] == "sam4d_ros/msg/TrackedObjects"
        wanted = [
            c
            for c in bag.connections
            if c.topic == f"{NODE}/points_labeled" or c.topic.endswith("/labels")
        ]
        for conn, _, raw in bag.messages(connections=wanted):
            msg = TYPESTORE.deserialize_cdr(raw, conn.msgtype)
            ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            stamps.setdefault(conn.topic, set()).add(ns)
            if conn.topic.endswith("/labels"):
                assert msg.encoding == "mono16" and (msg.width, msg.height) == (480, 288)
            else:
                names = [f.name for f in msg.fields]
                assert {"x", "y", "z", "label", "score"} <= set(names)
    processed = rep["sweeps"]["processed"]
    for topic, got in stamps.items():
        assert got <= inputs, topic  # the node copies the input headers
        assert len(got) == processed, topic
    assert len(stamps) == 1 + len(CAMERAS)


def test_the_video_opens_and_has_frames(demo) -> None:
    import cv2

    out, rep, _ = demo
    cap = cv2.VideoCapture(str(out / "overlay.mp4"))
    try:
        assert cap.isOpened()
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        ok, frame = cap.read()
    finally:
        cap.release()
    assert n == rep["sweeps"]["with_outputs"]
    assert ok and frame.ndim == 3 and frame.shape[1] > frame.shape[0]
    assert frame.std() > 5  # not a blank frame
    assert (out / "overlay.mp4").stat().st_size < 5_000_000


def test_the_iou_is_the_bundled_models_own_evaluation(demo) -> None:
    """The node, fed over DDS and prompted through its service, reaches the IoU that the bundled
    model's evaluation report gives for the same object and the same one-click prompt."""
    from sam4d_core.evaluation import load_report, object_result
    from sam4d_core.evaluation.report import report_modes
    from sam4d_core.weights import BUNDLED_EVAL_JSON

    _, rep, _ = demo
    (p,) = rep["prompts"]
    (e,) = rep["evaluation"]
    report = load_report(BUNDLED_EVAL_JSON)
    # The node runs with its default tracker.reprompt (true): the report's re-prompting runs.
    if "reprompt" not in report_modes(report):
        pytest.skip(
            "the bundled report predates the tracker modes (memory only) while the node "
            "re-prompts by default: regenerate it with `python -m training.evaluate` (both modes)"
        )
    entry = object_result(report, SEQUENCE, p["gt_object_id"], "1click", mode="reprompt")
    # The same prompt: frame, camera and click.
    assert entry["first_frame"] == p["frame"]
    u, v = entry["prompt_detail"]["points"][0]
    assert p["prompt"] == f"{entry['prompt_detail']['camera']}:{u:g},{v:g}@0"
    assert abs(e["mean_image_iou"] - entry["image_miou"]) <= 0.05, (e, entry["image_miou"])
    assert abs(e["mean_lidar_iou"] - entry["lidar_miou"]) <= 0.05, (e, entry["lidar_miou"])


# ------------------------------------------------------------------------------ an object leaves

LEAVING_OBJECT = 146  # the demo's object: in both cameras and the sweep on every early frame
LEAVES_AT = 6  # from this sweep on it is gone
LEAVE_SWEEPS = 12


def _remove_object(frame, oid: int):
    """The frame without object ``oid``: its points deleted, its pixels painted over with the
    background around them (inpainting), its ground-truth labels gone."""
    import dataclasses

    import cv2
    import numpy as np

    keep = frame.point_labels != oid
    cameras = {}
    for name, cam in frame.cameras.items():
        mask = cam.instance_mask == oid
        if mask.any():
            # Dilated: the mask's anti-aliased rim is the object's colour too.
            hole = cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8))
            image = cv2.inpaint(cam.image, hole, 5, cv2.INPAINT_TELEA)
            cam = dataclasses.replace(
                cam, image=image, instance_mask=np.where(mask, 0, cam.instance_mask)
            )
        cameras[name] = cam
    objects = {k: v for k, v in frame.objects.items() if k != oid}
    return dataclasses.replace(
        frame,
        points=frame.points[keep],
        point_labels=frame.point_labels[keep],
        cameras=cameras,
        objects=objects,
    )


@pytest.fixture(scope="module")
def leaving_bag(tmp_path_factory) -> tuple[Path, str]:
    """The first 12 sweeps of the bundled recording, object 146 removed from sweep 6 on; and the
    evaluation's one-click prompt on it (frame 0)."""
    import dataclasses

    import numpy as np

    from sam4d_core.data.sequence_bag import read_sequence_bag, write_sequence_bag
    from sam4d_core.evaluation import make_first_frame_prompt

    seq = read_sequence_bag(BAG)
    frames = [
        f if i < LEAVES_AT else _remove_object(f, LEAVING_OBJECT)
        for i, f in enumerate(seq.frames[:LEAVE_SWEEPS])
    ]
    for f in frames[LEAVES_AT:]:
        assert not (f.point_labels == LEAVING_OBJECT).any()
        assert all(not (c.instance_mask == LEAVING_OBJECT).any() for c in f.cameras.values())
    assert all((f.point_labels == LEAVING_OBJECT).sum() >= 10 for f in frames[:LEAVES_AT])
    path = tmp_path_factory.mktemp("leaving") / "bag"
    write_sequence_bag(dataclasses.replace(seq, frames=frames), path)
    rec = make_first_frame_prompt(frames[0], LEAVING_OBJECT, "1click", "img", 0)
    assert rec is not None and rec.points is not None
    u, v = (float(x) for x in np.asarray(rec.points)[0])
    return path, f"{rec.camera}:{u:g},{v:g}@0"


def test_an_object_that_leaves_the_scene_is_reported_lost(leaving_bag, tmp_path) -> None:
    """The demo on a recording from which the clicked object disappears (points, pixels and
    labels) at sweep 6: followed before (a mask, not lost), reported lost by the tracker after
    (presence 0, no mask) and those sweeps not counted as tracked. Before issue 18's fixes the
    re-prompting found the stale prediction supported by the neighbours the mask had spilled
    onto and reported the object present (presence 1.00) on them from sweep 7."""
    bag, prompt = leaving_bag
    out = tmp_path / "run"
    proc = _demo("--bag", str(bag), "--prompt", prompt, "--no-video", "--out", str(out),
                 timeout=DEMO_TIMEOUT_S)  # fmt: skip
    node_log = out / "node.log"
    assert proc.returncode == 0, (
        proc.stdout + proc.stderr + (node_log.read_text()[-4000:] if node_log.exists() else "")
    )
    rep = json.loads((out / "report.json").read_text())
    (p,) = rep["prompts"]
    assert p["success"] and p["frame"] == 0 and p["gt_object_id"] == LEAVING_OBJECT, p
    (e,) = rep["evaluation"]
    rows = {f["frame"]: f for f in e["per_frame"] if f["status"] == "evaluated"}
    before = [rows[i] for i in range(LEAVES_AT) if i in rows]
    after = [rows[i] for i in range(LEAVES_AT, LEAVE_SWEEPS) if i in rows]
    # The node may drop a sweep on a loaded machine (newest wins); most are evaluated.
    assert len(before) >= LEAVES_AT - 2 and len(after) >= 3, e["frames_no_output"]
    assert all(f["visible"] and not f["lost"] for f in before), before
    assert all(f["lost"] and not f["visible"] for f in after), after
    assert all(f["presence_score"] == 0.0 for f in after), after
    assert e["frames_tracked"] == len(before)
    assert set(e["lost_frames"]) == {f["frame"] for f in after}
    # The report without ground truth: the tracker's own lost state, no mask after.
    (o,) = rep["objects"]
    assert o["lost_source"] == "tracker" and o["lost"] is True
    assert o["frames_tracked"] == len(before)
    over = {f["frame"]: f for f in o["over_time"] if f["status"] == "output"}
    for i in range(LEAVES_AT, LEAVE_SWEEPS):
        if i in over:
            f = over[i]
            assert f["lost"] and f["points"] == 0 and not any(f["mask_px"].values()), f


# ------------------------------------------------------------------------------ --prompt


def test_prompt_specs_parse() -> None:
    from sam4d_ros.tools.demo import PromptSpec, parse_prompt

    assert parse_prompt("front:320,200@0.3") == PromptSpec(
        "front:320,200@0.3", "image", (320.0, 200.0), 0.3, "front"
    )
    p = parse_prompt(" lidar:12.0,-1.5,0.4@0.3 ")
    assert (p.modality, p.point, p.time_s, p.camera) == ("lidar", (12.0, -1.5, 0.4), 0.3, None)
    assert parse_prompt("front_left:1.5, 2").time_s == 0.0  # no @: the first sweep
    assert parse_prompt("LIDAR:1,2,3").modality == "lidar"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("front", "expected CAMERA:U,V[@SECONDS] (a pixel) or lidar:X,Y,Z[@SECONDS]"),
        ("front:320", "front needs 2 coordinates (u, v in pixels), got 1"),
        ("lidar:1,2", "lidar needs 3 coordinates (x, y, z in metres), got 2"),
        ("front:a,b", "coordinates 'a,b' are not 2 numbers"),
        ("front:1,nan", "coordinates must be finite"),
        ("front:1,2@soon", "time 'soon' after '@' is not a number of seconds"),
        ("front:1,2@-1", "time must be >= 0 s"),
        ("3cam:1,2", "expected CAMERA:U,V"),
    ],
)
def test_invalid_prompt_specs_say_what_is_wrong(text: str, message: str) -> None:
    from sam4d_ros.tools.demo import parse_prompt

    with pytest.raises(ValueError, match="invalid prompt") as err:
        parse_prompt(text)
    assert message in str(err.value)


def test_prompts_are_checked_against_the_bag() -> None:
    from sam4d_ros.tools.demo import DemoError, inspect_bag, resolve_prompts
    from sam4d_ros.tools.demo import parse_prompt as pp

    info = inspect_bag(BAG)
    assert list(info.cameras) == list(CAMERAS) and info.fixed_frame == "odom"
    assert len(info.sweep_stamps_ns) == 40 and info.lidar_frame == "lidar"
    assert (info.cameras["front"].width, info.cameras["front"].height) == (480, 288)
    # The player waits for the node's TF subscriptions too (a sweep before /tf_static is matched
    # finds no 'lidar' frame and is skipped, with the prompt made on it).
    assert info.tf_topics == ["/tf", "/tf_static"]
    (p, q) = resolve_prompts([pp("front:320,200@0.3"), pp("lidar:12,-1.5,0.4@0.04")], info)
    assert (p.frame_index, q.frame_index) == (3, 0)
    assert p.stamp_ns == info.sweep_stamps_ns[3]
    for text, message in (
        ("rear:1,2", "unknown camera 'rear' (the bag's cameras: front, front_left"),
        ("front:480,10", "pixel (480, 10) is outside camera front's 480x288 image"),
        ("front:10,-1", "outside"),
        ("lidar:1,2,3@4.5", "4.5 s is past the end of the bag (3.900 s long)"),
    ):
        with pytest.raises(DemoError, match="--prompt") as err:
            resolve_prompts([pp(text)], info)
        assert message in str(err.value), (text, str(err.value))


def test_the_cli_rejects_bad_options_before_starting_anything(tmp_path) -> None:
    bad = _demo("--prompt", "front:1", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2
    assert "argument --prompt: invalid prompt 'front:1'" in bad.stderr
    bad = _demo("--prompt", "rear:1,2", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "unknown camera 'rear'" in bad.stderr
    bad = _demo("--rate", "0", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "--rate must be a positive number" in bad.stderr
    bad = _demo("--bag", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "does not exist" in bad.stderr
    bad = _demo("--runtime", "onnxruntime", "--onnx-dir", str(tmp_path / "no_export"),
                "--out", str(tmp_path / "x"))  # fmt: skip
    assert bad.returncode == 2 and "python -m sam4d_export onnx" in bad.stderr, bad.stderr
    assert not (tmp_path / "x").exists()


def test_each_run_gets_a_new_timestamped_folder(tmp_path) -> None:
    """Without --out a run writes into a new folder under .build/demo/ (never over the last)."""
    import time

    from sam4d_ros.tools.demo import new_run_folder

    now = time.mktime((2026, 12, 4, 18, 45, 12, 0, 0, -1))
    a = new_run_folder(tmp_path / "demo", now)
    b = new_run_folder(tmp_path / "demo", now)
    assert a.name == "20261204-184512" and b.name == "20261204-184512-2"
    assert a.is_dir() and b.is_dir() and not any(b.iterdir())
    assert (tmp_path / "demo" / "latest").resolve() == b.resolve()
