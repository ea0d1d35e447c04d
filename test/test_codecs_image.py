"""Image codec: raw encodings round-trip through real sensor_msgs/Image messages (row padding,
byte order), conversions to RGB against hand-computed pixels, JPEG/PNG, labels and overlays, and
every malformed case."""

from __future__ import annotations

import array
import glob
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sensor_msgs.msg import Image

from sam4d_core.codecs.errors import ImageEncodingError
from sam4d_core.codecs.image import (
    check_compressed_size,
    colorize_labels,
    compressed_format_string,
    compressed_image_size,
    decode_compressed,
    decode_image,
    encode_compressed,
    encode_image,
    encoding_info,
    label_color,
    label_colors,
    label_image_mono8,
    label_image_mono16,
    overlay,
    parse_compressed_format,
    to_rgb,
)

RAW_ENCODINGS = [
    "rgb8", "bgr8", "rgba8", "bgra8", "rgb16", "bgr16", "rgba16", "bgra16", "mono8", "mono16",
    "bayer_rggb8", "bayer_grbg16", "yuv422", "yuv422_yuy2", "uyvy", "yuyv", "8UC1", "8UC3",
    "8UC4", "8SC1", "16UC1", "16SC3", "32SC1", "32FC1", "32FC3", "64FC1", "16UC4",
]  # fmt: skip
NUSCENES_FRONT = sorted(glob.glob("/work/shared/data/nuscenes_sample/*CAM_FRONT__*.jpg"))


def random_image(rng, encoding: str, height: int, width: int) -> np.ndarray:
    info = encoding_info(encoding)
    shape = (height, width) + ((info.channels,) if info.channels > 1 else ())
    dtype = np.dtype(info.code)
    if dtype.kind == "f":
        return rng.normal(size=shape).astype(dtype) * 1000
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    return rng.integers(lo, hi, size=shape, dtype=dtype, endpoint=True)


def image_msg(arr: np.ndarray, encoding: str, pad: int, big: bool) -> Image:
    """Build an Image by hand (rows packed with ``tobytes`` in the wanted byte order, then
    padding): independent of the codec under test."""
    info = encoding_info(encoding)
    wire = arr.astype(arr.dtype.newbyteorder(">" if big else "<"))
    height, width = arr.shape[:2]
    step = width * info.bytes_per_pixel + pad
    rows = [wire[r].tobytes() + b"\xab" * pad for r in range(height)]
    msg = Image()
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.is_bigendian = int(big)
    msg.step = step
    msg.data = array.array("B", b"".join(rows))
    return msg


@settings(max_examples=150, deadline=None)
@given(
    encoding=st.sampled_from(RAW_ENCODINGS),
    height=st.integers(1, 6),
    half_width=st.integers(1, 5),
    pad=st.integers(0, 9),
    big=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_raw_round_trip(encoding, height, half_width, pad, big, seed):
    rng = np.random.default_rng(seed)
    width = 2 * half_width  # even: 4:2:2 encodings need pairs of pixels
    arr = random_image(rng, encoding, height, width)
    msg = image_msg(arr, encoding, pad, big)
    view = decode_image(msg.data, msg.encoding, msg.height, msg.width, msg.step, big)
    assert view.shape == arr.shape
    np.testing.assert_array_equal(view, arr)
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))  # no copy, even padded
    data, step = encode_image(view, encoding)
    assert step == width * encoding_info(encoding).bytes_per_pixel
    back = decode_image(data, encoding, height, width, step, False)
    assert back.tobytes() == arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    rgb = None if encoding[-3:] in ("FC3", "SC3") else to_rgb(view, encoding)
    if rgb is not None:
        assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8


