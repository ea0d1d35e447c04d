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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sam4d_core.modeling.sparse.hashing import HashTable, hash_coords, unhash_coords
from sam4d_core.modeling.sparse.tensor import SparseTensor, Stride


def kernel_offsets(
    kernel_size: tuple[int, int, int],
    dilation: tuple[int, int, int] = (1, 1, 1),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Kernel offsets in torchsparse order.

    Args:
        kernel_size: (Kx, Ky, Kz).
        dilation: per-axis dilation (multiplies the offsets).

    Returns:
        (Kx * Ky * Kz, 3) int64 offsets in units of the input tensor stride.
    """
    axes = [
        (torch.arange(k, dtype=torch.int64) - (k - 1) // 2) * d
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
        nbr: (N_out, K) int64, input row per (output, offset), -1 where there is no input voxel.
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
            valid_t = (self.nbr >= 0).t()
            k_idx, out_idx = valid_t.nonzero(as_tuple=True)
            in_idx = self.nbr[out_idx, k_idx]
            counts = valid_t.sum(dim=1).tolist()
            self._pairs = (in_idx, out_idx, counts)
        return self._pairs

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


def downsample_coords(
    coords: torch.Tensor,
    tensor_stride: Stride,
    kernel_size: tuple[int, int, int],
    conv_stride: tuple[int, int, int],
) -> tuple[torch.Tensor, HashTable]:
    """Output coordinates of a strided convolution and their (already sorted) hash table.

    Args:
        coords: (N, 4) input coordinates at ``tensor_stride``.

    Returns:
        (M, 4) int32 output coordinates sorted by ``(b, x, y, z)``, and their hash table.
    """
    device = coords.device
    ts = torch.tensor(tensor_stride, dtype=torch.int64, device=device)
    cs = torch.tensor(conv_stride, dtype=torch.int64, device=device)
    big = ts * cs
    c = coords.to(torch.int64)
    if all(s in (1, k) for s, k in zip(conv_stride, kernel_size, strict=True)):
        out = c.clone()
        out[:, 1:] = torch.div(c[:, 1:], big, rounding_mode="floor") * big
        keys = hash_coords(out)
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
    table = x.hashtable()
    offsets = kernel_offsets(kernel_size, dilation, device=x.device)
    if conv_stride == (1, 1, 1):
        out_coords, out_stride = x.coords, x.stride
    else:
        out_stride = tuple(a * b for a, b in zip(x.stride, conv_stride, strict=True))
        out_coords = x.cache.coords.get(out_stride)  # type: ignore[arg-type]
        if out_coords is None:
            out_coords, out_table = downsample_coords(x.coords, x.stride, kernel_size, conv_stride)
            x.cache.coords[out_stride] = out_coords  # type: ignore[index]
            x.cache.hashtables[out_stride] = out_table  # type: ignore[index]
    nbr = lookup_neighbors(table, out_coords, offsets, x.stride)
    volume = offsets.shape[0]
    identity = volume // 2 if conv_stride == (1, 1, 1) and volume % 2 == 1 else None
    kmap = KernelMap(
        nbr=nbr,
        num_in=x.num_points,
        out_coords=out_coords,
        out_stride=out_stride,
        identity_k=identity,
    )
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
