"""Kernel maps: which input voxel feeds which output voxel through which kernel offset.

A kernel map is stored output-stationary, as torchsparse 2.1's implicit-GEMM ``out_in_map``: an
(N_out, K) table ``nbr`` whose entry ``[q, k]`` is the row of the input voxel seen by output ``q``
through kernel offset ``k``, or -1. With coordinates in input-grid units and the input at tensor
stride ``ts``:

    nbr[q, k] = row of input coordinate  q + offset[k] * ts * dilation

which is torchsparse 2.1's lookup ``out * conv_stride + offset`` written in level units. It is a
cross-correlation, like ``torch.nn.functional.conv3d``: kernel entry k with per-axis offset ``o``
corresponds to dense kernel index ``o + (K - 1) // 2``.

Kernel offset order (it fixes the meaning of the first axis of the weight ``kernel [K^3, C_in,
C_out]``, so official weights load without conversion), per axis ``o = i - (K - 1) // 2`` for
``i in range(K)`` (K=3: -1, 0, 1; K=2: 0, 1), and:

- odd kernel volume: x varies fastest: ``k = ix + Kx * (iy + Ky * iz)``;
- even kernel volume: z varies fastest: ``k = iz + Kz * (iy + Ky * ix)``.

(torchsparse ``nn/utils/kernel.py::get_kernel_offsets`` and the 2.1 CUDA ``lookup_coords_kernel``
agree on this; the odd/even split keeps compatibility with MinkowskiEngine.)

Output coordinates:

- submanifold (conv stride 1): the input coordinates;
- strided, kernel == stride on every strided axis (all SAM4D downsamplers): ``unique(floor(c / S) *
  S)`` with ``S = ts * conv_stride``, sorted lexicographically like torchsparse 2.1;
- strided with kernel != stride ("spconv" mode in torchsparse 2.1): every output whose kernel
  window touches an input (torchsparse additionally clips to a spatial range; not reproduced);
- transposed: the coordinates registered in the cache for the finer stride, and the transpose of
  the forward map that went down from there.

Release semantics (``SparseCache.release_semantics``, the official checkpoint's exact-release
mode): strided convolutions follow torchsparse 2.1's *default* kernel-map mode
(``hashmap_on_the_fly``, ``conv_config.py``), which the released SAM4D was trained with. Its
downsampling kernel (``sparsemapping_cuda.cu``, ``downsample_grid_kmap_stage1_specialized_fast``
and ``..._stage3``) maps input ``p`` (level units) to output ``q`` through per-axis kernel index
``j = p + pad - q * s`` in ``[0, K)``, i.e. offset ``j`` (not ``j - (K - 1) // 2``: for K <= 2 the
same, for the k4 s4 ``mask_downsample_pts`` the position ``p mod 4`` inside the parent), and keeps
only outputs with ``0 <= q <= (max_in + 2 pad - (K - 1)) // s`` per axis, ``max_in`` being the
input's maximum level coordinate on that axis (``hashmap_on_the_fly.py``: the released MinkUNet
passes no spatial range). So an axis whose maximum makes that bound exclusive loses its top output
plane (k2 s2: an even maximum; k4 s4: a maximum not ``3 mod 4``), and with it every input voxel of
that plane. Submanifold and transposed maps are the same in both modes.

How the neighbours are found (all three give the same ``nbr``; tests compare them):

- reference (:func:`lookup_neighbors`): one sorted search (``searchsorted`` over the level's sorted
  keys) per (output, offset) pair, N_out x K queries;
- by column (:func:`lookup_neighbors_by_column`, the default): keys are sorted with z varying
  fastest, so the offsets that differ only in z sit next to each other in the sorted keys. One
  search per (output, (x, y) column) finds the lowest z of the column, and the others are read at
  the following positions (each hit advances one position): N_out x 9 searches for a k3 kernel
  instead of N_out x 27. Valid when every coordinate of the level is a multiple of its stride
  along z (the convention of this package; checked, else the reference is used);
- by parent (down-sampling with kernel == stride <= 2, e.g. the U-Net's 2x2x2 stride-2 convs):
  every input voxel has exactly one output (its parent ``floor(c / S) * S``) and one offset inside
  it, so the map is filled from the parent index that :func:`downsample_coords` gets from
  ``torch.unique(..., return_inverse=True)``, without any search.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch

from sam4d_core.modeling.reference_paths import use_reference_paths
from sam4d_core.modeling.sparse.hashing import HashTable, hash_coords, unhash_coords
from sam4d_core.modeling.sparse.tensor import SparseTensor, Stride


def kernel_offsets(
    kernel_size: tuple[int, int, int],
    dilation: tuple[int, int, int] = (1, 1, 1),
    device: torch.device | str = "cpu",
    corner: bool = False,
) -> torch.Tensor:
    """Kernel offsets in torchsparse order.

    Args:
        kernel_size: (Kx, Ky, Kz).
        dilation: per-axis dilation (multiplies the offsets).
        corner: per-axis offsets ``0 .. K-1`` (a strided conv under release semantics: the
            position inside the parent cell) instead of ``i - (K - 1) // 2``.

    Returns:
        (Kx * Ky * Kz, 3) int64 offsets in units of the input tensor stride.
    """
    axes = [
        (torch.arange(k, dtype=torch.int64) - (0 if corner else (k - 1) // 2)) * d
        for k, d in zip(kernel_size, dilation, strict=True)
    ]
    volume = kernel_size[0] * kernel_size[1] * kernel_size[2]
    if volume % 2 == 1:
        # x fastest: meshgrid over (z, y, x) with "ij" indexing makes the last one fastest.
        gz, gy, gx = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    else:
        gx, gy, gz = torch.meshgrid(axes[0], axes[1], axes[2], indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1), gz.reshape(-1)], dim=1).to(device)


@dataclass
class OffsetGroup:
    """Kernel offsets whose pairs are processed by one batched matmul.

    Attributes:
        ks: (G,) kernel offsets of the group.
        in_pad: (G, M) input rows per offset, padded with N_in (an appended zero row).
        out_pad: (G, M) output rows per offset, padded with N_out (a discarded extra row).
    """

    ks: torch.Tensor
    in_pad: torch.Tensor
    out_pad: torch.Tensor


@dataclass
class KernelMap:
    """Input -> output connectivity of one sparse convolution.

    Attributes:
        nbr: (N_out, K) int64, input row per (output, offset), -1 where there is no input voxel
            (possibly a transposed view of an offset-major (K, N_out) table: see
            :meth:`from_offset_major`).
        num_in: number of input rows N_in.
        out_coords: (N_out, 4) output coordinates.
        out_stride: tensor stride of the output.
        single_source: every output row has at most one valid entry (transposed conv with kernel ==
            stride); enables the matmul-then-gather fast path.
        identity_k: the offset whose map is the identity (input row i -> output row i: the centre
            of an odd submanifold kernel), computed as a plain matmul; ``None`` if there is none.
    """

    nbr: torch.Tensor
    num_in: int
    out_coords: torch.Tensor
    out_stride: Stride
    single_source: bool = False
    identity_k: int | None = None
    _padded: torch.Tensor | None = field(default=None, repr=False)
    _pairs: tuple[torch.Tensor, torch.Tensor, list[int]] | None = field(default=None, repr=False)
    _source: torch.Tensor | None = field(default=None, repr=False)
    _transposed: KernelMap | None = field(default=None, repr=False)
    _groups: dict[float, list[OffsetGroup]] = field(default_factory=dict, repr=False)
    _nbr_t: torch.Tensor | None = field(default=None, repr=False)
    _packed: tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]] | None = field(
        default=None, repr=False
    )

    @classmethod
    def from_offset_major(cls, nbr_t: torch.Tensor, **kwargs) -> KernelMap:
        """A map from its (K, N_out) table (the layout the fast builders produce: per offset one
        contiguous row, which is also what :meth:`pairs` reads). ``nbr`` is its transposed view."""
        return cls(nbr=nbr_t.t(), _nbr_t=nbr_t, **kwargs)

    def offset_major(self) -> torch.Tensor:
        """(K, N_out) contiguous table (``nbr`` transposed)."""
        if self._nbr_t is None:
            self._nbr_t = self.nbr.t().contiguous()
        return self._nbr_t

    @property
    def kernel_volume(self) -> int:
        return self.nbr.shape[1]

    @property
    def num_out(self) -> int:
        return self.nbr.shape[0]

    def padded_nbr(self) -> torch.Tensor:
        """(N_out, K) table with -1 replaced by ``num_in`` (the index of an appended zero row)."""
        if self._padded is None:
            self._padded = torch.where(
                self.nbr >= 0, self.nbr, torch.full_like(self.nbr, self.num_in)
            )
        return self._padded

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Valid (input, output) pairs grouped by kernel offset.

        Returns:
            in_idx (P,), out_idx (P,) int64 sorted by offset, and the number of pairs per offset
            (a Python list: reading it synchronizes, which is fine for the reference path).
        """
        if self._pairs is None:
            if use_reference_paths():
                valid_t = (self.nbr >= 0).t()
                k_idx, out_idx = valid_t.nonzero(as_tuple=True)
                in_idx = self.nbr[out_idx, k_idx]
                counts = valid_t.sum(dim=1).tolist()
            elif self.identity_k is None and self._packed is not None:
                # Without an identity offset the packed pairs are all the pairs: share them.
                in_idx, out_idx, segments = self._packed
                counts = [0] * self.kernel_volume
                for k, a, b in segments:
                    counts[k] = b - a
            else:
                # Same pairs in the same order (by offset, then output row), read from the
                # offset-major table with flat indices.
                nbr_t = self.offset_major()
                valid = nbr_t >= 0
                flat = valid.reshape(-1).nonzero().squeeze(1)
                in_idx = nbr_t.reshape(-1).index_select(0, flat)
                out_idx = torch.remainder(flat, max(self.num_out, 1))
                counts = valid.sum(dim=1).tolist()
            self._pairs = (in_idx, out_idx, counts)
        return self._pairs

    def packed_pairs(self) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int, int]]]:
        """:meth:`pairs` without the identity offset, with each offset's slice.

        Returns:
            in_idx (P,), out_idx (P,) int64 (by offset, then output row), and ``(k, start, end)``
            for every offset with pairs (the identity offset is computed as a plain matmul).
        """
        if self._packed is None and self.identity_k is None and self._pairs is not None:
            in_idx, out_idx, counts = self._pairs  # no identity offset to drop: share them
            segments, start = [], 0
            for k, c in enumerate(counts):
                if c:
                    segments.append((k, start, start + c))
                start += c
            self._packed = (in_idx, out_idx, segments)
        if self._packed is None:
            nbr_t = self.offset_major()
            valid = nbr_t >= 0
            if self.identity_k is not None:
                valid[self.identity_k] = False
            flat = valid.reshape(-1).nonzero().squeeze(1)
            in_idx = nbr_t.reshape(-1).index_select(0, flat)
            out_idx = torch.remainder(flat, max(self.num_out, 1))
            segments, start = [], 0
            for k, c in enumerate(valid.sum(dim=1).tolist()):
                if c:
                    segments.append((k, start, start + c))
                start += c
            self._packed = (in_idx, out_idx, segments)
        return self._packed

    def offset_groups(self, max_waste: float = 0.25) -> list[OffsetGroup]:
        """Kernel offsets bucketed for batched matmuls (adaptive grouping, as torchsparse does).

        Offsets (except ``identity_k``) are sorted by pair count and greedily packed into groups
        whose padding to the group's largest count wastes at most ``max_waste`` of the group's
        rows. One group = one gather, one ``bmm`` and one scatter, instead of one per offset.
        """
        groups = self._groups.get(max_waste)
        if groups is not None:
            return groups
        in_idx, out_idx, counts = self.pairs()
        starts = [0]
        for c in counts:
            starts.append(starts[-1] + c)
        order = sorted(
            (k for k in range(len(counts)) if counts[k] > 0 and k != self.identity_k),
            key=lambda k: -counts[k],
        )
        packed: list[list[int]] = []
        for k in order:
            if packed:
                group = packed[-1]
                rows = sum(counts[j] for j in group) + counts[k]
                padded = counts[group[0]] * (len(group) + 1)
                if padded - rows <= max_waste * rows:
                    group.append(k)
                    continue
            packed.append([k])
        device = self.nbr.device
        groups = []
        for group in packed:
            m = counts[group[0]]
            in_pad = torch.full((len(group), m), self.num_in, dtype=torch.int64, device=device)
            out_pad = torch.full((len(group), m), self.num_out, dtype=torch.int64, device=device)
            for row, k in enumerate(group):
                in_pad[row, : counts[k]] = in_idx[starts[k] : starts[k + 1]]
                out_pad[row, : counts[k]] = out_idx[starts[k] : starts[k + 1]]
            ks = torch.tensor(group, dtype=torch.int64, device=device)
            groups.append(OffsetGroup(ks=ks, in_pad=in_pad, out_pad=out_pad))
        self._groups[max_waste] = groups
        return groups

    def source_index(self) -> torch.Tensor:
        """For ``single_source`` maps: (N_out,) index ``in_row * K + k`` of each output's source,
        ``num_in * K`` (an appended zero row) where the output has none."""
        if not self.single_source:
            raise ValueError("source_index() needs a single-source kernel map")
        if self._source is None:
            k = self.kernel_volume
            valid = self.nbr >= 0
            # Exactly one valid column per row: argmax finds it (0 when none, masked below).
            k_idx = valid.to(torch.int8).argmax(dim=1)
            rows = self.nbr.gather(1, k_idx[:, None]).squeeze(1)
            self._source = torch.where(
                rows >= 0, rows * k + k_idx, torch.full_like(rows, self.num_in * k)
            )
        return self._source

    def transposed(self, out_coords: torch.Tensor, out_stride: Stride, single_source: bool):
        """The map of the transposed convolution (outputs and inputs swapped), cached."""
        if self._transposed is None:
            if use_reference_paths():
                valid = self.nbr >= 0
                q_idx, k_idx = valid.nonzero(as_tuple=True)
                p_idx = self.nbr[q_idx, k_idx]
                nbr_t = torch.full(
                    (self.num_in, self.kernel_volume), -1, dtype=torch.int64, device=self.nbr.device
                )
                nbr_t[p_idx, k_idx] = q_idx
                self._transposed = KernelMap(
                    nbr=nbr_t,
                    num_in=self.num_out,
                    out_coords=out_coords,
                    out_stride=out_stride,
                    single_source=single_source,
                )
            else:
                in_idx, out_idx, counts = self.pairs()
                k = torch.repeat_interleave(
                    torch.arange(len(counts), device=in_idx.device),
                    torch.tensor(counts, device=in_idx.device),
                )
                table = torch.full(
                    (self.kernel_volume, self.num_in), -1, dtype=torch.int64, device=in_idx.device
                )
                table.view(-1)[k * self.num_in + in_idx] = out_idx
                self._transposed = KernelMap.from_offset_major(
                    table,
                    num_in=self.num_out,
                    out_coords=out_coords,
                    out_stride=out_stride,
                    single_source=single_source,
                )
        return self._transposed


