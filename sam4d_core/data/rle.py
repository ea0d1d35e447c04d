"""COCO run-length encoding (RLE) of binary masks, compatible with pycocotools.

Waymo-4DSeg stores every image mask and every per-point LiDAR mask as COCO RLE, so we need the exact
same encoding without depending on pycocotools (a C extension that is not always installable).

The format, as pycocotools writes it:

- ``{"size": [h, w], "counts": ...}``; the mask is flattened in column-major (Fortran) order and
  ``counts`` holds the lengths of alternating runs, starting with a run of zeros (which may be 0).
- ``counts`` is either a list of ints ("uncompressed RLE") or a string ("compressed RLE"): each
  count (from the third on, as the difference to the count two places before) is written as
  signed 5-bit groups, least significant first, each group + 48 as one ASCII character, with bit
  0x20 set on every group but the last.
- A per-point LiDAR mask of N points is stored as an (N, 1) image, ``size == [N, 1]`` (this is what
  the official SAM4D labels contain); we also read ``[1, N]`` and ``[N]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from sam4d_core.data.errors import RLEError

__all__ = [
    "counts_to_string",
    "decode_mask",
    "decode_point_mask",
    "encode_mask",
    "encode_point_mask",
    "mask_counts",
    "rle_area",
    "rle_size",
    "string_to_counts",
]


def mask_counts(flat: np.ndarray) -> np.ndarray:
    """Run lengths of a flat binary array, starting with a (possibly empty) run of zeros.

    Args:
        flat: (M,) array, non-zero = foreground.

    Returns:
        (K,) int64 run lengths summing to M (``[0]`` for M == 0).
    """
    flat = np.asarray(flat).astype(bool, copy=False).ravel()
    n = flat.size
    if n == 0:
        return np.zeros(1, dtype=np.int64)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    counts = np.diff(np.concatenate(([0], change, [n]))).astype(np.int64)
    if flat[0]:
        counts = np.concatenate(([0], counts))
    return counts


def counts_to_string(counts: Sequence[int] | np.ndarray) -> str:
    """Compress run lengths into the pycocotools string form (``rleToString``)."""
    cnts = [int(c) for c in counts]
    out: list[str] = []
    for i, c in enumerate(cnts):
        x = c - cnts[i - 2] if i > 2 else c
        more = True
        while more:
            group = x & 0x1F
            x >>= 5  # arithmetic shift, like the C code on a signed long
            more = x != -1 if group & 0x10 else x != 0
            if more:
                group |= 0x20
            out.append(chr(group + 48))
    return "".join(out)


def string_to_counts(s: str | bytes, *, source: str | None = None) -> list[int]:
    """Decompress the pycocotools string form into run lengths (``rleFrString``).

    Raises:
        RLEError: the string is not valid compressed RLE.
    """
    if isinstance(s, bytes | bytearray):
        try:
            s = s.decode("ascii")
        except UnicodeDecodeError as e:
            raise RLEError(f"compressed RLE counts are not ASCII ({e})", source) from None
    cnts: list[int] = []
    p, n = 0, len(s)
    while p < n:
        x, k, more = 0, 0, True
        while more:
            if p >= n:
                raise RLEError("compressed RLE counts end in the middle of a number", source)
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise RLEError(f"invalid character {s[p]!r} in compressed RLE counts", source)
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(cnts) > 2:
            x += cnts[-2]
        cnts.append(x)
    return cnts


def _parse(rle: Mapping[str, Any], source: str | None) -> tuple[list[int], np.ndarray]:
    """Validate an RLE dict; returns its ``size`` and its counts as an int64 array."""
    if not isinstance(rle, Mapping):
        raise RLEError(
            f"RLE must be a dict with 'size' and 'counts', got {type(rle).__name__}", source
        )
    if "size" not in rle or "counts" not in rle:
        raise RLEError(f"RLE dict lacks 'size' or 'counts' (keys: {sorted(rle)})", source)
    size = rle["size"]
    try:
        size = [int(v) for v in size]
    except (TypeError, ValueError):
        raise RLEError(f"RLE 'size' must be a list of ints, got {size!r}", source) from None
    if len(size) not in (1, 2) or any(v < 0 for v in size):
        raise RLEError(f"RLE 'size' must be [h, w] with non-negative values, got {size}", source)
    raw = rle["counts"]
    if isinstance(raw, str | bytes | bytearray):
        counts = np.asarray(string_to_counts(raw, source=source), dtype=np.int64)
    else:
        try:
            counts = np.asarray([int(c) for c in raw], dtype=np.int64)
        except (TypeError, ValueError):
            raise RLEError("RLE 'counts' must be a string or a list of ints", source) from None
    if counts.size and counts.min() < 0:
        raise RLEError("RLE counts contain a negative run length (corrupt counts)", source)
    total = int(np.prod(size))
    if int(counts.sum()) != total:
        raise RLEError(
            f"RLE counts cover {int(counts.sum())} elements but size {size} has {total}", source
        )
    return size, counts


def rle_size(rle: Mapping[str, Any]) -> list[int]:
    """The ``size`` of an RLE dict as a list of ints (``[h, w]``)."""
    return [int(v) for v in rle["size"]]


def rle_area(rle: Mapping[str, Any], *, source: str | None = None) -> int:
    """Number of foreground elements of an RLE mask."""
    _, counts = _parse(rle, source)
    return int(counts[1::2].sum())


def _expand(counts: np.ndarray, total: int) -> np.ndarray:
    values = np.zeros(counts.size, dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    assert flat.size == total
    return flat


def encode_mask(mask: np.ndarray, *, compressed: bool = True) -> dict[str, Any]:
    """Encode an image mask as COCO RLE.

    Args:
        mask: (H, W) binary mask (any dtype; non-zero = foreground).
        compressed: string counts (as pycocotools ``encode`` writes them) rather than a list.

    Returns:
        ``{"size": [H, W], "counts": str | list[int]}``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"image mask must be (H, W), got shape {mask.shape}")
    counts = mask_counts(mask.ravel(order="F"))
    return {
        "size": [int(mask.shape[0]), int(mask.shape[1])],
        "counts": counts_to_string(counts) if compressed else [int(c) for c in counts],
    }


