"""COCO RLE: our encoder/decoder against pycocotools' output, round trips and bad input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sam4d_core.data.errors import DatasetError, RLEError
from sam4d_core.data.rle import (
    counts_to_string,
    decode_mask,
    decode_point_mask,
    encode_mask,
    encode_point_mask,
    mask_counts,
    rle_area,
    string_to_counts,
)

# Golden values written by pycocotools 2.0.11 ``mask.encode`` (so the test needs no pycocotools).
SMALL = np.zeros((6, 5), np.uint8)
SMALL[1:4, 1:3] = 1
SMALL[5, 4] = 1
SMALL_RLE = {"size": [6, 5], "counts": "7330:N"}
POINTS = np.zeros(10, bool)
POINTS[[0, 1, 5]] = True
POINTS_RLE = {"size": [10, 1], "counts": "023O1"}


def test_matches_pycocotools_golden_values() -> None:
    assert encode_mask(SMALL) == SMALL_RLE
    np.testing.assert_array_equal(decode_mask(SMALL_RLE), SMALL.astype(bool))
    assert encode_point_mask(POINTS) == POINTS_RLE
    np.testing.assert_array_equal(decode_point_mask(POINTS_RLE), POINTS)
    big = np.zeros((300, 400), np.uint8)
    big[50:250, 100:300] = 1
    rle = encode_mask(big)
    assert rle["counts"].startswith("R[m0X6T3000") and rle["counts"].endswith("0nWm0")
    assert rle_area(rle) == 200 * 200


def test_column_major_counts_start_with_zeros() -> None:
    m = np.array([[1, 0], [1, 1]], np.uint8)  # column-major: 1 1 0 1
    assert encode_mask(m, compressed=False) == {"size": [2, 2], "counts": [0, 2, 1, 1]}
    assert mask_counts(np.zeros(0)).tolist() == [0]
    assert encode_mask(np.zeros((3, 4)), compressed=False)["counts"] == [12]


@settings(max_examples=60, deadline=None)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=2, max_dims=2, min_side=0, max_side=40)))
def test_image_round_trip(mask: np.ndarray) -> None:
    for compressed in (True, False):
        rle = encode_mask(mask, compressed=compressed)
        np.testing.assert_array_equal(decode_mask(rle, shape=mask.shape), mask)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 10**9), min_size=0, max_size=30))
def test_string_counts_round_trip(counts: list[int]) -> None:
    # Large and shrinking counts exercise the signed delta encoding.
    assert string_to_counts(counts_to_string(counts)) == counts


def test_point_masks_read_every_layout() -> None:
    rng = np.random.default_rng(0)
    m = rng.random(5000) < 0.2
    rle = encode_point_mask(m)
    assert rle["size"] == [5000, 1]
    np.testing.assert_array_equal(decode_point_mask(rle, num_points=5000), m)
    np.testing.assert_array_equal(encode_point_mask(m[:, None])["counts"], rle["counts"])
    for size in ([1, 5000], [5000]):
        np.testing.assert_array_equal(decode_point_mask({**rle, "size": size}), m)
    # pycocotools returns bytes counts; JSON gives str; uncompressed lists work too.
    np.testing.assert_array_equal(decode_point_mask({**rle, "counts": rle["counts"].encode()}), m)
    np.testing.assert_array_equal(decode_point_mask(encode_point_mask(m, compressed=False)), m)


def test_wrong_size_is_a_clear_error() -> None:
    with pytest.raises(RLEError, match=r"size \[6, 5\] but the image is \[5, 6\]"):
        decode_mask(SMALL_RLE, shape=(5, 6), source="x.json")
    with pytest.raises(RLEError, match="10 points but the point cloud has 11"):
        decode_point_mask(POINTS_RLE, num_points=11)
    # Counts that do not add up to the size (a truncated or edited file).
    with pytest.raises(RLEError, match="cover 30 elements but size \\[6, 6\\] has 36"):
        decode_mask({"size": [6, 6], "counts": SMALL_RLE["counts"]})
    with pytest.raises(RLEError, match="size \\[N, 1\\]"):
        decode_point_mask({"size": [5, 2], "counts": [10]})


@pytest.mark.parametrize(
    ("rle", "match"),
    [
        ({"size": [2, 2]}, "lacks 'size' or 'counts'"),
        ([1, 2], "must be a dict"),
        ({"size": [2, 2], "counts": "\x7f"}, "invalid character"),
        ({"size": [2, 2], "counts": "a"}, "end in the middle"),
        ({"size": [2, 2], "counts": [5, -1]}, "negative run length"),
        ({"size": "ab", "counts": [4]}, "list of ints"),
        ({"size": [2, 2], "counts": [1.5, "x"]}, "string or a list of ints"),
    ],
)
def test_malformed_rle(rle: object, match: str) -> None:
    with pytest.raises(RLEError, match=match) as info:
        decode_mask(rle, source="labels/0001.json (object 3)")  # type: ignore[arg-type]
    assert isinstance(info.value, DatasetError) and isinstance(info.value, ValueError)
    if isinstance(rle, dict):
        assert "labels/0001.json (object 3)" in str(info.value)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pycocotools vs numpy 2
def test_against_pycocotools_when_installed() -> None:
    mask_api = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for _ in range(50):
        h, w = rng.integers(1, 50, 2)
        m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        ref = mask_api.encode(np.asfortranarray(m))
        assert encode_mask(m)["counts"] == ref["counts"].decode()
        np.testing.assert_array_equal(mask_api.decode(encode_mask(m)), m)
