"""Building and parsing the bag's messages: headers, TF, PointCloud2, Image / CompressedImage,
CameraInfo and the ground-truth object table (``std_msgs/String`` JSON).

Builders take integer ns stamps and return ``rosbags`` message objects of :data:`schema.TYPESTORE`;
parsers take serialized bytes (or messages) and raise :class:`BagError` naming ``where``.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from rosbags import interfaces as bag_qos

from sam4d_core.codecs.errors import CodecError
from sam4d_core.codecs.image import decode_compressed, decode_image, encode_image_array
from sam4d_core.codecs.pointcloud import (
    INTENSITY_ALIASES,
    decode_points,
    encode_points,
    find_field,
)
from sam4d_core.codecs.transform import matrix_to_tq
from sam4d_core.data.sequence import ObjectInfo
from sam4d_core.data.sequence_bag.errors import BagError
from sam4d_core.data.sequence_bag.schema import TYPESTORE, T, join_ns, split_ns
from sam4d_core.geometry.tf_buffer import TfBuffer

# ------------------------------------------------------------------------------------- building


def header_msg(ns: int, frame_id: str) -> Any:
    sec, nsec = split_ns(ns)
    return T["std_msgs/msg/Header"](
        stamp=T["builtin_interfaces/msg/Time"](sec=sec, nanosec=nsec), frame_id=frame_id
    )


def msg_ns(header: Any) -> int:
    return join_ns(header.stamp.sec, header.stamp.nanosec)


def transform_msg(
    ns: int, parent: str, child: str, parent_from_child: np.ndarray, where: str = ""
) -> Any:
    try:
        t, q = matrix_to_tq(parent_from_child)
    except CodecError as e:
        raise ValueError(f"{where}transform {parent!r} -> {child!r}: {e}") from None
    return T["geometry_msgs/msg/TransformStamped"](
        header=header_msg(ns, parent),
        child_frame_id=child,
        transform=T["geometry_msgs/msg/Transform"](
            translation=T["geometry_msgs/msg/Vector3"](x=t[0], y=t[1], z=t[2]),
            rotation=T["geometry_msgs/msg/Quaternion"](x=q[0], y=q[1], z=q[2], w=q[3]),
        ),
    )


def tf_name(frame: str) -> str:
    """A frame id as the TF buffer stores it (one leading slash dropped, as tf2 does)."""
    return frame[1:] if frame.startswith("/") else frame


def add_transform(
    buffer: TfBuffer, tf: Any, topic: str, static: bool, parents: dict[str, str]
) -> None:
    """Add one TransformStamped of the bag to ``buffer``; BagError names the topic when it is
    invalid or when a frame gets a second parent (a recording's TF must be one tree)."""
    parent, child = tf.header.frame_id, tf.child_frame_id
    what = f"{parent!r} -> {child!r}"
    known = parents.setdefault(tf_name(child), tf_name(parent))
    if known != tf_name(parent):
        raise BagError(
            f"frame {child!r} has two parents, {known!r} and {parent!r} (TF must be a tree)", topic
        )
    r, t = tf.transform.rotation, tf.transform.translation
    try:
        buffer.set_transform(
            parent, child, msg_ns(tf.header), ((t.x, t.y, t.z), (r.x, r.y, r.z, r.w)), static
        )
    except CodecError as e:
        raise BagError(f"bad transform {what}: {e}", topic) from None


def cloud_msg(ns: int, frame_id: str, structured: np.ndarray) -> Any:
    fields, point_step, data = encode_points(structured)
    pf = T["sensor_msgs/msg/PointField"]
    n = int(structured.shape[0])
    finite = all(
        np.isfinite(structured[f.name]).all()
        for f in fields
        if structured.dtype[f.name].kind == "f"
    )
    return T["sensor_msgs/msg/PointCloud2"](
        header=header_msg(ns, frame_id),
        height=1,
        width=n,
        fields=[
            pf(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields
        ],
        is_bigendian=False,
        point_step=point_step,
        row_step=point_step * n,
        data=np.ascontiguousarray(data).reshape(-1),
        is_dense=bool(finite),
    )


def points_structured(points: np.ndarray, fields: tuple[str, ...]) -> np.ndarray:
    pts = np.ascontiguousarray(points, dtype=np.float32)
    dt = np.dtype([(f, "<f4") for f in fields])
    return pts.view(dt).reshape(-1)


def image_msg(ns: int, frame_id: str, array: np.ndarray, encoding: str) -> Any:
    buf, step = encode_image_array(array, encoding)
    return T["sensor_msgs/msg/Image"](
        header=header_msg(ns, frame_id),
        height=int(buf.shape[0]),
        width=int(array.shape[1]),
        encoding=encoding,
        is_bigendian=0,
        step=step,
        data=buf.reshape(-1),
    )


def camera_info_msg(ns: int, frame_id: str, k: np.ndarray, size_wh: tuple[int, int]) -> Any:
    p = np.zeros((3, 4))
    p[:, :3] = k
    roi = T["sensor_msgs/msg/RegionOfInterest"](
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return T["sensor_msgs/msg/CameraInfo"](
        header=header_msg(ns, frame_id),
        height=int(size_wh[1]),
        width=int(size_wh[0]),
        distortion_model="plumb_bob",
        d=np.zeros(5),
        k=np.asarray(k, dtype=np.float64).reshape(9),
        r=np.eye(3).reshape(9),
        p=p.reshape(12),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def static_qos() -> list[bag_qos.Qos]:
    # /tf_static is latched in ROS (transient local); recording it so makes `ros2 bag play`
    # deliver it to late subscribers too.
    zero = bag_qos.QosTime(sec=0, nsec=0)
    return [
        bag_qos.Qos(
            history=bag_qos.QosHistory.KEEP_LAST,
            depth=1,
            reliability=bag_qos.QosReliability.RELIABLE,
            durability=bag_qos.QosDurability.TRANSIENT_LOCAL,
            deadline=zero,
            lifespan=zero,
            liveliness=bag_qos.QosLiveliness.AUTOMATIC,
            liveliness_lease_duration=zero,
            avoid_ros_namespace_conventions=False,
        )
    ]


def tf_message(transforms: list[Any]) -> Any:
    return T["tf2_msgs/msg/TFMessage"](transforms=transforms)


def objects_msg(ns: int, frame_index: int, objects: dict[int, ObjectInfo]) -> Any:
    """The object table of one frame as a std_msgs/String (stamped in the JSON: no header)."""
    sec, nsec = split_ns(ns)
    table = {
        "stamp": {"sec": sec, "nanosec": nsec},
        "frame_index": frame_index,
        "objects": [
            {
                "object_id": int(o.object_id),
                "semantic": o.semantic,
                "score": float(o.score),
                "volume": None if o.volume is None else float(o.volume),
            }
            for _, o in sorted(objects.items())
        ],
    }
    return T["std_msgs/msg/String"](data=json.dumps(table))


# ------------------------------------------------------------------------------------- parsing


def decode_cloud(raw: bytes, where: str) -> np.ndarray:
    msg = TYPESTORE.deserialize_cdr(raw, "sensor_msgs/msg/PointCloud2")
    try:
        layout = (msg.height, msg.width, msg.point_step, msg.row_step, msg.is_bigendian)
        return decode_points(msg.data, msg.fields, *layout).reshape(-1)
    except CodecError as e:
        raise BagError(f"bad PointCloud2: {e}", where) from None


def cloud_layout(s: np.ndarray, where: str) -> tuple[str | None, list[str]]:
    """(intensity field or None, the other scalar fields in message order)."""
    names = list(s.dtype.names or ())
    for c in ("x", "y", "z"):
        if c not in names:
            raise BagError(f"PointCloud2 has no field {c!r} (fields: {names})", where)
    inten = find_field(s.dtype, INTENSITY_ALIASES)
    rest = [n for n in names if n not in ("x", "y", "z", inten) and not s.dtype[n].shape]
    return inten, rest


def cloud_to_array(s: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """(N, C) float32 with x, y, z, intensity first (zeros if absent), then the other scalar
    fields in message order (cast to float32)."""
    inten, rest = cloud_layout(s, where)
    out = np.empty((s.shape[0], 4 + len(rest)), dtype=np.float32)
    for i, c in enumerate(("x", "y", "z")):
        out[:, i] = s[c]
    out[:, 3] = s[inten] if inten is not None else 0.0
    for i, n in enumerate(rest):
        out[:, 4 + i] = s[n]
    return out, ("x", "y", "z", "intensity", *rest)


def labels_from_cloud(raw: bytes, num_points: int, where: str) -> np.ndarray:
    """(N,) int32 ``label`` field of a ground-truth cloud, checked against the sweep's size."""
    s = decode_cloud(raw, where)
    if "label" not in (s.dtype.names or ()):
        raise BagError(f"labeled points have no 'label' field (fields: {s.dtype.names})", where)
    if s.shape[0] != num_points:
        raise BagError(f"{s.shape[0]} labeled points but the sweep has {num_points}", where)
    return np.asarray(s["label"], dtype=np.int32).copy()


def decode_image_msg(msgtype: str, raw: bytes, where: str) -> tuple[np.ndarray, str]:
    """(array, encoding): RGB for CompressedImage, the decoded raw layout for Image."""
    msg = TYPESTORE.deserialize_cdr(raw, msgtype)
    try:
        if msgtype == "sensor_msgs/msg/CompressedImage":
            return decode_compressed(msg.data, msg.format), "rgb8"
        arr = decode_image(
            msg.data, msg.encoding, msg.height, msg.width, msg.step, msg.is_bigendian
        )
        return arr, msg.encoding
    except CodecError as e:
        raise BagError(f"bad image: {e}", where) from None


def parse_objects(data: str, topic: str) -> tuple[int, dict[int, ObjectInfo]]:
    try:
        table = json.loads(data)
        st = table["stamp"]
        ns = join_ns(st["sec"], st["nanosec"])
        objs = {
            int(o["object_id"]): ObjectInfo(
                object_id=int(o["object_id"]),
                semantic=str(o.get("semantic", "unknown")),
                score=float(o.get("score", 1.0)),
                volume=None if o.get("volume") is None else float(o["volume"]),
            )
            for o in table["objects"]
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BagError(f"object table is not the expected JSON ({e})", topic) from None
    return ns, objs
