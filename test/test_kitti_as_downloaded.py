"""KITTI raw as the KITTI site ships a drive (synced+rectified): a small drive is laid out exactly
so in a temporary folder from the shared sample (date-time timestamps, OXTS packets written from
the sample's known poses through the inverse of the devkit's conversion, the calib files one
folder up), then read and converted; the poses must come back as the known ones.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO_ROOT, SHARED_DATA
from sam4d_core.data.errors import DatasetError
from sam4d_core.data.kitti_oxts import (
    OXTS_FIELDS,
    mercator_from_latlon,
    oxts_packet_from_pose,
)
from sam4d_core.data.kitti_raw import open_kitti_drive, parse_kitti_time, read_kitti_raw

SAMPLE = SHARED_DATA / "kitti_raw_2011_09_26"
pytestmark = pytest.mark.skipif(not SAMPLE.is_dir(), reason=f"{SAMPLE} not present")
FRAMES = 12
T0 = datetime(2011, 9, 26, 13, 2, 25, 964389, tzinfo=timezone.utc)
PERIOD = timedelta(microseconds=103_610)  # the recorded spacing of the 2011_09_26 drives
# Where the first packet puts the car (Karlsruhe), and its attitude.
LAT0, LON0, ALT0, RPY0 = 49.011212804408, 8.4228850417969, 112.83492279053, (0.02, -0.01, 1.3)


def _known_poses() -> np.ndarray:
    rows = np.loadtxt(SAMPLE / "poses_lidar.txt").reshape(-1, 3, 4)[:FRAMES]
    out = np.tile(np.eye(4), (len(rows), 1, 1))
    out[:, :3] = rows
    return out


def _velo_from_imu() -> np.ndarray:
    vals = {}
    for line in (SAMPLE / "calib_imu_to_velo.txt").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("R", "T"):
            vals[key] = np.array(rest.split(), dtype=float)
    t = np.eye(4)
    t[:3, :3] = vals["R"].reshape(3, 3)
    t[:3, 3] = vals["T"]
    return t


def _kitti_time(t: datetime) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S.%f") + "000"  # KITTI writes nanoseconds


def _first_imu_pose() -> np.ndarray:
    from sam4d_core.data.kitti_oxts import _rotation

    m = np.eye(4)
    m[:3, :3] = _rotation(*RPY0)
    scale = np.cos(np.deg2rad(LAT0))
    m[:3, 3] = (*mercator_from_latlon(np.array(LAT0), np.array(LON0), scale), ALT0)
    return m


def make_drive(base: Path, *, oxts: bool = True) -> Path:
    """``base/2011_09_26/2011_09_26_drive_0001_sync`` as downloaded, first FRAMES frames."""
    date = base / "2011_09_26"
    drive = date / "2011_09_26_drive_0001_sync"
    for name in ("calib_cam_to_cam.txt", "calib_velo_to_cam.txt", "calib_imu_to_velo.txt"):
        date.mkdir(parents=True, exist_ok=True)
        shutil.copy(SAMPLE / name, date / name)
    stamps = [T0 + k * PERIOD for k in range(FRAMES)]
    for folder, ext, offset_us in (("velodyne_points", "bin", 0), ("image_02", "png", 1_800)):
        (drive / folder / "data").mkdir(parents=True)
        for i in range(FRAMES):
            name = f"{i:010d}.{ext}"
            os.symlink(SAMPLE / folder / "data" / name, drive / folder / "data" / name)
        lines = [_kitti_time(t + timedelta(microseconds=offset_us)) for t in stamps]
        (drive / folder / "timestamps.txt").write_text("\n".join(lines) + "\n")
    spin = timedelta(milliseconds=50)
    vel = drive / "velodyne_points"
    (vel / "timestamps_start.txt").write_text("\n".join(_kitti_time(t - spin) for t in stamps))
    (vel / "timestamps_end.txt").write_text("\n".join(_kitti_time(t + spin) for t in stamps))
    if oxts:
        # Packets from the known LiDAR poses: IMU i -> IMU 0 = inv(V) T_0_i V, placed at the
        # first packet's absolute pose, then the inverse of the devkit's Mercator projection.
        v = _velo_from_imu()
        m0 = _first_imu_pose()
        scale = np.cos(np.deg2rad(LAT0))
        (drive / "oxts" / "data").mkdir(parents=True)
        fmt = "\n".join(f"{f}: field {f} of the OXTS RT3003 packet" for f in OXTS_FIELDS)
        (drive / "oxts" / "dataformat.txt").write_text(fmt + "\n")
        (drive / "oxts" / "timestamps.txt").write_text("\n".join(_kitti_time(t) for t in stamps))
        for i, t_0_i in enumerate(_known_poses()):
            lat, lon, alt, roll, pitch, yaw = oxts_packet_from_pose(
                m0 @ np.linalg.inv(v) @ t_0_i @ v, scale
            )
            rest = "0.1 0.2 9.8 0.1 0.2 9.8 0 0 0.01 0 0 0.01 0.2 0.05 4 10 4 4 4"
            line = f"{lat:.12f} {lon:.12f} {alt:.10f} {roll:.12f} {pitch:.12f} {yaw:.12f} "
            (drive / "oxts" / "data" / f"{i:010d}.txt").write_text(
                line + "0.5 0.3 5.1 0.02 0.01 " + rest + "\n"
            )
    return drive


def _assert_poses(got: np.ndarray, want: np.ndarray, atol_m: float) -> None:
    np.testing.assert_allclose(got[:, :3, 3], want[:, :3, 3], atol=atol_m)
    np.testing.assert_allclose(got[:, :3, :3], want[:, :3, :3], atol=1e-7)


def test_kitti_time_strings_are_read_to_the_nanosecond() -> None:
    t = parse_kitti_time("2011-09-26 13:02:25.964389445")
    assert t == pytest.approx(
        datetime(2011, 9, 26, 13, 2, 25, tzinfo=timezone.utc).timestamp() + 0.964389445, abs=1e-6
    )
    assert parse_kitti_time("2011-09-26 13:02:26") - parse_kitti_time(
        "2011-09-26 13:02:25.5"
    ) == pytest.approx(0.5)


def test_a_drive_as_downloaded_reads_with_oxts_poses(tmp_path: Path) -> None:
    drive = open_kitti_drive(make_drive(tmp_path))
    assert drive.num_frames == FRAMES and drive.cameras == ["image_02"]
    assert drive.calib_dir == tmp_path / "2011_09_26" and drive.pose_method() == "oxts"
    assert np.diff(drive.lidar_stamps) == pytest.approx(0.10361, abs=1e-6)
    seq, sources = drive.read(list(range(FRAMES)), load_images=False)
    known = _known_poses()
    # 12 decimals of a degree are 0.1 um on the ground; the poses come back to well under a mm.
    _assert_poses(np.stack([f.world_from_lidar for f in seq.frames]), known, 1e-5)
    assert "OXTS" in sources["poses"] and "calib_imu_to_velo.txt" in sources["poses"]
    assert "cos(49.011213 deg)" in sources["poses"]
    assert sources["timestamps"].startswith("velodyne_points/timestamps.txt")
    assert "image_02/timestamps.txt" in sources["camera image_02"]
    f = seq.frames[3]
    assert f.timestamp == pytest.approx((T0 + 3 * PERIOD).timestamp(), abs=1e-6)
    assert f.cameras["image_02"].timestamp - f.timestamp == pytest.approx(0.0018, abs=1e-6)

    # A later start: the world is the LiDAR frame of the first frame read, and the Mercator scale
    # comes from that frame's latitude, as the devkit does for the frames it is given (a few
    # metres away: the scale changes by ~1e-6, so the poses by far less than a mm).
    sel = [4, 6, 8, 10]
    seq, _ = drive.read(sel, load_images=False)
    want = np.linalg.inv(known[4]) @ known[sel]
    _assert_poses(np.stack([f.world_from_lidar for f in seq.frames]), want, 1e-4)


def test_kitti_to_bag_on_a_drive_as_downloaded(tmp_path: Path) -> None:
    from sam4d_core.data.sequence_bag import read_sequence_bag

    drive = make_drive(tmp_path)
    out = tmp_path / "bag"
    proc = subprocess.run(
        [sys.executable, "-m", "sam4d_ros.recording.convert", "kitti-to-bag", str(drive),
         str(out), "--start", "2", "--end", "10", "--step", "2",
         "--camera-name", "image_02=front", "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    for what in (
        "| drive frames",
        "2..8, step 2 of 0..11",
        "OXTS GPS/IMU",
        "KITTI devkit conversion",
        "velodyne_points/timestamps.txt (KITTI date-times",
        "| camera front",
        "image_02/data (left colour camera)",
        "| prompt a camera as",
        "front:U,V",
    ):
        assert what in text, (what, text)
    assert "KISS-ICP" not in text and "poses_lidar.txt" not in text
    back = read_sequence_bag(out)
    assert len(back) == 4 and list(back.frames[0].cameras) == ["front"]
    known = _known_poses()
    want = np.linalg.inv(known[2]) @ known[[2, 4, 6, 8]]
    _assert_poses(np.stack([f.world_from_lidar for f in back.frames]), want, 1e-4)
    stamps = [f.timestamp for f in back.frames]
    assert stamps == pytest.approx([(T0 + k * PERIOD).timestamp() for k in (2, 4, 6, 8)], abs=1e-6)


def test_without_oxts_the_poses_are_estimated_with_kiss_icp_and_said_so(tmp_path: Path) -> None:
    drive = make_drive(tmp_path, oxts=False)
    out = tmp_path / "bag"
    proc = subprocess.run(
        [sys.executable, "-m", "sam4d_ros.recording.convert", "kitti-to-bag", str(drive),
         str(out), "--frames", "6", "--quiet"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "estimated from the scans with KISS-ICP" in proc.stdout
    assert "no OXTS data" in proc.stdout
    # The shared sample's poses_lidar.txt was made with these settings: KISS-ICP is online, so
    # its first 6 poses are those of a 6-frame run.
    seq = read_kitti_raw(drive, frames=range(6), load_images=False, poses="kiss-icp")
    got = np.stack([f.world_from_lidar for f in seq.frames])
    _assert_poses(got, _known_poses()[:6], 1e-6)


def test_layout_errors_say_what_is_expected(tmp_path: Path) -> None:
    drive = make_drive(tmp_path)
    (tmp_path / "2011_09_26" / "calib_cam_to_cam.txt").unlink()
    with pytest.raises(DatasetError, match="2011_09_26_calib.zip"):
        open_kitti_drive(drive)
    empty = tmp_path / "empty"
    (empty / "velodyne_points" / "data").mkdir(parents=True)
    shutil.copy(SAMPLE / "calib_cam_to_cam.txt", empty)
    with pytest.raises(DatasetError, match="as downloaded .synced.rectified."):
        open_kitti_drive(empty)
    (empty / "velodyne_points" / "timestamps.txt").write_text("0.1\n")
    with pytest.raises(DatasetError, match="line 1 '0.1' is not a KITTI date-time"):
        open_kitti_drive(empty)
    d = open_kitti_drive(make_drive(tmp_path / "again"))
    for args, message in (
        ((12,), "--start 12 is outside the drive's frames 0..11"),
        ((2, 2), "--end 2 must be in 3..12"),
        ((0, None, 0), "--step must be >= 1"),
    ):
        with pytest.raises(ValueError, match=message):
            d.select(*args)
    assert d.select(1, 9, 3) == [1, 4, 7] and d.select(0, None, 1, 2) == [0, 1]
    with pytest.raises(DatasetError, match=r"no camera folder\(s\) \['image_03'\]"):
        d.read([0], cameras=["image_03"])


def test_the_shared_sample_layout_still_reads_and_says_where_poses_came_from() -> None:
    drive = open_kitti_drive(SAMPLE)
    assert drive.pose_method() == "file" and "not a KITTI raw file" in drive.stamp_source
    _, sources = drive.read([0, 1], load_images=False)
    assert sources["poses"] == "poses_lidar.txt (read from the file)"
