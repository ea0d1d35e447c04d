"""The bag format's fixed parts: metadata tags, the embedded message types, topic names, stamps.

Shared by the writer and the reader of :mod:`sam4d_core.data.sequence_bag`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from rosbags.typesys import Stores, get_typestore

# The format's names in the bag metadata (data, not module paths: existing bags carry them).
FORMAT_TAG = "sam4d_ros.sequence_bag/1"
METADATA_KEY = "sam4d_ros.sequence"
# Message definitions are identical for the types we use from Humble to Kilted; Humble's store is
# the oldest distro we support, so its definitions are the safe choice to embed.
TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
T = TYPESTORE.types

ProgressFn = Callable[[int, int], None]


@dataclass(frozen=True)
class BagTopics:
    """Topic names; ``{name}`` in a template is replaced by the camera name."""

    lidar_points: str = "/sensors/lidar/points"
    camera_image: str = "/sensors/camera/{name}/image_raw"
    camera_compressed: str = "/sensors/camera/{name}/image_raw/compressed"
    camera_info: str = "/sensors/camera/{name}/camera_info"
    tf: str = "/tf"
    tf_static: str = "/tf_static"
    gt_instance_labels: str = "/ground_truth/{name}/instance_labels"
    gt_labeled_points: str = "/ground_truth/lidar/labeled_points"
    gt_objects: str = "/ground_truth/objects"

    def image(self, name: str) -> str:
        return self.camera_image.format(name=name)

    def compressed(self, name: str) -> str:
        return self.camera_compressed.format(name=name)

    def info(self, name: str) -> str:
        return self.camera_info.format(name=name)

    def instance_labels(self, name: str) -> str:
        return self.gt_instance_labels.format(name=name)

    def camera_names_in(self, topics: Iterable[str]) -> list[str]:
        """Camera names found in ``topics`` through the camera_info / image templates."""
        names: list[str] = []
        for template in (self.camera_info, self.camera_image, self.camera_compressed):
            pre, _, post = template.partition("{name}")
            pat = re.compile("^" + re.escape(pre) + r"([A-Za-z0-9_]+)" + re.escape(post) + "$")
            for t in sorted(topics):
                m = pat.match(t)
                if m and m.group(1) not in names:
                    names.append(m.group(1))
        return names


# ------------------------------------------------------------------------------------- stamps


def stamp_ns(t: float) -> int:
    """Seconds -> integer ns without going through t * 1e9 (which loses ~100 ns at epoch times)."""
    if not math.isfinite(t) or t < 0:
        raise ValueError(f"timestamp {t} must be finite and >= 0 for a ROS stamp")
    sec = math.floor(t)
    return sec * 1_000_000_000 + int(round((t - sec) * 1e9))


def split_ns(ns: int) -> tuple[int, int]:
    """Integer ns -> (sec, nanosec) of a ROS stamp."""
    sec, nsec = divmod(int(ns), 1_000_000_000)
    return sec, nsec


def join_ns(sec: int, nanosec: int) -> int:
    """(sec, nanosec) of a ROS stamp -> integer ns."""
    return int(sec) * 1_000_000_000 + int(nanosec)


def ns_to_s(ns: int) -> float:
    sec, nsec = split_ns(ns)
    return sec + nsec / 1e9


def fmt_s(ns: int) -> str:
    """A stamp as seconds for messages, to the microsecond."""
    return f"{ns_to_s(ns):.6f} s"


def place(topic: str, ns: int) -> str:
    """A message's place in the bag for errors: ``<topic> @ <stamp> s``."""
    return f"{topic} @ {fmt_s(ns)}"
