"""Sparse convolution == dense conv3d on small random occupied grids, both implementations.

The dense reference: scatter the sparse features into a (B, C, X, Y, Z) grid at the tensor's level,
run ``torch.nn.functional.conv3d`` / ``conv_transpose3d`` with the kernel mapped through
torchsparse's offset order, and read the result at the sparse output sites.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sam4d_core.modeling.sparse import Conv3d, SparseTensor, conv_impl, sparse_conv3d
from sam4d_core.modeling.sparse.conv import IMPLEMENTATIONS
from sam4d_core.modeling.sparse.hashing import HashTable, hash_coords, unhash_coords
from sam4d_core.modeling.sparse.kernel_map import kernel_offsets

GRID = 8


def random_sparse(
    channels: int, batch: int = 2, grid: int = GRID, density: float = 0.3, seed: int = 0
) -> SparseTensor:
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, grid, grid, grid, generator=g) < density
    coords = occ.nonzero().to(torch.int32)
    # Shuffle rows: nothing may depend on the input order.
    coords = coords[torch.randperm(coords.shape[0], generator=g)]
    feats = torch.randn(coords.shape[0], channels, generator=g, dtype=torch.float64)
    return SparseTensor(feats, coords, stride=1)


def to_dense(feats: torch.Tensor, coords: torch.Tensor, stride: int, batch: int, size: int):
    """(B, C, size, size, size) grid at the level of ``stride`` (differentiable in feats)."""
    lvl = (coords[:, 1:] // stride).long()
    dense = feats.new_zeros(batch, size, size, size, feats.shape[1])
    dense = dense.index_put((coords[:, 0].long(), lvl[:, 0], lvl[:, 1], lvl[:, 2]), feats)
    return dense.permute(0, 4, 1, 2, 3)


def read_dense(dense: torch.Tensor, coords: torch.Tensor, stride: int, shift: int = 0):
    lvl = (coords[:, 1:] // stride).long() + shift
    return dense.permute(0, 2, 3, 4, 1)[coords[:, 0].long(), lvl[:, 0], lvl[:, 1], lvl[:, 2]]


def dense_weight(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """[K^3, C_in, C_out] in torchsparse order -> dense (C_out, C_in, k, k, k)."""
    offs = kernel_offsets((k, k, k)) + (k - 1) // 2
    w = kernel.new_zeros(kernel.shape[2], kernel.shape[1], k, k, k)
    w[:, :, offs[:, 0], offs[:, 1], offs[:, 2]] = kernel.permute(2, 1, 0)
    return w


def dense_conv(x: torch.Tensor, kernel: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """out[q] = sum_o x[stride * q + o] W[o], o = i - (k-1)//2, for q >= 0 (zero padding)."""
    lo = (k - 1) // 2
    xp = F.pad(x, (lo, k, lo, k, lo, k))
    return F.conv3d(xp, dense_weight(kernel, k), stride=stride)


def dense_conv_transpose(x: torch.Tensor, kernel: torch.Tensor, k: int, stride: int):
    """out[stride * q + o] += x[q] W[o]; returned with a shift of (k-1)//2 (see read_dense)."""
    w = dense_weight(kernel, k).transpose(0, 1)  # (C_in, C_out, k, k, k)
    return F.conv_transpose3d(x, w, stride=stride)


def coord_set(coords: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(r) for r in coords.tolist()}


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("k", [3, 2])
def test_submanifold_matches_dense(impl: str, k: int) -> None:
    x = random_sparse(channels=5)
    kernel = torch.randn(k**3, 5, 7, dtype=torch.float64)
    bias = torch.randn(7, dtype=torch.float64)
    y = sparse_conv3d(x, kernel, kernel_size=k, bias=bias, impl=impl)
    assert y.coords is x.coords and y.stride == (1, 1, 1)
    dense = dense_conv(to_dense(x.feats, x.coords, 1, 2, GRID), kernel, k, 1)
    torch.testing.assert_close(y.feats, read_dense(dense, x.coords, 1) + bias)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("k", [2, 3])