def lookup_neighbors(
    table: HashTable,
    out_coords: torch.Tensor,
    offsets: torch.Tensor,
    tensor_stride: Stride,
) -> torch.Tensor:
    """(N_out, K) rows of ``out_coords[q] + offsets[k] * tensor_stride`` in ``table`` (-1: none).

    Args:
        table: hash table of the input coordinates.
        out_coords: (N_out, 4) output coordinates (input-grid units).
        offsets: (K, 3) kernel offsets (already dilated) in units of the input tensor stride.
        tensor_stride: stride of the input tensor.
    """
    step = torch.tensor(tensor_stride, dtype=torch.int64, device=out_coords.device)
    delta = torch.zeros(offsets.shape[0], 4, dtype=torch.int64, device=out_coords.device)
    delta[:, 1:] = offsets.to(out_coords.device) * step
    # Hash is linear in each field as long as nothing over/underflows, so key(q + d) = key(q) +
    # key_delta(d): one (N_out, K) int64 add instead of materializing (N_out, K, 4) coordinates.
    base = hash_coords(out_coords)
    key_delta = hash_coords(delta) - hash_coords(torch.zeros_like(delta[:1]))
    return table.lookup(base[:, None] + key_delta[None, :])


@functools.lru_cache(maxsize=64)
def _column_plan(
    kernel_size: tuple[int, int, int], dilation: tuple[int, int, int], corner: bool = False
) -> tuple[tuple[tuple[int, int, int], ...], tuple[int, ...], int] | None:
    """Kernel offsets grouped into z columns for :func:`lookup_neighbors_by_column`.

    Returns:
        ``(starts, order, length)``: per column the offset ``(ox, oy, oz0)`` of its lowest z,
        the kernel index of entry ``(column, j)`` (offset ``(ox, oy, oz0 + j)``) flattened
        column-major, and the common column length; None when a column's z offsets are not
        consecutive (z dilation) or the columns differ in length.
    """
    offsets = kernel_offsets(kernel_size, dilation, corner=corner).tolist()
    columns: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for k, (ox, oy, oz) in enumerate(offsets):
        columns.setdefault((ox, oy), []).append((oz, k))
    starts, order, lengths = [], [], set()
    for (ox, oy), items in columns.items():
        items.sort()
        zs = [z for z, _ in items]
        if zs != list(range(zs[0], zs[0] + len(zs))):
            return None
        starts.append((ox, oy, zs[0]))
        order.extend(k for _, k in items)
        lengths.add(len(items))
    if len(lengths) != 1:
        return None
    return tuple(starts), tuple(order), lengths.pop()


