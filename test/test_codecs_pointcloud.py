"""PointCloud2 layout codec: property tests over random layouts built as real sensor_msgs
messages, checked against an independent ``struct``-based reader, plus every malformed case."""

from __future__ import annotations

import array
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import PointCloud2, PointField

from sam4d_core.codecs.errors import CodecError, PointCloudLayoutError
from sam4d_core.codecs.pointcloud import (
    FLOAT32,
    FLOAT64,
    INT8,
    INT16,
    INT32,
    UINT8,
    UINT16,
    UINT32,
    FieldSpec,
    append_fields,
    decode_points,
    dtype_from_fields,
    encode_points,
    extract_points,
    labeled_dtype,
    valid_mask,
    xyz_from_points,
)

SIZE = {INT8: 1, UINT8: 1, INT16: 2, UINT16: 2, INT32: 4, UINT32: 4, FLOAT32: 4, FLOAT64: 8}
STRUCT = {INT8: "b", UINT8: "B", INT16: "h", UINT16: "H", INT32: "i", UINT32: "I"}
STRUCT.update({FLOAT32: "f", FLOAT64: "d"})


def test_datatype_constants_equal_pointfield_ones():
    for name, value in [("INT8", INT8), ("UINT8", UINT8), ("INT16", INT16), ("UINT16", UINT16)]:
        assert getattr(PointField, name) == value
    for name, value in [("INT32", INT32), ("UINT32", UINT32), ("FLOAT32", FLOAT32)]:
        assert getattr(PointField, name) == value
    assert PointField.FLOAT64 == FLOAT64


@st.composite
def layouts(draw, need_xyz: bool = False):
    """Random field layout: (fields, point_step, height, width, row_step, big)."""
    names = draw(
        st.lists(
            st.sampled_from(["x", "y", "z", "intensity", "ring", "t", "rgb", "normal", "a", "b"]),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    if need_xyz:
        # ring holds random bytes here; out-of-range rings are tested on their own.
        names = ["x", "y", "z"] + [n for n in names if n not in ("x", "y", "z", "ring")]
    fields = []
    offset = draw(st.integers(0, 5))
    for name in names:
        if need_xyz and name in ("x", "y", "z"):
            datatype, count = draw(st.sampled_from([FLOAT32, FLOAT64])), 1
        else:
            datatype = draw(st.sampled_from(sorted(SIZE)))
            count = draw(st.integers(1, 3))
        fields.append(FieldSpec(name, offset, datatype, count))
        offset += SIZE[datatype] * count + draw(st.integers(0, 6))  # padding, unaligned too
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))  # message order need not be offset order
    point_step = offset + draw(st.integers(0, 9))
    height = draw(st.integers(1, 3))
    width = draw(st.integers(0, 6))
    row_step = width * point_step + draw(st.integers(0, 11))
    big = draw(st.booleans())
    return fields, point_step, height, width, row_step, big


def make_msg(fields, point_step, height, width, row_step, big, data: bytes) -> PointCloud2:
    msg = PointCloud2()
    msg.header.frame_id = "lidar"
    msg.height = height
    msg.width = width
    msg.fields = [
        PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in fields
    ]
    msg.is_bigendian = big
    msg.point_step = point_step
    msg.row_step = row_step
    msg.data = array.array("B", data)
    msg.is_dense = False
    return msg


def struct_value(data: bytes, pos: int, field: FieldSpec, big: bool) -> tuple:
    fmt = (">" if big else "<") + str(field.count) + STRUCT[field.datatype]
    return struct.unpack_from(fmt, data, pos)


def assert_field_equal(decoded, expected: tuple, field: FieldSpec) -> None:
    got = np.asarray(decoded).reshape(-1)
    exp = np.asarray(expected)
    if field.datatype in (FLOAT32, FLOAT64):
        with np.errstate(invalid="ignore"):  # signalling NaNs from random bytes
            np.testing.assert_array_equal(got.astype(np.float64), exp.astype(np.float64))
        return
    else:
        assert got.astype(np.int64).tolist() == exp.astype(np.int64).tolist()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1))
