"""Record ROS topics into a rosbag2 bag (MCAP or sqlite3), without ``ros2 bag``.

    python -m sam4d_ros.tools.record [-o OUT] [--storage mcap|sqlite3] (--topics T ... | --all)
        [--exclude-topics T ...] [--duration S] [--max-messages N] [--stamp receive|header]
        [--compression zstd|none] [--overwrite] [--ros-args ...]

Topics are found on the ROS graph (``get_topic_names_and_types``) and subscribed as soon as they
have a publisher, with ``raw=True``: messages are written exactly as they arrive (serialized CDR),
never deserialized. Each topic is subscribed with a QoS adapted to its publishers, like ``ros2 bag
record`` (reliable only when every publisher is reliable, transient local only when every one is,
keep-last 100), and their QoS is stored as ``offered_qos_profiles`` for playback.

The message definitions stored in the bag (the MCAP schemas and the type hash in metadata.yaml)
come from rosbags' type store, extended with the installed ``share/<pkg>/msg/*.msg`` files for the
types it lacks (``sam4d_ros/msg/*``, and ``tf2_msgs`` where it is built here); when the hash of a
definition differs from the one the publishers announce, the installed ``.msg`` files win.
Bags are rosbag2 format version 8, readable by ``ros2 bag`` (Humble and later) and by rosbags.

Log times are the receive time on the recorder node's clock (``--stamp header`` uses the message's
``header.stamp`` when it has one). The bag is written under a temporary name next to the output
and renamed when it is complete: Ctrl-C (SIGINT) or SIGTERM finishes it cleanly, an error leaves
nothing at the output path. The Python API is :class:`BagRecorder`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from rclpy.context import Context
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer

from sam4d_ros.tools.bag_interop import (
    TypeResolver,
    UnknownTypeError,
    absolute_topic,
    header_stamp_ns,
    message_class,
    qos_to_offer,
)
from sam4d_ros.tools.ros_cli import parse_tool_args, run_job, stderr_log

__all__ = ["BagRecorder", "RecordingError", "RecordingSummary", "default_bag_name", "main"]

SUBSCRIPTION_DEPTH = 100
# Graph topics that --all leaves out (record them by naming them): ROS's own bookkeeping.
INTERNAL_TOPICS = frozenset({"/rosout", "/parameter_events"})
_NS = 1_000_000_000


class RecordingError(RuntimeError):
    """The recording could not be made (bad options, an output that exists, a write failure)."""


def default_bag_name(now: datetime | None = None) -> str:
    """``rosbag2_YYYY_MM_DD-HH_MM_SS``, the name ``ros2 bag record`` gives a bag."""
    return (now or datetime.now()).strftime("rosbag2_%Y_%m_%d-%H_%M_%S")


@dataclass
class RecordingSummary:
    """What a recording holds; :meth:`format` gives the table the CLI prints."""

    path: str
    storage: str
    messages: dict[str, int]  # topic -> messages written
    types: dict[str, str]  # topic -> message type
    skipped_topics: dict[str, str]  # topic -> why it was not recorded
    duration_s: float  # wall time recorded
    bytes_written: int  # serialized payload bytes
    stop_reason: str  # "duration", "max-messages", "stopped", "rclpy shutdown"
    waiting_for: list[str] = field(default_factory=list)  # named topics never seen

    @property
    def total_messages(self) -> int:
        return sum(self.messages.values())

    def format(self) -> str:
        lines = [
            f"recorded {self.path} ({self.storage}): {self.total_messages} messages, "
            f"{self.bytes_written / 1e6:.2f} MB in {self.duration_s:.2f} s "
            f"(stopped: {self.stop_reason})"
        ]
        width = max([len(t) for t in self.messages] + [5])
        lines.append(f"  {'topic':<{width}}  {'messages':>8}  type")
        for topic in sorted(self.messages):
            lines.append(f"  {topic:<{width}}  {self.messages[topic]:>8}  {self.types[topic]}")
        for topic, why in sorted(self.skipped_topics.items()):
            lines.append(f"  skipped {topic}: {why}")
        for topic in self.waiting_for:
            lines.append(f"  never published: {topic}")
        return "\n".join(lines)


class BagRecorder:
    """Records topics into a bag from a background thread (its own node and executor).

    ::

        rec = BagRecorder("out_bag", topics=["/points", "/tf"], context=ctx).start()
        rec.wait_until_subscribed(["/points"], timeout=5)
        ...
        summary = rec.stop()   # the bag is complete at out_bag

    Args:
        output: bag directory to create (must not exist unless ``overwrite``).
        topics: topics to record (names made absolute); they are subscribed when they appear.
        all_topics: record every topic of the graph (except ``/rosout``, ``/parameter_events``
            and hidden ones), including those that appear later.
        exclude_topics: topics never to record.
        storage: ``"mcap"`` (default) or ``"sqlite3"``.
        compression: MCAP chunk compression ``"zstd"`` (default for MCAP) or ``"none"``.
        stamp: log time = ``"receive"`` time (default) or the ``"header"`` stamp when the
            message starts with a std_msgs/Header (receive time otherwise).
        duration_s / max_messages: stop by themselves after this much wall time / this many
            messages in total.
        discovery_period_s: how often the graph is searched for new topics.
        context: rclpy context for the recorder's node (default: the global one).
        on_stop: called (from the recorder thread) when a limit stops the recording.
        log: where progress lines go (default: stderr); None silences them.
    """

    def __init__(
        self,
        output: str | Path,
        *,
        topics: Iterable[str] = (),
        all_topics: bool = False,
        exclude_topics: Iterable[str] = (),
        storage: Literal["mcap", "sqlite3"] = "mcap",
        compression: Literal["zstd", "none"] | None = None,
        stamp: Literal["receive", "header"] = "receive",
        duration_s: float | None = None,
        max_messages: int | None = None,
        discovery_period_s: float = 0.1,
        overwrite: bool = False,
        context: Context | None = None,
        node_name: str = "bag_recorder",
        on_stop: Callable[[str], None] | None = None,
        log: Callable[[str], None] | None = stderr_log,
    ) -> None:
        self.output = Path(output)
        self.topics = sorted({absolute_topic(t) for t in topics})
        self.all_topics = all_topics
        self.exclude = {absolute_topic(t) for t in exclude_topics}
        if not self.topics and not all_topics:
            raise ValueError("nothing to record: name topics or ask for all of them")
        if storage not in ("mcap", "sqlite3"):
            raise ValueError(f"storage must be 'mcap' or 'sqlite3', got {storage!r}")
        if compression is None:
            compression = "zstd" if storage == "mcap" else "none"
        if compression not in ("zstd", "none"):
            raise ValueError(f"compression must be 'zstd' or 'none', got {compression!r}")
        if compression == "zstd" and storage != "mcap":
            raise ValueError("zstd chunk compression needs MCAP storage (sqlite3 has no chunks)")
        if stamp not in ("receive", "header"):
            raise ValueError(f"stamp must be 'receive' or 'header', got {stamp!r}")
        if duration_s is not None and not duration_s > 0:
            raise ValueError(f"duration must be > 0 s, got {duration_s}")
        if max_messages is not None and max_messages <= 0:
            raise ValueError(f"max messages must be > 0, got {max_messages}")
        if self.output.exists() and not overwrite:
            raise RecordingError(f"{self.output} exists (pass overwrite=True / --overwrite)")
        self.storage = storage
        self.compression = compression
        self.stamp = stamp
        self.duration_s = duration_s
        self.max_messages = max_messages
        self.discovery_period_s = discovery_period_s
        self.overwrite = overwrite
        self.on_stop = on_stop
        self._log = log
        self._context = context
        self._node_name = node_name
        self.resolver = TypeResolver()
        self._installed: TypeResolver | None = None  # built when a hash disagrees
        self.messages: dict[str, int] = {}
        self.types: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self._subs: dict[str, Any] = {}
        self._conns: dict[str, Any] = {}
        self._header_first: dict[str, bool] = {}
        self._bytes = 0
        self._total = 0
        self._lock = threading.Lock()  # guards the writer between callbacks and stop()
        self._stop = threading.Event()
        self._done = threading.Event()
        self._opened = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stop_reason = "stopped"
        self._started_mono: float | None = None
        self._ended_mono: float | None = None
        self._writer: Writer | None = None
        self._tmp_parent: Path | None = None
        self._summary: RecordingSummary | None = None
        self.node: Node | None = None

    def _say(self, text: str) -> None:
        if self._log is not None:
            self._log(text)

    # -- control

    def start(self) -> BagRecorder:
        """Open the bag and start recording in a background thread (returns at once)."""
        if self._thread is not None:
            raise RuntimeError("the recorder was already started")
        self.node = Node(self._node_name, context=self._context)
        self._executor = SingleThreadedExecutor(context=self._context)
        self._executor.add_node(self.node)
        self._started_mono = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="bag_recorder", daemon=True)
        self._thread.start()
        # The bag is opened by the recorder thread (sqlite3 connections are bound to the thread
        # that made them); report a failure to open it here rather than later from wait().
        self._opened.wait()
        if self._writer is None:
            self._thread.join()
            if self._error is not None:
                raise self._error
        return self

    def request_stop(self) -> None:
        """Ask the recorder to stop soon (safe from signal handlers and callbacks)."""
        self._stop.set()

    @property
    def subscribed(self) -> list[str]:
        """Topics subscribed so far."""
        return sorted(self._subs)

    def wait_until_subscribed(self, topics: Iterable[str], timeout: float) -> bool:
        """Whether all ``topics`` are subscribed within ``timeout`` s (they need publishers)."""
        names = {absolute_topic(t) for t in topics}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._done.is_set():
            if names <= set(self._subs):
                return True
            time.sleep(0.02)
        return names <= set(self._subs)

    def wait(self, timeout: float | None = None) -> RecordingSummary:
        """Wait until a limit (duration, max messages) or :meth:`request_stop` ends the
        recording; the bag is complete at :attr:`output` when this returns.

        Raises:
            TimeoutError: still recording after ``timeout`` s.
            RecordingError: writing failed (nothing is left at the output path).
        """
        if self._thread is None:
            raise RuntimeError("the recorder was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._thread.is_alive():  # short joins: the CLI's main thread gets its signals
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"still recording {self.output} after {timeout} s")
            self._thread.join(0.2 if left is None else min(0.2, left))
        if self._error is not None:
            raise self._error
        assert self._summary is not None
        return self._summary

    def stop(self, timeout: float | None = 30.0) -> RecordingSummary:
        """Stop recording and finish the bag; returns the summary."""
        self._stop.set()
        return self.wait(timeout)

    def __enter__(self) -> BagRecorder:
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            with contextlib.suppress(Exception):
                self.wait(30.0)

    # -- the bag

    def _open_writer(self) -> None:
        # Written next to the output under a hidden name, renamed when complete.
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_parent = self.output.parent / f".{self.output.name}.tmp-{uuid.uuid4().hex[:8]}"
        self._tmp_parent.mkdir()
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        try:
            self._writer = Writer(
                self._tmp_parent / self.output.name, version=8, storage_plugin=plugin
            )
            if self.compression == "zstd":
                # MCAP chunk compression (ros2 bag's zstd storage preset); metadata.yaml then
                # says "no compression", so every rosbag2 reader opens the bag directly.
                self._writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
            self._writer.open()
        except Exception:
            self._abort()
            raise

    def _finish(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        assert self._tmp_parent is not None
        try:
            if writer is not None:
                writer.close()
            if self.output.exists():
                if not self.overwrite:  # appeared while recording: do not clobber it
                    raise RecordingError(f"{self.output} appeared while recording")
                os.replace(self.output, self._tmp_parent / ".replaced")
            os.replace(self._tmp_parent / self.output.name, self.output)
        except BaseException:
            self._abort()
            raise
        shutil.rmtree(self._tmp_parent, ignore_errors=True)

    def _abort(self) -> None:
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.abort()
        if self._tmp_parent is not None:
            shutil.rmtree(self._tmp_parent, ignore_errors=True)

    # -- the recorder thread

    def _run(self) -> None:
        next_discovery = 0.0
        try:
            assert self._started_mono is not None
            try:
                self._open_writer()
            finally:
                self._opened.set()
            assert self.node is not None
            context = self.node.context
            while not self._stop.is_set():
                if not context.ok():
                    # rclpy shut down (e.g. its own Ctrl-C handler in a user's program): that
                    # is a request to stop, and the bag is finished like on any other stop.
                    self._stop_reason = "rclpy shutdown"
                    break
                now = time.monotonic()
                try:
                    if now >= next_discovery:
                        self._discover()
                        next_discovery = now + self.discovery_period_s
                    self._executor.spin_once(timeout_sec=0.02)
                except ExternalShutdownException:
                    self._stop_reason = "rclpy shutdown"
                    break
                except Exception:
                    if context.ok():
                        raise
                    self._stop_reason = "rclpy shutdown"
                    break
                if self.duration_s is not None and now - self._started_mono >= self.duration_s:
                    self._limit("duration")
                    break
            self._ended_mono = time.monotonic()
            self._teardown_node()
            self._finish()
            self._summary = self._make_summary()
            self._say(f"wrote {self.output}")
        except BaseException as e:
            self._stop_reason = "error"
            self._abort()
            self._teardown_node()
            if isinstance(e, RecordingError):
                self._error = e
            else:
                err = RecordingError(f"recording {self.output} failed: {type(e).__name__}: {e}")
                err.__cause__ = e
                self._error = err
        finally:
            self._done.set()

    def _teardown_node(self) -> None:
        node, self.node = self.node, None
        if node is None:
            return
        with contextlib.suppress(Exception):
            self._executor.remove_node(node)
        for sub in self._subs.values():
            with contextlib.suppress(Exception):
                node.destroy_subscription(sub)
        with contextlib.suppress(Exception):
            node.destroy_node()
        with contextlib.suppress(Exception):
            self._executor.shutdown(timeout_sec=1.0)

    def _limit(self, reason: str) -> None:
        self._stop_reason = reason
        self._stop.set()
        if self.on_stop is not None:
            self.on_stop(reason)

    def _make_summary(self) -> RecordingSummary:
        start = self._started_mono or 0.0
        end = self._ended_mono or time.monotonic()
        return RecordingSummary(
            path=str(self.output),
            storage=self.storage,
            messages=dict(self.messages),
            types=dict(self.types),
            skipped_topics=dict(self.skipped),
            duration_s=end - start,
            bytes_written=self._bytes,
            stop_reason=self._stop_reason,
            waiting_for=[t for t in self.topics if t not in self._subs and t not in self.skipped],
        )

    def _wanted(self, topic: str) -> bool:
        if topic in self._subs or topic in self.skipped or topic in self.exclude:
            return False
        if topic in self.topics:
            return True
        if not self.all_topics or topic in INTERNAL_TOPICS:
            return False
        return not any(part.startswith("_") for part in topic.split("/"))  # hidden topics

    def _discover(self) -> None:
        assert self.node is not None
        for topic, types in self.node.get_topic_names_and_types():
            if not self._wanted(topic):
                continue
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:
                continue  # only subscribers so far: nothing to record, QoS unknown
            if len(types) > 1:
                self._say(f"warning: {topic} has several types {types}; recording {types[0]}")
            self._subscribe(topic, types[0], infos)

    def _definition(self, msgtype: str, live_hashes: set[str]) -> tuple[str, str]:
        text, rihs = self.resolver.definition(msgtype)
        if live_hashes and rihs not in live_hashes:
            # The publishers use a definition other than rosbags' store (another distro, a
            # changed interface): take the installed .msg files, which is what they were built
            # from on this machine.
            if self._installed is None:
                self._installed = TypeResolver(prefer_installed=True)
            try:
                text2, rihs2 = self._installed.definition(msgtype)
            except UnknownTypeError:
                text2, rihs2 = text, rihs
            if rihs2 in live_hashes:
                return text2, rihs2
            self._say(
                f"warning: {msgtype}: the publishers' type hash {sorted(live_hashes)} matches "
                f"neither rosbags' definition nor the installed one; storing {rihs}"
            )
        return text, rihs

    def _subscribe(self, topic: str, msgtype: str, infos: Sequence[Any]) -> None:
        assert self.node is not None
        live = {
            h
            for i in infos
            if i.topic_type == msgtype
            and (h := str(getattr(i, "topic_type_hash", "") or ""))
            and h.startswith("RIHS01_")
            and h != "RIHS01_" + "0" * 64
        }
        try:
            cls = message_class(msgtype)
            msgdef, rihs = self._definition(msgtype, live)
            self._header_first[topic] = self.resolver.first_field_is_header(msgtype)
        except UnknownTypeError as e:
            self.skipped[topic] = str(e)
            self._say(f"warning: not recording {topic}: {e}")
            return
        qoses = [i.qos_profile for i in infos if i.topic_type == msgtype]
        offers = [qos_to_offer(q) for q in qoses]
        # Adapted to the publishers (as rosbag2 does): a reliable reader would not match a
        # best-effort writer, a transient-local reader not a volatile one.
        reliable = all(q.reliability == ReliabilityPolicy.RELIABLE for q in qoses)
        latched = all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in qoses)
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=SUBSCRIPTION_DEPTH,
            reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
            durability=(DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE),
        )
        with self._lock:
            if self._writer is None:
                return
            self._conns[topic] = self._writer.add_connection(
                topic, msgtype, msgdef=msgdef, rihs01=rihs, offered_qos_profiles=offers
            )
        self.types[topic] = msgtype
        self.messages[topic] = 0
        self._subs[topic] = self.node.create_subscription(
            cls, topic, lambda raw, t=topic: self._on_message(t, raw), qos, raw=True
        )
        self._say(f"subscribed to {topic} [{msgtype}]")

    def _on_message(self, topic: str, raw: bytes) -> None:
        if self._stop.is_set():
            return
        assert self.node is not None
        ns = self.node.get_clock().now().nanoseconds
        if self.stamp == "header" and self._header_first.get(topic):
            ns = header_stamp_ns(raw) or ns
        with self._lock:
            if self._writer is None:
                return
            self._writer.write(self._conns[topic], ns, raw)
        self.messages[topic] += 1
        self._bytes += len(raw)
        self._total += 1
        if self.max_messages is not None and self._total >= self.max_messages:
            self._limit("max-messages")


# ---------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sam4d_ros.tools.record",
        description="Record ROS 2 topics into a rosbag2 bag (MCAP or sqlite3).",
        epilog="Arguments after --ros-args go to rclpy (e.g. --ros-args -p use_sim_time:=true).",
    )
    p.add_argument("-o", "--output", help="bag directory to create (default rosbag2_<date>-<time>)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--topics", nargs="+", metavar="T", help="topics to record")
    what.add_argument(
        "-a", "--all", action="store_true", help="every topic (not /rosout, /parameter_events)"
    )
    p.add_argument("--exclude-topics", nargs="+", default=[], metavar="T", help="never record")
    p.add_argument("-s", "--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument(
        "--compression",
        choices=["zstd", "none"],
        default=None,
        help="MCAP chunk compression (default zstd for MCAP, none for sqlite3)",
    )
    p.add_argument(
        "--stamp",
        choices=["receive", "header"],
        default="receive",
        help="log time: receive time (default) or the message's header.stamp",
    )
    p.add_argument("-d", "--duration", type=float, metavar="S", help="stop after S s")
    p.add_argument("--max-messages", type=int, metavar="N", help="stop after N messages")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("-q", "--quiet", action="store_true", help="only errors and the summary")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args, ros_args = parse_tool_args(build_parser(), argv)
    log = None if args.quiet else stderr_log

    def open_recorder() -> BagRecorder:
        return BagRecorder(
            args.output or default_bag_name(),
            topics=args.topics or (),
            all_topics=args.all,
            exclude_topics=args.exclude_topics,
            storage=args.storage,
            compression=args.compression,
            stamp=args.stamp,
            duration_s=args.duration,
            max_messages=args.max_messages,
            overwrite=args.overwrite,
            log=log,
        )

    def started(recorder: BagRecorder) -> None:
        if log is not None:
            what = "all topics" if args.all else ", ".join(recorder.topics)
            log(f"recording {what} into {recorder.output} ({args.storage}); Ctrl-C to stop")

    # Ctrl-C / SIGTERM finish the bag instead of killing the process.
    return run_job(
        "record", ros_args, open_recorder, (RecordingError, ValueError, OSError), started=started
    )


if __name__ == "__main__":
    sys.exit(main())
