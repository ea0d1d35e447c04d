"""The bag player and recorder (``sam4d_ros.tools.play`` / ``.record``) over real DDS.

Recorded bags must hold exactly the bytes that were published, with message definitions that
decode them on their own; played bags must deliver every message in order, at the recorded pace
divided by the rate, with /clock; a play -> record round trip must give back the original bytes.
Timing is only checked with loose sanity bounds (shared CI machines), never tight.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from random_sequence import make_sequence
from rosbags.interfaces import QosDurability
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from conftest import RosProcess, spin_until
from ros_processes import play_record_samples as samples
from sam4d_core.data.sequence_bag import write_sequence_bag

DISCOVERY_TIMEOUT = "20"  # s, generous: discovery on a loaded 2-core machine can be slow


class ToolProcess(RosProcess):
    """``python -m <module> args...``, as a user runs the tools."""

    output = ""

    def __init__(self, module: str, *args: str) -> None:
        self.args = [sys.executable, "-m", module, *args]
        self.proc = subprocess.Popen(
            self.args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ),
        )

    def wait(self, timeout_s: float) -> tuple[int, str]:
        rc, self.output = super().wait(timeout_s)
        return rc, self.output

    def stop(self, timeout_s: float = 10.0) -> str:
        if self.proc.stdout is not None and self.proc.stdout.closed:  # already waited for
            return self.output
        return super().stop(timeout_s)


@pytest.fixture
def tool():
    started: list[ToolProcess] = []

    def start(module: str, *args: str) -> ToolProcess:
        p = ToolProcess(module, *args)
        started.append(p)
        return p

    yield start
    for p in started:
        p.stop()


def same_cdr(received: list[bytes], recorded: list[bytes]) -> bool:
    """Whether DDS delivered exactly the recorded serialized messages, in order.

    Byte for byte, except that Fast DDS pads a serialized payload that crosses processes with
    zeros to a multiple of 4 bytes (RTPS payload alignment; rosbags writes CDR unpadded, so a
    PointCloud2 can arrive 3 bytes longer, with identical content).
    """
    if len(received) != len(recorded):
        return False
    return all(
        r == b or r == b + b"\0" * (-len(b) % 4) for r, b in zip(received, recorded, strict=True)
    )


def bag_messages(path: Path) -> dict[str, list[tuple[int, bytes]]]:
    out: dict[str, list[tuple[int, bytes]]] = defaultdict(list)
    with Reader(path) as reader:
        for conn, ns, raw in reader.messages():
            out[conn.topic].append((ns, bytes(raw)))
    return dict(out)


@pytest.fixture(scope="module")
def sequence_bag(tmp_path_factory) -> Path:
    """6 sweeps 0.1 s apart, one camera, ground truth: 0.5 s of recording, all topic kinds."""
    seq = make_sequence(seed=3, num_frames=6, cameras=("front",), size_hw=(12, 16), num_points=50)
    return write_sequence_bag(seq, tmp_path_factory.mktemp("bags") / "drive")


@pytest.fixture(scope="module")
def sequence_bag_sqlite(tmp_path_factory) -> Path:
    seq = make_sequence(seed=4, num_frames=4, cameras=("front",), size_hw=(12, 16), num_points=40)
    return write_sequence_bag(seq, tmp_path_factory.mktemp("bags") / "drive_db", storage="sqlite3")


def _raw_node(context, bag: Path, name: str, topics=None, clock: bool = False):
    """A node subscribed (serialized) to ``topics`` ({name: type}; default: the bag's) and
    optionally /clock; returns (node, executor, {topic: [(arrival, raw)]}, [clock ns])."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock

    from sam4d_ros.tools.bag_interop import message_class

    node = Node(name, context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    got: dict[str, list[tuple[float, bytes]]] = defaultdict(list)
    if topics is None:
        with Reader(bag) as reader:
            topics = {c.topic: c.msgtype for c in reader.connections}
    for topic, msgtype in topics.items():
        qos = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
        if topic == "/tf_static":
            qos.durability = DurabilityPolicy.TRANSIENT_LOCAL
        node.create_subscription(
            message_class(msgtype),
            topic,
            lambda raw, t=topic: got[t].append((time.monotonic(), raw)),
            qos,
            raw=True,
        )
    clocks: list[int] = []
    if clock:
        node.create_subscription(
            Clock,
            "/clock",
            lambda m: clocks.append(m.clock.sec * 1_000_000_000 + m.clock.nanosec),
            QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE),
        )
    return node, executor, got, clocks


# ------------------------------------------------------------------------------------ record


def test_record_from_publisher_process(tmp_path, rclpy_context, ros_process, tool):
    """Image + PointCloud2 + our TrackedObjects from another process, recorded by the CLI: the
    bag holds exactly the bytes that a subscriber receives, in order; its definitions decode them
    on their own; the MCAP file is a ros2-profile MCAP as ``ros2 bag`` writes."""
    from rclpy.serialization import deserialize_message

    from sam4d_ros.tools.bag_interop import message_class

    out = tmp_path / "recorded"
    n = samples.NUM_MESSAGES
    # This process receives the same messages serialized: the reference bytes. (rclpy's own
    # serialize_message leaves padding bytes uninitialized, so it cannot be the reference.)
    ref, executor, received, _ = _raw_node(rclpy_context, None, "record_ref", samples.TOPICS)
    rec = tool(
        "sam4d_ros.tools.record",
        "-o",
        str(out),
        "--topics",
        *samples.TOPICS,
        "--max-messages",
        str(n * len(samples.TOPICS)),
    )
    publisher = ros_process("play_record_publisher.py", str(n), "2")
    rc, log = rec.wait(60)
    assert rc == 0, log
    assert "stopped: max-messages" in log
    assert spin_until(executor, lambda: all(len(received[t]) == n for t in samples.TOPICS), 30)

    got = bag_messages(out)
    assert sorted(got) == sorted(samples.TOPICS)
    for topic, msgtype in samples.TOPICS.items():
        assert [raw for _, raw in got[topic]] == [raw for _, raw in received[topic]], topic
        cls = message_class(msgtype)
        for i, (_, raw) in enumerate(got[topic]):
            assert deserialize_message(raw, cls) == samples.message(topic, i), (topic, i)
        stamps = [ns for ns, _ in got[topic]]
        assert stamps == sorted(stamps)
        assert abs(stamps[0] - time.time_ns()) < 120e9  # receive time, not the header stamp

    with Reader(out) as reader:
        conns = {c.topic: c for c in reader.connections}
    for topic, msgtype in samples.TOPICS.items():
        conn = conns[topic]
        assert conn.msgtype == msgtype
        # The stored definition alone (no installed interfaces) decodes the message.
        store = get_typestore(Stores.EMPTY)
        store.register(get_types_from_msg(conn.msgdef.data, msgtype))
        assert store.hash_rihs01(msgtype) == conn.digest
        msg = store.deserialize_cdr(got[topic][-1][1], msgtype)
        assert msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec == samples.stamp_ns(n - 1)
    objects = store.deserialize_cdr(
        got["/play_record/objects"][2][1], "sam4d_ros/msg/TrackedObjects"
    )
    assert [o.id for o in objects.objects] == [1, 2, 3]
    assert objects.objects[2].camera_boxes[0].u_max == 5.0
    qos = conns["/play_record/points"].ext.offered_qos_profiles
    assert qos and qos[0].reliability.name == "RELIABLE"

    # The type hashes in metadata.yaml are the ones the publisher announces on the graph.
    for topic, conn in conns.items():
        infos = ref.get_publishers_info_by_topic(topic)
        assert [str(i.topic_type_hash) for i in infos] == [conn.digest], topic
    ref.destroy_node()
    publisher.stop()

    from mcap.reader import make_reader

    (mcap_file,) = out.glob("*.mcap")
    with mcap_file.open("rb") as f:
        summary = make_reader(f).get_summary()
    with mcap_file.open("rb") as f:
        header_profile = make_reader(f).get_header().profile
    assert header_profile == "ros2"
    assert {s.encoding for s in summary.schemas.values()} == {"ros2msg"}
    assert {c.message_encoding for c in summary.channels.values()} == {"cdr"}
    assert sum(summary.statistics.channel_message_counts.values()) == n * len(samples.TOPICS)
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_record_sigint_finishes_the_bag(tmp_path, rclpy_context, tool):
    """Ctrl-C on the recorder: the bag at the output path is complete and readable, no temp."""
    from rclpy.node import Node
    from std_msgs.msg import String

    node = Node("sigint_publisher", context=rclpy_context)
    pub = node.create_publisher(String, "/play_record/chatter", 10)
    out = tmp_path / "sub" / "chatter"
    rec = tool(
        "sam4d_ros.tools.record",
        "-o",
        str(out),
        "--topics",
        "/play_record/chatter",
        "-s",
        "sqlite3",
    )
    deadline = time.monotonic() + float(DISCOVERY_TIMEOUT)
    while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pub.get_subscription_count() > 0, rec.stop()
    time.sleep(0.3)
    for i in range(7):
        pub.publish(String(data=f"hello {i}"))
    time.sleep(0.5)
    log = rec.stop()
    assert rec.proc.returncode == 0, log
    assert "recorded" in log and "stopped: stopped" in log
    assert (out / "metadata.yaml").is_file()
    assert list(out.glob("*.db3"))
    got = bag_messages(out)
    from rclpy.serialization import deserialize_message

    assert [deserialize_message(raw, String).data for _, raw in got["/play_record/chatter"]] == [
        f"hello {i}" for i in range(7)
    ]
    assert [p.name for p in out.parent.iterdir()] == ["chatter"]
    node.destroy_node()


def test_recorder_refuses_existing_output(tmp_path):
    from sam4d_ros.tools.record import BagRecorder, RecordingError

    (tmp_path / "bag").mkdir()
    with pytest.raises(RecordingError, match="exists"):
        BagRecorder(tmp_path / "bag", topics=["/x"])
    with pytest.raises(ValueError, match="nothing to record"):
        BagRecorder(tmp_path / "other")
    with pytest.raises(ValueError, match="MCAP"):
        BagRecorder(tmp_path / "other", topics=["/x"], storage="sqlite3", compression="zstd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bag"]


def test_recorder_api_duration_limit(tmp_path, rclpy_context):
    """BagRecorder stops by itself after ``duration_s``; a topic never published leaves a valid
    empty bag that says so."""
    from sam4d_ros.tools.record import BagRecorder

    stops: list[str] = []
    rec = BagRecorder(
        tmp_path / "empty",
        topics=["/play_record/never"],
        duration_s=0.3,
        context=rclpy_context,
        on_stop=stops.append,
        log=None,
    ).start()
    summary = rec.wait(10)
    assert stops == ["duration"] and summary.stop_reason == "duration"
    assert summary.total_messages == 0 and summary.waiting_for == ["/play_record/never"]
    with Reader(tmp_path / "empty") as reader:
        assert reader.message_count == 0


# -------------------------------------------------------------------------------------- play


def test_play_cli_delivers_everything_in_order_with_clock(sequence_bag, rclpy_context, tool):
    """``python -m sam4d_ros.tools.play`` of a sequence bag at rate 0.5 with --clock: every
    message arrives, in order, byte for byte; the pace is about the recorded one / rate; /clock
    advances through the bag's time range."""
    expected = bag_messages(sequence_bag)
    node, executor, got, clocks = _raw_node(rclpy_context, sequence_bag, "play_test", clock=True)
    rate = 0.5
    player = tool(
        "sam4d_ros.tools.play",
        str(sequence_bag),
        "--rate",
        str(rate),
        "--clock",
        "50",
        "--wait-for-subscribers",
        "1",
        "--wait-timeout",
        DISCOVERY_TIMEOUT,
        "--delay",
        "0.3",
    )
    total = sum(len(v) for v in expected.values())
    done = spin_until(executor, lambda: sum(len(v) for v in got.values()) >= total, timeout_s=60)
    rc, log = player.wait(30)
    assert done, (log, {t: len(v) for t, v in got.items()})
    assert rc == 0, log
    assert "publish lateness" in log
    for topic, msgs in expected.items():
        assert same_cdr([raw for _, raw in got[topic]], [raw for _, raw in msgs]), topic

    # Pace: the sweeps arrive in order, spread like the recording / rate (loose bounds).
    clouds = [t for t, _ in got["/sensors/lidar/points"]]
    recorded = expected["/sensors/lidar/points"][-1][0] - expected["/sensors/lidar/points"][0][0]
    want = recorded / 1e9 / rate  # 1.0 s
    assert clouds == sorted(clouds)
    assert 0.5 * want < clouds[-1] - clouds[0] < want + 3.0

    # /clock: monotonic, inside the bag's time span, advancing.
    start = min(ns for msgs in expected.values() for ns, _ in msgs)
    end = max(ns for msgs in expected.values() for ns, _ in msgs)
    spin_until(executor, lambda: False, timeout_s=0.2)
    assert len(clocks) >= 5
    assert clocks == sorted(clocks)
    assert start <= clocks[0] and clocks[-1] <= end
    assert clocks[-1] - clocks[0] > 0.5 * (end - start)
    node.destroy_node()


def test_player_api_loop_offset_remap(sequence_bag, rclpy_context):
    """BagPlayer in a thread: --loop replays (time goes back, on_loop is told), a start offset
    skips the beginning but still latches /tf_static, remapping renames the topic, /clock goes
    out with every message."""
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import PointCloud2

    from sam4d_ros.tools.play import BagPlayer

    expected = bag_messages(sequence_bag)
    clouds = expected["/sensors/lidar/points"]
    offset_s = 0.25  # skips sweeps 0, 1, 2 (0.0, 0.1, 0.2 s)
    kept = [raw for ns, raw in clouds if ns >= clouds[0][0] + offset_s * 1e9]
    assert len(kept) == 3
    node, executor, got, clocks = _raw_node(
        rclpy_context,
        sequence_bag,
        "loop_test",
        topics={
            "/replay/points": "sensor_msgs/msg/PointCloud2",
            "/tf_static": "tf2_msgs/msg/TFMessage",
        },
        clock=True,
    )
    loops: list[int] = []
    player = BagPlayer(
        sequence_bag,
        context=rclpy_context,
        topics=["/sensors/lidar/points", "/tf_static"],
        remap={"/sensors/lidar/points": "/replay/points"},
        start_offset_s=offset_s,
        loop=True,
        rate=4.0,
        wait_for_subscribers=1,
        wait_timeout_s=float(DISCOVERY_TIMEOUT),
        delay_s=0.3,
        on_loop=loops.append,
        clock_each_message=True,
        log=None,
    )
    assert player.topics == {
        "/replay/points": "sensor_msgs/msg/PointCloud2",
        "/tf_static": "tf2_msgs/msg/TFMessage",
    }
    player.start()
    try:
        ok = spin_until(executor, lambda: len(got["/replay/points"]) >= 3 * len(kept), 60)
    finally:
        summary = player.stop()
    assert ok, {t: len(v) for t, v in got.items()}
    assert loops[:2] == [1, 2]
    assert summary.passes >= 3 and not summary.completed
    assert summary.messages["/replay/points"] >= 3 * len(kept)
    received = [raw for _, raw in got["/replay/points"]]
    assert same_cdr(received[: 3 * len(kept)], kept * 3)
    # Looping: the stamps the node under test sees jump back at each restart.
    stamps = [
        deserialize_message(raw, PointCloud2).header.stamp.nanosec
        + deserialize_message(raw, PointCloud2).header.stamp.sec * 10**9
        for raw in received
    ]
    assert int(np.sum(np.diff(stamps) < 0)) >= 2
    # /tf_static, recorded before the offset, is still published (latched) on each pass.
    assert got["/tf_static"]
    assert same_cdr([got["/tf_static"][0][1]], [expected["/tf_static"][0][1]])
    assert "publish lateness" in summary.format()
    # clock_each_message: /clock carries each message's log time before it goes out.
    spin_until(executor, lambda: False, timeout_s=0.2)
    kept_ns = {ns for ns, _ in clouds[-3:]}
    assert kept_ns <= set(clocks)
    assert summary.clock_messages >= 3 * len(kept)
    node.destroy_node()


def test_player_rejects_bad_requests(sequence_bag, tmp_path):
    from sam4d_core.data.sequence_bag import BagError
    from sam4d_ros.tools.play import BagPlayer, PlaybackError

    with pytest.raises(PlaybackError, match="not in"):
        BagPlayer(sequence_bag, topics=["/nope"], log=None)
    with pytest.raises(PlaybackError, match="past the end"):
        BagPlayer(sequence_bag, start_offset_s=100.0, log=None)
    with pytest.raises(ValueError, match="rate"):
        BagPlayer(sequence_bag, rate=0.0, log=None)
    with pytest.raises(BagError):
        BagPlayer(tmp_path / "missing", log=None)


# -------------------------------------------------------------------------------- round trip


def test_play_record_round_trip(sequence_bag_sqlite, tmp_path, tool):
    """A sqlite3 bag played by the player CLI and recorded by the recorder CLI (MCAP): the same
    messages, byte for byte, in the same order; /tf_static keeps its latched QoS; ``--stamp
    header`` logs messages at their header stamps."""
    expected = bag_messages(sequence_bag_sqlite)
    total = sum(len(v) for v in expected.values())
    out = tmp_path / "round_trip"
    rec = tool(
        "sam4d_ros.tools.record",
        "-o",
        str(out),
        "--topics",
        *expected,
        "--max-messages",
        str(total),
        "--stamp",
        "header",
    )
    player = tool(
        "sam4d_ros.tools.play",
        str(sequence_bag_sqlite),
        "--rate",
        "2",
        "--wait-for-subscribers",
        "1",
        "--wait-timeout",
        DISCOVERY_TIMEOUT,
        "--delay",
        "0.3",
    )
    rc, log = player.wait(60)
    assert rc == 0, log
    rc, rec_log = rec.wait(30)
    assert rc == 0, rec_log
    got = bag_messages(out)
    assert sorted(got) == sorted(expected)
    for topic, msgs in expected.items():
        assert same_cdr([raw for _, raw in got[topic]], [raw for _, raw in msgs]), topic
    with Reader(out) as reader:
        conns = {c.topic: c for c in reader.connections}
        assert reader.message_count == total
    assert (
        conns["/tf_static"].ext.offered_qos_profiles[0].durability == QosDurability.TRANSIENT_LOCAL
    )
    # --stamp header: messages with a header are logged at their stamp, which is what the
    # sequence writer logged them at; the others (TFMessage, String) at their receive time.
    for topic, msgs in expected.items():
        if conns[topic].msgtype.startswith("sensor_msgs/"):
            assert [ns for ns, _ in got[topic]] == [ns for ns, _ in msgs], topic
    received_at = [ns for ns, _ in got["/tf"]]
    assert received_at == sorted(received_at) and received_at[0] > expected["/tf"][-1][0]


# ----------------------------------------------------------------------------------- helpers


def test_interop_helpers(tmp_path):
    """QoS to and from rosbag2 metadata, remaps, override files, header stamps, type lookup."""
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import serialize_message
    from rosbags.interfaces import QosReliability

    from sam4d_ros.tools.bag_interop import (
        TypeResolver,
        UnknownTypeError,
        header_stamp_ns,
        message_class,
        parse_qos_overrides,
        parse_remaps,
        qos_from_offers,
        qos_to_offer,
    )

    latched = QoSProfile(
        depth=3,
        reliability=ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL,
    )
    offer = qos_to_offer(latched)
    assert offer.durability == QosDurability.TRANSIENT_LOCAL and offer.depth == 3
    back = qos_from_offers([offer])
    assert back.durability == DurabilityPolicy.TRANSIENT_LOCAL
    assert back.reliability == ReliabilityPolicy.RELIABLE and back.depth == 10
    mixed = [offer, offer._replace(reliability=QosReliability.BEST_EFFORT)]
    assert qos_from_offers(mixed).reliability == ReliabilityPolicy.BEST_EFFORT
    assert qos_from_offers([]).durability == QoSProfile(depth=10).durability

    assert parse_remaps(["a:=/b", "/c:=d"]) == {"/a": "/b", "/c": "/d"}
    with pytest.raises(ValueError, match="FROM:=TO"):
        parse_remaps(["/a=/b"])

    path = tmp_path / "qos.yaml"
    path.write_text("/points:\n  reliability: best_effort\n  depth: 5\n")
    over = parse_qos_overrides(path)
    assert over["/points"].reliability == ReliabilityPolicy.BEST_EFFORT
    assert over["/points"].depth == 5
    path.write_text("/points:\n  reliability: sometimes\n")
    with pytest.raises(ValueError, match="best_effort"):
        parse_qos_overrides(path)

    cloud = samples.points(3)
    assert header_stamp_ns(bytes(serialize_message(cloud))) == samples.stamp_ns(3)

    assert message_class("sam4d_ros/msg/TrackedObjects").__name__ == "TrackedObjects"
    assert message_class("sensor_msgs/Image").__name__ == "Image"
    with pytest.raises(UnknownTypeError):
        message_class("no_such_pkg/msg/Thing")
    resolver = TypeResolver()
    assert resolver.first_field_is_header("sam4d_ros/msg/TrackedObjects")
    assert not resolver.first_field_is_header("tf2_msgs/msg/TFMessage")
    with pytest.raises(UnknownTypeError, match="no definition"):
        resolver.definition("no_such_pkg/msg/Thing")