def test_decode_matches_struct_reader(layout, seed):
    fields, point_step, height, width, row_step, big = layout
    data = np.random.default_rng(seed).integers(0, 256, height * row_step, np.uint8).tobytes()
    msg = make_msg(fields, point_step, height, width, row_step, big, data)
    arr = decode_points(
        msg.data, msg.fields, msg.height, msg.width, msg.point_step, msg.row_step, big
    )
    assert arr.shape == (height, width)
    assert arr.dtype.itemsize == point_step
    if arr.size:
        # A view of the message buffer, not a copy.
        assert np.shares_memory(arr, np.frombuffer(msg.data, np.uint8))
    for r in range(height):
        for c in range(width):
            for f in fields:
                pos = r * row_step + c * point_step + f.offset
                assert_field_equal(arr[r, c][f.name], struct_value(data, pos, f, big), f)


@settings(max_examples=80, deadline=None)
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1))
def test_encode_round_trip_through_message(layout, seed):
    fields, point_step, height, width, row_step, big = layout
    data = np.random.default_rng(seed).integers(0, 256, height * row_step, np.uint8).tobytes()
    arr = decode_points(data, fields, height, width, point_step, row_step, big)
    out_fields, out_step, out_data = encode_points(arr)
    assert out_step == point_step
    assert sorted((f.name, f.offset, f.datatype, f.count) for f in out_fields) == sorted(
        (f.name, f.offset, f.datatype, f.count) for f in fields
    )
    msg = make_msg(out_fields, out_step, height, width, width * out_step, False, out_data.tobytes())
    back = decode_points(
        msg.data, msg.fields, msg.height, msg.width, msg.point_step, msg.row_step, False
    )
    for f in fields:
        # Compare bit patterns: NaN payloads must survive too.
        a = np.ascontiguousarray(arr[f.name]).astype(arr.dtype[f.name].base.newbyteorder("<"))
        b = np.ascontiguousarray(back[f.name])
        assert a.tobytes() == b.tobytes(), f.name


@settings(max_examples=80, deadline=None)
@given(layout=layouts(need_xyz=True), seed=st.integers(0, 2**32 - 1))
def test_xyz_and_valid_mask(layout, seed):
    fields, point_step, height, width, row_step, big = layout
    rng = np.random.default_rng(seed)
    data = bytearray(rng.integers(0, 256, height * row_step, np.uint8).tobytes())
    by_name = {f.name: f for f in fields}
    # Plant finite values, NaNs and infs in x/y/z so the validity mask has both outcomes.
    expected = np.zeros((height * width, 3))
    for r in range(height):
        for c in range(width):
            for k, name in enumerate("xyz"):
                f = by_name[name]
                choices = [rng.normal() * 50, np.nan, np.inf, -np.inf]
                value = rng.choice(choices, p=[0.8, 0.1, 0.05, 0.05])
                fmt = (">" if big else "<") + STRUCT[f.datatype]
                struct.pack_into(fmt, data, r * row_step + c * point_step + f.offset, value)
                expected[r * width + c, k] = struct.unpack_from(
                    fmt, data, r * row_step + c * point_step + f.offset
                )[0]
    arr = decode_points(bytes(data), fields, height, width, point_step, row_step, big)
    pts = extract_points(arr)
    assert pts.xyz.dtype == np.float32 and pts.xyz.shape == (height * width, 3)
    np.testing.assert_array_equal(pts.xyz, expected.astype(np.float32))
    np.testing.assert_array_equal(pts.valid, np.isfinite(expected).all(axis=1))
    assert (pts.height, pts.width) == (height, width)


def test_valid_mask_flags_each_coordinate():
    xyz = np.zeros((5, 3), np.float32)
    xyz[1, 0] = np.nan
    xyz[2, 1] = np.inf
    xyz[3, 2] = -np.inf
    xyz[4] = 3.0e38  # large but finite: the row sum would overflow, the mask must not
    assert valid_mask(xyz).tolist() == [True, False, False, False, True]


