"""Waymo-4DSeg reader/writer: exact round trips, the official layout, and clear errors."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from random_sequence import assert_sequences_equal, make_sequence

from sam4d_core.data.errors import DatasetError, RLEError
from sam4d_core.data.rle import encode_mask, encode_point_mask
from sam4d_core.data.waymo4dseg import (
    Waymo4DSegDataset,
    read_waymo4dseg,
    write_waymo4dseg,
)


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, object]:
    seq = make_sequence(seed=3, num_frames=3)
    write_waymo4dseg(seq, tmp_path, image_format="png")
    return tmp_path, seq


def test_round_trip_png_is_exact(written: tuple[Path, object]) -> None:
    root, seq = written
    back = read_waymo4dseg(root)
    # camera2lidar is stored inverted, as in the official pkl; inverting back costs ~1e-16.
    assert_sequences_equal(seq, back, pose_atol=1e-12)


def test_layout_matches_official(written: tuple[Path, object]) -> None:
    root, seq = written
    meta = pickle.loads((root / "meta_infos" / f"{seq.name}.pkl").read_bytes())
    f0 = meta["frames"][0]
    ts = round(seq[0].timestamp * 1e6)
    assert f0["path"]["pcd"] == f"pcds/{seq.name}/{ts}.npz"
    assert f0["path"]["sam4d_label"] == f"sam4d_labels/{seq.name}/{ts}.json"
    cam = f0["cams_info"]["front"]
    assert cam["data_path"] == f"undistort_images/{seq.name}/{ts}/front.png"
    # camera2lidar maps camera -> LiDAR: the inverse of our cam_from_lidar.
    np.testing.assert_allclose(
        np.asarray(cam["camera2lidar"]) @ seq[0].cameras["front"].cam_from_lidar,
        np.eye(4),
        atol=1e-12,
    )
    np.testing.assert_array_equal(np.asarray(f0["lidar2world"]), seq[0].world_from_lidar)
    with np.load(root / f0["path"]["pcd"]) as npz:
        np.testing.assert_array_equal(npz["data"], seq[0].points)
    label = json.loads((root / f0["path"]["sam4d_label"]).read_text())
    lidar = {o["object_id"]: o for o in label["sensors"]["LiDAR_TOP"]["objects"]}
    assert set(lidar) == {-1, 1, 2, 3}
    assert lidar[-1]["lidar_mask"]["size"] == [seq[0].points.shape[0], 1]
    assert lidar[1]["semantic"] == seq[0].objects[1].semantic
    assert "volume" not in lidar[2]  # None volumes are left out (official reader defaults them)
    assert isinstance(lidar[1]["lidar_mask"]["counts"], str)
    assert {o["object_id"] for o in label["sensors"]["front"]["objects"]} == {1, 2, 3}


def test_lazy_dataset_api(written: tuple[Path, object]) -> None:
    root, seq = written
    ds = Waymo4DSegDataset(root)
    assert ds.sequence_names() == [seq.name]
    assert ds.num_frames(seq.name) == 3
    f = ds.load_frame(seq.name, 1, load_images=False, cameras=["left"])
    assert list(f.cameras) == ["left"] and f.cameras["left"].image.shape == (0, 0, 3)
    np.testing.assert_array_equal(f.points, seq[1].points)
    part = ds.load_sequence(seq.name, frames=slice(1, 3))
    assert [fr.index for fr in part.frames] == [1, 2]
    assert len(list(ds.iter_frames(seq.name, load_labels=False))) == 3


def test_jpg_is_lossy_but_close(tmp_path: Path) -> None:
    seq = make_sequence(seed=4, num_frames=1)
    write_waymo4dseg(seq, tmp_path)  # jpg by default, like the official data
    assert any((tmp_path / "undistort_images" / seq.name).rglob("*.jpg"))
    assert_sequences_equal(seq, read_waymo4dseg(tmp_path), images_exact=False, pose_atol=1e-12)


def test_official_style_pkl_without_our_extras(tmp_path: Path) -> None:
    """A pkl as the official README shows it: numpy arrays, no timestamps, xyz-only npz."""
    name = "segment-1"
    ts = 1550083467346370
    (tmp_path / "meta_infos").mkdir()
    (tmp_path / f"pcds/{name}").mkdir(parents=True)
    (tmp_path / f"sam4d_labels/{name}").mkdir(parents=True)
    pts = np.random.default_rng(0).normal(size=(50, 3))
    np.savez(tmp_path / f"pcds/{name}/{ts}.npz", data=pts)
    lab = np.zeros(50, bool)
    lab[:5] = True
    label = {
        "sensors": {
            "LiDAR_TOP": {
                "objects": [
                    {
                        "object_id": 7,
                        "score": 0.9,
                        "semantic": "car",
                        "lidar_mask": encode_point_mask(lab),
                    },
                    {"object_id": -1, "lidar_mask": encode_point_mask(np.arange(50) == 49)},
                ]
            }
        }
    }
    (tmp_path / f"sam4d_labels/{name}/{ts}.json").write_text(json.dumps(label))
    meta = {
        "seq_name": name,
        "frames": [
            {
                "cams_info": {},
                "path": {"pcd": f"pcds/{name}/{ts}.npz"},  # no sam4d_label: found by convention
                "lidar2world": np.eye(4),
            }
        ],
    }
    (tmp_path / "meta_infos" / f"{name}.pkl").write_bytes(pickle.dumps(meta))
    seq = read_waymo4dseg(tmp_path)
    f = seq[0]
    assert f.timestamp == pytest.approx(ts * 1e-6)
    assert f.points.shape == (50, 4) and f.points.dtype == np.float32
    assert (f.points[:, 3] == 0).all()
    assert seq.point_fields == ("x", "y", "z", "intensity")
    assert (f.point_labels[:5] == 7).all() and f.point_labels[49] == -1
    assert f.objects[7].semantic == "car" and f.objects[7].volume is None


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    seq = make_sequence(seed=5, num_frames=3)
    seq.frames[2].cameras["front"].image = np.zeros((4, 4), np.uint8)  # not RGB
    with pytest.raises(ValueError, match="frame 2 camera 'front'"):
        write_waymo4dseg(seq, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_overwrite(written: tuple[Path, object]) -> None:
    root, seq = written
    with pytest.raises(FileExistsError, match="already exists"):
        write_waymo4dseg(seq, root)
    seq.frames = seq.frames[:1]
    write_waymo4dseg(seq, root, overwrite=True, image_format="png")
    assert Waymo4DSegDataset(root).num_frames(seq.name) == 1
    assert len(list((root / "pcds" / seq.name).iterdir())) == 1
    assert not [p for p in root.iterdir() if p.name.startswith(".")]


# ---------------------------------------------------------------------------- bad input


def _pkl(root: Path, name: str) -> Path:
    return root / "meta_infos" / f"{name}.pkl"


def _edit_meta(root: Path, name: str, edit) -> None:
    meta = pickle.loads(_pkl(root, name).read_bytes())
    edit(meta)
    _pkl(root, name).write_bytes(pickle.dumps(meta))


def test_missing_root_and_sequence(tmp_path: Path, written: tuple[Path, object]) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        Waymo4DSegDataset(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no 'meta_infos/' directory"):
        Waymo4DSegDataset(tmp_path / "empty")
    root, seq = written
    with pytest.raises(DatasetError, match=r"no sequence 'other' \(have: \['seq_3'\]\)"):
        Waymo4DSegDataset(root).load_sequence("other")


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: m.pop("frames"), "lacks the required key 'frames'"),
        (
            lambda m: m["frames"][1].pop("lidar2world"),
            r"frames\[1\] lacks the required key 'lidar2world'",
        ),
        (
            lambda m: m["frames"][0]["path"].pop("pcd"),
            r"frames\[0\]\['path'\] must be a dict with a 'pcd'",
        ),
        (
            lambda m: m["frames"][0]["cams_info"]["front"].pop("camera2lidar"),
            r"\['cams_info'\]\['front'\] lacks the required key 'camera2lidar'",
        ),
        (
            lambda m: m["frames"][2]["cams_info"]["left"].update(
                camera_intrinsics=[[1, 0], [0, 1]]
            ),
            r"frames\[2\]\['cams_info'\]\['left'\]\['camera_intrinsics'\] must be 3x3",
        ),
    ],
)
def test_pkl_without_required_keys(written: tuple[Path, object], edit, match: str) -> None:
    root, seq = written
    _edit_meta(root, seq.name, edit)
    with pytest.raises(DatasetError, match=match) as info:
        read_waymo4dseg(root)
    assert str(_pkl(root, seq.name)) in str(info.value)


def test_pickle_with_code_is_refused(tmp_path: Path) -> None:
    (tmp_path / "meta_infos").mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "meta_infos" / "x.pkl").write_bytes(pickle.dumps({"frames": [Evil()]}))
    with pytest.raises(DatasetError, match="refusing to load builtins.print"):
        read_waymo4dseg(tmp_path)
    (tmp_path / "meta_infos" / "x.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DatasetError, match="not a valid meta info pickle"):
        read_waymo4dseg(tmp_path)


def test_truncated_and_bad_npz(written: tuple[Path, object]) -> None:
    root, seq = written
    pcd = next((root / "pcds" / seq.name).glob("*.npz"))
    data = pcd.read_bytes()
    pcd.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match="corrupt or truncated npz") as info:
        read_waymo4dseg(root)
    assert str(pcd) in str(info.value)
    np.savez(pcd, points=np.zeros((3, 4)))
    with pytest.raises(DatasetError, match=r"npz has no key 'data' \(keys: \['points'\]\)"):
        read_waymo4dseg(root)
    np.savez(pcd, data=np.zeros((3, 2)))
    with pytest.raises(DatasetError, match=r"must be \(N, C>=3\)"):
        read_waymo4dseg(root)
    pcd.unlink()
    with pytest.raises(DatasetError, match="point cloud file does not exist"):
        read_waymo4dseg(root)


def test_missing_or_corrupt_image(written: tuple[Path, object]) -> None:
    root, seq = written
    img = sorted((root / "undistort_images" / seq.name).rglob("left.png"))[1]
    img.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="not a decodable image") as info:
        read_waymo4dseg(root)
    assert str(img) in str(info.value)
    img.unlink()
    with pytest.raises(DatasetError, match="image file does not exist"):
        read_waymo4dseg(root)


def test_rle_of_the_wrong_size(written: tuple[Path, object]) -> None:
    root, seq = written
    label = sorted((root / "sam4d_labels" / seq.name).glob("*.json"))[0]
    good = json.loads(label.read_text())
    bad = json.loads(label.read_text())
    bad["sensors"]["LiDAR_TOP"]["objects"][0]["lidar_mask"] = encode_point_mask(np.zeros(7, bool))
    label.write_text(json.dumps(bad))
    n = seq[0].points.shape[0]
    with pytest.raises(RLEError, match=f"has 7 points but the point cloud has {n}") as info:
        read_waymo4dseg(root)
    assert str(label) in str(info.value) and "object 1" in str(info.value)
    bad = good
    bad["sensors"]["front"]["objects"][0]["image_mask"] = encode_mask(np.zeros((5, 5), bool))
    label.write_text(json.dumps(bad))
    with pytest.raises(RLEError, match=r"size \[5, 5\] but the image is \[24, 32\]"):
        read_waymo4dseg(root)
    label.write_text("{not json")
    with pytest.raises(DatasetError, match="not a valid label JSON"):
        read_waymo4dseg(root)