def test_to_rgb_channel_orders_against_hand_pixels():
    px = np.array([[[10, 20, 30, 40]]], np.uint8)
    assert to_rgb(px[..., :3], "rgb8")[0, 0].tolist() == [10, 20, 30]
    assert to_rgb(px[..., :3], "bgr8")[0, 0].tolist() == [30, 20, 10]
    assert to_rgb(px[..., :3], "8UC3")[0, 0].tolist() == [30, 20, 10]  # as cv_bridge: BGR
    assert to_rgb(px, "rgba8")[0, 0].tolist() == [10, 20, 30]
    assert to_rgb(px, "bgra8")[0, 0].tolist() == [30, 20, 10]
    assert to_rgb(px[..., 0], "mono8")[0, 0].tolist() == [10, 10, 10]
    assert to_rgb(px[..., 0], "8UC1")[0, 0].tolist() == [10, 10, 10]
    m16 = np.array([[0x1234, 0xFFFF, 0x00FF]], np.uint16)
    assert to_rgb(m16, "mono16")[0, :, 0].tolist() == [0x12, 0xFF, 0x00]
    c16 = np.array([[[0x0100, 0x0200, 0xFF00]]], np.uint16)
    assert to_rgb(c16, "bgr16")[0, 0].tolist() == [0xFF, 0x02, 0x01]
    depth = np.array([[1000, 2000, 3000]], np.uint16)  # 16UC1: min-max for display
    assert to_rgb(depth, "16UC1")[0, :, 0].tolist() == [0, 128, 255]
    f32 = np.array([[np.nan, -1.0, 1.0]], np.float32)
    assert to_rgb(f32, "32FC1")[0, :, 0].tolist() == [0, 0, 255]


def test_big_endian_mono16_decodes_values():
    msg = image_msg(np.array([[0x0102, 0xA0B0]], np.uint16), "mono16", 0, True)
    assert bytes(msg.data) == b"\x01\x02\xa0\xb0"
    view = decode_image(msg.data, "mono16", 1, 2, 4, True)
    assert view.tolist() == [[0x0102, 0xA0B0]]
    assert to_rgb(view, "mono16")[0, :, 0].tolist() == [0x01, 0xA0]


def bt601(y, u, v):
    """Studio-range BT.601 YCbCr -> RGB (what cv_bridge / OpenCV use for yuv422)."""
    c, d, e = 1.164 * (y - 16), u - 128, v - 128
    rgb = [c + 1.596 * e, c - 0.391 * d - 0.813 * e, c + 2.018 * d]
    return np.clip(np.rint(rgb), 0, 255)


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv"])
def test_yuv422_byte_order(encoding):
    rng = np.random.default_rng(7)
    yuv = rng.integers(0, 256, (3, 4, 3))  # per pixel Y, U, V (U/V shared per pair)
    yuv[:, 1::2, 1:] = yuv[:, 0::2, 1:]
    packed = np.zeros((3, 4, 2), np.uint8)
    y, u, v = yuv[..., 0], yuv[:, 0::2, 1], yuv[:, 0::2, 2]
    if encoding in ("yuv422", "uyvy"):  # U0 Y0 V0 Y1
        packed[:, 0::2, 0], packed[:, 1::2, 0] = u, v
        packed[..., 1] = y
    else:  # Y0 U0 Y1 V0
        packed[..., 0] = y
        packed[:, 0::2, 1], packed[:, 1::2, 1] = u, v
    rgb = to_rgb(decode_image(packed.tobytes(), encoding, 3, 4, 8, False), encoding)
    expected = np.stack([bt601(*yuv[r, c]) for r in range(3) for c in range(4)]).reshape(3, 4, 3)
    assert np.abs(rgb.astype(int) - expected).max() <= 2