def velodyne_like(n: int, big: bool = False) -> np.ndarray:
    o = ">" if big else "<"
    dt = np.dtype(
        {
            "names": ["x", "y", "z", "intensity", "ring", "time"],
            "formats": [o + "f4"] * 4 + [o + "u2", o + "f4"],
            "offsets": [0, 4, 8, 16, 20, 24],
            "itemsize": 32,
        }
    )
    arr = np.zeros(n, dt)
    arr["x"] = np.arange(n)
    arr["y"] = -np.arange(n)
    arr["z"] = 0.5
    arr["intensity"] = np.arange(n) * 2
    arr["ring"] = np.arange(n) % 32
    arr["time"] = np.arange(n) * 1e-5
    return arr


def test_extract_aliases_and_units():
    dt = np.dtype(
        [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("reflectance", "u1"), ("ring_index", "<u2"),
         ("offset_time", "<u4")]
    )  # fmt: skip
    arr = np.zeros(3, dt)
    arr["reflectance"] = [10, 20, 30]
    arr["ring_index"] = [1, 2, 3]
    arr["offset_time"] = [0, 500_000_000, 1_000_000_000]  # integer times are nanoseconds
    pts = extract_points(arr)
    assert pts.intensity.tolist() == [10.0, 20.0, 30.0]
    assert pts.intensity.dtype == np.float32
    assert pts.ring.tolist() == [1, 2, 3] and pts.ring.dtype == np.int32
    assert pts.time.tolist() == [0.0, 0.5, 1.0]
    ouster = np.zeros(2, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("i", "<f4"), ("t", "<f8")])
    ouster["i"] = [1.5, 2.5]
    ouster["t"] = [0.25, 0.5]  # floating times are seconds
    pts = extract_points(ouster)
    assert pts.intensity.tolist() == [1.5, 2.5] and pts.time.tolist() == [0.25, 0.5]
    assert pts.ring is None
    bare = np.zeros(2, [("x", "<f4"), ("y", "<f4"), ("z", "<f4")])
    pts = extract_points(bare)
    assert pts.intensity is None and pts.ring is None and pts.time is None


def test_extract_big_endian_padded_organized():
    arr = velodyne_like(12, big=True)
    _, step, data = encode_points(arr)  # little-endian bytes
    # Re-encode as a big-endian organized 3x4 cloud with 5 bytes of padding per row.
    rows = [arr[r * 4 : (r + 1) * 4].tobytes() + b"\xee" * 5 for r in range(3)]
    fields = [FieldSpec("x", 0, FLOAT32), FieldSpec("y", 4, FLOAT32), FieldSpec("z", 8, FLOAT32),
              FieldSpec("intensity", 16, FLOAT32), FieldSpec("ring", 20, UINT16),
              FieldSpec("time", 24, FLOAT32)]  # fmt: skip
    cloud = decode_points(b"".join(rows), fields, 3, 4, 32, 4 * 32 + 5, True)
    pts = extract_points(cloud)
    np.testing.assert_array_equal(pts.xyz[:, 0], np.arange(12, dtype=np.float32))
    np.testing.assert_array_equal(pts.xyz[:, 1], -np.arange(12, dtype=np.float32))
    assert pts.ring.tolist() == [i % 32 for i in range(12)]
    np.testing.assert_allclose(pts.time, np.arange(12) * 1e-5, rtol=1e-6)
    assert len(data) == 12 * step


def test_ring_out_of_range_is_rejected():
    arr = np.zeros(2, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("ring", "<u4")])
    arr["ring"] = [3, 2**32 - 1]
    with pytest.raises(PointCloudLayoutError, match=r"'ring' has values in \[3, 4.29497e\+09\]"):
        extract_points(arr)
    arr = np.zeros(2, [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("ring", "<f4")])
    arr["ring"] = [3, np.nan]
    with pytest.raises(PointCloudLayoutError, match="'ring' has non-finite values"):
        extract_points(arr)
    arr["ring"] = [3, 7]
    assert extract_points(arr).ring.tolist() == [3, 7]