@functools.lru_cache(maxsize=64)
def _opposite_offsets(
    kernel_size: tuple[int, int, int], dilation: tuple[int, int, int]
) -> tuple[int, ...] | None:
    """Index of the opposite offset (-o) of every kernel offset, None if the set is not
    symmetric (even kernel sizes)."""
    offsets = [tuple(o) for o in kernel_offsets(kernel_size, dilation).tolist()]
    index = {o: k for k, o in enumerate(offsets)}
    opposite = [index.get((-a, -b, -c)) for a, b, c in offsets]
    return None if any(k is None for k in opposite) else tuple(opposite)  # type: ignore[misc]


def lookup_neighbors_by_column(
    table: HashTable,
    out_coords: torch.Tensor,
    kernel_size: tuple[int, int, int],
    dilation: tuple[int, int, int],
    tensor_stride: Stride,
    submanifold: bool = False,
    corner: bool = False,
) -> torch.Tensor | None:
    """Same map as :func:`lookup_neighbors`, with one search per (output, z column), offset-major.

    The caller guarantees that the z coordinates of the table and of ``out_coords`` are multiples
    of ``tensor_stride[2]`` (then no key lies between two consecutive offsets of a column).

    Args:
        submanifold: ``out_coords`` are the table's own coordinates, row for row (a stride-1
            conv). With a symmetric kernel only the columns ``(ox, oy) <= (0, 0)`` are searched:
            ``nbr[q, k] = p`` iff ``nbr[p, opposite(k)] = q``, so the other half is scattered
            from them (5 searches per output instead of 9 for k3).
        corner: offsets ``0 .. K-1`` (see :func:`kernel_offsets`).

    Returns:
        (K, N_out) int64 rows (-1: none), i.e. ``lookup_neighbors(...).t()``, or None when the
        kernel has no column layout (z dilation): use :func:`lookup_neighbors`.
    """
    plan = _column_plan(kernel_size, dilation, corner)
    if plan is None:
        return None
    starts, order, length = plan
    device = out_coords.device
    n_out = out_coords.shape[0]
    volume = math.prod(kernel_size)
    if n_out == 0 or table.num_rows == 0:
        return torch.full((volume, n_out), -1, dtype=torch.int64, device=device)
    opposite = _opposite_offsets(kernel_size, dilation) if submanifold and not corner else None
    if opposite is not None:
        searched = [c for c, (ox, oy, _) in enumerate(starts) if (ox, oy) <= (0, 0)]
        mirrored = [c for c in searched if starts[c][:2] != (0, 0)]
    else:
        searched, mirrored = list(range(len(starts))), []
    tx, ty, tz = tensor_stride
    delta = torch.tensor(
        [[0, starts[c][0] * tx, starts[c][1] * ty, starts[c][2] * tz] for c in searched],
        dtype=torch.int64,
        device=device,
    )
    key_delta = hash_coords(delta) - hash_coords(torch.zeros_like(delta[:1]))
    # (columns, N_out): each row is the output keys plus a constant, so it stays sorted when the
    # outputs are, which keeps the searches cache friendly.
    target = key_delta[:, None] + hash_coords(out_coords)[None, :]
    keys, perm = table.padded()  # a sentinel key after the last one: no clamping needed
    pos = torch.searchsorted(keys, target)
    found = []
    for j in range(length):
        hit = keys.index_select(0, pos.reshape(-1)).reshape(pos.shape) == target
        rows = pos if perm is None else perm.index_select(0, pos.reshape(-1)).reshape(pos.shape)
        found.append((rows + 1) * hit - 1)  # row where found, else -1
        if j + 1 < length:
            # Sorted keys, z fastest, nothing between consecutive z offsets of a column: the next
            # offset is at the next position after a hit, at the same position after a miss.
            pos = pos + hit
            target = target + tz  # the z field is the lowest one of the key
    # Row j * S + i of ``stacked`` is entry (searched[i], j): kernel offset order[c * length + j].
    n_s = len(searched)
    stacked = torch.stack(found, dim=0).reshape(length * n_s, n_out)
    ks = [order[c * length + j] for j in range(length) for c in searched]
    if not mirrored and ks == list(range(volume)):
        return stacked  # odd kernels, every column searched: already in kernel order
    flat = torch.full((volume * n_out + 1,), -1, dtype=torch.int64, device=device)
    table_t = flat[:-1].view(volume, n_out)
    table_t.index_copy_(0, torch.tensor(ks, dtype=torch.int64, device=device), stacked)
    if mirrored:
        src = [j * n_s + searched.index(c) for j in range(length) for c in mirrored]
        dst = [opposite[order[c * length + j]] for j in range(length) for c in mirrored]  # type: ignore[index]
        src_rows = stacked.index_select(0, torch.tensor(src, dtype=torch.int64, device=device))
        base = torch.tensor(dst, dtype=torch.int64, device=device)[:, None] * n_out
        # nbr[opposite(k), p] = q for every hit nbr[k, q] = p; misses go to a spare last slot.
        dest = torch.where(src_rows >= 0, base + src_rows, volume * n_out)
        q = torch.arange(n_out, dtype=torch.int64, device=device).expand_as(src_rows)
        flat.scatter_(0, dest.reshape(-1), q.reshape(-1))
    return table_t