def test_bayer_uniform_colour():
    # An RGGB mosaic of a uniform colour demosaics back to that colour (away from the borders).
    mosaic = np.zeros((8, 8), np.uint8)
    mosaic[0::2, 0::2] = 200  # R
    mosaic[0::2, 1::2] = 100  # G
    mosaic[1::2, 0::2] = 100  # G
    mosaic[1::2, 1::2] = 50  # B
    rgb = to_rgb(mosaic, "bayer_rggb8")
    assert np.abs(rgb[2:6, 2:6].astype(int) - [200, 100, 50]).max() <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (dict(encoding="rgb9"), "unknown or unsupported image encoding 'rgb9'"),
        (dict(encoding="8FC1"), "unknown or unsupported image encoding '8FC1'"),
        (dict(encoding="nv21"), "unknown or unsupported image encoding 'nv21'"),
        (dict(step=11), r"step 11 is smaller than width 4 \* 3 bytes per pixel \(rgb8\) = 12"),
        (dict(data=bytes(23)), r"data length 23 != height 2 \* step 12 = 24"),
        (dict(data=bytes(25)), r"data length 25 != height 2 \* step 12 = 24"),
        (dict(height=-2), "height -2 is out of range"),
        (dict(width=1 << 20), "width 1048576 is out of range"),
        (dict(step=-12), "step -12 is out of range"),
        (dict(height=None), "height must be an integer, got None"),
    ],
)
def test_malformed_images_raise(args, message):
    kwargs = dict(data=bytes(24), encoding="rgb8", height=2, width=4, step=12, is_bigendian=0)
    kwargs.update(args)
    with pytest.raises(ImageEncodingError, match=message):
        decode_image(**kwargs)


def test_to_rgb_and_encode_reject_mismatches():
    with pytest.raises(ImageEncodingError, match="needs an even width"):
        to_rgb(np.zeros((2, 3, 2), np.uint8), "yuv422")
    with pytest.raises(ImageEncodingError, match=r"array shape \(2, 3\) does not match .*rgb8"):
        to_rgb(np.zeros((2, 3), np.uint8), "rgb8")
    with pytest.raises(ImageEncodingError, match="array dtype uint8 does not match .*mono16"):
        encode_image(np.zeros((2, 3), np.uint8), "mono16")
    with pytest.raises(ImageEncodingError, match="does not support encoding '32FC3'"):
        to_rgb(np.zeros((2, 2, 3), np.float32), "32FC3")


# ----------------------------------------------------------------------------- compressed


def smooth_rgb(h=48, w=64) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 255 // w, yy * 255 // h, np.full_like(xx, 90)], -1).astype(np.uint8)


@pytest.mark.skipif(not NUSCENES_FRONT, reason="nuScenes sample image not present")
def test_decode_real_jpeg():
    data = open(NUSCENES_FRONT[0], "rb").read()
    assert compressed_image_size(data) == (900, 1600)
    rgb = decode_compressed(data, "rgb8; jpeg compressed bgr8")
    assert rgb.shape == (900, 1600, 3) and rgb.dtype == np.uint8
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(rgb, bgr[..., ::-1])


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8", "rgb8; png compressed bgr8"])
def test_png_round_trip_is_exact(fmt):
    rgb = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    data = encode_compressed(rgb, "png")
    assert compressed_image_size(data) == (5, 7)
    np.testing.assert_array_equal(decode_compressed(data, fmt), rgb)


def test_jpeg_round_trip_keeps_colours():
    rgb = smooth_rgb()
    data = encode_compressed(rgb, "jpeg", quality=95)
    assert compressed_image_size(data) == (48, 64)
    back = decode_compressed(data, "jpeg")
    assert np.abs(back.astype(int) - rgb).mean() < 2.0
    # A pure red image stays red (channel order through BGR-native OpenCV).
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    out = decode_compressed(encode_compressed(red, "jpeg"), compressed_format_string("jpeg"))
    assert out[8, 8, 0] > 240 and out[8, 8, 2] < 15


def test_target_rgb8_means_swapped_channels():
    # A publisher that hands RGB to imencode as if it were BGR declares "compressed rgb8".
    rgb = np.random.default_rng(2).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".png", rgb)
    assert ok
    np.testing.assert_array_equal(
        decode_compressed(data.tobytes(), "rgb8; png compressed rgb8"), rgb
    )


def test_png_16bit_and_mono():
    mono = np.array([[0, 0x8000, 0xFFFF]], np.uint16)
    data = encode_compressed(mono, "png")
    assert decode_compressed(data, "mono16; png compressed mono16")[0, :, 1].tolist() == [
        0,
        128,
        255,
    ]
    gray = np.array([[3, 200]], np.uint8)
    assert decode_compressed(encode_compressed(gray, "png"), "png")[0, :, 2].tolist() == [3, 200]


