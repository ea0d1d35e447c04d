"""Coordinate hashing for sparse tensors, in plain PyTorch (CPU and CUDA alike).

A sparse voxel is addressed by ``(batch, x, y, z)``. We pack the four integers into one int64 key so
that set operations (unique, membership, neighbour lookup) become operations on a 1-D tensor:

    key = batch << 54 | (x + 2**17) << 36 | (y + 2**17) << 18 | (z + 2**17)

The packing is a bijection for ``0 <= batch < 512`` and ``-2**17 <= x, y, z < 2**17`` (at the
0.15 m grid that is +-19.6 km), and it preserves the lexicographic order of ``(b, x, y, z)``, so
sorted keys are sorted coordinates: ``torch.unique`` over keys gives the same row order as
``torch.unique(coords, dim=0)`` (which is what torchsparse 2.1 uses when it downsamples).

Lookups use a sorted key array and ``torch.searchsorted`` instead of a GPU hash table: it needs no
custom kernel, works on every device, and costs O(log N) per query, which is negligible next to the
feature matmuls of a convolution.
"""

from __future__ import annotations

import torch

from sam4d_core.modeling.reference_paths import use_reference_paths

COORD_BITS = 18
COORD_OFFSET = 1 << (COORD_BITS - 1)
COORD_MIN = -COORD_OFFSET
COORD_MAX = COORD_OFFSET - 1
BATCH_BITS = 63 - 3 * COORD_BITS
MAX_BATCH = (1 << BATCH_BITS) - 1
_COORD_MASK = (1 << COORD_BITS) - 1


def check_coords_range(coords: torch.Tensor) -> None:
    """Raise ``ValueError`` if integer coordinates (N, 4) ``[b, x, y, z]`` cannot be hashed.

    This synchronizes with the device (it reads a min/max), so call it once per frame (e.g. after
    voxelization), not inside every layer.
    """
    if coords.numel() == 0:
        return
    lo = coords.min(dim=0).values.tolist()
    hi = coords.max(dim=0).values.tolist()
    if lo[0] < 0 or hi[0] > MAX_BATCH:
        raise ValueError(f"batch index must be in [0, {MAX_BATCH}], got [{lo[0]}, {hi[0]}]")
    # Leave one kernel reach of headroom: neighbour queries add offsets of up to a few strides.
    if min(lo[1:]) < COORD_MIN // 2 or max(hi[1:]) > COORD_MAX // 2:
        raise ValueError(
            f"voxel coordinates must be within +-{COORD_MAX // 2} to be hashed, got min {lo[1:]} "
            f"max {hi[1:]}; crop the point cloud or use a larger voxel size"
        )


def hash_coords(coords: torch.Tensor) -> torch.Tensor:
    """Packs integer coordinates into int64 keys.

    Args:
        coords: (..., 4) integer tensor ``[batch, x, y, z]``.

    Returns:
        (...) int64 keys, ordered like the coordinates (lexicographically).
    """
    c = coords.to(torch.int64)
    key = c[..., 0] << (3 * COORD_BITS)
    key = key | ((c[..., 1] + COORD_OFFSET) << (2 * COORD_BITS))
    key = key | ((c[..., 2] + COORD_OFFSET) << COORD_BITS)
    key = key | (c[..., 3] + COORD_OFFSET)
    return key


def unhash_coords(keys: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`hash_coords`: (...) int64 keys -> (..., 4) int32 ``[b, x, y, z]``."""
    b = keys >> (3 * COORD_BITS)
    x = ((keys >> (2 * COORD_BITS)) & _COORD_MASK) - COORD_OFFSET
    y = ((keys >> COORD_BITS) & _COORD_MASK) - COORD_OFFSET
    z = (keys & _COORD_MASK) - COORD_OFFSET
    return torch.stack([b, x, y, z], dim=-1).to(torch.int32)


class HashTable:
    """A static set of coordinates that answers "which row holds this coordinate?".

    Args:
        keys: (N,) int64 keys of the rows (from :func:`hash_coords`), unique.
        assume_sorted: the keys are already ascending (e.g. produced by ``torch.unique``), so the
            sort and the permutation can be skipped.
    """

    def __init__(self, keys: torch.Tensor, assume_sorted: bool = False) -> None:
        if not assume_sorted and not use_reference_paths() and keys.shape[0] > 1:
            # Coordinates often arrive sorted (``torch.unique`` output): then rows are sorted
            # positions and lookups skip the permutation (one pass and one sync to check).
            assume_sorted = bool((keys[1:] > keys[:-1]).all())
        if assume_sorted:
            self.sorted_keys = keys
            self.perm: torch.Tensor | None = None
        else:
            self.sorted_keys, self.perm = torch.sort(keys)
        self.num_rows = keys.shape[0]
        self._padded: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def padded(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sorted keys with a sentinel (the largest int64) appended, and ``perm`` with a 0
        appended (or None): a ``searchsorted`` position, even past the last key, can be read
        without clamping, and never matches a query (keys are < 2^63 - 1)."""
        if self._padded is None:
            keys = self.sorted_keys
            sentinel = torch.full((1,), torch.iinfo(torch.int64).max, device=keys.device)
            perm = self.perm
            if perm is not None:
                perm = torch.cat([perm, perm.new_zeros(1)])
            self._padded = (torch.cat([keys, sentinel]), perm)
        return self._padded

    @classmethod
    def from_coords(cls, coords: torch.Tensor) -> HashTable:
        """Builds the table of (N, 4) integer coordinates (row i of the table is coords[i])."""
        return cls(hash_coords(coords))

    def lookup(self, query_keys: torch.Tensor) -> torch.Tensor:
        """Row index of each query key, ``-1`` where the key is absent.

        Args:
            query_keys: int64 tensor of any shape.

        Returns:
            int64 tensor of the same shape.
        """
        if self.num_rows == 0:
            return torch.full_like(query_keys, -1)
        flat = query_keys.reshape(-1)
        pos = torch.searchsorted(self.sorted_keys, flat)
        pos = pos.clamp_(max=self.num_rows - 1)
        found = self.sorted_keys[pos] == flat
        rows = pos if self.perm is None else self.perm[pos]
        rows = torch.where(found, rows, torch.full_like(rows, -1))
        return rows.reshape(query_keys.shape)

    def to(self, device: torch.device | str) -> HashTable:
        """Returns a copy of the table on ``device``."""
        out = HashTable.__new__(HashTable)
        out.sorted_keys = self.sorted_keys.to(device)
        out.perm = None if self.perm is None else self.perm.to(device)
        out.num_rows = self.num_rows
        out._padded = None
        return out
