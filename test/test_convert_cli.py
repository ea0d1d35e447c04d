"""The conversion CLI (``python -m sam4d_ros.recording.convert``) on tiny inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from random_sequence import assert_sequences_equal, make_sequence

from sam4d_core.data.kitti_raw import read_kitti_raw
from sam4d_core.data.sequence_bag import read_sequence_bag, write_sequence_bag
from sam4d_core.data.waymo4dseg import read_waymo4dseg, write_waymo4dseg
from sam4d_ros.recording.convert import COMMANDS, Progress, build_parser, main

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
KITTI = DATA / "kitti_raw_2011_09_26"
NUSCENES = DATA / "nuscenes_sample"


def run_cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "sam4d_ros.recording.convert", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    proc = run_cli("--help")
    for name in COMMANDS:
        assert name in proc.stdout
    parser = build_parser()
    for name in COMMANDS:
        with pytest.raises(SystemExit) as info:
            parser.parse_args([name, "--help"])
        assert info.value.code == 0
        out = capsys.readouterr().out
        assert "usage:" in out and "--overwrite" in out and "output" in out


def test_cli_does_not_import_rclpy() -> None:
    code = (
        "import sys, sam4d_ros.recording.convert, sam4d_core.data.sequence_bag;"
        "assert 'rclpy' not in sys.modules, 'rclpy imported'"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


@pytest.mark.skipif(not KITTI.is_dir(), reason=f"{KITTI} not present")
def test_kitti_to_bag_to_frames(tmp_path: Path) -> None:
    proc = run_cli("kitti-to-bag", str(KITTI), str(tmp_path / "kitti"), "--frames", "2")
    assert "| frames " in proc.stdout and "| 2 " in proc.stdout and "image_02" in proc.stdout
    assert "write" in proc.stderr  # progress bar
    expected = read_kitti_raw(KITTI, frames=[0, 1])
    back = read_sequence_bag(tmp_path / "kitti")
    assert back.lidar_frame_id == "velodyne" and len(back) == 2
    for a, b in zip(expected.frames, back.frames, strict=True):
        np.testing.assert_array_equal(a.points, b.points)
        np.testing.assert_array_equal(a.cameras["image_02"].image, b.cameras["image_02"].image)
        np.testing.assert_allclose(b.world_from_lidar, a.world_from_lidar, atol=1e-9)

    proc = run_cli("bag-to-frames", str(tmp_path / "kitti"), str(tmp_path / "frames"), "--quiet")
    assert proc.stderr == ""
    info = json.loads((tmp_path / "frames" / "sequence.json").read_text())
    assert info["num_frames"] == 2 and info["cameras"] == ["image_02"]
    frame = json.loads((tmp_path / "frames" / "000001" / "frame.json").read_text())
    np.testing.assert_allclose(frame["world_from_lidar"], expected[1].world_from_lidar, atol=1e-9)
    assert frame["cameras"]["image_02"]["size_wh"] == [1242, 375]
    with np.load(tmp_path / "frames" / "000001" / "points.npz") as npz:
        np.testing.assert_array_equal(npz["points"], expected[1].points)
        assert list(npz["point_fields"]) == ["x", "y", "z", "intensity"]
    assert (tmp_path / "frames" / "000001" / "image_02.png").is_file()


def test_synthetic_to_bag_is_the_generator_output(tmp_path: Path) -> None:
    from sam4d_core.data.synthetic import generate_sequence, make_config

    run_cli(
        "synthetic-to-bag",
        str(tmp_path / "syn"),
        "--preset",
        "tiny",
        "--frames",
        "2",
        "--images",
        "png",
        "--quiet",
    )
    expected = generate_sequence(make_config("tiny", num_frames=2))
    assert_sequences_equal(expected, read_sequence_bag(tmp_path / "syn"), pose_atol=1e-9)


def test_errors_exit_1_without_output(tmp_path: Path) -> None:
    proc = run_cli("bag-to-frames", str(tmp_path / "missing"), str(tmp_path / "out"), ok=False)
    assert proc.returncode == 1 and "error:" in proc.stderr and "missing" in proc.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "exists").mkdir()
    seq = make_sequence(seed=2, num_frames=1)
    write_sequence_bag(seq, tmp_path / "bag")
    assert main(["bag-to-frames", str(tmp_path / "bag"), str(tmp_path / "exists"), "--quiet"]) == 1
    assert list((tmp_path / "exists").iterdir()) == []


def test_in_process_conversions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """waymo -> bag -> waymo and the labels survive; synthetic -> waymo."""
    seq = make_sequence(seed=21, num_frames=2)
    write_waymo4dseg(seq, tmp_path / "w", image_format="png")
    assert main(["waymo-to-bag", str(tmp_path / "w"), str(tmp_path / "b"), "--quiet"]) == 0
    assert (
        main(
            [
                "bag-to-waymo",
                str(tmp_path / "b"),
                str(tmp_path / "w2"),
                "--image-format",
                "png",
                "--quiet",
            ]
        )
        == 0
    )
    assert_sequences_equal(seq, read_waymo4dseg(tmp_path / "w2"), pose_atol=1e-12)
    out = capsys.readouterr().out
    assert "| frames with ground truth | 2 " in out

    assert (
        main(
            [
                "synthetic-to-waymo",
                str(tmp_path / "sw"),
                "--preset",
                "tiny",
                "--frames",
                "1",
                "--name",
                "tiny_one",
                "--quiet",
            ]
        )
        == 0
    )
    assert read_waymo4dseg(tmp_path / "sw").name == "tiny_one"
    assert main(["synthetic-to-bag", str(tmp_path / "x"), "--preset", "nope", "--quiet"]) == 1


@pytest.mark.skipif(not NUSCENES.is_dir(), reason=f"{NUSCENES} not present")
def test_nuscenes_to_bag(tmp_path: Path) -> None:
    assert (
        main(
            [
                "nuscenes-to-bag",
                str(NUSCENES),
                str(tmp_path / "n"),
                "--images",
                "jpeg",
                "--storage",
                "sqlite3",
                "--quiet",
            ]
        )
        == 0
    )
    back = read_sequence_bag(tmp_path / "n")
    assert len(back[0].cameras) == 6 and back[0].points.shape == (34_688, 5)
    assert back.point_fields == ("x", "y", "z", "intensity", "ring")
    assert list(back[0].cameras) == [
        "CAM_FRONT",
        "CAM_FRONT_RIGHT",
        "CAM_FRONT_LEFT",
        "CAM_BACK",
        "CAM_BACK_LEFT",
        "CAM_BACK_RIGHT",
    ]


@pytest.mark.skipif(not NUSCENES.is_dir(), reason=f"{NUSCENES} not present")
def test_nuscenes_to_bag_says_where_things_came_from_and_names_cameras(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["nuscenes-to-bag", str(NUSCENES), str(tmp_path / "n"), "--quiet"]
    assert (
        main([*argv, "--cameras", "CAM_FRONT", "CAM_BACK", "--camera-name", "CAM_FRONT=front"]) == 0
    )
    out = capsys.readouterr().out
    for what in ("calib.json ego2global @ lidar.lidar2ego", "calib.json timestamp_s", "front:U,V"):
        assert what in out, (what, out)
    assert list(read_sequence_bag(tmp_path / "n")[0].cameras) == ["front", "CAM_BACK"]
    # The nuScenes release layout is recognised and the error says what is read instead.
    (tmp_path / "release" / "samples").mkdir(parents=True)
    assert main(["nuscenes-to-bag", str(tmp_path / "release"), str(tmp_path / "r"), "--quiet"]) == 1
    assert "nuScenes release layout" in capsys.readouterr().err


def test_progress_bar_lines(capsys: pytest.CaptureFixture[str]) -> None:
    p = Progress("write")
    for i in range(1, 101):
        p(i, 100)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 11 and lines[-1].startswith("write") and "100/100" in lines[-1]