def test_compressed_format_strings():
    assert parse_compressed_format("rgb8; jpeg compressed bgr8") == ("rgb8", "jpeg", "bgr8")
    assert parse_compressed_format("jpeg") == (None, "jpeg", None)
    assert parse_compressed_format("PNG") == (None, "png", None)
    assert parse_compressed_format("") == (None, None, None)
    assert compressed_format_string("jpeg") == "rgb8; jpeg compressed bgr8"
    assert compressed_format_string("png", "mono16") == "mono16; png compressed mono16"


def png_header(width: int, height: int) -> bytes:
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR" + ihdr + b"\x00" * 4


@pytest.mark.parametrize(
    ("data", "fmt", "message"),
    [
        (b"", "jpeg", "has no data"),
        (b"GIF89a....", "jpeg", r"data \(10 bytes, starts 47494638\) is neither JPEG nor PNG"),
        (b"\xff\xd8\xff\xe0garbage", "png", "format 'png' says png but the data is jpeg"),
        (b"\xff\xd8\xff\xe0garbage", "jpeg", "cannot decode 11 bytes of JPEG"),
        (png_header(100000, 10), "png", "header says 100000x10, outside"),
        (png_header(8, 8), "png", "cannot decode .* bytes of PNG"),
        (b"\x89PNG\r\n\x1a\n", "tiff", "format 'tiff' names no supported codec"),
        (b"\x89PNG\r\n\x1a\n", "16UC1; compressedDepth png", "compressedDepth"),
    ],
)
def test_malformed_compressed_raise(data, fmt, message):
    with pytest.raises(ImageEncodingError, match=message):
        decode_compressed(data, fmt)


_BOMB_CHILD = r"""
import json, sys, time
import cv2
import numpy as np
from sam4d_core.codecs.errors import ImageEncodingError
from sam4d_core.codecs.image import decode_compressed
sys.path.insert(0, sys.argv[1])
from image_bombs import header_bomb_jpeg, header_bomb_png

def hwm_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

out = {}
for name, data, fmt, decode in [
    # The control: OpenCV given a 4000x4000 header allocates it (48 MB), so the method sees it.
    ("control", header_bomb_jpeg(4000, 4000), "jpeg",
     lambda d, f: cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR)),
    ("jpeg_expected", header_bomb_jpeg(16000, 16000), "jpeg",
     lambda d, f: decode_compressed(d, f, expected_size=(288, 480))),
    ("jpeg_bound", header_bomb_jpeg(30000, 30000), "jpeg", decode_compressed),
    ("png_bound", header_bomb_png(30000, 30000), "png", decode_compressed),
]:
    before, t0 = hwm_mb(), time.perf_counter()
    try:
        decode(data, fmt)
        error = ""
    except ImageEncodingError as e:
        error = str(e)
    out[name] = {"s": time.perf_counter() - t0, "hwm_mb": hwm_mb() - before, "error": error,
                 "bytes": len(data)}
print(json.dumps(out))
"""


