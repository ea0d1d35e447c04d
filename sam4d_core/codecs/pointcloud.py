"""PointCloud2 wire layout <-> numpy structured arrays, without importing any ROS type.

A ``sensor_msgs/PointCloud2`` is a byte blob plus a description of one point (``fields`` with name,
offset, datatype and count; ``point_step`` bytes per point, ``row_step`` bytes per row, ``height``
rows). This module turns that description into a numpy structured dtype and the blob into a
structured array that is a *view* of the message memory (no copy) whenever numpy can express the
layout with strides, which is always the case for valid messages, including padded points and
padded rows. It also extracts the arrays the model needs (xyz, intensity, ring, time, a validity
mask) and builds output layouts that append ``label`` / ``score`` to the input fields.

Conventions
-----------
* ``decode_points`` always returns a 2-D array shaped ``(height, width)``, also for unorganized
  clouds (``height == 1``), so the shape never depends on the content. Use ``.reshape(-1)`` (free
  for unorganized clouds) or the extraction helpers, which return flat ``(N, ...)`` arrays in
  row-major order (``N = height * width``).
* Fields keep their wire byte order in the decoded view (e.g. ``>f4`` for big-endian clouds); the
  extraction helpers return native-endian copies.
* ``fields`` can be any objects with ``.name``, ``.offset``, ``.datatype`` and ``.count``
  (``FieldSpec``, an rclpy ``sensor_msgs.msg.PointField`` or a rosbags ``PointField``).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sam4d_core.codecs.buffers import byte_view
from sam4d_core.codecs.errors import PointCloudLayoutError

__all__ = [
    "FLOAT32",
    "FLOAT64",
    "INT8",
    "INT16",
    "INT32",
    "INTENSITY_ALIASES",
    "MAX_FIELDS",
    "MAX_POINT_STEP",
    "RING_ALIASES",
    "TIME_ALIASES",
    "UINT8",
    "UINT16",
    "UINT32",
    "FieldSpec",
    "LidarPoints",
    "append_fields",
    "as_byte_buffer",
    "decode_points",
    "dtype_byte_order",
    "dtype_from_fields",
    "dtype_to_fields",
    "encode_points",
    "extract_points",
    "find_field",
    "field_as",
    "intensity_from_points",
    "labeled_dtype",
    "ring_from_points",
    "time_from_points",
    "valid_mask",
    "xyz_from_points",
]

# sensor_msgs/PointField datatype constants (same numeric values as the message definition).
INT8 = 1
UINT8 = 2
INT16 = 3
UINT16 = 4
INT32 = 5
UINT32 = 6
FLOAT32 = 7
FLOAT64 = 8

_DATATYPE_CODES: dict[int, str] = {
    INT8: "i1",
    UINT8: "u1",
    INT16: "i2",
    UINT16: "u2",
    INT32: "i4",
    UINT32: "u4",
    FLOAT32: "f4",
    FLOAT64: "f8",
}
_DATATYPE_NAMES: dict[int, str] = {
    INT8: "INT8",
    UINT8: "UINT8",
    INT16: "INT16",
    UINT16: "UINT16",
    INT32: "INT32",
    UINT32: "UINT32",
    FLOAT32: "FLOAT32",
    FLOAT64: "FLOAT64",
}
_CODE_TO_DATATYPE: dict[str, int] = {code: dt for dt, code in _DATATYPE_CODES.items()}

# Sanity bounds: far above any real sensor (an Ouster point is 48 bytes; feature clouds with a few
# hundred floats per point stay below 4 KiB) yet low enough that a corrupted header cannot make us
# build a dtype or allocate gigabytes before the data-length check fails.
MAX_POINT_STEP = 1 << 20
MAX_FIELDS = 4096
# Field name aliases used by common drivers (Velodyne, Ouster, Hesai, Livox, Robosense, PCL).
INTENSITY_ALIASES: tuple[str, ...] = ("intensity", "i", "reflectance")
RING_ALIASES: tuple[str, ...] = ("ring", "ring_index")
TIME_ALIASES: tuple[str, ...] = ("time", "t", "timestamp", "offset_time")


@dataclass(frozen=True)
class FieldSpec:
    """One field of a point, as in ``sensor_msgs/PointField``.

    ``offset`` is the byte offset inside a point, ``datatype`` one of the constants above and
    ``count`` the number of consecutive elements (``count > 1`` becomes a numpy subarray field).
    """

    name: str
    offset: int
    datatype: int
    count: int = 1


@dataclass
class LidarPoints:
    """The per-point arrays the model consumes, extracted from a cloud (flat, row-major order).

    xyz: (N, 3) float32 metres in the cloud's frame.
    intensity: (N,) float32 raw driver units, or None when the cloud has no intensity field.
    ring: (N,) int32 laser/beam index, or None.
    time: (N,) float64 seconds (integer time fields are taken as nanoseconds, floating ones as
        seconds; relative or absolute as the driver publishes them), or None.
    valid: (N,) bool, True where x, y and z are all finite.
    height, width: the cloud's organization (``N == height * width``).
    """

    xyz: np.ndarray
    intensity: np.ndarray | None
    ring: np.ndarray | None
    time: np.ndarray | None
    valid: np.ndarray
    height: int
    width: int

    @property
    def num_points(self) -> int:
        return int(self.xyz.shape[0])


def _describe(name: str, offset: int, datatype: int, count: int) -> str:
    type_name = _DATATYPE_NAMES.get(datatype, f"datatype {datatype}")
    return f"field '{name}' (offset {offset}, {type_name} x{count})"


def _check_int(value: Any, what: str, lo: int, hi: int) -> int:
    # bool is an int subclass; a True offset is certainly a bug upstream.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise PointCloudLayoutError(f"{what} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or value > hi:
        raise PointCloudLayoutError(f"{what} {value} is out of range [{lo}, {hi}]")
    return value


def _field_tuple(field: Any, index: int) -> tuple[str, int, int, int]:
    try:
        name, offset, datatype = field.name, field.offset, field.datatype
    except AttributeError as exc:
        raise PointCloudLayoutError(
            f"fields[{index}] ({type(field).__name__}) has no name/offset/datatype"
        ) from exc
    count = getattr(field, "count", 1)
    if not isinstance(name, str) or not name:
        raise PointCloudLayoutError(f"fields[{index}] has an invalid name {name!r}")
    offset = _check_int(offset, f"field '{name}' offset", 0, MAX_POINT_STEP)
    datatype = _check_int(datatype, f"field '{name}' datatype", -(1 << 31), 1 << 31)
    if datatype not in _DATATYPE_CODES:
        raise PointCloudLayoutError(
            f"field '{name}' has unknown datatype {datatype} (valid: 1=INT8 ... 8=FLOAT64)"
        )
    count = _check_int(count, f"field '{name}' count", 0, MAX_POINT_STEP)
    if count == 0:
        raise PointCloudLayoutError(
            f"{_describe(name, offset, datatype, count)} has count 0 (must be >= 1)"
        )
    return name, offset, datatype, count


@functools.lru_cache(maxsize=256)
def _dtype_cached(key: tuple[tuple[str, int, int, int], ...], point_step: int, big: bool):
    order = ">" if big else "<"
    names, formats, offsets = [], [], []
    for name, offset, datatype, count in key:
        base = order + _DATATYPE_CODES[datatype]
        names.append(name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(offset)
    spec = {"names": names, "formats": formats, "offsets": offsets, "itemsize": point_step}
    return np.dtype(spec)


def dtype_from_fields(fields: Iterable[Any], point_step: int, is_bigendian: bool) -> np.dtype:
    """Build the numpy structured dtype of one point (itemsize == point_step).

    fields: PointField-like objects (``.name``, ``.offset``, ``.datatype``, ``.count``).
    Raises PointCloudLayoutError for an unknown datatype, duplicate names, a field that ends past
    ``point_step``, or absurd sizes.
    """
    point_step = _check_int(point_step, "point_step", 0, MAX_POINT_STEP)
    fields = list(fields)
    if len(fields) > MAX_FIELDS:
        raise PointCloudLayoutError(f"{len(fields)} fields exceed the limit of {MAX_FIELDS}")
    key = tuple(_field_tuple(f, i) for i, f in enumerate(fields))
    seen: set[str] = set()
    for name, offset, datatype, count in key:
        if name in seen:
            raise PointCloudLayoutError(f"duplicate field name '{name}'")
        seen.add(name)
        end = offset + count * int(_DATATYPE_CODES[datatype][1])
        if end > point_step:
            raise PointCloudLayoutError(
                f"point_step {point_step} is smaller than "
                f"{_describe(name, offset, datatype, count)} ends at {end}"
            )
    return _dtype_cached(key, point_step, bool(is_bigendian))


def as_byte_buffer(data: Any) -> np.ndarray:
    """View message bytes as a 1-D uint8 array without copying when possible.

    Accepts bytes, bytearray, memoryview, array.array('B') (rclpy), a uint8 numpy array (rosbags)
    or, as a slow fallback, a sequence of ints.
    """
    return byte_view(data, PointCloudLayoutError)


def decode_points(
    data: Any,
    fields: Iterable[Any],
    height: int,
    width: int,
    point_step: int,
    row_step: int,
    is_bigendian: bool,
) -> np.ndarray:
    """Interpret PointCloud2 bytes as a structured array shaped (height, width).

    The result is a view of ``data`` (no copy) with strides ``(row_step, point_step)``, so padding
    inside points and at the end of rows costs nothing; it is read-only when ``data`` is (bytes)
    and aliases the message otherwise. Raises PointCloudLayoutError when sizes do not agree.
    """
    dtype = dtype_from_fields(fields, point_step, is_bigendian)
    # Upper bounds only guard against arithmetic on garbage; the data-length check is the real one.
    height = _check_int(height, "height", 0, 1 << 40)
    width = _check_int(width, "width", 0, 1 << 40)
    row_step = _check_int(row_step, "row_step", 0, 1 << 50)
    buf = as_byte_buffer(data)
    if width > 0 and point_step == 0:
        raise PointCloudLayoutError(f"point_step is 0 but width is {width}")
    if row_step < width * point_step:
        raise PointCloudLayoutError(
            f"row_step {row_step} is smaller than width {width} * point_step {point_step} "
            f"= {width * point_step}"
        )
    expected = height * row_step
    if buf.size != expected:
        raise PointCloudLayoutError(
            f"data length {buf.size} != height {height} * row_step {row_step} = {expected}"
        )
    if height == 0 or width == 0:
        return np.empty((height, width), dtype=dtype)
    return np.ndarray(
        shape=(height, width), dtype=dtype, buffer=buf, offset=0, strides=(row_step, point_step)
    )


def dtype_byte_order(dtype: np.dtype) -> str:
    """'<' or '>' for a structured dtype whose multi-byte fields share one byte order.

    Single-byte fields have no byte order; a dtype with only those counts as little-endian.
    Raises PointCloudLayoutError for mixed byte orders (PointCloud2 has a single is_bigendian).
    """
    orders = set()
    for name, (fdt, _off, *_rest) in (dtype.fields or {}).items():
        base = fdt.base
        if base.itemsize > 1:
            order = base.byteorder
            if order == "=":
                order = "<" if np.little_endian else ">"
            orders.add(order)
        if len(orders) > 1:
            raise PointCloudLayoutError(f"field '{name}' byte order differs from earlier fields")
    return orders.pop() if orders else "<"


def dtype_to_fields(dtype: np.dtype) -> tuple[list[FieldSpec], int, bool]:
    """Describe a structured dtype as PointFields: (fields, point_step, is_bigendian).

    Fields are listed by increasing offset. Raises PointCloudLayoutError for numpy types that have
    no PointField datatype (bool, int64, complex, strings, nested records, multi-dim subarrays).
    """
    if dtype.names is None:
        raise PointCloudLayoutError(f"expected a structured dtype, got {dtype}")
    big = dtype_byte_order(dtype) == ">"
    specs = []
    for name in dtype.names:
        fdt, offset = dtype.fields[name][:2]
        base, shape = fdt.base, fdt.shape
        if len(shape) > 1:
            raise PointCloudLayoutError(f"field '{name}' has shape {shape}; only 1-D counts map")
        code = base.kind + str(base.itemsize) if base.kind in "iuf" else None
        datatype = _CODE_TO_DATATYPE.get(code) if code else None
        if datatype is None:
            raise PointCloudLayoutError(
                f"field '{name}' has numpy type {base} which has no PointField datatype"
            )
        count = int(shape[0]) if shape else 1
        if count == 0:
            raise PointCloudLayoutError(f"field '{name}' has count 0")
        specs.append(FieldSpec(name, int(offset), datatype, count))
    specs.sort(key=lambda f: f.offset)
    return specs, int(dtype.itemsize), big


def _with_byte_order(dtype: np.dtype, order: str) -> np.dtype:
    """The same structured layout with every multi-byte field in byte order ``order``."""
    formats = []
    for name in dtype.names:
        fdt = dtype.fields[name][0]
        formats.append(fdt.newbyteorder(order) if fdt.base.itemsize > 1 else fdt)
    return np.dtype(
        {
            "names": list(dtype.names),
            "formats": formats,
            "offsets": [dtype.fields[n][1] for n in dtype.names],
            "itemsize": dtype.itemsize,
        }
    )


def encode_points(structured: np.ndarray) -> tuple[list[FieldSpec], int, np.ndarray]:
    """Serialize a structured array into PointCloud2 parts: (fields, point_step, data).

    structured: (N,) or (height, width) structured array; the caller sets height/width from its
        shape (height 1 for a 1-D array) and ``row_step = width * point_step``.
    data: 1-D uint8 array of ``structured.size * point_step`` bytes, little-endian (the
        message's ``is_bigendian`` must be False). It shares memory with ``structured`` when that
        is already C-contiguous little-endian: copy it (``array.array('B').frombytes``) to keep.
    """
    if not isinstance(structured, np.ndarray) or structured.dtype.names is None:
        raise PointCloudLayoutError("encode_points expects a numpy structured array")
    if structured.ndim > 2:
        raise PointCloudLayoutError(f"structured array has {structured.ndim} dims, expected 1 or 2")
    little = _with_byte_order(structured.dtype, "<")
    if little != structured.dtype:  # big-endian or mixed byte orders: normalize
        structured = structured.astype(little)
    fields, point_step, _ = dtype_to_fields(structured.dtype)
    contiguous = np.ascontiguousarray(structured)
    if point_step == 0 or contiguous.size == 0:
        return fields, point_step, np.zeros(0, dtype=np.uint8)
    raw = contiguous.reshape(-1).view(np.dtype((np.uint8, (point_step,))))
    return fields, point_step, raw.reshape(-1)


def find_field(dtype: np.dtype, aliases: Sequence[str]) -> str | None:
    """The first of ``aliases`` that is a field of ``dtype`` (exact names first, then
    case-insensitive), or None."""
    names = dtype.names or ()
    for alias in aliases:
        if alias in names:
            return alias
    lower = {n.lower(): n for n in names}
    for alias in aliases:
        if alias.lower() in lower:
            return lower[alias.lower()]
    return None


def field_as(points: np.ndarray, name: str, dtype: Any) -> np.ndarray:
    """Copy one scalar field to a flat (N,) native array of ``dtype``."""
    fdt = points.dtype.fields[name][0]
    if fdt.shape:
        raise PointCloudLayoutError(
            f"field '{name}' has count {fdt.shape[0]}, expected a scalar (count 1)"
        )
    out = np.empty(points.size, dtype=dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # e.g. huge float64 -> float32 = inf
        out.reshape(points.shape)[...] = points[name]
    return out


def _require_structured(points: np.ndarray) -> None:
    if not isinstance(points, np.ndarray) or points.dtype.names is None:
        raise PointCloudLayoutError("expected a structured point array (see decode_points)")


def xyz_from_points(points: np.ndarray) -> np.ndarray:
    """Copy x, y, z into a (N, 3) float32 array (N = points.size, row-major).

    Raises PointCloudLayoutError when x, y or z is missing or not a scalar field.
    """
    _require_structured(points)
    fields = points.dtype.fields
    missing = [c for c in ("x", "y", "z") if c not in fields]
    if missing:
        raise PointCloudLayoutError(
            f"cloud has no field {', '.join(repr(m) for m in missing)} "
            f"(fields: {list(points.dtype.names)})"
        )
    for c in ("x", "y", "z"):
        if fields[c][0].shape:
            raise PointCloudLayoutError(
                f"field '{c}' has count {fields[c][0].shape[0]}, expected 1"
            )
    out = np.empty((points.size, 3), dtype=np.float32)
    if points.size == 0:
        return out
    # One column at a time: numpy copies a strided (N,) column much faster than a (N, 3) view
    # with an inner axis of 3 (measured 0.16 ms vs 0.55 ms for 120k points).
    out3 = out.reshape(points.shape + (3,))
    for i, c in enumerate(("x", "y", "z")):
        out3[..., i] = points[c]
    return out


def _first_scalar(points: np.ndarray, aliases: Sequence[str]) -> str | None:
    name = find_field(points.dtype, aliases)
    if name is not None and points.dtype.fields[name][0].shape:
        return None
    return name


def intensity_from_points(points: np.ndarray) -> np.ndarray | None:
    """(N,) float32 intensity (intensity / i / reflectance), or None when absent."""
    _require_structured(points)
    name = _first_scalar(points, INTENSITY_ALIASES)
    return None if name is None else field_as(points, name, np.float32)


def ring_from_points(points: np.ndarray) -> np.ndarray | None:
    """(N,) int32 ring / beam index (ring / ring_index), or None when absent.

    Raises PointCloudLayoutError when the field holds values that are not finite int32 numbers.
    """
    _require_structured(points)
    name = _first_scalar(points, RING_ALIASES)
    if name is None:
        return None
    fdt = points.dtype.fields[name][0]
    if fdt.itemsize < 4 or fdt.kind == "i":
        return field_as(points, name, np.int32)
    raw = field_as(points, name, np.float64)
    if raw.size:
        if not np.isfinite(raw).all():
            raise PointCloudLayoutError(f"field '{name}' has non-finite values")
        lo, hi = raw.min(), raw.max()
        if lo < -(2**31) or hi > 2**31 - 1:
            raise PointCloudLayoutError(
                f"field '{name}' has values in [{lo:g}, {hi:g}], outside int32"
            )
    return np.rint(raw).astype(np.int32)


def time_from_points(points: np.ndarray) -> np.ndarray | None:
    """(N,) float64 per-point time in seconds, or None when absent.

    Field aliases: time / t / timestamp / offset_time. Integer fields are nanoseconds (Ouster
    ``t``, Livox ``offset_time``), floating fields seconds (Velodyne ``time``, Hesai ``timestamp``).
    """
    _require_structured(points)
    name = _first_scalar(points, TIME_ALIASES)
    if name is None:
        return None
    out = field_as(points, name, np.float64)
    if points.dtype.fields[name][0].kind in "iu":
        out *= 1e-9
    return out


def valid_mask(xyz: np.ndarray) -> np.ndarray:
    """(N,) bool, True where a (N, 3) xyz row is entirely finite."""
    if xyz.ndim != 2 or xyz.shape[1] != 3:
        raise PointCloudLayoutError(f"xyz must have shape (N, 3), got {xyz.shape}")
    # Per column: reductions over a length-3 inner axis (isfinite(...).all(axis=1)) are ~25x
    # slower in numpy (1.7 ms vs 0.07 ms for 120k points).
    valid = np.isfinite(xyz[:, 0])
    valid &= np.isfinite(xyz[:, 1])
    valid &= np.isfinite(xyz[:, 2])
    return valid


def extract_points(
    points: np.ndarray,
    *,
    is_dense: bool = False,
    check_finite: bool = True,
) -> LidarPoints:
    """Extract xyz (+ intensity, ring, time when present) and a validity mask from a cloud.

    points: structured array from ``decode_points`` ((height, width) or flat).
    is_dense / check_finite: the mask is computed unless the cloud claims to be dense *and* the
        caller opts out of checking (drivers are known to set is_dense wrongly).
    """
    _require_structured(points)
    xyz = xyz_from_points(points)
    if is_dense and not check_finite:
        valid = np.ones(xyz.shape[0], dtype=bool)
    else:
        valid = valid_mask(xyz)
    if points.ndim == 2:
        height, width = int(points.shape[0]), int(points.shape[1])
    else:
        height, width = 1, int(points.size)
    return LidarPoints(
        xyz=xyz,
        intensity=intensity_from_points(points),
        ring=ring_from_points(points),
        time=time_from_points(points),
        valid=valid,
        height=height,
        width=width,
    )


def labeled_dtype(dtype: np.dtype) -> np.dtype:
    """The output point layout: every input field at its offset, then ``label`` (uint32) and
    ``score`` (float32) after the input's point_step (rounded up to 4 bytes for alignment).

    An input that already has ``label`` / ``score`` fields (e.g. our own output fed back) keeps
    its other fields; the old label/score are dropped and the new ones appended.
    """
    if dtype.names is None:
        raise PointCloudLayoutError(f"expected a structured dtype, got {dtype}")
    order = dtype_byte_order(dtype)
    keep = [n for n in dtype.names if n not in ("label", "score")]
    base = (dtype.itemsize + 3) // 4 * 4
    return np.dtype(
        {
            "names": keep + ["label", "score"],
            "formats": [dtype.fields[n][0] for n in keep] + [order + "u4", order + "f4"],
            "offsets": [dtype.fields[n][1] for n in keep] + [base, base + 4],
            "itemsize": base + 8,
        }
    )


def _labels_as_uint32(label: Any, size: int) -> np.ndarray:
    lab = np.asarray(label)
    if lab.size != size:
        raise PointCloudLayoutError(f"label has {lab.size} values but the cloud has {size} points")
    if lab.dtype.kind == "b" or lab.size == 0:  # an empty list is float64 to numpy
        return lab.astype(np.uint32)
    if lab.dtype.kind not in "iu":
        raise PointCloudLayoutError(f"label must be integer, got dtype {lab.dtype}")
    if lab.size and lab.dtype != np.uint32:
        lo, hi = int(lab.min()), int(lab.max())
        if lo < 0 or hi > 0xFFFFFFFF:
            raise PointCloudLayoutError(f"label values [{lo}, {hi}] do not fit uint32")
    return lab


def append_fields(
    structured: np.ndarray,
    label: Any,
    score: Any,
    out: Any = None,
) -> np.ndarray:
    """Copy a cloud into the ``labeled_dtype`` layout and fill ``label`` and ``score``.

    structured: (N,) or (height, width) structured array (any strides, e.g. a decode_points view).
    label: N integers >= 0 (0 = background), any shape with N elements.
    score: N floats, any shape with N elements.
    out: optional writable buffer of exactly N * itemsize bytes (e.g. an ``array.array('B')`` that
        becomes the message's data) to fill in place, which avoids one copy of the whole cloud.
    Returns the labeled structured array, C-contiguous, shaped like ``structured``.
    """
    _require_structured(structured)
    dtype = labeled_dtype(structured.dtype)
    n = structured.size
    lab = _labels_as_uint32(label, n)
    sc = np.asarray(score)
    if sc.size != n:
        raise PointCloudLayoutError(f"score has {sc.size} values but the cloud has {n} points")
    if sc.dtype.kind not in "fiub":
        raise PointCloudLayoutError(f"score must be numeric, got dtype {sc.dtype}")
    if out is None:
        result = np.empty(structured.shape, dtype=dtype)
    else:
        buf = as_byte_buffer(out)
        if buf.size != n * dtype.itemsize:
            raise PointCloudLayoutError(
                f"out has {buf.size} bytes, expected {n} points * {dtype.itemsize} = "
                f"{n * dtype.itemsize}"
            )
        if not buf.flags.writeable:
            raise PointCloudLayoutError("out buffer is read-only")
        result = np.ndarray(structured.shape, dtype=dtype, buffer=buf)
    if n == 0:
        return result
    in_step = structured.dtype.itemsize
    out_bytes = result.view(np.dtype((np.uint8, (dtype.itemsize,))))
    dropped = [m for m in ("label", "score") if m in structured.dtype.names]
    if in_step and not dropped:
        # Copy whole points as raw bytes: one strided memcpy-like pass that preserves every field
        # (and the padding) regardless of types, instead of one gather per field.
        in_bytes = structured.view(np.dtype((np.uint8, (in_step,))))
        out_bytes[..., :in_step] = in_bytes
        out_bytes[..., in_step : dtype.itemsize - 8] = 0
    else:
        out_bytes[...] = 0
        for name in dtype.names[:-2]:
            result[name] = structured[name]
    result["label"] = lab.reshape(structured.shape)
    result["score"] = sc.reshape(structured.shape)
    return result
