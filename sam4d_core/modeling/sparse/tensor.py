"""The sparse tensor record that flows through the LiDAR encoder, and its shared caches.

Conventions (fixed for the whole project):

- ``coords`` is an (N, 4) int32 tensor ``[batch, x, y, z]`` (batch first, like torchsparse 2.1).
- Coordinates are always expressed in units of the *input* voxel grid (stride 1), and a tensor at
  stride ``s`` only holds coordinates that are multiples of ``s`` (torchsparse 1.x/2.0 convention).
  Keeping one unit everywhere lets positions at any level be compared or converted to metres with
  ``coords[:, 1:] * voxel_size`` without knowing the level. (torchsparse 2.1 stores level units,
  ``coords // s``; this is internal bookkeeping and never appears in a state dict.)
- ``stride`` is a 3-tuple of ints (the tensor stride: voxel size of this level / input voxel size).

Every tensor derived from the same input (by convolutions, norms, additions) shares one
:class:`SparseCache`: the coordinates of every stride level seen so far, their hash tables and the
kernel maps, so that a kernel map is built once and reused by every layer with the same
(stride, kernel, conv stride, dilation), and a transposed convolution can find the coordinates of
the finer level it returns to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from sam4d_core.modeling.sparse.hashing import HashTable

if TYPE_CHECKING:
    from sam4d_core.modeling.sparse.kernel_map import KernelMap

Stride = tuple[int, int, int]


def make_ntuple(value: int | tuple[int, ...] | list[int], ndim: int = 3) -> tuple[int, ...]:
    """``3 -> (3, 3, 3)``; a sequence is checked for length and returned as a tuple of ints."""
    if isinstance(value, int):
        return (value,) * ndim
    out = tuple(int(v) for v in value)
    if len(out) != ndim:
        raise ValueError(f"expected an int or {ndim} values, got {value!r}")
    return out


@dataclass
class SparseCache:
    """State shared by all tensors derived from one input.

    Attributes:
        coords: stride -> (N_s, 4) coordinates of that level (the first tensor seen at a stride
            registers its coordinates; torchsparse's ``cmaps``).
        hashtables: stride -> :class:`HashTable` over ``coords[stride]``.
        kmaps: (stride, kernel_size, conv_stride, dilation) -> :class:`KernelMap` of the forward
            (non-transposed) convolution from level ``stride``.
        release_semantics: strided convolutions follow torchsparse 2.1's default kernel-map mode
            (``hashmap_on_the_fly``), as the released SAM4D was trained: output coordinates
            bounded per axis by ``(max_in - (K - 1)) // s`` (level units) and kernel offsets
            ``0 .. K-1`` (the position inside the parent cell). Off: every parent is kept and
            offsets are centred (``i - (K - 1) // 2``). See :mod:`.kernel_map`.
    """

    coords: dict[Stride, torch.Tensor] = field(default_factory=dict)
    hashtables: dict[Stride, HashTable] = field(default_factory=dict)
    kmaps: dict[tuple[Any, ...], KernelMap] = field(default_factory=dict)
    release_semantics: bool = False


class SparseTensor:
    """Features on a sparse set of voxels.

    Args:
        feats: (N, C) features.
        coords: (N, 4) integer coordinates ``[batch, x, y, z]`` in input-grid units.
        stride: tensor stride, an int or a 3-tuple.
        cache: the shared :class:`SparseCache`; a new one is created when ``None``.
    """

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        stride: int | tuple[int, ...] = 1,
        cache: SparseCache | None = None,
    ) -> None:
        if feats.dim() != 2 or coords.dim() != 2 or coords.shape[1] != 4:
            raise ValueError(
                f"expected feats (N, C) and coords (N, 4), got {tuple(feats.shape)} and "
                f"{tuple(coords.shape)}"
            )
        if feats.shape[0] != coords.shape[0]:
            raise ValueError(f"{feats.shape[0]} feature rows for {coords.shape[0]} coordinates")
        self.feats = feats
        self.coords = coords
        self.stride: Stride = make_ntuple(stride)  # type: ignore[assignment]
        cache = cache if cache is not None else SparseCache()
        registered = cache.coords.get(self.stride)
        if registered is None:
            cache.coords[self.stride] = coords
        elif registered is not coords:
            # Another coordinate set at a stride the cache already knows: its hash table and kernel
            # maps would be wrong for this tensor, so it starts a cache of its own. (An identity
            # check, no device sync; an equal copy only costs rebuilding the maps.)
            cache = SparseCache(
                coords={self.stride: coords}, release_semantics=cache.release_semantics
            )
        self.cache = cache

    # torchsparse-style short names, handy when porting code that uses them.
    @property
    def F(self) -> torch.Tensor:  # noqa: N802
        return self.feats

    @property
    def C(self) -> torch.Tensor:  # noqa: N802
        return self.coords

    @property
    def s(self) -> Stride:
        return self.stride

    @property
    def num_points(self) -> int:
        return self.feats.shape[0]

    @property
    def device(self) -> torch.device:
        return self.feats.device

    def hashtable(self) -> HashTable:
        """The hash table of this tensor's coordinates (cached per stride)."""
        table = self.cache.hashtables.get(self.stride)
        if table is None:
            table = HashTable.from_coords(self.coords)
            self.cache.hashtables[self.stride] = table
        return table

    def replace_feats(self, feats: torch.Tensor) -> SparseTensor:
        """Same coordinates, stride and cache with new (N, C') features."""
        return SparseTensor(feats, self.coords, self.stride, self.cache)

    def apply(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> SparseTensor:
        """Applies a row-wise function to the features (``fn`` must keep the row count)."""
        return self.replace_feats(fn(self.feats))

    def to(self, device: torch.device | str) -> SparseTensor:
        """Moves features and coordinates; the cache is not moved (it is rebuilt on demand)."""
        cache = SparseCache(release_semantics=self.cache.release_semantics)
        return SparseTensor(self.feats.to(device), self.coords.to(device), self.stride, cache)

    def __add__(self, other: SparseTensor) -> SparseTensor:
        if other.coords is not self.coords and other.coords.shape != self.coords.shape:
            raise ValueError("cannot add sparse tensors with different coordinates")
        return self.replace_feats(self.feats + other.feats)

    def __repr__(self) -> str:
        return (
            f"SparseTensor(num_points={self.num_points}, channels={self.feats.shape[1]}, "
            f"stride={self.stride}, dtype={self.feats.dtype}, device={self.feats.device})"
        )


def cat(tensors: list[SparseTensor]) -> SparseTensor:
    """Concatenates features along channels (all tensors must share coordinates, like U-Net skips).

    Coordinates are compared by identity/shape only (no sync): the decoder's transposed convs return
    exactly the coordinate tensor registered in the cache for that stride, so skips line up.
    """
    first = tensors[0]
    for t in tensors[1:]:
        if t.stride != first.stride or t.coords.shape != first.coords.shape:
            raise ValueError("cat needs tensors at the same stride with the same coordinates")
    return first.replace_feats(torch.cat([t.feats for t in tensors], dim=1))