def test_strided_matches_dense(impl: str, k: int) -> None:
    x = random_sparse(channels=4, seed=1)
    kernel = torch.randn(k**3, 4, 6, dtype=torch.float64)
    y = sparse_conv3d(x, kernel, kernel_size=k, stride=2, impl=impl)
    assert y.stride == (2, 2, 2)
    assert bool((y.coords[:, 1:] % 2 == 0).all())
    dense = dense_conv(to_dense(x.feats, x.coords, 1, 2, GRID), kernel, k, 2)
    torch.testing.assert_close(y.feats, read_dense(dense, y.coords, 2))
    # The output sites are exactly the sites whose window touches an input.
    cells = x.coords[:, 1:].long()
    if k == 2:
        expected = torch.cat([x.coords[:, :1].long(), cells // 2 * 2], dim=1)
        assert coord_set(y.coords) == coord_set(expected)
    # Rows come out sorted by (b, x, y, z), like torchsparse 2.1's torch.unique(dim=0).
    keys = hash_coords(y.coords)
    assert bool((keys[1:] > keys[:-1]).all())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_submanifold_at_stride_two_matches_dense(impl: str) -> None:
    # Offsets must scale with the tensor stride: run a k3 conv on the stride-2 level.
    x = random_sparse(channels=3, seed=2)
    down = torch.randn(8, 3, 4, dtype=torch.float64)
    kernel = torch.randn(27, 4, 5, dtype=torch.float64)
    y = sparse_conv3d(x, down, kernel_size=2, stride=2, impl=impl)
    z = sparse_conv3d(y, kernel, kernel_size=3, impl=impl)
    dense_y = to_dense(y.feats, y.coords, 2, 2, GRID // 2)
    dense = dense_conv(dense_y, kernel, 3, 1)
    torch.testing.assert_close(z.feats, read_dense(dense, y.coords, 2))


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("k", [2, 3])
def test_transposed_matches_dense(impl: str, k: int) -> None:
    x = random_sparse(channels=4, seed=3)
    down = torch.randn(k**3, 4, 6, dtype=torch.float64)
    up = torch.randn(k**3, 6, 3, dtype=torch.float64)
    y = sparse_conv3d(x, down, kernel_size=k, stride=2, impl=impl)
    z = sparse_conv3d(y, up, kernel_size=k, stride=2, transposed=True, impl=impl)
    # Back on the fine level, on exactly the fine coordinates (same tensor, same row order).
    assert z.coords is x.coords and z.stride == (1, 1, 1)
    coarse_size = GRID // 2 + 2
    dense = dense_conv_transpose(to_dense(y.feats, y.coords, 2, 2, coarse_size), up, k, 2)
    torch.testing.assert_close(z.feats, read_dense(dense, x.coords, 1, shift=(k - 1) // 2))


def test_batched_equal_loop_with_small_chunks_and_any_grouping() -> None:
    from sam4d_core.modeling.sparse import conv as conv_mod

    x = random_sparse(channels=6, density=0.5, seed=4)
    kernel = torch.randn(27, 6, 5, dtype=torch.float64)
    ref = sparse_conv3d(x, kernel, kernel_size=3, impl="loop")
    previous = conv_mod.set_max_chunk_elems(27 * 6 * 7)  # 7 rows per chunk
    try:
        out = sparse_conv3d(x, kernel, kernel_size=3, impl="gemm")
    finally:
        conv_mod.set_max_chunk_elems(previous)
    torch.testing.assert_close(out.feats, ref.feats)
    kmap = next(iter(x.cache.kmaps.values()))
    for waste in (0.0, 0.25, 10.0):  # one offset per group ... everything in one group
        previous_waste, conv_mod._max_group_waste = conv_mod._max_group_waste, waste
        try:
            out = sparse_conv3d(x, kernel, kernel_size=3, impl="grouped")
        finally:
            conv_mod._max_group_waste = previous_waste
        torch.testing.assert_close(out.feats, ref.feats)
        groups = kmap.offset_groups(waste)
        assert sorted(k for g in groups for k in g.ks.tolist()) == [k for k in range(27) if k != 13]
    assert len(kmap.offset_groups(10.0)) == 1


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("transposed", [False, True])
def test_gradients_match_dense(transposed: bool, impl: str) -> None:
    x = random_sparse(channels=3, grid=6, density=0.4, seed=5)
    feats = x.feats.clone().requires_grad_(True)
    if transposed:
        coarse = sparse_conv3d(x, torch.randn(8, 3, 3, dtype=torch.float64), 2, stride=2)
        inp = SparseTensor(feats[: coarse.num_points], coarse.coords, 2, coarse.cache)
        kernel = torch.randn(8, 3, 4, dtype=torch.float64, requires_grad=True)
        out = sparse_conv3d(inp, kernel, 2, stride=2, transposed=True, impl=impl)
        dense_in = to_dense(inp.feats, inp.coords, 2, 2, 4)
        kd = kernel.detach().clone().requires_grad_(True)
        dense = dense_conv_transpose(dense_in, kd, 2, 2)
        dense_out = read_dense(dense, out.coords, 1)
    else:
        kernel = torch.randn(27, 3, 4, dtype=torch.float64, requires_grad=True)
        out = sparse_conv3d(SparseTensor(feats, x.coords, 1), kernel, 3, impl=impl)
        kd = kernel.detach().clone().requires_grad_(True)
        dense_in = to_dense(feats, x.coords, 1, 2, 6)
        dense_out = read_dense(dense_conv(dense_in, kd, 3, 1), x.coords, 1)
    g = torch.randn_like(out.feats)
    grads = torch.autograd.grad((out.feats * g).sum(), [feats, kernel])
    grads_dense = torch.autograd.grad((dense_out * g).sum(), [feats, kd])
    torch.testing.assert_close(grads[0], grads_dense[0])
    torch.testing.assert_close(grads[1], grads_dense[1])
    assert grads[0].abs().sum() > 0


def test_conv3d_module_layout_and_1x1() -> None:
    assert Conv3d(4, 8, 3).kernel.shape == (27, 4, 8)
    assert Conv3d(4, 8, 2, stride=2, transposed=True).kernel.shape == (8, 4, 8)
    assert Conv3d(4, 8, 1).kernel.shape == (4, 8)
    assert Conv3d(4, 8, 1, stride=2).kernel.shape == (1, 4, 8)
    assert Conv3d(4, 8, 3).bias is None and Conv3d(4, 8, 3, bias=True).bias.shape == (8,)
    assert set(Conv3d(4, 8, 3).state_dict()) == {"kernel"}
    x = random_sparse(channels=4)
    conv = Conv3d(4, 8, 1, bias=True).double()
    y = conv(x)
    torch.testing.assert_close(y.feats, x.feats @ conv.kernel + conv.bias)
    # k1 s2 keeps the 3-D layout and downsamples.
    y2 = Conv3d(4, 8, 1, stride=2).double()(x)
    assert y2.stride == (2, 2, 2)


def test_kernel_offsets_order() -> None:
    # Odd volume: x fastest; even volume: z fastest (torchsparse get_kernel_offsets).
    off3 = kernel_offsets((3, 3, 3))
    assert off3[:4].tolist() == [[-1, -1, -1], [0, -1, -1], [1, -1, -1], [-1, 0, -1]]
    assert off3[13].tolist() == [0, 0, 0]
    off2 = kernel_offsets((2, 2, 2))
    assert off2.tolist() == [
        [0, 0, 0], [0, 0, 1], [0, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1], [1, 1, 0], [1, 1, 1],
    ]  # fmt: skip
    assert kernel_offsets((7, 7, 7))[0].tolist() == [-3, -3, -3]


def test_hash_roundtrip_and_lookup() -> None:
    coords = torch.tensor([[0, -5, 3, 7], [1, 100, -200, 0], [3, 0, 0, 0]], dtype=torch.int32)
    assert torch.equal(unhash_coords(hash_coords(coords)), coords)
    table = HashTable.from_coords(coords)
    query = hash_coords(torch.tensor([[3, 0, 0, 0], [0, -5, 3, 8], [1, 100, -200, 0]]))
    assert table.lookup(query).tolist() == [2, -1, 1]


def test_shared_cache_reuses_kernel_maps() -> None:
    x = random_sparse(channels=2)
    conv_a = Conv3d(2, 2, 3).double()
    conv_b = Conv3d(2, 2, 3).double()
    y = conv_a(x)
    kmap = next(iter(x.cache.kmaps.values()))
    conv_b(y)
    assert len(x.cache.kmaps) == 1 and next(iter(y.cache.kmaps.values())) is kmap
    with conv_impl("loop"):
        torch.testing.assert_close(conv_b(y).feats, sparse_conv3d(y, conv_b.kernel, 3).feats)


def test_foreign_coordinates_get_their_own_cache() -> None:
    x = random_sparse(channels=2, seed=6)
    y = random_sparse(channels=2, seed=7)
    conv = Conv3d(2, 3, 3).double()
    conv(x)
    # y's coordinates differ from those x registered at stride 1: reusing x's maps would be wrong.
    z = SparseTensor(y.feats, y.coords, 1, x.cache)
    assert z.cache is not x.cache
    torch.testing.assert_close(conv(z).feats, conv(y).feats)
