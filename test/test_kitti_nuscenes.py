"""KITTI raw and nuScenes sample readers against the facts in shared/data/README.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sam4d_core.data.errors import DatasetError
from sam4d_core.data.kitti_raw import load_kitti_calibration, read_kitti_raw
from sam4d_core.data.nuscenes_sample import read_nuscenes_sample

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
KITTI = DATA / "kitti_raw_2011_09_26"
NUSCENES = DATA / "nuscenes_sample"

needs_kitti = pytest.mark.skipif(not KITTI.is_dir(), reason=f"{KITTI} not present")
needs_nuscenes = pytest.mark.skipif(not NUSCENES.is_dir(), reason=f"{NUSCENES} not present")


def _in_image(points: np.ndarray, k: np.ndarray, cam_from_lidar: np.ndarray, wh) -> np.ndarray:
    """(N,) bool: points with positive depth that project inside the image."""
    homo = np.c_[points[:, :3].astype(np.float64), np.ones(len(points))]
    uvz = k @ (cam_from_lidar @ homo.T)[:3]
    z = uvz[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        u, v = uvz[0] / z, uvz[1] / z
    return (z > 0) & (u >= 0) & (u < wh[0]) & (v >= 0) & (v < wh[1])


@pytest.fixture(scope="module")
def kitti():
    return read_kitti_raw(KITTI)


@needs_kitti
def test_kitti_frames_images_points(kitti) -> None:
    assert len(kitti) == 24
    assert kitti.point_fields == ("x", "y", "z", "intensity")
    for i, f in enumerate(kitti.frames):
        cam = f.cameras["image_02"]
        assert cam.image.shape == (375, 1242, 3) and cam.image.dtype == np.uint8
        assert cam.size_wh == (1242, 375)
        assert (
            110_000 <= f.points.shape[0] <= 115_000
        )  # README: about 111k-114k and f.points.dtype == np.float32
        assert 0.0 <= f.points[:, 3].min() and f.points[:, 3].max() <= 1.0
        assert f.timestamp == pytest.approx(0.1 * i)
    np.testing.assert_array_equal(kitti[0].world_from_lidar, np.eye(4))


@needs_kitti
def test_kitti_calibration_folds_the_projection_translation(kitti) -> None:
    calib = load_kitti_calibration(KITTI)
    f = kitti[5]
    cam = f.cameras["image_02"]
    homo = np.c_[f.points[:, :3].astype(np.float64), np.ones(len(f.points))]
    ours = cam.intrinsics @ (cam.cam_from_lidar @ homo.T)[:3]
    kitti_form = calib.p_rect @ calib.r_rect_00 @ calib.velo_to_cam @ homo.T
    np.testing.assert_allclose(ours, kitti_form, rtol=1e-12, atol=1e-9)
    # K is a pinhole matrix and cam_from_lidar a rigid transform.
    assert cam.intrinsics[2].tolist() == [0, 0, 1] and cam.intrinsics[0, 1] == 0
    r = cam.cam_from_lidar[:3, :3]
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-6)  # KITTI's R has 7 digits


@needs_kitti
def test_kitti_points_land_in_image_02(kitti) -> None:
    for f in kitti.frames[::6]:
        cam = f.cameras["image_02"]
        n = int(_in_image(f.points, cam.intrinsics, cam.cam_from_lidar, cam.size_wh).sum())
        assert 15_000 <= n <= 17_000, n


@needs_kitti
def test_kitti_poses_drive_forward(kitti) -> None:
    end = kitti[23].world_from_lidar[:3, 3]
    np.testing.assert_allclose(end, [4.81, -0.07, 0.03], atol=0.01)
    yaw = np.degrees(np.arctan2(kitti[23].world_from_lidar[1, 0], kitti[23].world_from_lidar[0, 0]))
    assert yaw == pytest.approx(-0.4, abs=0.1)


@needs_kitti
def test_kitti_frame_selection_and_errors(tmp_path: Path) -> None:
    seq = read_kitti_raw(KITTI, frames=[3, 4], load_images=False)
    assert [f.timestamp for f in seq.frames] == pytest.approx([0.3, 0.4])
    with pytest.raises(IndexError, match="out of range"):
        read_kitti_raw(KITTI, frames=[24], load_images=False)
    with pytest.raises(DatasetError, match="does not exist"):
        read_kitti_raw(tmp_path / "nope")
    (tmp_path / "calib_velo_to_cam.txt").write_bytes((KITTI / "calib_velo_to_cam.txt").read_bytes())
    (tmp_path / "calib_cam_to_cam.txt").write_text("calib_time: today\nP_rect_02: 1 2 3\n")
    (tmp_path / "velodyne_points" / "data").mkdir(parents=True)
    (tmp_path / "velodyne_points" / "data" / "0000000000.bin").write_bytes(b"")
    (tmp_path / "timestamps.txt").write_text("0.0\n")
    (tmp_path / "image_02" / "data").mkdir(parents=True)
    (tmp_path / "image_02" / "data" / "0000000000.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="'P_rect_02' must have 12 numbers"):
        read_kitti_raw(tmp_path)


@pytest.fixture(scope="module")
def nuscenes():
    return read_nuscenes_sample(NUSCENES)


@needs_nuscenes
def test_nuscenes_sample(nuscenes) -> None:
    assert len(nuscenes) == 1
    f = nuscenes[0]
    assert nuscenes.point_fields == ("x", "y", "z", "intensity", "ring")
    assert f.points.shape == (34_688, 5)
    assert f.points[:, 4].min() == 0 and f.points[:, 4].max() == 31
    assert f.timestamp == pytest.approx(1532402927.647951, abs=1e-6)
    assert len(f.cameras) == 6
    for cam in f.cameras.values():
        assert cam.image.shape == (900, 1600, 3)
        assert abs(cam.timestamp - f.timestamp) <= 0.044


@needs_nuscenes
def test_nuscenes_points_project_into_each_camera(nuscenes) -> None:
    expected = {
        "CAM_FRONT": 3067,
        "CAM_FRONT_RIGHT": 3079,
        "CAM_FRONT_LEFT": 3704,
        "CAM_BACK": 4826,
        "CAM_BACK_LEFT": 4097,
        "CAM_BACK_RIGHT": 3379,
    }
    f = nuscenes[0]
    seen = np.zeros(len(f.points), bool)
    for name, n in expected.items():
        cam = f.cameras[name]
        m = _in_image(f.points, cam.intrinsics, cam.cam_from_lidar, cam.size_wh)
        assert int(m.sum()) == n, name
        seen |= m
    assert int(seen.sum()) == 20_206


@needs_nuscenes
def test_nuscenes_pose_is_ego2global_at_lidar2ego(nuscenes) -> None:
    pose = nuscenes[0].world_from_lidar
    # The LiDAR sits ~1.84 m above the ego origin; the ego is at (411.3, 1180.9) in the map.
    np.testing.assert_allclose(pose[:2, 3], [411.3, 1180.9], atol=1.5)
    np.testing.assert_allclose(pose[:3, :3] @ pose[:3, :3].T, np.eye(3), atol=1e-6)
