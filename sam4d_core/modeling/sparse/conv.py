"""Sparse 3D convolution (submanifold, strided, transposed), BatchNorm and ReLU, in plain PyTorch.

The layers keep torchsparse 2.1's parameter layout so that official state dicts load as they are:

- ``kernel``: [K^3, C_in, C_out]; [C_in, C_out] for a 1x1x1 convolution with stride 1; a 1x1x1
  convolution with stride > 1 keeps the 3-D layout [1, C_in, C_out]. Transposed convolutions use
  the same [K^3, C_in, C_out] layout (C_in = the transposed layer's input channels).
- ``bias``: [C_out], only when ``bias=True`` (the default is ``False``).
- ``BatchNorm`` is a ``torch.nn.BatchNorm1d`` over the (N, C) features (weight, bias, running
  statistics, num_batches_tracked).

Four implementations compute the same thing (see :mod:`.kernel_map` for the maps); all are
gather - matmul - scatter variants, differing in how the kernel offsets are batched:

- ``"grouped"`` (default on CUDA): adaptive grouping. The offsets are sorted by their number of
  (input, output) pairs and packed into a few groups whose padding to the group's largest count
  stays under 25 %; each group is one gather, one ``bmm`` over its offsets and one
  ``scatter_add``. The centre offset of a submanifold kernel (the identity map) is a plain
  matmul. A k3 conv runs a few groups instead of 27 offsets, with little padding (a LiDAR voxel
  has few of its 26 neighbours, which is what im2col would pay for in full).
- ``"gemm"``: output-stationary im2col. Each output row gathers its K neighbours (a zero row for
  missing ones) into an (n, K * C_in) matrix and one matmul with the kernel viewed as
  (K * C_in, C_out) gives the output: no scatter, deterministic, exports as Gather + MatMul, two
  launches per conv, but it multiplies the zeros of missing neighbours too (on a LiDAR sweep,
  most of its FLOPs). Rows are chunked to bound memory. A transposed conv with kernel == stride
  (one parent per fine voxel) multiplies the coarse features by all K kernels and gathers.
- ``"loop"``: the textbook version, one gather - matmul - scatter per kernel offset over the
  valid pairs (the identity centre offset as a plain matmul). The reference and the benchmark's
  baseline.
- ``"packed"`` (default on CPU): the loop's arithmetic (useful FLOPs only, the same sums in the
  same order) with the pairs of consecutive offsets taken in cache-sized chunks: per chunk one
  gather, one matmul per offset into one buffer and one ``index_add_``, i.e. a few big ops per
  conv instead of 3 per offset, in reused scratch buffers: fewer op dispatches, which is what
  the narrow (16-64 channel) layers spend their time on; the wide ones are matmul bound. It also
  takes (N, B, C) features: B feature sets on one
  voxel set (the objects of the LiDAR memory encoder) in one pass (:func:`sparse_conv3d_objects`).

The default (``"auto"``): on a CPU there is no launch overhead to save and doing exactly the
useful FLOPs with cache-sized buffers wins, so ``"packed"`` (``"loop"`` under
:func:`~sam4d_core.modeling.reference_paths.reference_paths`) rather than ``"grouped"`` (padding
FLOPs, larger temporaries) or ``"gemm"``; on CUDA each op is a kernel launch, which is what
batching the offsets into groups saves (``python -m sam4d_core.modeling.sparse.benchmark``
compares them).

Accumulation uses ``scatter_add_`` with an index expanded to [P, C] (exports to ONNX as
ScatterElements, unlike ``index_add_``) except in ``"packed"``, a CPU inference path.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from sam4d_core.modeling.reference_paths import use_reference_paths
from sam4d_core.modeling.sparse.kernel_map import (
    KernelMap,
    get_kernel_map,
    get_transposed_kernel_map,
)
from sam4d_core.modeling.sparse.tensor import SparseTensor, make_ntuple

IMPLEMENTATIONS = ("grouped", "gemm", "loop", "packed")
# "auto": "grouped" on CUDA (few launches), "packed" elsewhere (see the module docstring).
_default_impl = "auto"
# Upper bound on the elements of one im2col chunk (n * K * C_in); 2**24 floats = 64 MiB.
_max_chunk_elems = 1 << 24
# Gathered input values per chunk of the "packed" implementation (2**18 floats = 1 MiB: in cache).
_packed_chunk_elems = 1 << 18
# Padding tolerated when offsets are grouped into one bmm (fraction of the group's real rows).
_max_group_waste = 0.25


def set_default_impl(impl: str) -> str:
    """Sets the implementation used by :class:`Conv3d` layers without an explicit one.

    Returns the previous default.
    """
    global _default_impl
    if impl not in (*IMPLEMENTATIONS, "auto"):
        raise ValueError(
            f"unknown sparse conv implementation {impl!r}; use one of {IMPLEMENTATIONS}"
        )
    previous, _default_impl = _default_impl, impl
    return previous


@contextmanager
def conv_impl(impl: str) -> Iterator[None]:
    """Context manager that switches the default implementation (used by tests and benchmarks)."""
    previous = set_default_impl(impl)
    try:
        yield
    finally:
        set_default_impl(previous)


def set_max_chunk_elems(value: int) -> int:
    """Sets the im2col chunk bound (elements); returns the previous one."""
    global _max_chunk_elems
    previous, _max_chunk_elems = _max_chunk_elems, int(value)
    return previous


def _conv_gemm(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """im2col convolution. feats (N_in, C_in), weight (K, C_in, C_out) -> (N_out, C_out)."""
    k, c_in, c_out = weight.shape
    if kmap.single_source:
        # (N_in, C_in) @ (C_in, K * C_out): every product a fine voxel may need, then one gather.
        prod = feats @ weight.permute(1, 0, 2).reshape(c_in, k * c_out)
        prod = torch.cat([prod.reshape(-1, c_out), prod.new_zeros(1, c_out)], dim=0)
        return prod.index_select(0, kmap.source_index())
    padded = torch.cat([feats, feats.new_zeros(1, c_in)], dim=0)
    nbr = kmap.padded_nbr()
    w = weight.reshape(k * c_in, c_out)
    n_out = nbr.shape[0]
    chunk = max(1, _max_chunk_elems // max(1, k * c_in))
    outs = []
    for start in range(0, n_out, chunk):
        rows = nbr[start : start + chunk]
        cols = padded.index_select(0, rows.reshape(-1)).reshape(rows.shape[0], k * c_in)
        outs.append(cols @ w)
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=0)


def _conv_grouped(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Adaptive grouped gather - bmm - scatter over valid pairs (plus the identity offset)."""
    c_out = weight.shape[2]
    if kmap.identity_k is not None:
        # The centre of a submanifold kernel maps every row to itself: a plain matmul.
        out = torch.cat([feats @ weight[kmap.identity_k], feats.new_zeros(1, c_out)], dim=0)
    else:
        out = feats.new_zeros(kmap.num_out + 1, c_out)
    padded = torch.cat([feats, feats.new_zeros(1, feats.shape[1])], dim=0)
    for group in kmap.offset_groups(_max_group_waste):
        g, m = group.in_pad.shape
        gathered = padded.index_select(0, group.in_pad.reshape(-1)).reshape(g, m, -1)
        prod = torch.bmm(gathered, weight.index_select(0, group.ks))  # (G, M, C_out)
        index = group.out_pad.reshape(-1, 1).expand(-1, c_out)
        # .to(): under autocast prod may be bf16/fp16 while a zero-initialized out is fp32.
        out.scatter_add_(0, index, prod.reshape(-1, c_out).to(out.dtype))
    return out[: kmap.num_out]


