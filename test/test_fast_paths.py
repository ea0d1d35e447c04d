"""The optimized inference paths against the reference code they replace.

Each fast path (see :mod:`sam4d_core.modeling.reference_paths`) is compared with the reference
implementation, which stays selectable with ``reference_paths()``: kernel maps (by column, mirrored
submanifold, by parent), the "packed" sparse convolution, per-voxel point bookkeeping and
devoxelization, the folded UMPE point MLP, the cached Hiera position embedding, and end to end
``sam4d_small`` (random weights, fixed seed) tracking KITTI frames (synthetic ones when the KITTI
sample is absent): every output within 1e-4 of the reference.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
import torch

from sam4d_core.modeling.reference_paths import reference_paths, use_reference_paths
from sam4d_core.modeling.sparse import SparseTensor, devoxelize, devoxelize_weights, sparse_conv3d
from sam4d_core.modeling.sparse import conv as conv_mod
from sam4d_core.modeling.sparse.hashing import HashTable, hash_coords
from sam4d_core.modeling.sparse.kernel_map import (
    get_kernel_map,
    get_transposed_kernel_map,
    kernel_offsets,
    lookup_neighbors,
    lookup_neighbors_by_column,
)
from sam4d_core.modeling.sparse.voxelize import (
    points_to_voxel_index,
    pool_points_to_voxels,
    sam4d_voxelize,
)


def random_coords(seed: int, batch: int = 2, grid: int = 12, density: float = 0.3) -> torch.Tensor:
    """Occupied cells of a random grid, shifted to negative coordinates too, rows shuffled."""
    g = torch.Generator().manual_seed(seed)
    occ = torch.rand(batch, grid, grid, grid, generator=g) < density
    coords = occ.nonzero().to(torch.int32)
    coords[:, 1:] -= grid // 2
    return coords[torch.randperm(coords.shape[0], generator=g)]


def all_maps(coords: torch.Tensor, reference: bool) -> dict[str, torch.Tensor]:
    """Kernel maps of a small U-Net-like pyramid and of odd kernels, as (N_out, K) tables."""
    with reference_paths(reference):
        x = SparseTensor(torch.zeros(coords.shape[0], 1), coords, 1)
        out = {}
        for ks, dil in [
            ((3, 3, 3), (1, 1, 1)),
            ((2, 2, 2), (1, 1, 1)),
            ((3, 3, 3), (2, 2, 2)),
            ((3, 1, 3), (1, 1, 1)),
            ((5, 3, 3), (1, 1, 1)),
            ((3, 3, 3), (1, 1, 2)),  # z dilation: no column layout, reference lookups
        ]:
            out[f"s1 k{ks} d{dil}"] = get_kernel_map(x, ks, (1, 1, 1), dil).nbr
        down = get_kernel_map(x, (2, 2, 2), (2, 2, 2), (1, 1, 1))
        out["down k2"] = down.nbr
        y = SparseTensor(torch.zeros(down.num_out, 1), down.out_coords, 2, x.cache)
        out["s2 k3"] = get_kernel_map(y, (3, 3, 3), (1, 1, 1), (1, 1, 1)).nbr
        # k3 s2 first registers the stride-4 coordinates ("spconv" outputs), then k2 s2 finds its
        # parents among them (the by-parent map with already registered outputs).
        out["s2 k3 s2"] = get_kernel_map(y, (3, 3, 3), (2, 2, 2), (1, 1, 1)).nbr
        out["s2 k2 s2"] = get_kernel_map(y, (2, 2, 2), (2, 2, 2), (1, 1, 1)).nbr
        out["up k2"] = get_transposed_kernel_map(y, (2, 2, 2), (2, 2, 2), (1, 1, 1)).nbr
        z = SparseTensor(torch.zeros(down.num_out, 1), down.out_coords, 2)
        out["s2 k1 s2 anisotropic"] = get_kernel_map(z, (2, 2, 1), (2, 2, 1), (1, 1, 1)).nbr
        return out


@pytest.mark.parametrize("seed", range(6))
def test_kernel_maps_equal_reference_on_random_coordinates(seed: int) -> None:
    coords = random_coords(seed, density=0.15 + 0.1 * seed)
    if seed % 2:
        # Sorted rows (torch.unique order, as voxelization gives them): tables without perm.
        keys, order = torch.sort(hash_coords(coords))
        coords = coords[order]
    ref, fast = all_maps(coords, True), all_maps(coords, False)
    for name in ref:
        assert torch.equal(ref[name], fast[name]), name


def test_column_lookup_with_foreign_outputs_and_empty_tables() -> None:
    coords = random_coords(7)
    table = HashTable.from_coords(coords)
    other = random_coords(8)
    offsets = kernel_offsets((3, 3, 3))
    expected = lookup_neighbors(table, other, offsets, (1, 1, 1))
    got = lookup_neighbors_by_column(table, other, (3, 3, 3), (1, 1, 1), (1, 1, 1))
    assert torch.equal(got.t(), expected)
    # Mirrored half only for a map of the table onto itself.
    got_sym = lookup_neighbors_by_column(table, coords, (3, 3, 3), (1, 1, 1), (1, 1, 1), True)
    assert torch.equal(got_sym.t(), lookup_neighbors(table, coords, offsets, (1, 1, 1)))
    empty = HashTable.from_coords(coords[:0])
    assert bool((lookup_neighbors_by_column(empty, other, (3, 3, 3), (1,) * 3, (1,) * 3) < 0).all())


def test_unaligned_coordinates_fall_back_to_reference_lookups() -> None:
    # A stride-2 tensor whose coordinates are not multiples of 2 breaks the column and parent
    # shortcuts' assumption: the maps must still equal the reference.
    coords = random_coords(9)
    for reference in (True, False):
        with reference_paths(reference):
            x = SparseTensor(torch.zeros(coords.shape[0], 1), coords, 2)
            k3 = get_kernel_map(x, (3, 3, 3), (1, 1, 1), (1, 1, 1)).nbr
            down = get_kernel_map(x, (2, 2, 2), (2, 2, 2), (1, 1, 1)).nbr
        if reference:
            ref = (k3, down)
    assert torch.equal(ref[0], k3) and torch.equal(ref[1], down)


def test_sorted_keys_skip_the_permutation() -> None:
    coords = random_coords(10)
    keys = torch.sort(hash_coords(coords)).values
    query = hash_coords(torch.cat([coords, random_coords(11)]))
    fast = HashTable(keys)
    assert fast.perm is None
    with reference_paths():
        ref = HashTable(keys)
    assert ref.perm is not None
    assert torch.equal(fast.lookup(query), ref.lookup(query))
    # Unsorted keys keep their permutation.
    assert HashTable(hash_coords(coords)).perm is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_conv_equals_loop_in_small_chunks(dtype: torch.dtype) -> None:
    coords = random_coords(12, density=0.4)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(coords.shape[0], 6, generator=g, dtype=dtype)
    x = SparseTensor(feats, coords, 1)
    kernel = torch.randn(27, 6, 5, generator=g, dtype=dtype)
    ref = sparse_conv3d(x, kernel, 3, impl="loop")
    for chunk in (1, 40, 1 << 18):  # one offset per chunk ... everything in one chunk
        previous, conv_mod._packed_chunk_elems = conv_mod._packed_chunk_elems, chunk
        try:
            out = sparse_conv3d(x, kernel, 3, impl="packed")
        finally:
            conv_mod._packed_chunk_elems = previous
        torch.testing.assert_close(out.feats, ref.feats, rtol=1e-6, atol=1e-6)
    down = sparse_conv3d(x, kernel[:8], 2, stride=2, impl="loop")
    torch.testing.assert_close(
        sparse_conv3d(x, kernel[:8], 2, stride=2, impl="packed").feats, down.feats
    )
    up = torch.randn(8, 5, 3, generator=g, dtype=dtype)
    torch.testing.assert_close(
        sparse_conv3d(down, up, 2, stride=2, transposed=True, impl="packed").feats,
        sparse_conv3d(down, up, 2, stride=2, transposed=True, impl="loop").feats,
    )


def test_auto_impl_on_cpu_is_packed_and_reference_is_loop() -> None:
    coords = random_coords(13)
    x = SparseTensor(torch.randn(coords.shape[0], 4), coords, 1)
    kernel = torch.randn(27, 4, 4)
    calls = []
    originals = {n: getattr(conv_mod, n) for n in ("_conv_packed", "_conv_loop")}

    def spy(name):
        def fn(*args):
            calls.append(name)
            return originals[name](*args)

        return fn

    for name in originals:
        setattr(conv_mod, name, spy(name))
    try:
        sparse_conv3d(x, kernel, 3)
        with reference_paths():
            assert use_reference_paths()
            sparse_conv3d(x, kernel, 3)
    finally:
        for name, fn in originals.items():
            setattr(conv_mod, name, fn)
    assert calls == ["_conv_packed", "_conv_loop"]


def test_reference_paths_switch_only_the_calling_thread() -> None:
    """The node tracks on a worker thread next to the executor: a switch on one thread must not
    change the paths another thread runs."""
    import threading

    seen: list[bool] = []
    with reference_paths():
        t = threading.Thread(target=lambda: seen.append(use_reference_paths()))
        t.start()
        t.join()
        assert use_reference_paths()
    assert seen == [False]
    assert not use_reference_paths()


def sweep(n: int = 3000, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    pts = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([60.0, 60.0, 4.0])
    return torch.cat([pts, pts[: n // 4] + 0.01], dim=0)  # some points share voxels


def test_point_bookkeeping_per_voxel_equals_per_point() -> None:
    pts = sweep()
    vox = sam4d_voxelize(pts, voxel_size=0.2)
    grid, batch = vox.point_grid_coords, vox.point_batch
    voxels = (vox.voxels.coords, vox.voxels.point_to_voxel)
    x = SparseTensor(torch.randn(vox.voxels.coords.shape[0], 3), vox.voxels.coords, 1)
    levels = [x]
    for _ in range(4):
        levels.append(sparse_conv3d(levels[-1], torch.randn(8, 3, 3), 2, stride=2))
    for level in levels:
        with reference_paths():
            rows_ref = points_to_voxel_index(level, grid, batch)
            pool_ref = pool_points_to_voxels(level, grid, batch, pts)
            dev_ref = devoxelize_weights(level, grid, batch)
            out_ref = devoxelize(level.feats, *dev_ref)
        rows = points_to_voxel_index(level, grid, batch, voxels=voxels)
        assert torch.equal(rows, rows_ref)
        assert torch.equal(
            pool_points_to_voxels(level, grid, batch, pts, point_rows=rows), pool_ref
        )
        dev = devoxelize_weights(level, grid, batch, point_rows=rows)
        assert torch.equal(dev[0], dev_ref[0])
        torch.testing.assert_close(dev[1], dev_ref[1], rtol=0, atol=1e-7)
        # The weights differ in the last bit (factored per axis); summed over 8 corners that
        # reaches a few 1e-6 on some CPUs (seen on an AVX-512 Xeon).
        torch.testing.assert_close(devoxelize(level.feats, *dev), out_ref, rtol=1e-5, atol=1e-5)
    # Points whose voxel is missing (a foreign tensor): the per-point path is taken.
    sub = SparseTensor(x.feats[::2], x.coords[::2], 1)
    rows = points_to_voxel_index(sub, grid, batch, voxels=voxels)
    assert bool((rows < 0).any())
    with reference_paths():
        ref = devoxelize_weights(sub, grid, batch)
    got = devoxelize_weights(sub, grid, batch, point_rows=rows)
    assert torch.equal(got[0], ref[0]) and torch.equal(got[1], ref[1])


def test_folded_umpe_point_mlp_equals_repeated_input() -> None:
    from sam4d_core.modeling.umpe import UMPE

    torch.manual_seed(0)
    umpe = UMPE(num_pos_feats=32, image_size=(64, 128), num_depths=16, hidden_dim=64).eval()
    xyz = torch.randn(2, 50, 3) * 20
    with reference_paths():
        ref = umpe.point_pe(xyz)
    with torch.no_grad():
        fast = umpe.point_pe(xyz)
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)
        # The folded weight is cached in inference and follows edits of the weight.
        umpe.union_pe_layer.mlp_embedding[0].weight.mul_(2)
        with reference_paths():
            ref2 = umpe.point_pe(xyz)
        torch.testing.assert_close(umpe.point_pe(xyz), ref2, rtol=1e-5, atol=1e-5)
    # With gradients: same values, and the first layer gets its gradient through the fold.
    out = umpe.point_pe(xyz)
    out.sum().backward()
    assert umpe.union_pe_layer.mlp_embedding[0].weight.grad is not None


def test_hiera_position_embedding_cache_follows_weights() -> None:
    from sam4d_core.modeling.backbones.hieradet import Hiera

    torch.manual_seed(0)
    hiera = Hiera(
        embed_dim=8,
        num_heads=1,
        stages=(1, 1, 1, 1),
        global_att_blocks=(3,),
        window_spec=(4, 4, 4, 2),
        window_pos_embed_bkg_spatial_size=(4, 4),
    ).eval()
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        with reference_paths():
            ref = hiera(x)
        assert all(torch.equal(a, b) for a, b in zip(hiera(x), ref, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(hiera(x), ref, strict=True))  # cached
        state = {k: v + 0.5 if "pos_embed" in k else v for k, v in hiera.state_dict().items()}
        hiera.load_state_dict(state)
        with reference_paths():
            ref2 = hiera(x)
        assert all(torch.equal(a, b) for a, b in zip(hiera(x), ref2, strict=True))
        assert not torch.equal(ref2[0], ref[0])


# ---------------------------------------------------------------------------------------------
# End to end: sam4d_small on a KITTI sequence (or synthetic frames), fast vs reference.


def _frames(n: int):
    from sam4d_core.tracking import benchmark

    data = "kitti" if benchmark.KITTI_DIR.is_dir() else "synthetic"
    return benchmark.load_frames(data, 30000, n)[0]


def _track(model, frames, reference: bool):
    from sam4d_core.tracking.benchmark import click_points
    from sam4d_core.tracking.records import ImagePrompt, LidarPrompt, ObjectPrompt
    from sam4d_core.tracking.streaming_tracker import StreamingTracker, TrackerConfig

    outs = []
    with reference_paths(reference), torch.inference_mode():
        tracker = StreamingTracker(model, TrackerConfig())
        tracker.step(frames[0])
        cam_name, cam = next(iter(frames[0].cameras.items()))
        h, w = cam.image.shape[:2]
        xyz = click_points(frames[0], 2)
        tracker.add_prompts(
            [
                ObjectPrompt(1, lidar=LidarPrompt(points=xyz[:1], labels=np.array([1]))),
                ObjectPrompt(
                    2,
                    image=[
                        ImagePrompt(
                            camera=cam_name,
                            points=np.array([[w * 0.4, h * 0.6]]),
                            labels=np.array([1]),
                        )
                    ],
                ),
            ]
        )
        for k, frame in enumerate(frames[1:], start=1):
            frame = dataclasses.replace(frame, timestamp=frames[0].timestamp + 0.1 * k)
            result = tracker.step(frame)
            per_object = {}
            for oid, st in tracker._objects.items():
                o = st.outputs[result.frame_index]
                mem = st.bank.get(result.frame_index).payload
                per_object[oid] = {
                    "image_logits": o.image_logits,
                    "voxel_logits": o.voxel_logits,
                    "object_score": o.object_score,
                    "image_ious": o.image_ious,
                    "lidar_iou": o.lidar_iou,
                    "image_memory": mem.image_tokens,
                    "lidar_memory": mem.lidar_tokens,
                    "obj_ptrs": mem.obj_ptrs,
                }
            scores = {r.object_id: r.point_scores for r in result.objects}
            outs.append((per_object, scores))
    return outs


def test_sam4d_small_tracking_fast_equals_reference() -> None:
    from sam4d_core.build_sam import build_sam4d

    frames = _frames(5)
    torch.manual_seed(0)
    model = build_sam4d("sam4d_small", device="cpu")
    ref = _track(model, frames, reference=True)
    fast = _track(model, frames, reference=False)
    assert len(ref) == len(fast) == len(frames) - 1
    for (ref_obj, ref_scores), (fast_obj, fast_scores) in zip(ref, fast, strict=True):
        assert ref_obj.keys() == fast_obj.keys() == {1, 2}
        for oid in ref_obj:
            for name, a in ref_obj[oid].items():
                b = fast_obj[oid][name]
                torch.testing.assert_close(b, a, rtol=0, atol=1e-4, msg=f"{oid} {name}")
            np.testing.assert_allclose(fast_scores[oid], ref_scores[oid], rtol=0, atol=1e-4)


def test_image_token_encodings_cached_per_calibration() -> None:
    from sam4d_core.modeling.umpe import UMPE

    torch.manual_seed(0)
    umpe = UMPE(num_pos_feats=32, image_size=(64, 128), num_depths=16, hidden_dim=64).eval()
    K = torch.tensor([[[80.0, 0, 64], [0, 80, 32], [0, 0, 1]]]).repeat(2, 1, 1)
    M = torch.eye(4).repeat(2, 1, 1)
    M[1, 0, 3] = 1.5
    with torch.no_grad():
        with reference_paths():
            ref = umpe.image_pe(K, M)
        first = umpe.image_pe(K, M)
        again = umpe.image_pe(K.clone(), M.clone())  # equal calibration: from the cache
        assert torch.equal(first, ref) and torch.equal(again, ref)
        again.add_(1)  # callers get their own copy
        assert torch.equal(umpe.image_pe(K, M), ref)
        M2 = M.clone()
        M2[0, 1, 3] = -2.0  # a new calibration, then new weights: recomputed
        with reference_paths():
            ref2 = umpe.image_pe(K, M2)
        assert torch.equal(umpe.image_pe(K, M2), ref2)
        umpe.union_pe_layer.mlp_embedding[2].bias.add_(0.5)
        with reference_paths():
            ref3 = umpe.image_pe(K, M2)
        assert torch.equal(umpe.image_pe(K, M2), ref3)
        assert not torch.equal(ref3, ref2)
        assert torch.equal(umpe.image_pe(K, M2, multi_modal=False), umpe.image_sine_pe(2))


def test_objects_batched_sparse_conv_equals_one_at_a_time() -> None:
    from sam4d_core.modeling.sparse import Conv3d
    from sam4d_core.modeling.sparse.conv import sparse_conv3d_objects

    coords = random_coords(14, density=0.4)
    x = SparseTensor(torch.zeros(coords.shape[0], 1), coords, 1)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(3, coords.shape[0], 5, generator=g)
    for conv in (Conv3d(5, 4, 3, bias=True), Conv3d(5, 4, 2, stride=2)):
        with torch.no_grad():
            out, y = sparse_conv3d_objects(conv, feats, x)
            for b in range(3):
                ref = conv(x.replace_feats(feats[b]))
                torch.testing.assert_close(out[b], ref.feats, rtol=1e-6, atol=1e-6)
            assert torch.equal(y.coords, ref.coords) and y.stride == ref.stride
        with reference_paths():
            assert sparse_conv3d_objects(conv, feats, x) is None  # the per-object loop


def test_packed_conv_under_autocast_and_with_gradients() -> None:
    coords = random_coords(15)
    x = SparseTensor(torch.randn(coords.shape[0], 4), coords, 1)
    kernel = torch.randn(27, 4, 3)
    ref = sparse_conv3d(x, kernel, 3, impl="loop")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = sparse_conv3d(x, kernel, 3, impl="packed")
    torch.testing.assert_close(out.feats.float(), ref.feats, rtol=0.05, atol=0.1)
    feats = x.feats.clone().requires_grad_(True)
    out = sparse_conv3d(SparseTensor(feats, coords, 1), kernel, 3, impl="packed")
    out.feats.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0


def test_tracker_benchmark_times_the_model_a_checkpoint_embeds(tmp_path) -> None:
    """``--config model.pt`` times the checkpoint's own config (the bundled model has MCMA's
    distance bias, which sam4d_small does not): the table says which model ran."""
    from sam4d_core.checkpoint import save_checkpoint
    from sam4d_core.modeling.configs import get_config
    from sam4d_core.modeling.sam4d_base import SAM4D
    from sam4d_core.tracking import benchmark

    cfg = get_config("sam4d_tiny")
    cfg.memory_attention.distance_bias = True
    path = tmp_path / "db.pt"
    save_checkpoint(SAM4D(cfg), path)
    frames = _frames(3)
    log = io.StringIO()
    run = benchmark.run_config(str(path), "cpu", frames, [1], [1], steps=1, warmup=1, log=log)
    (case,) = run["cases"]
    assert run["config"] == str(path) and case["median_ms"]["memory_attention"] > 0
    assert run["model_config"]["memory_attention"]["distance_bias"] is True
    assert "1 object(s), 1 camera(s)" in log.getvalue()