@settings(max_examples=60, deadline=None)
@given(layout=layouts(), seed=st.integers(0, 2**32 - 1), relabel=st.booleans())
def test_append_fields_keeps_input_bytes(layout, seed, relabel):
    fields, point_step, height, width, row_step, big = layout
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, height * row_step, np.uint8).tobytes()
    arr = decode_points(data, fields, height, width, point_step, row_step, big)
    if relabel:  # our own output fed back: old label/score are replaced, not duplicated
        arr = append_fields(arr, np.ones(arr.size, np.uint32), np.zeros(arr.size))
    labels = rng.integers(0, 2**32, arr.size, dtype=np.uint64)
    scores = rng.random(arr.size).astype(np.float32)
    out = append_fields(arr, labels, scores)
    assert out.shape == arr.shape
    assert out.dtype.names[-2:] == ("label", "score")
    assert out.dtype.fields["label"][1] % 4 == 0
    assert out.dtype.itemsize == out.dtype.fields["score"][1] + 4
    assert out["label"].reshape(-1).tolist() == labels.tolist()
    np.testing.assert_array_equal(out["score"].reshape(-1), scores)
    for f in fields:
        assert out.dtype.fields[f.name][1] == f.offset
        got, want = np.ascontiguousarray(out[f.name]), np.ascontiguousarray(arr[f.name])
        assert got.tobytes() == want.tobytes(), f.name
    # The layout round-trips through a message.
    fs, step, raw = encode_points(out)
    back = decode_points(raw.tobytes(), fs, height, width, step, width * step, False)
    assert back["label"].reshape(-1).tolist() == labels.tolist()


def test_append_fields_into_buffer_and_byte_order():
    arr = velodyne_like(5, big=True)
    dt = labeled_dtype(arr.dtype)
    assert dt.fields["label"][0] == np.dtype(">u4") and dt.itemsize == 40
    buf = array.array("B", [0]) * (5 * dt.itemsize)
    out = append_fields(arr, [0, 1, 2, 3, 4], [0.5] * 5, out=buf)
    assert np.shares_memory(out, np.frombuffer(buf, np.uint8))
    assert struct.unpack_from(">I", buf, 2 * 40 + 32)[0] == 2  # label of point 2, big-endian
    assert struct.unpack_from(">f", buf, 2 * 40 + 36)[0] == 0.5


@pytest.mark.parametrize(
    ("label", "score", "out", "message"),
    [
        ([1, 2], [0.0] * 3, None, "label has 2 values but the cloud has 3 points"),
        ([1, 2, 3], [0.0] * 2, None, "score has 2 values but the cloud has 3 points"),
        ([1, -2, 3], [0.0] * 3, None, r"label values \[-2, 3\] do not fit uint32"),
        ([1.0, 2.0, 3.0], [0.0] * 3, None, "label must be integer, got dtype float64"),
        ([1, 2, 3], [0.0] * 3, bytearray(10), "out has 10 bytes, expected 3 points"),
    ],
)
def test_append_fields_rejects(label, score, out, message):
    with pytest.raises(PointCloudLayoutError, match=message):
        append_fields(velodyne_like(3), label, score, out=out)


