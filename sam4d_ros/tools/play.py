"""Play a rosbag2 recording (MCAP or sqlite3) into ROS topics, without ``ros2 bag``.

    python -m sam4d_ros.tools.play BAG [--rate R] [--loop] [--start-offset S] [--topics T ...]
        [--exclude-topics T ...] [--remap FROM:=TO ...] [--clock [HZ]] [--clock-topics-all]
        [--delay S] [--wait-for-subscribers N [--wait-topics T ...] [--wait-timeout S]]
        [--qos-profile-overrides-path FILE] [--wait-for-all-acked MS] [--ros-args ...]

Messages are published serialized, byte for byte as recorded (``Publisher.publish(bytes)``), at
their recorded log times divided by ``--rate``, scheduled against a monotonic clock from the first
played message. A late publish never shifts the later ones (the player catches up); the summary
reports how late publishes were (p50 / p99 / max). ``--clock`` publishes ``rosgraph_msgs/Clock``
on ``/clock`` with the bag time at HZ (100 by default) for nodes with ``use_sim_time``;
``--clock-topics-all`` also publishes it right before every message. With ``--loop`` the bag
restarts right after its last message and time jumps back: nodes under test see time going
backwards, as they would with ``ros2 bag play --loop``.

QoS: every topic is offered with the QoS its publishers had when recorded (``offered_qos_profiles``
in the bag's metadata: reliability and durability, keep-last depth at least 10); a topic without
recorded QoS is reliable, volatile, depth 10, except ``/tf_static`` which is transient local. A
``--qos-profile-overrides-path`` YAML file (``ros2 bag``'s format) replaces a topic's QoS.
With ``--start-offset`` the messages of transient-local (latched) topics before the offset are
published first, so that ``/tf_static`` still reaches the nodes.

The Python API is :class:`BagPlayer` (runs in a thread; ``start()``, ``wait()``, ``stop()``,
``on_loop``). On a full ROS install ``ros2 bag play`` plays the same bags.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rclpy.context import Context
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.interfaces import Connection, ConnectionExtRosbag2

from sam4d_core.data.sequence_bag import BagError, open_bag
from sam4d_ros.tools.bag_interop import (
    DEFAULT_DEPTH,
    UnknownTypeError,
    absolute_topic,
    message_class,
    parse_qos_overrides,
    parse_remaps,
    qos_from_offers,
)
from sam4d_ros.tools.ros_cli import parse_tool_args, run_job, stderr_log

__all__ = ["BagPlayer", "PlaybackError", "PlaybackSummary", "PlayOptions", "main"]

CLOCK_TOPIC = "/clock"
CLOCK_TYPE = "rosgraph_msgs/msg/Clock"
DEFAULT_CLOCK_HZ = 100.0
# After the last message, before the publishers go: lets what was just written leave the process
# (a publisher destroyed right after publishing can lose messages still being sent).
LINGER_S = 0.2
# Messages read ahead of the publishing thread (a few sweeps' worth of a typical drive).
PREFETCH_MESSAGES = 64
_NS = 1_000_000_000
# Percentiles are taken over the most recent publishes: a bag looped for hours must not grow
# the player's memory.
_LATENESS_WINDOW = 200_000


class PlaybackError(RuntimeError):
    """Playback could not start or went wrong (bad options, no subscribers in time, ...)."""


@dataclass
class PlayOptions:
    """How to play a bag (the CLI flags of the same names).

    Attributes:
        rate: playback speed factor (2.0 = twice as fast as recorded).
        loop: start over after the last message, until stopped.
        start_offset_s: skip this much of the bag's beginning (s of bag time).
        topics: bag topics to play (default: all); names are made absolute.
        exclude_topics: bag topics not to play.
        remap: bag topic -> topic to publish on.
        clock_hz: publish /clock at this rate of wall time (0: no periodic /clock).
        clock_each_message: also publish /clock with a message's time right before it.
        delay_s: wall time to wait after the publishers exist (and subscribers are there) before
            the first message, so that late-joining subscriptions are matched.
        wait_for_subscribers: before starting, wait until every topic of ``wait_topics`` has at
            least this many subscriptions (0: do not wait).
        wait_topics: output topics to wait on (default: every played topic).
        wait_timeout_s: give up waiting after this long (PlaybackError); None waits until
            stopped.
        qos_overrides: output (or bag) topic -> QoS to publish with.
        ack_timeout_s: at the end, wait up to this long for reliable subscribers to acknowledge
            every message (``ros2 bag play --wait-for-all-acked``); 0 (default) only lingers
            :data:`LINGER_S`. Acknowledgements come with DDS heartbeats, which can take seconds.
    """

    rate: float = 1.0
    loop: bool = False
    start_offset_s: float = 0.0
    topics: Sequence[str] | None = None
    exclude_topics: Sequence[str] = ()
    remap: Mapping[str, str] = field(default_factory=dict)
    clock_hz: float = 0.0
    clock_each_message: bool = False
    delay_s: float = 0.0
    wait_for_subscribers: int = 0
    wait_topics: Sequence[str] | None = None
    wait_timeout_s: float | None = None
    qos_overrides: Mapping[str, QoSProfile] = field(default_factory=dict)
    ack_timeout_s: float = 0.0

    def validate(self) -> None:
        if not (self.rate > 0 and np.isfinite(self.rate)):
            raise ValueError(f"rate must be a positive number, got {self.rate}")
        if not (self.start_offset_s >= 0 and np.isfinite(self.start_offset_s)):
            raise ValueError(f"start offset must be >= 0 s, got {self.start_offset_s}")
        if not (self.clock_hz >= 0 and np.isfinite(self.clock_hz)):
            raise ValueError(f"clock rate must be >= 0 Hz, got {self.clock_hz}")
        if not self.delay_s >= 0:
            raise ValueError(f"delay must be >= 0 s, got {self.delay_s}")
        if not self.ack_timeout_s >= 0:
            raise ValueError(f"ack timeout must be >= 0 s, got {self.ack_timeout_s}")
        if self.wait_for_subscribers < 0:
            raise ValueError(f"wait_for_subscribers must be >= 0, got {self.wait_for_subscribers}")


@dataclass
class PlayedTopic:
    """One bag topic as it is played."""

    bag_topic: str
    topic: str  # after remapping
    msgtype: str
    qos: QoSProfile
    connections: list[Connection]
    latched: bool  # transient local: replayed before the start offset too


@dataclass
class PlaybackSummary:
    """What a playback did; :meth:`format` gives the table the CLI prints."""

    bag: str
    rate: float
    messages: dict[str, int]  # output topic -> messages published (all passes)
    types: dict[str, str]  # output topic -> message type
    skipped_topics: dict[str, str]  # bag topic -> why it was not played
    passes: int  # passes started (1 without --loop)
    completed: bool  # played to the end by itself (False when stopped, always with loop)
    wall_s: float  # from the first message to the last
    bag_span_s: float  # bag time of one pass (first to last played message)
    clock_messages: int
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_max_ms: float | None

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    def format(self) -> str:
        lines = [
            f"played {self.bag}: {self.total_messages} messages in {self.passes} pass(es), "
            f"{self.wall_s:.3f} s wall for {self.bag_span_s:.3f} s of bag time per pass at rate "
            f"{self.rate:g}{'' if self.completed else ' (stopped early)'}"
        ]
        width = max([len(t) for t in self.messages] + [len(CLOCK_TOPIC), 5])
        lines.append(f"  {'topic':<{width}}  {'messages':>8}  type")
        for topic in sorted(self.messages):
            lines.append(f"  {topic:<{width}}  {self.messages[topic]:>8}  {self.types[topic]}")
        if self.clock_messages:
            lines.append(f"  {CLOCK_TOPIC:<{width}}  {self.clock_messages:>8}  {CLOCK_TYPE}")
        if self.lateness_p50_ms is not None:
            lines.append(
                f"  publish lateness: p50 {self.lateness_p50_ms:.2f} ms, "
                f"p99 {self.lateness_p99_ms:.2f} ms, max {self.lateness_max_ms:.2f} ms"
            )
        for topic, why in sorted(self.skipped_topics.items()):
            lines.append(f"  skipped {topic}: {why}")
        return "\n".join(lines)


def describe_qos(qos: QoSProfile) -> str:
    """'reliable, transient_local, keep_last 10': what a topic is offered with."""
    history = qos.history.name.lower() + (
        f" {qos.depth}" if qos.history == HistoryPolicy.KEEP_LAST else ""
    )
    return f"{qos.reliability.name.lower()}, {qos.durability.name.lower()}, {history}"


def _bag_qos(conn: Connection) -> list[Any]:
    ext = conn.ext
    return list(ext.offered_qos_profiles) if isinstance(ext, ConnectionExtRosbag2) else []


class BagPlayer:
    """Plays a bag into topics from a background thread.

    Construction opens the bag, checks the options and creates the publishers (so that
    subscribers can match them before playback starts); :meth:`start` starts the thread::

        with BagPlayer("drive", context=ctx, rate=2.0, clock_hz=100) as player:
            player.start()
            summary = player.wait()

    Args:
        bag: a rosbag2 directory, or a single ``.mcap`` / ``.db3`` file.
        options: a :class:`PlayOptions`; keyword arguments override its fields.
        context: rclpy context for the player's own node (default: the global one).
        node: publish from this node instead of creating one (it is not destroyed).
        on_loop: called with the number of passes completed each time a looped bag restarts
            (from the player thread, just before the new pass's first message).
        log: where progress lines go (default: stderr); None silences them.
        message_filter: called with (output topic, log time in ns) before each message of a
            pass; False leaves that message out (a camera that stops, TF withheld: fault
            injection in the benchmark).
    """

    def __init__(
        self,
        bag: str | Path,
        options: PlayOptions | None = None,
        *,
        context: Context | None = None,
        node: Node | None = None,
        node_name: str = "bag_player",
        on_loop: Callable[[int], None] | None = None,
        log: Callable[[str], None] | None = stderr_log,
        message_filter: Callable[[str, int], bool] | None = None,
        **overrides: Any,
    ) -> None:
        self.bag = Path(bag)
        self.message_filter = message_filter
        self.options = dataclasses.replace(options or PlayOptions(), **overrides)
        self.options.validate()
        self.on_loop = on_loop
        self._log = log
        self.skipped: dict[str, str] = {}
        self._thread: threading.Thread | None = None
        self._read_bag()
        self._own_node = node is None
        self.node = node if node is not None else Node(node_name, context=context)
        try:
            self._create_publishers()
        except Exception:
            self.close()
            raise
        self._stop = threading.Event()
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._counts: dict[str, int] = {t.topic: 0 for t in self.played}
        self._clock_count = 0
        self._lateness = collections.deque(maxlen=_LATENESS_WINDOW)
        self._lateness_max = 0
        self._passes = 0
        self._completed = False
        self._first_pub: int | None = None
        self._last_pub: int | None = None
        self._span_ns = 0
        self._next_anchor = 0

    # -- set-up

    def _say(self, text: str) -> None:
        if self._log is not None:
            self._log(text)

    def _read_bag(self) -> None:
        o = self.options
        reader = open_bag(self.bag)
        try:
            conns = list(reader.connections)
            self.bag_start_ns = int(reader.start_time) if reader.message_count else 0
            self.bag_duration_ns = int(reader.duration) if reader.message_count else 0
        finally:
            reader.close()
        by_topic: dict[str, list[Connection]] = collections.defaultdict(list)
        for c in conns:
            by_topic[c.topic].append(c)
        available = sorted(by_topic)
        wanted = (
            None if o.topics is None else {absolute_topic(t) for t in o.topics}
        )  # None: every topic
        if wanted is not None:
            unknown = sorted(wanted - set(available))
            if unknown:
                raise PlaybackError(
                    f"topic(s) {', '.join(unknown)} not in {self.bag}; it has: "
                    f"{', '.join(available) or '(none)'}"
                )
        excluded = {absolute_topic(t) for t in o.exclude_topics}
        remap = {absolute_topic(k): absolute_topic(v) for k, v in o.remap.items()}
        publish_clock = o.clock_hz > 0 or o.clock_each_message
        self.played: list[PlayedTopic] = []
        out_types: dict[str, str] = {}
        for topic in available:
            if (wanted is not None and topic not in wanted) or topic in excluded:
                continue
            out = remap.get(topic, topic)
            group = by_topic[topic]
            types = sorted({c.msgtype for c in group})
            if len(types) > 1:
                # One publisher per output topic: keep the type with most messages.
                keep = max(types, key=lambda t: sum(c.msgcount for c in group if c.msgtype == t))
                self.skipped[topic + f" [{', '.join(t for t in types if t != keep)}]"] = (
                    f"recorded with several types; playing only {keep}"
                )
                group = [c for c in group if c.msgtype == keep]
            msgtype = group[0].msgtype
            if out == CLOCK_TOPIC and publish_clock:
                self.skipped[topic] = "the player publishes /clock itself (--clock)"
                continue
            if out in out_types and out_types[out] != msgtype:
                raise PlaybackError(
                    f"two topics remapped onto {out} with different types "
                    f"({out_types[out]} and {msgtype})"
                )
            try:
                message_class(msgtype)
            except UnknownTypeError as e:
                self.skipped[topic] = str(e)
                continue
            offers = [q for c in group for q in _bag_qos(c)]
            default = QoSProfile(depth=DEFAULT_DEPTH)
            if "/tf_static" in (topic, out):
                # Latched like tf2's static broadcaster, also when the bag lacks recorded QoS.
                default.durability = DurabilityPolicy.TRANSIENT_LOCAL
                default.depth = 100
            qos = o.qos_overrides.get(out) or o.qos_overrides.get(topic)
            if qos is None:
                qos = qos_from_offers(offers, default)
            out_types[out] = msgtype
            self.played.append(
                PlayedTopic(
                    bag_topic=topic,
                    topic=out,
                    msgtype=msgtype,
                    qos=qos,
                    connections=group,
                    latched=qos.durability == DurabilityPolicy.TRANSIENT_LOCAL,
                )
            )
        if not self.played:
            raise PlaybackError(
                f"nothing to play from {self.bag} (topics: {', '.join(available) or '(none)'}"
                + (f"; skipped: {self.skipped}" if self.skipped else "")
                + ")"
            )
        offset_ns = int(round(o.start_offset_s * _NS))
        if offset_ns > self.bag_duration_ns:
            raise PlaybackError(
                f"start offset {o.start_offset_s} s is past the end of the bag "
                f"({self.bag_duration_ns / _NS:.3f} s long)"
            )
        self.first_ns = self.bag_start_ns + offset_ns

    def _create_publishers(self) -> None:
        self._pubs: dict[int, Any] = {}  # connection id -> publisher
        self._topic_of: dict[int, str] = {}
        self._publishers: dict[str, Any] = {}
        for t in self.played:
            if t.topic not in self._publishers:
                self._publishers[t.topic] = self.node.create_publisher(
                    message_class(t.msgtype), t.topic, t.qos
                )
            for c in t.connections:
                self._pubs[c.id] = self._publishers[t.topic]
                self._topic_of[c.id] = t.topic
        self._clock_pub = None
        o = self.options
        if o.clock_hz > 0 or o.clock_each_message:
            from rosgraph_msgs.msg import Clock

            self._clock_cls = Clock
            # Reliable works with rclcpp/rclpy time sources (best-effort readers) and with
            # reliable readers alike; depth 1 so a slow reader never holds the player back.
            self._clock_pub = self.node.create_publisher(
                Clock,
                CLOCK_TOPIC,
                QoSProfile(
                    history=HistoryPolicy.KEEP_LAST,
                    depth=1,
                    reliability=ReliabilityPolicy.RELIABLE,
                ),
            )

    # -- control

    @property
    def topics(self) -> dict[str, str]:
        """Output topic -> message type of everything this player publishes."""
        return {t.topic: t.msgtype for t in self.played}

    def start(self) -> BagPlayer:
        """Start playing in a background thread (returns at once)."""
        if self._thread is not None:
            raise RuntimeError("the player was already started")
        self._thread = threading.Thread(target=self._run, name="bag_player", daemon=True)
        self._thread.start()
        return self

    def request_stop(self) -> None:
        """Ask the player to stop soon (safe from signal handlers and callbacks)."""
        self._stop.set()

    @property
    def running(self) -> bool:
        return self._thread is not None and not self._done.is_set()

    def wait(self, timeout: float | None = None) -> PlaybackSummary:
        """Wait for the playback to end (a looped bag only ends when stopped).

        Raises:
            TimeoutError: still playing after ``timeout`` s.
            PlaybackError / BagError: what went wrong in the player thread.
        """
        if self._thread is None:
            raise RuntimeError("the player was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        # Short joins keep the main thread responsive to signals (Ctrl-C in the CLI).
        while self._thread.is_alive():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"the player is still playing {self.bag} after {timeout} s")
            self._thread.join(0.2 if left is None else min(0.2, left))
        if self._error is not None:
            raise self._error
        return self.summary()

    def stop(self, timeout: float = 10.0) -> PlaybackSummary:
        """Stop playing, wait for the thread and release the publishers; returns the summary."""
        self._stop.set()
        try:
            if self._thread is not None:
                return self.wait(timeout)
            return self.summary()
        finally:
            self.close()

    def close(self) -> None:
        """Destroy the publishers (and the player's own node). Stops a running playback first."""
        if self._thread is not None and self._thread.is_alive():
            self._stop.set()
            self._thread.join(10.0)
        node = getattr(self, "node", None)
        if node is None:
            return
        for pub in [*getattr(self, "_publishers", {}).values(), getattr(self, "_clock_pub", None)]:
            if pub is not None:
                try:
                    node.destroy_publisher(pub)
                except Exception:  # the context may already be shut down
                    pass
        self._publishers = {}
        self._clock_pub = None
        if self._own_node:
            try:
                node.destroy_node()
            except Exception:
                pass
        self.node = None

    def __enter__(self) -> BagPlayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.close()

    def summary(self) -> PlaybackSummary:
        """Counts and timing so far (final once the player has finished)."""
        lat = np.asarray(self._lateness, dtype=np.float64) / 1e6
        wall = 0.0
        if self._first_pub is not None and self._last_pub is not None:
            wall = (self._last_pub - self._first_pub) / _NS
        return PlaybackSummary(
            bag=str(self.bag),
            rate=self.options.rate,
            messages=dict(self._counts),
            types=self.topics,
            skipped_topics=dict(self.skipped),
            passes=self._passes,
            completed=self._completed,
            wall_s=wall,
            bag_span_s=self._span_ns / _NS,
            clock_messages=self._clock_count,
            lateness_p50_ms=float(np.percentile(lat, 50)) if lat.size else None,
            lateness_p99_ms=float(np.percentile(lat, 99)) if lat.size else None,
            lateness_max_ms=self._lateness_max / 1e6 if lat.size else None,
        )

    # -- the player thread

    def _run(self) -> None:
        try:
            self._wait_for_subscribers()
            if self.options.delay_s > 0:
                self._stop.wait(self.options.delay_s)
            while not self._stop.is_set():
                if self._passes > 0 and self.on_loop is not None:
                    self.on_loop(self._passes)
                self._passes += 1
                reached_end = self._play_pass()
                if not self.options.loop:
                    # Stopped during the final linger still counts: every message went out.
                    self._completed = reached_end
                    break
            if not self._stop.is_set():
                self._wait_acked()
        except BaseException as e:  # reported by wait()
            node = self.node
            if node is not None and not node.context.ok():
                # rclpy shut down under us (its Ctrl-C handler in a user's program): a stop.
                self._stop.set()
            else:
                self._error = e
        finally:
            self._done.set()

    def _wait_for_subscribers(self) -> None:
        o = self.options
        if o.wait_for_subscribers <= 0:
            return
        names = (
            [absolute_topic(t) for t in o.wait_topics] if o.wait_topics else list(self._publishers)
        )
        missing = [n for n in names if n not in self._publishers]
        if missing:
            raise PlaybackError(f"wait topic(s) {', '.join(missing)} are not played")
        deadline = None if o.wait_timeout_s is None else time.monotonic() + o.wait_timeout_s

        def lacking() -> list[str]:
            return [
                n
                for n in names
                if self._publishers[n].get_subscription_count() < o.wait_for_subscribers
            ]

        self._say(f"waiting for {o.wait_for_subscribers} subscriber(s) on {len(names)} topic(s)")
        while (left := lacking()) and not self._stop.is_set():
            if deadline is not None and time.monotonic() > deadline:
                raise PlaybackError(
                    f"no {o.wait_for_subscribers} subscriber(s) after {o.wait_timeout_s} s on: "
                    + ", ".join(left)
                )
            self._stop.wait(0.02)

    def _publish_clock(self, ns: int) -> None:
        assert self._clock_pub is not None
        msg = self._clock_cls()
        msg.clock.sec, msg.clock.nanosec = divmod(int(ns), _NS)
        self._clock_pub.publish(msg)
        self._clock_count += 1

    def _pass_messages(self) -> Iterator[tuple[bool, Connection, int, bytes]]:
        """(preamble, connection, log time, raw) of one pass, in log-time order.

        The preamble is the latched topics' messages from before the start offset (/tf_static
        must reach the nodes even when the bag is entered in the middle).
        """
        conns = [c for t in self.played for c in t.connections]
        latched = [c for t in self.played if t.latched for c in t.connections]
        reader = open_bag(self.bag)
        try:
            if latched and self.first_ns > self.bag_start_ns:
                for conn, t, raw in reader.messages(connections=latched, stop=self.first_ns):
                    yield True, conn, t, bytes(raw)
            for conn, t, raw in reader.messages(connections=conns, start=self.first_ns):
                yield False, conn, t, bytes(raw)
        finally:
            reader.close()

    def _prefetched(self) -> Iterator[tuple[bool, Connection, int, bytes]]:
        """:meth:`_pass_messages` read ahead by a thread of its own.

        Reading a chunk of an MCAP file (zstd) or a page of sqlite can take tens of ms; done in
        the publishing thread it would make the messages due at that moment late. The reader
        lives entirely in the prefetch thread (sqlite connections are bound to their thread).
        """
        items: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH_MESSAGES)
        quit_ = threading.Event()
        end = object()

        def put(item: Any) -> bool:
            while not (quit_.is_set() or self._stop.is_set()):
                try:
                    items.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            try:
                for item in self._pass_messages():
                    if not put(item):
                        return
                put(end)
            except BaseException as e:  # handed to the publishing thread
                put(e)

        thread = threading.Thread(target=produce, name="bag_player_reader", daemon=True)
        thread.start()
        try:
            while not self._stop.is_set():
                try:
                    item = items.get(timeout=0.05)
                except queue.Empty:
                    continue
                if item is end:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            quit_.set()
            thread.join()

    def _play_pass(self) -> bool:
        """One pass over the bag; True when it reached the end (False when stopped)."""
        o = self.options
        rate = o.rate
        period = int(_NS / o.clock_hz) if o.clock_hz > 0 else 0
        messages = self._prefetched()
        try:
            # Anchor the schedule once the first message is read: opening the bag and
            # decompressing its first chunk must not make the first messages late.
            first = next(messages, None)
            if first is None:
                return not self._stop.is_set()
            anchor_mono = max(time.monotonic_ns(), self._next_anchor)
            anchor_bag = self.first_ns
            last_clock = anchor_bag
            if self._clock_pub is not None:
                self._publish_clock(anchor_bag)
            next_tick = anchor_mono + period if period else None
            last_t = anchor_bag
            for preamble, conn, t, raw in itertools.chain([first], messages):
                if preamble:
                    self._publish(conn, raw, None)
                    continue
                due = anchor_mono + int((t - anchor_bag) / rate)
                # Sleep until the message is due, publishing /clock ticks on the way.
                while True:
                    if self._stop.is_set():
                        return False
                    now = time.monotonic_ns()
                    if next_tick is not None and next_tick <= due:
                        if next_tick > now:
                            self._stop.wait((next_tick - now) / _NS)
                            continue
                        value = anchor_bag + int((next_tick - anchor_mono) * rate)
                        last_clock = max(last_clock, min(value, t))
                        self._publish_clock(last_clock)
                        # Ticks missed while busy are dropped, not sent in a burst.
                        next_tick = max(next_tick + period, now + period // 2)
                        continue
                    if due > now:
                        self._stop.wait((due - now) / _NS)
                        continue
                    break
                if self.message_filter is not None and not self.message_filter(
                    self._topic_of[conn.id], t
                ):
                    last_t = t
                    continue
                if o.clock_each_message and self._clock_pub is not None:
                    last_clock = max(last_clock, t)
                    self._publish_clock(last_clock)
                self._publish(conn, raw, due)
                last_t = t
            if self._stop.is_set():
                return False
            self._span_ns = max(self._span_ns, last_t - anchor_bag)
            # A loop restarts where this pass ended in scheduled time (no gap, no drift).
            self._next_anchor = anchor_mono + int((last_t - anchor_bag) / rate)
            return True
        finally:
            messages.close()

    def _publish(self, conn: Connection, raw: bytes, due: int | None) -> None:
        self._pubs[conn.id].publish(raw)
        now = time.monotonic_ns()
        if due is not None:
            late = now - due
            self._lateness.append(late)
            self._lateness_max = max(self._lateness_max, late)
        if self._first_pub is None:
            self._first_pub = now
        self._last_pub = now
        self._counts[self._topic_of[conn.id]] += 1

    def _wait_acked(self) -> None:
        """Give the last messages time to reach the subscribers before the publishers go."""
        if self.options.ack_timeout_s <= 0:
            self._stop.wait(LINGER_S)
            return
        deadline = time.monotonic() + self.options.ack_timeout_s
        for pub in self._publishers.values():
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                return
            pub.wait_for_all_acked(Duration(nanoseconds=int(left * _NS)))


# ---------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sam4d_ros.tools.play",
        description="Play a rosbag2 recording (MCAP or sqlite3) into ROS 2 topics.",
        epilog="Arguments after --ros-args go to rclpy (e.g. --ros-args -p use_sim_time:=true).",
    )
    p.add_argument("bag", help="rosbag2 directory, or a single .mcap / .db3 file")
    p.add_argument("-r", "--rate", type=float, default=1.0, help="speed factor (default 1)")
    p.add_argument("-l", "--loop", action="store_true", help="replay until interrupted")
    p.add_argument(
        "--start-offset", type=float, default=0.0, metavar="S", help="skip the first S s of bag"
    )
    p.add_argument("--topics", nargs="+", metavar="T", help="play only these bag topics")
    p.add_argument("--exclude-topics", nargs="+", default=[], metavar="T", help="do not play")
    p.add_argument(
        "--remap", "-m", nargs="+", default=[], metavar="FROM:=TO", help="publish FROM on TO"
    )
    p.add_argument(
        "--clock",
        nargs="?",
        type=float,
        const=DEFAULT_CLOCK_HZ,
        default=0.0,
        metavar="HZ",
        help=f"publish /clock at HZ (default {DEFAULT_CLOCK_HZ:g} when given without a value)",
    )
    p.add_argument(
        "--clock-topics-all",
        action="store_true",
        help="also publish /clock right before every message",
    )
    p.add_argument("-d", "--delay", type=float, default=0.0, metavar="S", help="wait before play")
    p.add_argument(
        "--wait-for-subscribers",
        type=int,
        default=0,
        metavar="N",
        help="start only once every played topic (or --wait-topics) has N subscriptions",
    )
    p.add_argument("--wait-topics", nargs="+", metavar="T", help="output topics to wait on")
    p.add_argument(
        "--wait-timeout", type=float, default=None, metavar="S", help="fail after S s of waiting"
    )
    p.add_argument(
        "--qos-profile-overrides-path",
        metavar="FILE",
        help="YAML {topic: {reliability: ..., durability: ..., depth: ...}} (ros2 bag format)",
    )
    p.add_argument(
        "--wait-for-all-acked",
        type=float,
        default=0.0,
        metavar="MS",
        help="at the end, wait up to MS ms for reliable subscribers to acknowledge everything",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, ros_args = parse_tool_args(build_parser(), argv)
    log = None if args.quiet else stderr_log
    try:
        options = PlayOptions(
            ack_timeout_s=args.wait_for_all_acked / 1000.0,
            rate=args.rate,
            loop=args.loop,
            start_offset_s=args.start_offset,
            topics=args.topics,
            exclude_topics=args.exclude_topics,
            remap=parse_remaps(args.remap),
            clock_hz=args.clock or 0.0,
            clock_each_message=args.clock_topics_all,
            delay_s=args.delay,
            wait_for_subscribers=args.wait_for_subscribers,
            wait_topics=args.wait_topics,
            wait_timeout_s=args.wait_timeout,
            qos_overrides=(
                parse_qos_overrides(args.qos_profile_overrides_path)
                if args.qos_profile_overrides_path
                else {}
            ),
        )
        options.validate()
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    def open_player() -> BagPlayer:
        player = BagPlayer(args.bag, options, log=log)
        if log is not None:
            n = len(player.played)
            log(
                f"playing {args.bag}: {n} topic(s), {player.bag_duration_ns / _NS:.3f} s of "
                f"recording at rate {options.rate:g}" + (" (looping)" if options.loop else "")
            )
            for t in player.played:
                name = t.topic if t.topic == t.bag_topic else f"{t.bag_topic} -> {t.topic}"
                log(f"  {name} [{t.msgtype}] {describe_qos(t.qos)}")
            for topic, why in player.skipped.items():
                log(f"warning: skipping {topic}: {why}")
        return player

    # Ctrl-C stops the playback and still prints the summary.
    return run_job(
        "play",
        ros_args,
        open_player,
        (BagError, PlaybackError, ValueError, OSError),
        close=lambda player: player.close(),
    )


if __name__ == "__main__":
    sys.exit(main())
