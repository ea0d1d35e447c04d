"""rosbag2 recordings: exact round trips, what is in the bag, TF reading and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from random_sequence import assert_sequences_equal, make_sequence, random_pose
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader, Writer

from sam4d_core.data.errors import DatasetError
from sam4d_core.data.sequence_bag import (
    TYPESTORE,
    BagError,
    BagTfExtrapolationError,
    BagTfGapError,
    BagTopics,
    MissingTopicError,
    SequenceBagReader,
    read_bag_metadata,
    read_sequence_bag,
    write_sequence_bag,
)
from sam4d_core.geometry.tf_buffer import ExtrapolationError, TfGapError, TfLookupError


def _messages(path: Path) -> dict[str, list[tuple[int, object]]]:
    out: dict[str, list[tuple[int, object]]] = {}
    with Reader(path) as reader:
        for conn, ns, raw in reader.messages():
            out.setdefault(conn.topic, []).append(
                (ns, TYPESTORE.deserialize_cdr(raw, conn.msgtype))
            )
    return out


def _ns(stamp) -> int:
    return stamp.sec * 1_000_000_000 + stamp.nanosec


def to_ns(t: float) -> int:
    """Seconds -> ns like a ROS stamp (t * 1e9 in float64 is off by ~100 ns at epoch times)."""
    sec = int(np.floor(t))
    return sec * 1_000_000_000 + round((t - sec) * 1e9)


@pytest.fixture(scope="module")
def sequence():
    return make_sequence(seed=11, num_frames=3)


@pytest.fixture(scope="module")
def bag(tmp_path_factory, sequence) -> Path:
    path = tmp_path_factory.mktemp("bags") / "drive"
    write_sequence_bag(sequence, path)
    return path


def test_round_trip_raw_images_is_exact(bag: Path, sequence) -> None:
    back = read_sequence_bag(bag)
    # Stamps are exact at ns resolution; poses and calibration pass through quaternions.
    assert_sequences_equal(sequence, back, time_atol=0.0, pose_atol=1e-12)


def test_round_trip_sqlite_png_moving_calibration(tmp_path: Path) -> None:
    seq = make_sequence(seed=12, num_frames=3, moving_calibration=True)
    path = tmp_path / "moving"
    write_sequence_bag(
        seq, path, storage="sqlite3", compressed_images=True, compression_format="png"
    )
    assert (path / "moving.db3").is_file()
    assert_sequences_equal(seq, read_sequence_bag(path), time_atol=0.0, pose_atol=1e-12)
    msgs = _messages(path)
    # Extrinsics that change per frame go on /tf at the image stamps, not on /tf_static.
    static_children = {t.child_frame_id for _, m in msgs["/tf_static"] for t in m.transforms}
    assert static_children == {"lidar"}
    dyn = [(t.child_frame_id, _ns(t.header.stamp)) for _, m in msgs["/tf"] for t in m.transforms]
    cam_ts = to_ns(seq[1].cameras["left"].timestamp)
    assert ("left_optical_frame", cam_ts) in dyn


def test_round_trip_jpeg_is_close(tmp_path: Path, sequence) -> None:
    write_sequence_bag(sequence, tmp_path / "j", compressed_images=True)
    back = read_sequence_bag(tmp_path / "j")
    assert_sequences_equal(sequence, back, images_exact=False, time_atol=0.0, pose_atol=1e-12)


def test_bag_contents_frame_ids_and_stamps(bag: Path, sequence) -> None:
    msgs = _messages(bag)
    t = BagTopics()
    assert set(msgs) == {
        t.lidar_points,
        t.tf,
        t.tf_static,
        t.gt_labeled_points,
        t.gt_objects,
        *(x for c in ("front", "left") for x in (t.image(c), t.info(c), t.instance_labels(c))),
    }
    f0 = sequence[0]
    ns0 = to_ns(f0.timestamp)
    log_ns, cloud = msgs[t.lidar_points][0]
    assert log_ns == _ns(cloud.header.stamp) == ns0 and cloud.header.frame_id == "lidar"
    assert [f.name for f in cloud.fields] == ["x", "y", "z", "intensity", "ring"]
    assert {f.datatype for f in cloud.fields} == {7} and cloud.width == f0.points.shape[0]

    _, img = msgs[t.image("front")][0]
    assert img.encoding == "rgb8" and img.header.frame_id == "front_optical_frame"
    assert _ns(img.header.stamp) == to_ns(f0.cameras["front"].timestamp)
    _, info = msgs[t.info("front")][0]
    assert info.header.frame_id == "front_optical_frame" and info.distortion_model == "plumb_bob"
    np.testing.assert_array_equal(info.k.reshape(3, 3), f0.cameras["front"].intrinsics)
    np.testing.assert_array_equal(info.p.reshape(3, 4)[:, :3], f0.cameras["front"].intrinsics)
    assert not info.p.reshape(3, 4)[:, 3].any() and not info.d.any()
    assert (info.width, info.height) == (32, 24)

    _, tf = msgs[t.tf][0]
    assert [(x.header.frame_id, x.child_frame_id) for x in tf.transforms] == [("odom", "base_link")]
    assert _ns(tf.transforms[0].header.stamp) == ns0
    _, static = msgs[t.tf_static][0]
    pairs = {(x.header.frame_id, x.child_frame_id) for x in static.transforms}
    assert pairs == {
        ("base_link", "lidar"),
        ("lidar", "front_optical_frame"),
        ("lidar", "left_optical_frame"),
    }

    _, labels = msgs[t.instance_labels("left")][0]
    assert labels.encoding == "mono16" and labels.header.frame_id == "left_optical_frame"
    _, lab = msgs[t.gt_labeled_points][0]
    # Labels only (int32), point k labels point k of the sweep with the same stamp.
    assert [(f.name, f.datatype, f.offset) for f in lab.fields] == [("label", 5, 0)]
    assert lab.header == cloud.header and (lab.width, lab.point_step) == (cloud.width, 4)
    np.testing.assert_array_equal(np.frombuffer(lab.data, "<i4"), f0.point_labels)
    _, objs = msgs[t.gt_objects][0]
    table = json.loads(objs.data)
    assert table["stamp"] == {"sec": ns0 // 10**9, "nanosec": ns0 % 10**9}
    assert [o["object_id"] for o in table["objects"]] == [1, 2, 3]

    with Reader(bag) as reader:
        qos = {c.topic: c.ext.offered_qos_profiles for c in reader.connections}
    assert qos[t.tf_static][0].durability == QosDurability.TRANSIENT_LOCAL
    meta = read_bag_metadata(bag)
    assert meta["name"] == sequence.name and meta["cameras"] == {
        "front": "front_optical_frame",
        "left": "left_optical_frame",
    }


def test_chunk_compression_and_identical_rewrites(tmp_path: Path, bag: Path, sequence) -> None:
    mcap_reader = pytest.importorskip("mcap.reader")
    # The default MCAP bag: zstd-compressed chunks, readable by the reference MCAP library, and
    # metadata.yaml says "no file/message compression" as rosbag2 does for chunk compression.
    with (bag / "drive.mcap").open("rb") as f:
        r = mcap_reader.make_reader(f)
        summary = r.get_summary()
        assert {c.compression for c in summary.chunk_indexes} == {"zstd"}
        n = sum(1 for _ in r.iter_messages())
    assert n == summary.statistics.message_count > 0
    meta = (bag / "metadata.yaml").read_text()
    assert "compression_mode: ''" in meta and "compression_format: ''" in meta
    plain = write_sequence_bag(sequence, tmp_path / "plain", chunk_compression="none")
    with (plain / "plain.mcap").open("rb") as f:
        chunks = mcap_reader.make_reader(f).get_summary().chunk_indexes
    assert {c.compression for c in chunks} == {""}
    assert (plain / "plain.mcap").stat().st_size > (bag / "drive.mcap").stat().st_size
    assert_sequences_equal(sequence, read_sequence_bag(plain), time_atol=0.0, pose_atol=1e-12)
    with pytest.raises(ValueError, match="needs storage 'mcap'"):
        write_sequence_bag(sequence, tmp_path / "x", storage="sqlite3", chunk_compression="zstd")
    with pytest.raises(ValueError, match="chunk_compression must be"):
        write_sequence_bag(sequence, tmp_path / "x", chunk_compression="lz4")
    assert not (tmp_path / "x").exists()
    # No wall-clock time, host or random id in the files: the same input gives the same bytes.
    again = write_sequence_bag(sequence, tmp_path / "drive")
    for name in ("metadata.yaml", "drive.mcap"):
        assert (again / name).read_bytes() == (bag / name).read_bytes(), name


def test_mounting_offset_and_large_ids(tmp_path: Path) -> None:
    seq = make_sequence(seed=13, num_frames=2)
    seq.frames[0].cameras["front"].instance_mask[0, 0] = 70_000  # beyond mono16
    seq.frames[0].objects[70_000] = type(seq.frames[0].objects[1])(object_id=70_000)
    mount = random_pose(np.random.default_rng(0), 1.5)
    write_sequence_bag(seq, tmp_path / "b", base_from_lidar=mount, base_frame_id="vehicle")
    msgs = _messages(tmp_path / "b")
    assert msgs[BagTopics().instance_labels("front")][0][1].encoding == "32SC1"
    tf = msgs["/tf"][0][1].transforms[0]
    assert (tf.header.frame_id, tf.child_frame_id) == ("odom", "vehicle")
    assert_sequences_equal(seq, read_sequence_bag(tmp_path / "b"), time_atol=0.0, pose_atol=1e-9)


def test_late_camera_leaves_the_frame_without_it(tmp_path: Path) -> None:
    seq = make_sequence(seed=14, num_frames=3)
    del seq.frames[1].cameras["left"]
    write_sequence_bag(seq, tmp_path / "b")
    back = read_sequence_bag(tmp_path / "b")
    assert set(back[1].cameras) == {"front"} and set(back[2].cameras) == {"front", "left"}
    assert_sequences_equal(seq, back, time_atol=0.0, pose_atol=1e-12)
    # A tighter tolerance than the camera offsets drops the cameras, never the sweep.
    tight = read_sequence_bag(tmp_path / "b", camera_tolerance=0.005)
    assert len(tight) == 3 and all(not f.cameras for f in tight.frames)


def test_reader_is_lazy_and_reads_single_files(bag: Path, sequence) -> None:
    r = SequenceBagReader(bag, cameras=["front"])
    assert len(r) == 3 and r.camera_names == ["front"]
    assert r.stamps == pytest.approx([f.timestamp for f in sequence.frames], abs=0)
    f = r[-1]
    assert f.index == 2 and set(f.cameras) == {"front"}
    np.testing.assert_array_equal(f.points, sequence[2].points)
    # A bare .mcap file (no metadata.yaml): the name falls back to the file's stem.
    back = read_sequence_bag(bag / "drive.mcap")
    assert back.name == "drive" and back.world_frame_id == "odom"
    np.testing.assert_array_equal(back[1].point_labels, sequence[1].point_labels)


def test_missing_topics_are_named(bag: Path) -> None:
    with pytest.raises(MissingTopicError, match="'/sensors/camera/rear/image_raw'") as info:
        read_sequence_bag(bag, cameras=["rear"])
    assert "/sensors/lidar/points" in str(info.value)  # lists what the bag has
    assert str(bag) in str(info.value)
    with pytest.raises(MissingTopicError, match="'/velodyne_points' is not in the bag"):
        read_sequence_bag(bag, BagTopics(lidar_points="/velodyne_points"))


def _copy_bag(src: Path, dst: Path, keep, drop_topics: tuple[str, ...] = ()) -> None:
    """Copy a bag message by message, dropping those for which ``keep(topic, ns)`` is False
    and the topics in ``drop_topics`` altogether."""
    with Reader(src) as reader, Writer(dst, version=8) as writer:
        conns = {}
        for c in reader.connections:
            if c.topic in drop_topics:
                continue
            conns[c.id] = writer.add_connection(
                c.topic,
                c.msgtype,
                typestore=TYPESTORE,
                offered_qos_profiles=c.ext.offered_qos_profiles,
            )
        for c, ns, raw in reader.messages():
            if c.id in conns and keep(c.topic, ns):
                writer.write(conns[c.id], ns, raw)


def test_tf_gap_is_an_error(tmp_path: Path) -> None:
    seq = make_sequence(seed=15, num_frames=6, cameras=("front",))
    write_sequence_bag(seq, tmp_path / "full")
    gone = {to_ns(f.timestamp) for f in seq.frames[1:4]}
    _copy_bag(
        tmp_path / "full", tmp_path / "gap", lambda topic, ns: topic != "/tf" or ns not in gone
    )
    with pytest.raises(TfGapError, match=r"gap in transform 'odom' -> 'base_link'") as info:
        read_sequence_bag(tmp_path / "gap", max_tf_gap=0.3)
    msg = str(info.value)
    assert msg.startswith("/tf:") and f"{seq[0].timestamp:.6f} s" in msg
    assert f"{seq[4].timestamp:.6f} s" in msg and "(0.400 s > max gap 0.300 s)" in msg
    # Both a data set error (the CLI reports those) and the TF buffer's own error type.
    err = info.value
    assert isinstance(err, DatasetError) and isinstance(err, ExtrapolationError)
    assert isinstance(err, BagTfGapError) and err.path == "/tf"
    assert (err.parent, err.child, err.before_ns, err.after_ns) == (
        "odom",
        "base_link",
        to_ns(seq[0].timestamp),
        to_ns(seq[4].timestamp),
    )
    # Allowed to bridge it, the poses are interpolated (and exact where samples exist).
    back = read_sequence_bag(tmp_path / "gap", max_tf_gap=1.0)
    np.testing.assert_allclose(back[5].world_from_lidar, seq[5].world_from_lidar, atol=1e-12)
    # Without any TF there is no pose at all.
    _copy_bag(
        tmp_path / "full", tmp_path / "empty_tf", lambda topic, ns: not topic.startswith("/tf")
    )
    with pytest.raises(TfLookupError, match="/tf: no transform mentions the LiDAR frame 'lidar'"):
        read_sequence_bag(tmp_path / "empty_tf")
    _copy_bag(tmp_path / "full", tmp_path / "notf", lambda t, ns: True, ("/tf", "/tf_static"))
    with pytest.raises(MissingTopicError, match="'/tf' is not in the bag"):
        read_sequence_bag(tmp_path / "notf")
    # A sweep after the last pose: outside the data (not a gap), named with its topic.
    last = to_ns(seq[5].timestamp)
    _copy_bag(tmp_path / "full", tmp_path / "short", lambda t, ns: t != "/tf" or ns != last)
    with pytest.raises(
        BagTfExtrapolationError,
        match=rf"^/tf: no transform 'odom' -> 'base_link' at {seq[5].timestamp:.6f} s: "
        rf"the data covers {seq[0].timestamp:.6f} s \.\. {seq[4].timestamp:.6f} s$",
    ) as info:
        read_sequence_bag(tmp_path / "short")
    assert not isinstance(info.value, TfGapError) and isinstance(info.value, DatasetError)


def test_tf_tree_must_be_a_tree_in_a_bag(tmp_path: Path) -> None:
    seq = make_sequence(seed=15, num_frames=2, cameras=("front",))
    write_sequence_bag(seq, tmp_path / "full")
    with Reader(tmp_path / "full") as reader, Writer(tmp_path / "two", version=8) as writer:
        conns = {
            c.id: writer.add_connection(c.topic, c.msgtype, typestore=TYPESTORE)
            for c in reader.connections
        }
        for c, ns, raw in reader.messages():
            if c.topic == "/tf":
                msg = TYPESTORE.deserialize_cdr(raw, c.msgtype)
                msg.transforms[0].header.frame_id = (
                    "map" if ns != to_ns(seq[0].timestamp) else "odom"
                )
                raw = TYPESTORE.serialize_cdr(msg, c.msgtype)
            writer.write(conns[c.id], ns, raw)
    with pytest.raises(
        BagError, match=r"^/tf: frame 'base_link' has two parents, 'odom' and 'map'"
    ):
        read_sequence_bag(tmp_path / "two")


def test_labeled_points_with_coordinates_are_read(tmp_path: Path, bag: Path, sequence) -> None:
    """Bags from before the labels-only format (x, y, z, label) still give their labels."""
    with Reader(bag) as reader, Writer(tmp_path / "old", version=8) as writer:
        conns = {
            c.id: writer.add_connection(c.topic, c.msgtype, typestore=TYPESTORE)
            for c in reader.connections
        }
        for c, ns, raw in reader.messages():
            if c.topic == BagTopics().gt_labeled_points:
                msg = TYPESTORE.deserialize_cdr(raw, c.msgtype)
                labels = np.frombuffer(msg.data, "<i4")
                xyzl = np.zeros((labels.size, 4), "<f4")
                xyzl[:, 3] = labels.view("<f4")  # the int32 bits in the 4th slot
                pf = TYPESTORE.types["sensor_msgs/msg/PointField"]
                msg.fields = [
                    pf(name=n, offset=4 * i, datatype=7, count=1) for i, n in enumerate("xyz")
                ] + [pf(name="label", offset=12, datatype=5, count=1)]
                msg.point_step, msg.row_step = 16, 16 * labels.size
                msg.data = xyzl.view(np.uint8).reshape(-1)
                raw = TYPESTORE.serialize_cdr(msg, c.msgtype)
            writer.write(conns[c.id], ns, raw)
    back = read_sequence_bag(tmp_path / "old")
    for a, b in zip(sequence.frames, back.frames, strict=True):
        np.testing.assert_array_equal(a.point_labels, b.point_labels)


def test_stamps_from_zero(tmp_path: Path) -> None:
    """KITTI and synthetic sequences may start at t = 0 s: 0 is a time, not "latest"."""
    seq = make_sequence(seed=18, num_frames=3, t0=0.0)
    for f in seq.frames:  # the random camera offsets would put an image before 0
        for cam in f.cameras.values():
            cam.timestamp = f.timestamp
    write_sequence_bag(seq, tmp_path / "b")
    back = read_sequence_bag(tmp_path / "b")
    assert back[0].timestamp == 0.0
    assert_sequences_equal(seq, back, time_atol=0.0, pose_atol=1e-12)


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    seq = make_sequence(seed=16, num_frames=3)
    seq.frames[2].points = seq.frames[2].points[:, :3]
    with pytest.raises(ValueError, match="frame 2: points shape"):
        write_sequence_bag(seq, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []
    seq = make_sequence(seed=16, num_frames=2)
    seq.frames[1].world_from_lidar[:3, :3] *= 2.0  # not a rigid motion
    with pytest.raises(
        ValueError, match="frame 1: transform 'odom' -> 'base_link'.*not a rotation"
    ):
        write_sequence_bag(seq, tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_overwrite(tmp_path: Path) -> None:
    seq = make_sequence(seed=17, num_frames=1, cameras=("front",))
    write_sequence_bag(seq, tmp_path / "b")
    with pytest.raises(FileExistsError, match="exists"):
        write_sequence_bag(seq, tmp_path / "b")
    seq.name = "renamed"
    write_sequence_bag(seq, tmp_path / "b", overwrite=True)
    assert read_sequence_bag(tmp_path / "b").name == "renamed"
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_real_ros_messages_deserialize_the_bag(bag: Path, sequence) -> None:
    """The bytes in the bag are what rclpy's own sensor_msgs types read (where ROS is present)."""
    serialization = pytest.importorskip("rclpy.serialization")
    msgs = pytest.importorskip("sensor_msgs.msg")
    types = {
        "sensor_msgs/msg/PointCloud2": msgs.PointCloud2,
        "sensor_msgs/msg/Image": msgs.Image,
        "sensor_msgs/msg/CameraInfo": msgs.CameraInfo,
    }
    seen = set()
    with Reader(bag) as reader:
        for conn, _ns, raw in reader.messages():
            if conn.msgtype not in types or conn.topic in seen:
                continue
            seen.add(conn.topic)
            m = serialization.deserialize_message(bytes(raw), types[conn.msgtype])
            if conn.topic == "/sensors/lidar/points":
                pts = np.frombuffer(bytes(m.data), dtype="<f4").reshape(-1, 5)
                np.testing.assert_array_equal(pts, sequence[0].points)
                assert m.header.frame_id == "lidar"
            elif conn.topic == "/sensors/camera/front/image_raw":
                img = np.frombuffer(bytes(m.data), np.uint8).reshape(m.height, m.width, 3)
                np.testing.assert_array_equal(img, sequence[0].cameras["front"].image)
    assert len(seen) == 8