def decode_mask(
    rle: Mapping[str, Any],
    *,
    shape: tuple[int, int] | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Decode a COCO RLE image mask.

    Args:
        rle: ``{"size": [H, W], "counts": str | bytes | list[int]}``.
        shape: expected (H, W); a different ``size`` raises :class:`RLEError`.
        source: file / object the RLE came from, used in error messages.

    Returns:
        (H, W) bool mask.
    """
    size, counts = _parse(rle, source)
    if len(size) != 2:
        raise RLEError(f"image mask RLE must have size [h, w], got {size}", source)
    h, w = size
    if shape is not None and (h, w) != tuple(shape):
        raise RLEError(f"mask RLE has size {[h, w]} but the image is {list(shape)} (h, w)", source)
    return _expand(counts, h * w).reshape((h, w), order="F")


def encode_point_mask(mask: np.ndarray, *, compressed: bool = True) -> dict[str, Any]:
    """Encode a per-point LiDAR mask as COCO RLE of an (N, 1) image, like the official labels.

    Args:
        mask: (N,) or (N, 1) binary mask.
    """
    mask = np.asarray(mask)
    if mask.ndim == 2 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.ndim != 1:
        raise ValueError(f"point mask must be (N,) or (N, 1), got shape {mask.shape}")
    counts = mask_counts(mask)
    return {
        "size": [int(mask.shape[0]), 1],
        "counts": counts_to_string(counts) if compressed else [int(c) for c in counts],
    }


def decode_point_mask(
    rle: Mapping[str, Any],
    *,
    num_points: int | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Decode a per-point LiDAR mask stored as RLE of size ``[N, 1]`` (also ``[1, N]``, ``[N]``).

    Args:
        num_points: expected N; a different size raises :class:`RLEError`.

    Returns:
        (N,) bool mask.
    """
    size, counts = _parse(rle, source)
    if len(size) == 2 and 1 not in size:
        raise RLEError(f"point mask RLE must have size [N, 1], got {size}", source)
    n = int(np.prod(size))
    if num_points is not None and n != num_points:
        raise RLEError(
            f"point mask RLE has {n} points but the point cloud has {num_points}", source
        )
    # (N, 1) and (1, N) flatten identically in column-major order.
    return _expand(counts, n)