def test_header_bombs_are_refused_before_decoding():
    """A few hundred bytes whose header claims 16000x16000 or 30000x30000 pixels are refused from
    the header: quickly and without the decoder's allocation (measured as the peak RSS of a fresh
    process, with OpenCV decoding a smaller bomb as the control that the measure sees one)."""
    import json
    import subprocess
    import sys

    here = Path(__file__).resolve().parent
    run = subprocess.run(
        [sys.executable, "-c", _BOMB_CHILD, str(here)],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    got = json.loads(run.stdout.strip().splitlines()[-1])
    print(got)
    assert got["control"]["hwm_mb"] > 30, got  # 4000 x 4000 x 3 = 48 MB seen by the measure
    assert "but 480x288 is expected" in got["jpeg_expected"]["error"], got
    assert "30000x30000 = 900000000 pixels" in got["jpeg_bound"]["error"], got
    assert "30000x30000 = 900000000 pixels" in got["png_bound"]["error"], got
    for name in ("jpeg_expected", "jpeg_bound", "png_bound"):
        assert got[name]["bytes"] < 1000, got
        # Generous bounds: a header walk takes microseconds and allocates nothing; a decode of
        # these headers would take seconds and 0.7 to 2.5 GB.
        assert got[name]["s"] < 0.5, got
        assert got[name]["hwm_mb"] < 10, got


def test_check_compressed_size():
    rgb = smooth_rgb(48, 64)
    for fmt in ("jpeg", "png"):
        data = encode_compressed(rgb, fmt)
        assert check_compressed_size(data) == (48, 64)
        assert check_compressed_size(data, expected_size=(48, 64)) == (48, 64)
        assert decode_compressed(data, fmt, expected_size=(48, 64)).shape == (48, 64, 3)
        with pytest.raises(ImageEncodingError, match="says 64x48 but 64x47 is expected"):
            decode_compressed(data, fmt, expected_size=(47, 64))
        with pytest.raises(ImageEncodingError, match="3072 pixels, more than the 3000 allowed"):
            check_compressed_size(data, max_pixels=3000)
    # A PNG whose first chunk is not IHDR has no readable size.
    bad = bytearray(encode_compressed(rgb, "png"))
    bad[12:16] = b"IHDX"
    with pytest.raises(ImageEncodingError, match="no readable image size"):
        check_compressed_size(bytes(bad))


# ----------------------------------------------------------------------------- labels, overlays


def test_label_colors_are_fixed_and_distinct():
    assert label_color(0) == (0, 0, 0)
    assert label_color(1) == (47, 96, 215)  # pinned: RViz markers reuse these colours
    assert label_color(7) == tuple(label_colors([7])[0].tolist())
    colours = {label_color(i) for i in range(1, 257)}
    assert len(colours) == 256
    pairs = label_colors(np.arange(1, 33)).astype(int)
    dist = np.abs(pairs[:, None] - pairs[None]).sum(-1) + np.eye(32, dtype=int) * 999
    assert dist.min() > 20  # the first ids are clearly distinguishable


def test_colorize_and_overlay():
    labels = np.array([[0, 1], [2, 70000]])
    colours = colorize_labels(labels)
    assert colours[0, 0].tolist() == [0, 0, 0]
    assert colours[0, 1].tolist() == list(label_color(1))
    assert colours[1, 1].tolist() == list(label_color(70000))
    custom = colorize_labels(np.array([[0, 1, 3]]), palette=np.array([[9, 9, 9], [1, 2, 3]]))
    assert custom[0].tolist() == [[9, 9, 9], [1, 2, 3], list(label_color(3))]
    rgb = np.full((2, 2, 3), 100, np.uint8)
    out = overlay(rgb, labels, alpha=0.25)
    assert out[0, 0].tolist() == [100, 100, 100]  # background untouched
    expected = np.rint(0.75 * 100 + 0.25 * np.array(label_color(2)))
    assert np.abs(out[1, 0].astype(int) - expected).max() <= 1
    with pytest.raises(ImageEncodingError, match="labels must be >= 0, got minimum -1"):
        colorize_labels(np.array([[-1]]))
    with pytest.raises(ImageEncodingError, match=r"labels shape \(1, 1\) does not match"):
        overlay(rgb, np.zeros((1, 1), int))


def test_label_images():
    ids = np.array([[0, 5], [65535, 1]])
    assert label_image_mono16(ids).dtype == np.uint16
    assert label_image_mono16(ids).tolist() == ids.tolist()
    with pytest.raises(ImageEncodingError, match=r"label ids \[0, 65536\] do not fit mono16"):
        label_image_mono16(np.array([[0, 65536]]))
    with pytest.raises(ImageEncodingError, match=r"label ids \[0, 256\] do not fit mono8"):
        label_image_mono8(np.array([[0, 256]]))
    assert label_image_mono8(np.array([[0, 255]])).tolist() == [[0, 255]]
