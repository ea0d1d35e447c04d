"""Exact-release mode: our fast sparse paths against a slow reference of torchsparse 2.1's default
semantics, written here from its rules (``hashmap_on_the_fly`` kernel maps as
``sparsemapping_cuda.cu`` builds them, ``voxel_to_point`` + ``calc_ti_weights`` as the released
SAM4D calls them), on random sparse grids whose maxima are odd and even on each axis, with
duplicate points and points exactly on cell borders.

The references work in level units with Python dicts and loops: small, slow, obviously correct.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from sam4d_core.modeling.configs import get_config
from sam4d_core.modeling.memory_encoder import build_mask_downsample_pts
from sam4d_core.modeling.reference_paths import reference_paths
from sam4d_core.modeling.sparse import Conv3d, SparseTensor, conv_impl, devoxelize
from sam4d_core.modeling.sparse.tensor import SparseCache
from sam4d_core.modeling.sparse.voxelize import released_devoxelize_weights, sam4d_voxelize

torch.set_num_threads(1)

Coord = tuple[int, int, int, int]


# ---------------------------------------------------------------------------------------------
# References (level units, [b, x, y, z]).


def _kernel_index_to_j(k: int, ksize: int) -> tuple[int, int, int]:
    """Per-axis kernel index of flat index k: odd volume x fastest, even volume z fastest."""
    if ksize**3 % 2 == 1:
        return k % ksize, (k // ksize) % ksize, k // (ksize * ksize)
    return k // (ksize * ksize), (k // ksize) % ksize, k % ksize


def ref_submanifold(coords: list[Coord], ksize: int) -> list[list[int]]:
    """out_in_map of an odd submanifold conv: input at q + (j - (K - 1) / 2)."""
    index = {c: i for i, c in enumerate(coords)}
    table = []
    for b, x, y, z in coords:
        row = []
        for k in range(ksize**3):
            jx, jy, jz = _kernel_index_to_j(k, ksize)
            h = (ksize - 1) // 2
            row.append(index.get((b, x + jx - h, y + jy - h, z + jz - h), -1))
        table.append(row)
    return table


def ref_strided(coords: list[Coord], ksize: int, stride: int) -> tuple[list[Coord], list[list]]:
    """torchsparse 2.1 hashmap_on_the_fly downsampling, as the CUDA kernel does it: for input p
    and flat index k (per-axis j), ``v = p + j - (K - 1)`` must divide by s, ``q = v / s`` must lie
    in ``[0, (max_in - (K - 1)) // s]``, and the output's map gets ``[q, K^3 - 1 - k] = p``."""
    top = [max(c[a] for c in coords) for a in (1, 2, 3)]
    bound = [(m - (ksize - 1)) // stride for m in top]
    vol = ksize**3
    outs: dict[Coord, dict[int, int]] = {}
    for row, (b, *p) in enumerate(coords):
        for k in range(vol):
            q = []
            for a, j in enumerate(_kernel_index_to_j(k, ksize)):
                v = p[a] + j - (ksize - 1)
                if v % stride != 0:
                    break
                v //= stride
                if not 0 <= v <= bound[a]:
                    break
                q.append(v)
            else:
                outs.setdefault((b, *q), {})[vol - 1 - k] = row
    out_coords = sorted(outs)
    return out_coords, [[outs[q].get(k, -1) for k in range(vol)] for q in out_coords]


def ref_conv(feats: np.ndarray, table: list[list[int]], weight: np.ndarray) -> np.ndarray:
    """out[q] = sum_k feats[table[q][k]] @ weight[k] (float64)."""
    out = np.zeros((len(table), weight.shape[2]))
    for q, row in enumerate(table):
        for k, p in enumerate(row):
            if p >= 0:
                out[q] += feats[p] @ weight[k]
    return out


def ref_transposed(table: list[list[int]], num_fine: int) -> list[list[int]]:
    """Transposed map: fine p gets coarse q through k where the forward map has [q, k] = p."""
    out = [[-1] * len(table[0]) for _ in range(num_fine)]
    for q, row in enumerate(table):
        for k, p in enumerate(row):
            if p >= 0:
                out[p][k] = q
    return out


def ref_voxel_to_point(
    voxels: dict[Coord, int], feats: np.ndarray, pts: np.ndarray, scale: int
) -> np.ndarray:
    """Released ``voxel_to_point``: neighbours ``floor(p / s) + {0, s}^3`` (z fastest) in level
    units, ``calc_ti_weights`` on the columns [b, x, y, z] read as x, y, z (float32)."""
    pts = pts.astype(np.float32)
    offs = [(x, y, z) for x in (0, scale) for y in (0, scale) for z in (0, scale)]
    out = np.zeros((len(pts), feats.shape[1]))
    s = np.float32(scale)
    for i, p in enumerate(pts):
        base = np.floor(p[1:4] / s).astype(int)
        idx = [voxels.get((int(p[0]), *(base + np.array(o)).tolist()), -1) for o in offs]
        pf = np.floor(p / s) * s
        pc = pf + s
        x, y, z = p[0], p[1], p[2]
        xf, yf, zf, xc, yc, zc = pf[0], pf[1], pf[2], pc[0], pc[1], pc[2]
        w = np.array(
            [
                (xc - x) * (yc - y) * (zc - z),
                (xc - x) * (yc - y) * (z - zf),
                (xc - x) * (y - yf) * (zc - z),
                (xc - x) * (y - yf) * (z - zf),
                (x - xf) * (yc - y) * (zc - z),
                (x - xf) * (yc - y) * (z - zf),
                (x - xf) * (y - yf) * (zc - z),
                (x - xf) * (y - yf) * (z - zf),
            ],
            dtype=np.float32,
        ) / np.float32(scale**3)
        w[np.array(idx) == -1] = 0
        w = w / (w.sum() + np.float32(1e-8))
        for k in range(8):
            if idx[k] >= 0:
                out[i] += w[k] * feats[idx[k]]
    return out


# ---------------------------------------------------------------------------------------------
# Random grids.


def random_grid(maxima: tuple[int, int, int], seed: int, batches: int = 1) -> list[Coord]:
    """Sorted unique voxels in [0, max] per axis, each maximum attained, ~25 % occupancy."""
    rng = np.random.default_rng(seed)
    cells = set()
    for b in range(batches):
        n = int(0.25 * np.prod([m + 1 for m in maxima]))
        pts = rng.integers(0, np.array(maxima) + 1, size=(n, 3))
        cells.update((b, *map(int, p)) for p in pts)
        for a in range(3):  # the maximum of every axis is present
            p = [int(rng.integers(0, m + 1)) for m in maxima]
            p[a] = maxima[a]
            cells.add((b, *p))
    return sorted(cells)


# Odd and even maxima on every axis, and every residue mod 4 (k4 s4 keeps its top plane only for
# a maximum of 3 mod 4, k2 s2 only for an odd one).
MAXIMA = [m for m in itertools.product((8, 9), (10, 11), (6, 7))] + [(12, 13, 14), (5, 9, 15)]


def tensor(coords: list[Coord], channels: int, seed: int) -> SparseTensor:
    g = torch.Generator().manual_seed(seed)
    c = torch.tensor(coords, dtype=torch.int32)
    feats = torch.randn(len(coords), channels, generator=g, dtype=torch.float64)
    return SparseTensor(feats, c, stride=1, cache=SparseCache(release_semantics=True))


def conv(cin: int, cout: int, k: int, s: int = 1, transposed: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    return Conv3d(cin, cout, k, stride=s, transposed=transposed).double()


def level(coords: torch.Tensor, stride: int) -> list[Coord]:
    c = coords.to(torch.int64).clone()
    c[:, 1:] //= stride
    return [tuple(r) for r in c.tolist()]


PATHS = ["fast", "reference"]


def _run(path: str, fn):
    with reference_paths(path == "reference"), conv_impl("loop" if path == "reference" else "auto"):
        return fn()


# ---------------------------------------------------------------------------------------------
# Kernel maps: submanifold, strided k2 s2 (twice), k4 s4, transposed.


@pytest.mark.parametrize("maxima", MAXIMA)
@pytest.mark.parametrize("path", PATHS)
def test_strided_chain_matches_torchsparse_default(maxima, path) -> None:
    coords = random_grid(maxima, seed=sum(maxima), batches=2)
    x = tensor(coords, 3, seed=1)
    down1, down2, k4 = conv(3, 4, 2, 2, seed=2), conv(4, 5, 2, 2, seed=3), conv(3, 2, 4, 4, seed=4)
    sub = conv(4, 4, 3, seed=5)
    up = conv(5, 4, 2, 2, transposed=True, seed=6)

    def forward():
        y1 = down1(x)
        y1s = sub(y1)
        y2 = down2(y1s)
        return y1, y1s, y2, up(y2), k4(x)

    y1, y1s, y2, y_up, y4 = _run(path, forward)
    f0 = x.feats.numpy()
    # stride 1 -> 2
    c1, t1 = ref_strided(coords, 2, 2)
    assert level(y1.coords, 2) == c1
    r1 = ref_conv(f0, t1, down1.kernel.detach().numpy())
    np.testing.assert_allclose(y1.feats.detach().numpy(), r1, atol=1e-10)
    # submanifold k3 at stride 2
    rs = ref_conv(r1, ref_submanifold(c1, 3), sub.kernel.detach().numpy())
    np.testing.assert_allclose(y1s.feats.detach().numpy(), rs, atol=1e-10)
    # stride 2 -> 4 (bound from the stride-2 level's own maximum)
    c2, t2 = ref_strided(c1, 2, 2)
    assert level(y2.coords, 4) == c2
    r2 = ref_conv(rs, t2, down2.kernel.detach().numpy())
    np.testing.assert_allclose(y2.feats.detach().numpy(), r2, atol=1e-10)
    # transposed 4 -> 2: back onto every stride-2 voxel (orphans of the bound get nothing)
    assert level(y_up.coords, 2) == c1
    ru = ref_conv(r2, ref_transposed(t2, len(c1)), up.kernel.detach().numpy())
    np.testing.assert_allclose(y_up.feats.detach().numpy(), ru, atol=1e-10)
    # k4 s4 from stride 1 (mask_downsample_pts): weight index = position in the parent cell.
    c4, t4 = ref_strided(coords, 4, 4)
    ref4 = ref_conv(f0, t4, k4.kernel.detach().numpy())
    # Our conv lands on the stride-4 voxels the chain registered; the release's own k4 s4 set
    # is never smaller on these grids, and where it is larger those cells are absent here.
    ours4 = dict(zip(level(y4.coords, 4), y4.feats.detach().numpy(), strict=True))
    assert set(ours4) <= set(c4)
    for q, v in zip(c4, ref4, strict=True):
        if q in ours4:
            np.testing.assert_allclose(ours4[q], v, atol=1e-10)


@pytest.mark.parametrize("maxima", MAXIMA[:4])
def test_k4s4_alone_and_top_plane_rule(maxima) -> None:
    """k4 s4 on a fresh cache: its own coordinates and map equal the reference's."""
    coords = random_grid(maxima, seed=7)
    x = tensor(coords, 2, seed=8)
    k4 = conv(2, 3, 4, 4, seed=9)
    y = k4(x)
    c4, t4 = ref_strided(coords, 4, 4)
    assert level(y.coords, 4) == c4
    np.testing.assert_allclose(
        y.feats.detach().numpy(), ref_conv(x.feats.numpy(), t4, k4.kernel.detach().numpy()), 1e-10
    )
    for a, m in enumerate(maxima):
        kept = max(q[a + 1] for q in c4)
        assert kept == (m // 4 if m % 4 == 3 else m // 4 - 1)


def test_submanifold_and_k2_are_the_same_in_both_modes() -> None:
    coords = random_grid((8, 10, 6), seed=3)
    sub, down = conv(2, 3, 3, seed=1), conv(2, 3, 2, 2, seed=2)
    ref = tensor(coords, 2, seed=4)
    plain = SparseTensor(ref.feats, ref.coords, 1)
    torch.testing.assert_close(sub(ref).feats, sub(plain).feats)
    # k2 s2: same offsets; the release only drops the top plane (even maxima here).
    a, b = down(ref), down(plain)
    keep = {tuple(r) for r in a.coords.tolist()}
    rows = [i for i, r in enumerate(b.coords.tolist()) if tuple(r) in keep]
    torch.testing.assert_close(a.feats, b.feats[rows])
    assert len(rows) < b.coords.shape[0]


def test_mask_downsample_pts_applies_the_kernel_by_position_in_the_parent() -> None:
    """Released meaning of ``mask_downsample_pts.kernel[k]``: k = the input's position inside its
    stride-4 parent, z fastest (k = 16 ix + 4 iy + iz)."""
    coords = [(0, 4 * 2 + 1, 4 * 1 + 2, 4 * 0 + 3), (0, 11, 7, 3)]  # maxima 11, 7, 3: all kept
    x = SparseTensor(
        torch.tensor([[1.0], [0.0]]),
        torch.tensor(coords, dtype=torch.int32),
        1,
        SparseCache(release_semantics=True),
    )
    m = build_mask_downsample_pts()
    with torch.no_grad():
        m.kernel.zero_()
        m.bias.zero_()
        m.kernel[16 * 1 + 4 * 2 + 3] = 5.0
    y = m(x)
    assert y.coords.tolist() == [[0, 8, 4, 0]]
    assert y.feats.item() == 5.0


# ---------------------------------------------------------------------------------------------
# Voxelization and devoxelization.


def cloud(seed: int, n: int = 300) -> np.ndarray:
    """Points on a 1 cm grid (as stored clouds often are), with duplicates and cell borders."""
    rng = np.random.default_rng(seed)
    xyz = np.round(rng.uniform([-3, -4, -1], [3, 4, 1], size=(n, 3)), 2)
    xyz[:20] = xyz[20:40]  # duplicates
    xyz[40:60] = np.round(xyz[40:60] / 0.6) * 0.6  # on stride-4 cell borders of the 0.15 m grid
    xyz[60:80] = np.round(xyz[60:80] / 0.15) * 0.15  # on 0.15 m borders
    return xyz


def test_float64_quantisation_as_released() -> None:
    xyz = cloud(0)
    c64 = np.trunc(xyz / np.float64(0.05)).astype(np.int32)  # the released pipeline
    c64 = c64 - c64.min(0)
    grid64 = (torch.from_numpy(c64).float() * torch.tensor(0.05)) / torch.tensor(0.15)
    exact = sam4d_voxelize(torch.from_numpy(xyz), release=True)
    torch.testing.assert_close(exact.point_grid_coords, grid64, rtol=0, atol=0)
    ours = sam4d_voxelize(torch.from_numpy(xyz).float())  # float32: some points move
    assert not torch.equal(ours.point_grid_coords, grid64)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("path", PATHS)
def test_devoxelization_matches_released_voxel_to_point(seed, path) -> None:
    xyz = torch.from_numpy(cloud(seed))
    batch = torch.tensor([0] * 200 + [1] * 100)  # batch 1 weighs differently (the batch quirk)
    vox = sam4d_voxelize(xyz, batch_idx=batch, release=True)
    x = SparseTensor(vox.voxels.feats, vox.voxels.coords, 1, SparseCache(release_semantics=True))
    down1, down2 = conv(1, 2, 2, 2, seed=1).float(), conv(2, 3, 2, 2, seed=2).float()

    def forward():
        s4 = down2(down1(x))
        grid, b = vox.point_grid_coords, vox.point_batch
        per_voxel = released_devoxelize_weights(
            s4, grid, b, voxels=(vox.voxels.coords, vox.voxels.point_to_voxel)
        )
        per_point = released_devoxelize_weights(s4, grid, b)
        return s4, per_voxel, per_point

    s4, (rows, w), (rows_p, w_p) = _run(path, forward)
    torch.testing.assert_close(rows, rows_p)
    torch.testing.assert_close(w, w_p)
    feats = torch.randn(s4.num_points, 4, dtype=torch.float32)
    table = {c: i for i, c in enumerate(level(s4.coords, 4))}
    pts4 = torch.cat([vox.point_batch[:, None].float(), vox.point_grid_coords], 1).numpy()
    ref = ref_voxel_to_point(table, feats.double().numpy(), pts4, 4)
    np.testing.assert_allclose(devoxelize(feats, rows, w).numpy(), ref, atol=2e-6)
    # What it is: own voxel blended with voxels 4 cells away in +y / +z (batch 0), not trilinear.
    b0 = vox.point_batch == 0
    assert bool((w[b0][:, 4:] == 0).all())


def test_official_config_is_exact_release_and_ours_are_not() -> None:
    assert get_config("sam4d_hiera_s_mink34").exact_release
    for name in ("sam4d_small", "sam4d_tiny"):
        cfg = get_config(name)
        assert not cfg.point.exact_release and not cfg.image.exact_release


# ---------------------------------------------------------------------------------------------
# The mode travels with the model config: streaming tracker and offline predictor.


def test_tracker_and_predictor_honour_the_mode_through_the_config() -> None:
    from sam4d_core.build_sam import build_sam4d
    from sam4d_core.data.synthetic import generate_sequence, make_config
    from sam4d_core.modeling.prompts import LidarPrompt as ModelLidarPrompt
    from sam4d_core.modeling.prompts import ObjectPrompts
    from sam4d_core.tracking.engine import encode_sensor_frame
    from sam4d_core.tracking.offline_predictor import SAM4DPredictor
    from sam4d_core.tracking.records import LidarPrompt, ObjectPrompt
    from sam4d_core.tracking.streaming_tracker import StreamingTracker

    seq = generate_sequence(make_config("tiny", num_frames=2))
    plain_cfg = get_config("sam4d_tiny")
    exact_cfg = dataclasses.replace(
        plain_cfg,
        image=dataclasses.replace(plain_cfg.image, exact_release=True),
        point=dataclasses.replace(plain_cfg.point, exact_release=True),
    )
    torch.manual_seed(0)
    plain = build_sam4d(plain_cfg)
    exact = build_sam4d(exact_cfg)
    exact.load_state_dict(plain.state_dict())
    frame = seq[0]
    xyz = frame.points[frame.point_labels == 1][:1, :3].astype(np.float64)

    def tracker_scores(model):
        tr = StreamingTracker(model)
        tr.step(frame)
        r = tr.add_prompts([ObjectPrompt(1, lidar=LidarPrompt(points=xyz, labels=np.array([1])))])
        return r.objects[0].point_scores

    def predictor_logits(model):
        pred = SAM4DPredictor(model)
        st = pred.init_state_from_sequence(seq)
        prompt = {"pts": {"point_coords": [xyz.tolist()], "point_labels": [[1]]}}
        return pred.add_new_points_or_box(st, 0, 1, point_prompts=prompt)[2]["pts"].flatten()

    got = tracker_scores(exact)
    with torch.inference_mode():
        slots = {name: i for i, name in enumerate(frame.cameras)}
        f = encode_sensor_frame(exact, frame, slots)
        assert f.lidar is not None and (
            f.lidar.hierarchy.missing_s4 or f.lidar.hierarchy.missing_s8
        )
        out = exact.track_step(f, [ObjectPrompts(lidar=ModelLidarPrompt(xyz, [1]))])
        direct = torch.sigmoid(out.lidar.point_logits[0]).numpy()
    np.testing.assert_allclose(got, direct, atol=1e-5)
    assert np.abs(got - tracker_scores(plain)).max() > 1e-3
    pe, pp = predictor_logits(exact), predictor_logits(plain)
    np.testing.assert_allclose(torch.sigmoid(pe).numpy(), direct, atol=1e-5)
    assert (pe - pp).abs().max() > 1e-3