XYZ = [FieldSpec("x", 0, FLOAT32), FieldSpec("y", 4, FLOAT32), FieldSpec("z", 8, FLOAT32)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            dict(fields=[*XYZ, FieldSpec("intensity", 12, FLOAT32)], point_step=12),
            r"point_step 12 is smaller than field 'intensity' \(offset 12, FLOAT32 x1\) ends at 16",
        ),
        (
            dict(fields=[*XYZ, FieldSpec("normal", 12, FLOAT32, 3)], point_step=20),
            r"point_step 20 is smaller than field 'normal' \(offset 12, FLOAT32 x3\) ends at 24",
        ),
        (dict(fields=[*XYZ, FieldSpec("w", 12, 9)]), "field 'w' has unknown datatype 9"),
        (dict(fields=[*XYZ, FieldSpec("w", 12, 0)]), "field 'w' has unknown datatype 0"),
        (dict(fields=[*XYZ, FieldSpec("x", 12, FLOAT32)]), "duplicate field name 'x'"),
        (dict(fields=[*XYZ, FieldSpec("", 12, FLOAT32)]), r"fields\[3\] has an invalid name ''"),
        (dict(fields=[*XYZ, FieldSpec("c", 12, UINT8, 0)]), "'c' .* has count 0"),
        (dict(fields=[*XYZ, FieldSpec("c", -4, UINT8)]), "field 'c' offset -4 is out of range"),
        (dict(data=bytes(95)), r"data length 95 != height 1 \* row_step 96 = 96"),
        (dict(data=bytes(97)), r"data length 97 != height 1 \* row_step 96 = 96"),
        (dict(height=2), r"data length 96 != height 2 \* row_step 96 = 192"),
        (dict(height=-1), "height -1 is out of range"),
        (dict(width=-8), "width -8 is out of range"),
        (dict(point_step=-16), "point_step -16 is out of range"),
        (dict(point_step=1 << 30), "point_step 1073741824 is out of range"),
        (dict(row_step=80), r"row_step 80 is smaller than width 8 \* point_step 12 = 96"),
        (dict(row_step=-1), "row_step -1 is out of range"),
        (dict(fields=[], point_step=0, row_step=0, data=b""), "point_step is 0 but width is 8"),
        (dict(height=1.5), r"height must be an integer, got 1.5"),
        (dict(data="abc"), "data of type str is not"),
    ],
)
def test_malformed_layouts_raise(kwargs, message):
    args = dict(
        data=bytes(96), fields=XYZ, height=1, width=8, point_step=12, row_step=96,
        is_bigendian=False,
    )  # fmt: skip
    args.update(kwargs)
    with pytest.raises(PointCloudLayoutError, match=message) as info:
        decode_points(**args)
    assert isinstance(info.value, CodecError) and isinstance(info.value, ValueError)


def test_missing_xyz_raises_naming_fields():
    arr = decode_points(bytes(16), XYZ[:2], 1, 2, 8, 16, False)
    with pytest.raises(PointCloudLayoutError, match=r"no field 'z' \(fields: \['x', 'y'\]\)"):
        xyz_from_points(arr)
    arr = decode_points(bytes(24), [FieldSpec("x", 0, FLOAT32, 3)], 1, 2, 12, 24, False)
    with pytest.raises(PointCloudLayoutError, match="no field 'y', 'z'"):
        extract_points(arr)


def test_encode_rejects_types_without_pointfield():
    with pytest.raises(PointCloudLayoutError, match="field 'n' has numpy type int64"):
        encode_points(np.zeros(2, [("x", "<f4"), ("n", "<i8")]))
    with pytest.raises(PointCloudLayoutError, match="expects a numpy structured array"):
        encode_points(np.zeros((2, 3), np.float32))


def test_dtype_accepts_pointfield_messages_and_caches():
    msgs = [PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1)]
    a = dtype_from_fields(msgs, 4, False)
    b = dtype_from_fields([FieldSpec("x", 0, FLOAT32)], 4, False)
    assert a == b and a.names == ("x",) and a.itemsize == 4


def test_empty_cloud():
    arr = decode_points(b"", XYZ, 1, 0, 12, 0, False)
    assert arr.shape == (1, 0)
    pts = extract_points(arr)
    assert pts.xyz.shape == (0, 3) and pts.valid.shape == (0,)
    out = append_fields(arr, [], [])
    assert out.shape == (1, 0)
    fields, step, data = encode_points(out)
    assert step == 20 and data.size == 0
