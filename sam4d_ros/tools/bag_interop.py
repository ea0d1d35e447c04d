"""What the bag player and recorder share: message classes from type names, message definitions
for types that ``rosbags`` does not know, QoS between rosbag2 metadata and rclpy, topic names.

Why not ``rosidl_runtime_py`` / ``rosbag2_py``: neither is installable from the PyPI ROS wheels this
project builds with, and both tools must also run unchanged on a full ROS install; the pieces
needed here are small.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from rclpy.duration import Duration
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rosbags.interfaces import (
    Nodetype,
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from rosbags.typesys.store import Typestore

__all__ = [
    "DEFAULT_DEPTH",
    "TypeResolver",
    "UnknownTypeError",
    "absolute_topic",
    "header_first",
    "header_stamp_ns",
    "installed_definition",
    "message_class",
    "parse_qos_overrides",
    "parse_remaps",
    "qos_from_offers",
    "qos_to_offer",
]

# rosbag2's default history depth for players and recorders (rmw_qos_profile_default).
DEFAULT_DEPTH = 10
# How rosbag2 (format version <= 8) writes an infinite QoS duration.
_INFINITE_TIME = QosTime(sec=2147483647, nsec=4294967295)
_TYPE_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)/(?:(msg|srv|action)/)?([A-Za-z][A-Za-z0-9_]*)$")


class UnknownTypeError(LookupError):
    """A message type whose Python class or definition is not installed here."""


# --------------------------------------------------------------------------------- type names


def _split_type(msgtype: str) -> tuple[str, str, str]:
    m = _TYPE_RE.match(msgtype)
    if m is None:
        raise UnknownTypeError(f"{msgtype!r} is not a ROS 2 type name like 'pkg/msg/Name'")
    return m.group(1), m.group(2) or "msg", m.group(3)


def message_class(msgtype: str) -> type:
    """The rclpy message class of ``pkg/msg/Name`` (also ``pkg/Name``), imported by name.

    Does what ``rosidl_runtime_py.utilities.get_message`` does, which the PyPI wheels lack.
    """
    pkg, kind, name = _split_type(msgtype)
    try:
        module = importlib.import_module(f"{pkg}.{kind}")
    except ImportError as e:
        raise UnknownTypeError(
            f"message type {msgtype!r}: cannot import {pkg}.{kind} ({e}); is the interface "
            "package built and its install space sourced?"
        ) from None
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise UnknownTypeError(f"message type {msgtype!r}: {pkg}.{kind} has no {name}")
    return cls


def _ament_prefixes() -> list[Path]:
    return [Path(p) for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]


def installed_definition(msgtype: str) -> str | None:
    """Text of the installed ``<prefix>/share/<pkg>/msg/<Name>.msg`` (None when not installed).

    Found through the ament index (``AMENT_PREFIX_PATH``) like ``ros2 interface show`` does.
    """
    try:
        pkg, kind, name = _split_type(msgtype)
    except UnknownTypeError:
        return None
    if kind != "msg":
        return None  # service / action parts have no .msg file of their own
    for prefix in _ament_prefixes():
        path = prefix / "share" / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            return path.read_text(encoding="utf-8")
    return None


def _field_types(fields: Iterable[tuple[str, Any]]) -> list[str]:
    """Complex type names referenced by a rosbags field list (nested arrays included)."""
    out: list[str] = []

    def visit(desc: tuple[Any, Any]) -> None:
        node, arg = desc
        if node == Nodetype.NAME:
            out.append(arg)
        elif node in (Nodetype.ARRAY, Nodetype.SEQUENCE):
            visit(arg[0])

    for _name, desc in fields:
        visit(desc)
    return out


def _default_store() -> Stores:
    """The rosbags type store of the sourced distro (``ROS_DISTRO``), else Humble's.

    Humble is what ``sam4d_core.data.sequence_bag`` embeds too: its definitions are identical up
    to Kilted for the types we use, and it is the oldest distro we support.
    """
    distro = os.environ.get("ROS_DISTRO", "").strip().upper()
    return Stores.__members__.get(f"ROS2_{distro}", Stores.ROS2_HUMBLE)


class TypeResolver:
    """A rosbags type store that learns the types it lacks from the installed ``.msg`` files.

    ``prefer_installed=True`` starts from an empty store and takes every type from its installed
    ``.msg`` file when there is one (rosbags' own definition otherwise): what the recorder falls
    back to when the hash that rosbags computes differs from the one the publishers announce.
    """

    def __init__(self, store: Stores | None = None, *, prefer_installed: bool = False) -> None:
        self.base: Typestore = get_typestore(store or _default_store())
        self.prefer_installed = prefer_installed
        self.store: Typestore = get_typestore(Stores.EMPTY) if prefer_installed else self.base

    def ensure(self, msgtype: str) -> None:
        """Make ``msgtype`` and every type it uses known to :attr:`store`.

        Raises:
            UnknownTypeError: neither rosbags nor the installed interfaces define it.
        """
        self._ensure(msgtype, [])

    def _ensure(self, msgtype: str, stack: list[str]) -> None:
        if msgtype in self.store.fielddefs:
            return
        if msgtype in stack:  # ROS messages cannot be recursive; do not loop on a broken file
            raise UnknownTypeError(f"recursive message definition: {' -> '.join(stack)}")
        text = installed_definition(msgtype)
        if text is not None and (self.prefer_installed or msgtype not in self.base.fielddefs):
            try:
                typs = get_types_from_msg(text, msgtype)
            except Exception as e:  # rosbags' parser raises its own exception types
                raise UnknownTypeError(f"cannot parse the installed {msgtype}.msg: {e}") from None
        elif msgtype in self.base.fielddefs:
            typs = {msgtype: self.base.fielddefs[msgtype]}
        else:
            raise UnknownTypeError(
                f"no definition of {msgtype!r}: rosbags does not know it and no "
                f"share/<pkg>/msg/*.msg for it is on AMENT_PREFIX_PATH"
            )
        for dep in _field_types(typs[msgtype][1]):
            self._ensure(dep, [*stack, msgtype])
        self.store.register(typs)

    def definition(self, msgtype: str) -> tuple[str, str]:
        """(message definition text as rosbag2 stores it, RIHS01 type hash) of ``msgtype``."""
        self.ensure(msgtype)
        text, _md5 = self.store.generate_msgdef(msgtype, ros_version=2)
        return text, self.store.hash_rihs01(msgtype)

    def first_field_is_header(self, msgtype: str) -> bool:
        self.ensure(msgtype)
        fields = self.store.fielddefs[msgtype][1]
        return header_first(fields)


def header_first(fields: Sequence[tuple[str, Any]]) -> bool:
    """Whether a rosbags field list starts with a ``std_msgs/Header``."""
    return bool(fields) and tuple(fields[0][1]) == (Nodetype.NAME, "std_msgs/msg/Header")


def header_stamp_ns(raw: bytes) -> int | None:
    """``header.stamp`` (ns) of a CDR message whose first field is a std_msgs/Header.

    Reads the 8 bytes after the 4-byte encapsulation header instead of deserializing the whole
    message (a point cloud would cost milliseconds). None for a buffer too short to hold it.
    """
    if len(raw) < 12:
        return None
    order = "little" if raw[1] & 1 else "big"  # encapsulation id 0x0001 = CDR_LE
    sec = int.from_bytes(raw[4:8], order, signed=True)
    nsec = int.from_bytes(raw[8:12], order, signed=False)
    return sec * 1_000_000_000 + nsec


# -------------------------------------------------------------------------------------- topics


def absolute_topic(name: str) -> str:
    """Topic names as the bag stores them: absolute (a relative name is resolved against '/')."""
    name = name.strip()
    if not name:
        raise ValueError("empty topic name")
    return name if name.startswith("/") else "/" + name


def parse_remaps(items: Iterable[str]) -> dict[str, str]:
    """``["/from:=/to", ...]`` -> {"/from": "/to"} (names made absolute)."""
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = item.partition(":=")
        if not sep or not src.strip() or not dst.strip():
            raise ValueError(f"remap {item!r} is not of the form FROM:=TO")
        out[absolute_topic(src)] = absolute_topic(dst)
    return out


# ----------------------------------------------------------------------------------------- QoS


def _time_to_duration(t: QosTime) -> Duration | None:
    """A recorded QoS duration; None for 'unset' (0) and for infinite (what rosbag2 writes)."""
    if (t.sec, t.nsec) == (0, 0) or t.sec >= _INFINITE_TIME.sec:
        return None
    return Duration(seconds=t.sec, nanoseconds=t.nsec)


def _duration_to_time(d: Duration) -> QosTime:
    ns = int(d.nanoseconds)
    if ns >= 2**63 - 1 or ns >= _INFINITE_TIME.sec * 1_000_000_000:
        return _INFINITE_TIME
    return QosTime(sec=ns // 1_000_000_000, nsec=ns % 1_000_000_000)


def _rclpy_enum(enum: Any, name: str, default: Any) -> Any:
    return enum.__members__.get(name, default)


def _bag_enum(enum: Any, value: Any) -> Any:
    return enum.__members__.get(getattr(value, "name", ""), enum.UNKNOWN)


def qos_from_offers(offers: Sequence[Qos], default: QoSProfile | None = None) -> QoSProfile:
    """The QoS to publish a recorded topic with, adapted from its recorded offers.

    As ``ros2 bag play`` does: reliable only when every recorded publisher was reliable,
    transient local only when every one was. History is keep-last with at least
    :data:`DEFAULT_DEPTH` (a recorded keep-last depth above that is kept: latched topics with
    several messages stay complete for late subscribers). Deadline, lifespan and liveliness are
    not applied (a replay cannot keep a recording's deadlines anyway).
    """
    base = default or QoSProfile(depth=DEFAULT_DEPTH)
    profile = QoSProfile(
        history=HistoryPolicy.KEEP_LAST,
        depth=max(base.depth, 1),
        reliability=base.reliability,
        durability=base.durability,
    )
    if not offers:
        return profile
    if all(o.reliability == QosReliability.RELIABLE for o in offers):
        profile.reliability = ReliabilityPolicy.RELIABLE
    elif any(o.reliability == QosReliability.BEST_EFFORT for o in offers):
        profile.reliability = ReliabilityPolicy.BEST_EFFORT
    if all(o.durability == QosDurability.TRANSIENT_LOCAL for o in offers):
        profile.durability = DurabilityPolicy.TRANSIENT_LOCAL
    elif any(o.durability == QosDurability.VOLATILE for o in offers):
        profile.durability = DurabilityPolicy.VOLATILE
    depths = [o.depth for o in offers if o.history == QosHistory.KEEP_LAST and o.depth > 0]
    if depths:
        profile.depth = max(profile.depth, *depths)
    return profile


def qos_to_offer(qos: QoSProfile) -> Qos:
    """A publisher's QoS (as the graph reports it) in the form rosbag2 metadata stores."""
    return Qos(
        history=_bag_enum(QosHistory, qos.history),
        depth=int(qos.depth),
        reliability=_bag_enum(QosReliability, qos.reliability),
        durability=_bag_enum(QosDurability, qos.durability),
        deadline=_duration_to_time(qos.deadline),
        lifespan=_duration_to_time(qos.lifespan),
        liveliness=_bag_enum(QosLiveliness, qos.liveliness),
        liveliness_lease_duration=_duration_to_time(qos.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(qos.avoid_ros_namespace_conventions),
    )


def _qos_from_mapping(topic: str, spec: Any) -> QoSProfile:
    if not isinstance(spec, dict):
        raise ValueError(f"QoS override for {topic!r} must be a mapping, got {spec!r}")
    profile = QoSProfile(depth=DEFAULT_DEPTH)
    enums = {
        "history": (HistoryPolicy, "history"),
        "reliability": (ReliabilityPolicy, "reliability"),
        "durability": (DurabilityPolicy, "durability"),
        "liveliness": (LivelinessPolicy, "liveliness"),
    }
    for key, value in spec.items():
        if key in enums:
            enum, attr = enums[key]
            member = _rclpy_enum(enum, str(value).upper(), None)
            if member is None:
                choices = ", ".join(m.lower() for m in enum.__members__)
                raise ValueError(f"QoS override for {topic!r}: {key} {value!r} (one of {choices})")
            setattr(profile, attr, member)
        elif key == "depth":
            profile.depth = int(value)
        elif key in ("deadline", "lifespan", "liveliness_lease_duration"):
            if isinstance(value, dict):
                sec, nsec = int(value.get("sec", 0)), int(value.get("nsec", 0))
                d = Duration(seconds=sec, nanoseconds=nsec)
            else:
                d = Duration(nanoseconds=int(round(float(value) * 1e9)))
            setattr(profile, key, d)
        elif key == "avoid_ros_namespace_conventions":
            profile.avoid_ros_namespace_conventions = bool(value)
        else:
            raise ValueError(f"QoS override for {topic!r}: unknown key {key!r}")
    return profile


def parse_qos_overrides(path: str | os.PathLike[str]) -> dict[str, QoSProfile]:
    """A ``ros2 bag`` QoS override file: ``{topic: {reliability: best_effort, depth: 5, ...}}``.

    Keys: history, depth, reliability, durability, liveliness (policy names, any case),
    deadline / lifespan / liveliness_lease_duration (``{sec, nsec}`` or seconds).
    """
    import yaml  # PyYAML: present wherever ROS 2 is (rclpy's launch stack depends on it)

    text = Path(path).read_text(encoding="utf-8")
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of topic -> QoS settings")
    return {absolute_topic(str(t)): _qos_from_mapping(str(t), spec) for t, spec in data.items()}