def _conv_loop(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """Per-offset gather - matmul - scatter over valid pairs only (reference)."""
    in_idx, out_idx, counts = kmap.pairs()
    if kmap.identity_k is not None:
        out = feats @ weight[kmap.identity_k]  # the centre offset maps every row to itself
    else:
        out = feats.new_zeros(kmap.num_out, weight.shape[2])
    start = 0
    for k, count in enumerate(counts):
        sl = slice(start, start + count)
        start += count
        if count == 0 or k == kmap.identity_k:
            continue
        prod = (feats.index_select(0, in_idx[sl]) @ weight[k]).to(out.dtype)
        out.scatter_add_(0, out_idx[sl, None].expand(-1, prod.shape[1]), prod)
    return out


_scratch_buffers = threading.local()


def _scratch(slot: int, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device):
    """A (shape) view of a per-thread buffer that grows and is reused across calls (its pages stay
    mapped; the CPU allocator returns large blocks to the OS, so fresh ones fault on first use).
    The contents are garbage; a slot must not be used by two live views at once."""
    buffers = getattr(_scratch_buffers, "buffers", None)
    if buffers is None:
        buffers = _scratch_buffers.buffers = {}
    key = (slot, dtype, device)
    n = math.prod(shape)
    buf = buffers.get(key)
    if buf is None or buf.numel() < n:
        with torch.inference_mode(False), torch.no_grad():
            buf = torch.empty(max(n, 1), dtype=dtype, device=device)
        buffers[key] = buf
    return buf[:n].view(shape)


def _conv_packed(feats: torch.Tensor, weight: torch.Tensor, kmap: KernelMap) -> torch.Tensor:
    """The loop's arithmetic with a few big ops instead of 3 per offset.

    The (input, output) pairs of consecutive offsets are taken in chunks of about
    ``_packed_chunk_elems`` gathered values (so that they stay in cache): per chunk one gather of
    the input rows, one matmul per offset on its slice (into one buffer), one ``index_add_``.
    Contributions reach each output row in offset order, as in the loop.

    ``feats`` may be (N_in, C_in) or (N_in, B, C_in) (B feature sets on the same voxels, e.g.
    objects: one matmul per offset for all of them); the output is (N_out, C_out) or
    (N_out, B, C_out).
    """
    in_idx, out_idx, segments = kmap.packed_pairs()
    c_in, c_out = weight.shape[1], weight.shape[2]
    if kmap.identity_k is not None:
        out = feats @ weight[kmap.identity_k]  # the centre offset maps every row to itself
    else:
        out = feats.new_zeros(kmap.num_out, *feats.shape[1:-1], c_out)
    if not segments:
        return out
    # ``out=`` records no gradients and bypasses autocast: concatenate products in those cases.
    track = (
        (torch.is_grad_enabled() and (feats.requires_grad or weight.requires_grad))
        or feats.dtype != weight.dtype
        or torch.is_autocast_enabled(feats.device.type)
    )
    dtype = torch.result_type(feats, weight)
    per_row = feats[0].numel() if feats.shape[0] else c_in  # gathered values per pair
    budget = max(1, _packed_chunk_elems // max(1, per_row))
    mid = feats.shape[1:-1]
    i = 0
    while i < len(segments):
        j = i + 1
        while j < len(segments) and segments[j][2] - segments[i][1] <= budget:
            j += 1
        lo, hi = segments[i][1], segments[j - 1][2]
        if track:
            gathered = feats.index_select(0, in_idx[lo:hi])
            prod = torch.cat([gathered[a - lo : b - lo] @ weight[k] for k, a, b in segments[i:j]])
        else:
            # Reused scratch buffers: fresh large tensors cost page faults on every call.
            gathered = _scratch(0, (hi - lo, *feats.shape[1:]), feats.dtype, feats.device)
            torch.index_select(feats, 0, in_idx[lo:hi], out=gathered)
            prod = _scratch(1, (hi - lo, *mid, c_out), dtype, feats.device)
            for k, a, b in segments[i:j]:
                torch.mm(
                    gathered[a - lo : b - lo].reshape(-1, c_in),
                    weight[k],
                    out=prod[a - lo : b - lo].view(-1, c_out),
                )
        if track:
            out = out.index_add(0, out_idx[lo:hi], prod.to(out.dtype))
        else:
            out.index_add_(0, out_idx[lo:hi], prod.to(out.dtype))
        i = j
    return out


def sparse_conv3d_objects(
    conv: Conv3d, feats: torch.Tensor, template: SparseTensor
) -> tuple[torch.Tensor, SparseTensor] | None:
    """``conv`` applied to B feature sets (B, N, C_in) on ``template``'s voxels in one pass
    ("packed", one matmul per offset for all B), or None where it does not apply (reference
    paths, CUDA, an explicit implementation, a transposed or 1x1 conv): loop over the B sets.

    Returns:
        (B, N_out, C_out) and a sparse tensor on the output voxels (features of the last set).
    """
    x = template
    if (
        use_reference_paths()
        or feats.is_cuda
        or conv.impl is not None
        or _default_impl not in ("auto", "packed")
        or conv.transposed
        or conv.kernel.dim() != 3
        or feats.dim() != 3
        or feats.shape[1] != x.num_points
    ):
        return None
    kmap = get_kernel_map(x, conv.kernel_size, conv.stride, make_ntuple(conv.dilation))  # type: ignore[arg-type]
    rows_first = feats.transpose(0, 1).contiguous()  # (N, B, C_in): one gather row per voxel
    out = _conv_packed(rows_first, conv.kernel, kmap)
    if conv.bias is not None:
        out = out + conv.bias
    out = out.transpose(0, 1)
    return out, SparseTensor(out[-1], kmap.out_coords, kmap.out_stride, x.cache)


def sparse_conv3d(
    x: SparseTensor,
    kernel: torch.Tensor,
    kernel_size: int | tuple[int, ...] = 3,
    stride: int | tuple[int, ...] = 1,
    dilation: int | tuple[int, ...] = 1,
    bias: torch.Tensor | None = None,
    transposed: bool = False,
    impl: str | None = None,
) -> SparseTensor:
    """Functional sparse convolution.

    Args:
        x: input sparse tensor with (N_in, C_in) features.
        kernel: [K^3, C_in, C_out] (or [C_in, C_out] for a 1x1x1 stride-1 conv).
        kernel_size, stride, dilation: ints or 3-tuples.
        bias: optional [C_out].
        transposed: go back to the finer level ``x.stride / stride`` (U-Net decoder).
        impl: ``"grouped"``, ``"gemm"``, ``"loop"`` or ``"auto"`` (default: the module-wide
            default, see :func:`set_default_impl`).

    Returns:
        The output sparse tensor, sharing ``x``'s cache.
    """
    ks = make_ntuple(kernel_size)
    st = make_ntuple(stride)
    dil = make_ntuple(dilation)
    impl = impl or _default_impl
    if impl == "auto":
        if x.feats.is_cuda:
            impl = "grouped"
        else:
            impl = "loop" if use_reference_paths() else "packed"
    if ks == (1, 1, 1) and st == (1, 1, 1):
        weight = kernel if kernel.dim() == 2 else kernel.reshape(kernel.shape[-2:])
        feats = x.feats @ weight
        if bias is not None:
            feats = feats + bias
        return x.replace_feats(feats)
    if transposed:
        kmap = get_transposed_kernel_map(x, ks, st, dil)  # type: ignore[arg-type]
    else:
        kmap = get_kernel_map(x, ks, st, dil)  # type: ignore[arg-type]
    weight = kernel if kernel.dim() == 3 else kernel[None]
    if impl == "grouped":
        feats = _conv_grouped(x.feats, weight, kmap)
    elif impl == "gemm":
        feats = _conv_gemm(x.feats, weight, kmap)
    elif impl == "loop":
        feats = _conv_loop(x.feats, weight, kmap)
    elif impl == "packed":
        feats = _conv_packed(x.feats, weight, kmap)
    else:
        raise ValueError(f"unknown sparse conv implementation {impl!r}")
    if bias is not None:
        feats = feats + bias
    return SparseTensor(feats, kmap.out_coords, kmap.out_stride, x.cache)


class Conv3d(nn.Module):
    """Sparse 3D convolution layer with torchsparse's parameter names and layout.

    Args:
        in_channels, out_channels: feature channels.
        kernel_size: int or 3-tuple.
        stride: conv stride; > 1 downsamples (or upsamples when ``transposed``).
        dilation: kernel dilation.
        bias: add a learnable bias (torchsparse's default is no bias).
        transposed: transposed convolution back to the finer level's cached coordinates.
        impl: force ``"grouped"``, ``"gemm"`` or ``"loop"`` for this layer (default: the
            module-wide default).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...] = 3,
        stride: int | tuple[int, ...] = 1,
        dilation: int = 1,
        bias: bool = False,
        transposed: bool = False,
        impl: str | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = make_ntuple(kernel_size)
        self.stride = make_ntuple(stride)
        self.dilation = dilation
        self.transposed = transposed
        self.impl = impl
        self.kernel_volume = math.prod(self.kernel_size)
        if self.kernel_volume > 1 or self.stride != (1, 1, 1):
            self.kernel = nn.Parameter(torch.empty(self.kernel_volume, in_channels, out_channels))
        else:
            self.kernel = nn.Parameter(torch.empty(in_channels, out_channels))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torchsparse's initialization: U(-std, std), std = 1 / sqrt(fan * K^3).
        fan = self.out_channels if self.transposed else self.in_channels
        std = 1.0 / math.sqrt(fan * self.kernel_volume)
        nn.init.uniform_(self.kernel, -std, std)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -std, std)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}"
        if self.stride != (1, 1, 1):
            s += f", stride={self.stride}"
        if self.dilation != 1:
            s += f", dilation={self.dilation}"
        if self.bias is None:
            s += ", bias=False"
        if self.transposed:
            s += ", transposed=True"
        return s

    def forward(self, x: SparseTensor) -> SparseTensor:
        return sparse_conv3d(
            x,
            self.kernel,
            kernel_size=self.kernel_size,
            stride=self.stride,
            dilation=self.dilation,
            bias=self.bias,
            transposed=self.transposed,
            impl=self.impl,
        )


class BatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the (N, C) features of a sparse tensor (torchsparse ``spnn.BatchNorm``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace_feats(super().forward(x.feats))


class ReLU(nn.ReLU):
    """ReLU on the features of a sparse tensor (torchsparse ``spnn.ReLU``)."""

    def forward(self, x: SparseTensor) -> SparseTensor:  # type: ignore[override]
        return x.replace_feats(super().forward(x.feats))