def _z_aligned(coords: torch.Tensor, stride: int) -> bool:
    """Every z coordinate is a multiple of ``stride`` (one pass, one sync)."""
    return stride == 1 or coords.shape[0] == 0 or not bool((coords[:, 3] % stride).any())


def _aligned(coords: torch.Tensor, stride: Stride) -> bool:
    """Every coordinate is a multiple of the tensor stride on its axis (one pass, one sync)."""
    if stride == (1, 1, 1) or coords.shape[0] == 0:
        return True
    s = torch.tensor(stride, dtype=coords.dtype, device=coords.device)
    return not bool((coords[:, 1:] % s).any())


def _parent_offset_index(
    kernel_size: tuple[int, int, int], device: torch.device
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Kernel index of each in-parent position ``i`` (per axis in [0, K)) for kernels whose offsets
    are ``0 .. K-1`` (K <= 2, or any K under release semantics): a table indexed by
    ``(ix * Ky + iy) * Kz + iz``."""
    offsets = kernel_offsets(kernel_size, device=device, corner=True)
    ky, kz = kernel_size[1], kernel_size[2]
    lin = (offsets[:, 0] * ky + offsets[:, 1]) * kz + offsets[:, 2]
    table = torch.empty_like(lin)
    table[lin] = torch.arange(lin.shape[0], device=device)
    return table, (1, kz, ky * kz)


def neighbors_from_parents(
    in_coords: torch.Tensor,
    parent: torch.Tensor,
    num_out: int,
    kernel_size: tuple[int, int, int],
    conv_stride: tuple[int, int, int],
    tensor_stride: Stride,
) -> torch.Tensor:
    """(K, N_out) map of a down-sampling with kernel == stride from each input's parent row (offsets
    ``0 .. K-1``: any K <= 2, or any K under release semantics).

    Args:
        in_coords: (N_in, 4) input coordinates (multiples of ``tensor_stride``).
        parent: (N_in,) output row of each input (``floor(c / S) * S``), -1 for none.
        num_out: N_out.

    Every input sits at ``i = (c - parent) / tensor_stride`` in [0, K) per axis inside its parent,
    which is kernel offset ``o = i``: ``nbr[parent, k(i)] = input``. Returned offset-major, i.e.
    ``lookup_neighbors(...).t()``.
    """
    device = in_coords.device
    volume = math.prod(kernel_size)
    table = torch.full((volume, num_out), -1, dtype=torch.int64, device=device)
    if in_coords.shape[0] == 0:
        return table
    c = in_coords[:, 1:].to(torch.int64)
    ts = torch.tensor(tensor_stride, dtype=torch.int64, device=device)
    big = ts * torch.tensor(conv_stride, dtype=torch.int64, device=device)
    inside = torch.div(torch.remainder(c, big), ts, rounding_mode="floor")  # (N_in, 3) in [0, K)
    k_of, weights = _parent_offset_index(kernel_size, device)
    k = k_of[inside[:, 0] * weights[2] + inside[:, 1] * weights[1] + inside[:, 2]]
    rows = torch.arange(in_coords.shape[0], dtype=torch.int64, device=device)
    keep = parent >= 0
    if not bool(keep.all()):
        parent, k, rows = parent[keep], k[keep], rows[keep]
    table.view(-1)[k * num_out + parent] = rows
    return table


def release_output_bound(
    coords: torch.Tensor,
    tensor_stride: Stride,
    kernel_size: tuple[int, int, int],
    conv_stride: tuple[int, int, int],
) -> torch.Tensor:
    """torchsparse 2.1's default-mode bound on a strided conv's outputs (no padding, no spatial
    range): per axis ``(max_in - (K - 1)) // s`` in output level units, max_in in input level units.

    Returns:
        (3,) int64 (empty input: -1, nothing kept).
    """
    device = coords.device
    if coords.shape[0] == 0:
        return torch.full((3,), -1, dtype=torch.int64, device=device)
    ts = torch.tensor(tensor_stride, dtype=torch.int64, device=device)
    ks = torch.tensor(kernel_size, dtype=torch.int64, device=device)
    cs = torch.tensor(conv_stride, dtype=torch.int64, device=device)
    max_in = torch.div(coords[:, 1:].to(torch.int64).amax(dim=0), ts, rounding_mode="floor")
    return torch.div(max_in - (ks - 1), cs, rounding_mode="floor")


def downsample_coords(
    coords: torch.Tensor,
    tensor_stride: Stride,
    kernel_size: tuple[int, int, int],
    conv_stride: tuple[int, int, int],
    return_parent: bool = False,
    release: bool = False,
) -> tuple[torch.Tensor, HashTable] | tuple[torch.Tensor, HashTable, torch.Tensor | None]:
    """Output coordinates of a strided convolution and their (already sorted) hash table.

    Args:
        coords: (N, 4) input coordinates at ``tensor_stride``.
        return_parent: also return the output row ``floor(c / S) * S`` of every input (kernel ==
            stride on every strided axis; None otherwise); -1 for an input whose parent is
            dropped (release semantics).
        release: torchsparse 2.1 default-mode semantics (see the module docstring): offsets
            ``0 .. K-1``, outputs in ``[0, release_output_bound]`` per axis.

    Returns:
        (M, 4) int32 output coordinates sorted by ``(b, x, y, z)``, and their hash table (and the
        parent rows).
    """
    device = coords.device
    ts = torch.tensor(tensor_stride, dtype=torch.int64, device=device)
    cs = torch.tensor(conv_stride, dtype=torch.int64, device=device)
    big = ts * cs
    c = coords.to(torch.int64)
    parent = None
    if release:
        bound = release_output_bound(coords, tensor_stride, kernel_size, conv_stride)
        offsets = kernel_offsets(kernel_size, device=device, corner=True)
        level = torch.div(c[:, 1:], ts, rounding_mode="floor")
        # Output q sees input p through offset j when p = q * s + j.
        cand = level[:, None, :] - offsets[None, :, :]
        q = torch.div(cand, cs, rounding_mode="floor")
        ok = ((torch.remainder(cand, cs) == 0) & (q >= 0) & (q <= bound)).all(dim=2)
        out = torch.cat([c[:, None, :1].expand(-1, offsets.shape[0], 1), q * big], dim=2)
        if return_parent and kernel_size == conv_stride:
            # One candidate per input (j = p mod s): its parent, or none.
            hit = ok.any(dim=1)
            first = ok.to(torch.int8).argmax(dim=1)
            keys = hash_coords(out[torch.arange(c.shape[0], device=device), first])
            keys_hit = keys[hit]
            uniq, inverse = torch.unique(keys_hit, return_inverse=True)
            parent = torch.full((c.shape[0],), -1, dtype=torch.int64, device=device)
            parent[hit] = inverse
            return unhash_coords(uniq), HashTable(uniq, assume_sorted=True), parent
        keys = torch.unique(hash_coords(out[ok]))
        if return_parent:
            return unhash_coords(keys), HashTable(keys, assume_sorted=True), None
        return unhash_coords(keys), HashTable(keys, assume_sorted=True)
    if all(s in (1, k) for s, k in zip(conv_stride, kernel_size, strict=True)):
        out = c.clone()
        out[:, 1:] = torch.div(c[:, 1:], big, rounding_mode="floor") * big
        keys = hash_coords(out)
        if return_parent:
            keys, parent = torch.unique(keys, return_inverse=True)
            return unhash_coords(keys), HashTable(keys, assume_sorted=True), parent
    else:
        # Output q (level units at ts * cs) sees input p through offset o when p = q * cs + o (in
        # units of ts), so q = (p - o) / cs for every offset o that makes it integral.
        offsets = kernel_offsets(kernel_size, device=device)
        level = torch.div(c[:, 1:], ts, rounding_mode="floor")
        cand = level[:, None, :] - offsets[None, :, :]
        ok = (torch.remainder(cand, cs) == 0).all(dim=2)
        q = torch.div(cand, cs, rounding_mode="floor") * big
        batch = c[:, None, :1].expand(-1, offsets.shape[0], 1)
        out = torch.cat([batch, q], dim=2)[ok]
        keys = hash_coords(out)
    keys = torch.unique(keys)
    if return_parent:
        return unhash_coords(keys), HashTable(keys, assume_sorted=True), parent
    return unhash_coords(keys), HashTable(keys, assume_sorted=True)


def get_kernel_map(
    x: SparseTensor,
    kernel_size: tuple[int, int, int],
    conv_stride: tuple[int, int, int],
    dilation: tuple[int, int, int],
) -> KernelMap:
    """Kernel map of the forward (non-transposed) convolution applied to ``x``, from the cache."""
    key = (x.stride, kernel_size, conv_stride, dilation)
    kmap = x.cache.kmaps.get(key)
    if kmap is not None and kmap.num_in == x.num_points:
        return kmap
    fast = not use_reference_paths()
    release = x.cache.release_semantics and conv_stride != (1, 1, 1)
    # Kernel == stride <= 2 on every axis (the U-Net's 2x2x2 stride-2 down-sampling; any size
    # under release semantics, whose offsets are the positions 0 .. K-1 inside the parent): each
    # input voxel has one parent and one offset in it.
    by_parent = (
        fast
        and conv_stride != (1, 1, 1)
        and dilation == (1, 1, 1)
        and kernel_size == conv_stride
        and (max(kernel_size) <= 2 or release)
        and _aligned(x.coords, x.stride)
    )
    parent = None
    if conv_stride == (1, 1, 1):
        out_coords, out_stride = x.coords, x.stride
    else:
        out_stride = tuple(a * b for a, b in zip(x.stride, conv_stride, strict=True))
        out_coords = x.cache.coords.get(out_stride)  # type: ignore[arg-type]
        if out_coords is None:
            out_coords, out_table, *rest = downsample_coords(
                x.coords, x.stride, kernel_size, conv_stride, by_parent, release
            )
            parent = rest[0] if rest else None
            x.cache.coords[out_stride] = out_coords  # type: ignore[index]
            x.cache.hashtables[out_stride] = out_table  # type: ignore[index]
    volume = math.prod(kernel_size)
    nbr_t = None
    if by_parent:
        if parent is None:
            # Output coordinates registered earlier: find each input's parent (N_in searches
            # instead of N_out x K).
            out_table = x.cache.hashtables.get(out_stride)  # type: ignore[arg-type]
            if out_table is None:
                out_table = HashTable.from_coords(out_coords)
                x.cache.hashtables[out_stride] = out_table  # type: ignore[index]
            c = x.coords.to(torch.int64)
            big = torch.tensor(out_stride, dtype=torch.int64, device=c.device)
            q = torch.div(c[:, 1:], big, rounding_mode="floor")
            parent = out_table.lookup(hash_coords(torch.cat([c[:, :1], q * big], 1)))
            if release:
                # This conv's own bound, whatever coordinates an earlier conv registered there.
                bound = release_output_bound(x.coords, x.stride, kernel_size, conv_stride)
                inside = ((q >= 0) & (q <= bound)).all(dim=1)
                parent = torch.where(inside, parent, torch.full_like(parent, -1))
        nbr_t = neighbors_from_parents(
            x.coords, parent, out_coords.shape[0], kernel_size, conv_stride, x.stride
        )
    elif fast and _z_aligned(x.coords, x.stride[2]) and _z_aligned(out_coords, x.stride[2]):
        nbr_t = lookup_neighbors_by_column(
            x.hashtable(),
            out_coords,
            kernel_size,
            dilation,
            x.stride,
            submanifold=out_coords is x.coords,
            corner=release,
        )
    if release and not by_parent:
        # Outputs an earlier conv registered beyond this conv's bound receive nothing here.
        bound = release_output_bound(x.coords, x.stride, kernel_size, conv_stride)
        big = torch.tensor(out_stride, dtype=torch.int64, device=out_coords.device)
        q = torch.div(out_coords[:, 1:].to(torch.int64), big, rounding_mode="floor")
        outside = ~((q >= 0) & (q <= bound)).all(dim=1)
        if nbr_t is None:
            offsets = kernel_offsets(kernel_size, dilation, device=x.device, corner=True)
            nbr_t = lookup_neighbors(x.hashtable(), out_coords, offsets, x.stride).t()
        nbr_t = nbr_t.masked_fill(outside[None, :], -1).contiguous()
    identity = volume // 2 if conv_stride == (1, 1, 1) and volume % 2 == 1 else None
    common = dict(
        num_in=x.num_points, out_coords=out_coords, out_stride=out_stride, identity_k=identity
    )
    if nbr_t is not None:
        kmap = KernelMap.from_offset_major(nbr_t, **common)  # type: ignore[arg-type]
    else:
        offsets = kernel_offsets(kernel_size, dilation, device=x.device, corner=release)
        nbr = lookup_neighbors(x.hashtable(), out_coords, offsets, x.stride)
        kmap = KernelMap(nbr=nbr, **common)  # type: ignore[arg-type]
    x.cache.kmaps[key] = kmap
    return kmap


def get_transposed_kernel_map(
    x: SparseTensor,
    kernel_size: tuple[int, int, int],
    conv_stride: tuple[int, int, int],
    dilation: tuple[int, int, int],
) -> KernelMap:
    """Kernel map of a transposed convolution that takes ``x`` back to stride ``x.stride / s``.

    The output coordinates are those cached for the finer stride (the U-Net skip's), and the map is
    the transpose of the forward map that went from there to ``x``'s level (built if missing).
    """
    if any(s % c for s, c in zip(x.stride, conv_stride, strict=True)):
        raise ValueError(f"cannot go from stride {x.stride} back by {conv_stride}")
    fine_stride: Stride = tuple(s // c for s, c in zip(x.stride, conv_stride, strict=True))  # type: ignore[assignment]
    fine_coords = x.cache.coords.get(fine_stride)
    if fine_coords is None:
        raise ValueError(
            f"no coordinates cached for stride {fine_stride}: a transposed convolution can only "
            "return to a level that an earlier strided convolution came from"
        )
    key = (fine_stride, kernel_size, conv_stride, dilation)
    forward = x.cache.kmaps.get(key)
    if forward is None or forward.num_out != x.num_points:
        fine = SparseTensor(
            torch.empty(fine_coords.shape[0], 0, device=x.device), fine_coords, fine_stride, x.cache
        )
        forward = get_kernel_map(fine, kernel_size, conv_stride, dilation)
        if forward.num_out != x.num_points:
            raise ValueError("the coarse coordinates do not match the cached downsampling")
    # With kernel == stride on every axis each fine voxel has exactly one parent and offset.
    single = dilation == (1, 1, 1) and conv_stride == kernel_size
    return forward.transposed(fine_coords, fine_stride, single_source=single)
