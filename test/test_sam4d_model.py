"""The assembled SAM4D: official module tree and sizes, configs, and the per-frame blocks
(encode_frame / track_step / encode_memory) on the tiny config."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from sam4d_core.modeling.configs import (
    config_from_dict,
    config_to_dict,
    get_config,
    load_config,
)
from sam4d_core.modeling.ego_pose_encoder import so3_exp
from sam4d_core.modeling.memory_bank import ObjectMemoryBank
from sam4d_core.modeling.prompts import CameraPrompt, LidarPrompt, ObjectPrompts
from sam4d_core.modeling.records import FrameFeatures, ObjectMemoryInput, TrackOutput
from sam4d_core.modeling.sam4d_base import SAM4D
from sam4d_core.modeling.umpe import transform_points

torch.set_num_threads(1)

# ---------------------------------------------------------------------------------------------
# Official tree and sizes (meta device: no weights are allocated).

OFFICIAL_TOP_LEVEL = {
    "maskmem_tpos_enc",
    "no_mem_embed",
    "no_mem_pos_enc",
    "no_obj_embed_spatial",
    "mask_downsample_img",
    "mask_downsample_pts",
    "ego_pose_encoder",
    "union_pe_func",
    "pure_model",
}


@pytest.fixture(scope="module")
def official_meta() -> SAM4D:
    with torch.device("meta"):
        return SAM4D(get_config("sam4d_hiera_s_mink34"))


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_official_state_dict_entries_and_parameters(official_meta: SAM4D) -> None:
    sd = official_meta.state_dict()
    params = dict(official_meta.named_parameters())
    # DESIGN.md: 904 entries = 735 parameters + 169 buffers (BatchNorm statistics incl.
    # num_batches_tracked, and the RFF matrix), 121.8 M parameters.
    assert len(sd) == 904
    assert len(params) == 735
    assert len(sd) - len(params) == 169
    assert _count(official_meta) == 121_788_820
    assert {k.split(".")[0] for k in sd} == OFFICIAL_TOP_LEVEL
    assert {k for k in sd if "." not in k} == {
        "maskmem_tpos_enc",
        "no_mem_embed",
        "no_mem_pos_enc",
        "no_obj_embed_spatial",
    }


def test_official_breakdown_matches_design(official_meta: SAM4D) -> None:
    m = official_meta
    millions = {
        "image backbone": _count(m.pure_model.backbone["image"]),
        "point backbone": _count(m.pure_model.backbone["point"]),
        "memory attention": _count(m.pure_model.fusion.memory_attention),
        "memory encoders": _count(m.pure_model.fusion.memory_encoder),
        "SAM head": _count(m.pure_model.head),
        "UMPE": _count(m.union_pe_func),
    }
    design = {
        "image backbone": 34.3,
        "point backbone": 26.9,
        "memory attention": 6.3,
        "memory encoders": 47.6,
        "SAM head": 4.7,
        "UMPE": 1.8,
    }
    assert {k: round(v / 1e6, 1) for k, v in millions.items()} == design


def test_official_key_prefixes_and_shapes(official_meta: SAM4D) -> None:
    sd = official_meta.state_dict()
    prefixes = [
        "pure_model.backbone.image.0.",
        "pure_model.backbone.image.1.",
        "pure_model.backbone.point.sparse_3d.0.",
        "pure_model.fusion.memory_attention.",
        "pure_model.fusion.memory_encoder.image.",
        "pure_model.fusion.memory_encoder.point.",
        "pure_model.head.sam.sam_prompt_encoder.",
        "pure_model.head.sam.psam_prompt_encoder.",
        "pure_model.head.sam.sam_mask_decoder.",
        "pure_model.head.sam.obj_ptr_proj.",
        "pure_model.head.sam.obj_ptr_tpos_proj.",
        "union_pe_func.",
        "ego_pose_encoder.",
    ]
    for p in prefixes:
        assert any(k.startswith(p) for k in sd), p
    shapes = {
        "union_pe_func.union_pe_layer.frustum": (48, 48, 128, 4),
        "union_pe_func.union_pe_layer.mlp_embedding.0.weight": (1024, 384),
        "union_pe_func.pts_pe_layer.positional_encoding_gaussian_matrix": (3, 128),
        "ego_pose_encoder.d_max": (),
        "maskmem_tpos_enc": (7, 1, 1, 256),
        "no_mem_embed": (1, 1, 256),
        "no_obj_embed_spatial": (1, 256),
        "pure_model.head.sam.no_obj_ptr": (1, 256),
        "mask_downsample_img.weight": (1, 1, 4, 4),
        "mask_downsample_pts.kernel": (64, 1, 1),
        "mask_downsample_pts.bias": (1,),
        "pure_model.fusion.memory_encoder.point.fuser.layers.0.conv.kernel": (343, 256, 256),
        "pure_model.backbone.point.sparse_3d.0.conv_input.0.kernel": (27, 1, 32),
        "pure_model.backbone.image.0.patch_embed.proj.weight": (96, 3, 7, 7),
        "pure_model.backbone.image.1.convs.0.conv.weight": (256, 768, 1, 1),
        "pure_model.head.sam.sam_mask_decoder.conv_s0.weight": (32, 256, 1, 1),
        "pure_model.head.sam.sam_mask_decoder.conv_s1.weight": (64, 256, 1, 1),
    }
    for key, shape in shapes.items():
        assert tuple(sd[key].shape) == shape, key
    # The frustum is a non-trainable parameter, the RFF matrix a buffer.
    params = dict(official_meta.named_parameters())
    assert not params["union_pe_func.union_pe_layer.frustum"].requires_grad
    assert "union_pe_func.pts_pe_layer.positional_encoding_gaussian_matrix" not in params
    assert official_meta.config.umpe.released_frequency_quirk


# ---------------------------------------------------------------------------------------------
# Configs.


def test_config_sizes_and_round_trip() -> None:
    for name, limit in (("sam4d_small", 10e6), ("sam4d_tiny", 1e6)):
        cfg = get_config(name)
        with torch.device("meta"):
            model = SAM4D(cfg)
        assert _count(model) <= limit, name
        again = config_from_dict(config_to_dict(cfg))
        assert again == cfg
        assert load_config(name) == cfg
    with torch.device("meta"):
        small = SAM4D(get_config("sam4d_small"))
    assert _count(small) == 8_603_956
    # Non-square input: a (H/16, W/16, D, 4) frustum.
    assert tuple(small.union_pe_func.union_pe_layer.frustum.shape) == (12, 24, 32, 4)


def test_config_validation_and_json(tmp_path) -> None:
    cfg = get_config("sam4d_tiny")
    bad = dataclasses.replace(cfg, d_model=64)
    with pytest.raises(ValueError, match="image.d_model"):
        bad.validate()
    with pytest.raises(ValueError, match="unknown SAM4D config"):
        get_config("nope")
    path = tmp_path / "tiny.json"
    import json

    path.write_text(json.dumps(config_to_dict(cfg)))
    assert load_config(path) == cfg
    with pytest.raises(ValueError, match="unknown config fields"):
        config_from_dict({**config_to_dict(cfg), "bogus": 1})


# ---------------------------------------------------------------------------------------------
# Per-frame blocks on the tiny config.

K = np.array([[60.0, 0.0, 50.0], [0.0, 60.0, 30.0], [0.0, 0.0, 1.0]])
# LiDAR x forward, y left, z up -> camera x right, y down, z forward (camera 0.5 m above).
CAM_FROM_LIDAR = np.array(
    [[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.5], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
)
CAM_LEFT = (
    CAM_FROM_LIDAR
    @ np.array(
        [[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
    ).T
)  # looks to the left (+y)


@pytest.fixture(scope="module")
def model() -> SAM4D:
    torch.manual_seed(0)
    m = SAM4D(get_config("sam4d_tiny")).eval()
    # Non-trivial BatchNorm statistics and temporal / no-memory embeddings.
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def make_images(seed: int, sizes=((60, 100), (80, 120))) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def make_points(seed: int, n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xyz = rng.uniform([2.0, -8.0, -1.5], [18.0, 8.0, 1.0], size=(n, 3))
    return np.concatenate([xyz, rng.uniform(size=(n, 1))], axis=1).astype(np.float32)


def encode(model: SAM4D, seed: int = 0, cams=(0, 1), lidar=True, pose=None) -> FrameFeatures:
    imgs = make_images(seed)
    images = [imgs[i] if i in cams else None for i in range(2)]
    return model.encode_frame(
        images,
        [K, K],
        [CAM_FROM_LIDAR, CAM_LEFT],
        make_points(seed) if lidar else None,
        pose=pose,
    )


def test_encode_frame_shapes(model: SAM4D) -> None:
    with torch.inference_mode():
        f = encode(model)
    c = model.hidden_dim
    img, lid = f.image, f.lidar
    assert img is not None and lid is not None and f.multi_modal
    assert img.camera_ids == (0, 1) and img.camera_sizes == ((60, 100), (80, 120))
    assert img.tokens.shape == (2, c, 8, 8)
    assert img.pe.shape == (2, c, 8, 8)
    assert img.high_res[0].shape == (2, c // 8, 32, 32)
    assert img.high_res[1].shape == (2, c // 4, 16, 16)
    assert img.K.shape == (2, 3, 3) and img.lidar_from_cam.shape == (2, 4, 4)
    # K scaled to the 128 x 128 model input.
    assert img.K[1, 0, 0].item() == pytest.approx(60 * 128 / 120)
    n = 600
    assert lid.num_points == n and lid.tokens.shape == (lid.num_tokens, c)
    assert lid.pe.shape == lid.tokens.shape and lid.token_xyz.shape == (lid.num_tokens, 3)
    assert lid.high_res[0].shape == (lid.num_s4, c // 8)
    assert lid.high_res[1].shape == (lid.hierarchy.num_s8, c // 4)
    assert lid.point_to_voxel.shape == (n,) and int(lid.point_to_voxel.max()) < len(lid.voxels_s1)
    assert lid.point_to_s4.shape == (n,) and bool((lid.point_to_s4 >= 0).all())
    assert lid.devox_rows.shape == (n, 8) and lid.devox_weights.shape == (n, 8)
    assert f.geometry.pose.dtype == torch.float64
    assert f.geometry.token_xyz is lid.token_xyz and f.geometry.multi_modal


def test_track_and_memory_shapes_two_cameras_then_one_missing(model: SAM4D) -> None:
    c = model.hidden_dim
    prompts = [
        ObjectPrompts(cameras={0: CameraPrompt(points=[[50, 30]], labels=[1])}),
        ObjectPrompts(lidar=LidarPrompt(points=[[8.0, 0.0, 0.0], [9.0, 1.0, 0.0]], labels=[1, 0])),
        ObjectPrompts(cameras={1: CameraPrompt(box=[10, 10, 60, 50])}),
    ]
    with torch.inference_mode():
        f0 = encode(model, 0)
        out = model.track_step(f0, prompts)
        mems = model.encode_memory(f0, out)
        f1 = encode(model, 1, cams=(1,), pose=_pose(0.1, [1.0, 0.2, 0.0]))
        inputs = [ObjectMemoryInput([(m, 2)], [(m, 1)], t_diff_max=3) for m in mems]
        out1 = model.track_step(f1, [None] * 3, inputs)
        mems1 = model.encode_memory(f1, out1)
    n4, n = f0.lidar.num_s4, f0.lidar.num_points
    assert out.image.mask_logits.shape == (3, 2, 32, 32)
    assert out.image.ious.shape == (3, 2) and out.image.object_score_logits.shape == (3, 2)
    assert out.image.obj_ptr.shape == (3, c) and out.image.camera_obj_ptrs.shape == (3, 2, c)
    assert out.lidar.voxel_logits.shape == (3, n4) and out.lidar.point_logits.shape == (3, n)
    assert out.obj_ptrs.shape == (3, 2, c)
    # One click -> multimask; two clicks or a box (2 corners) -> a single mask.
    assert out.multimask.tolist() == [True, False, False]
    assert not bool(out.mask_as_output.any())
    assert mems[0].image_tokens.shape == (2, c, 8, 8)
    assert mems[0].lidar_tokens.shape == (f0.lidar.num_tokens, c)
    assert mems[0].obj_ptrs.shape == (2, c) and mems[0].geometry is f0.geometry
    # Camera 0 missing on frame 1: the output covers camera 1 only; memory from 2 cameras is used.
    assert out1.image.camera_ids == (1,) and out1.image.mask_logits.shape == (3, 1, 32, 32)
    assert mems1[0].image_tokens.shape == (1, c, 8, 8)
    assert model.camera_mask_logits(f1, out1, 1).shape == (3, 80, 120)
    with pytest.raises(ValueError, match="camera 0 is not in this frame"):
        model.track_step(f1, [ObjectPrompts(cameras={0: CameraPrompt(box=[0, 0, 5, 5])})])
    for t in (out1.image.mask_logits, out1.lidar.point_logits, out1.object_score_logits):
        assert torch.isfinite(t).all()


def test_frames_without_lidar_or_without_cameras(model: SAM4D) -> None:
    with torch.inference_mode():
        f_img = encode(model, 2, lidar=False)
        assert f_img.lidar is None and not f_img.multi_modal
        out = model.track_step(f_img, [ObjectPrompts(cameras={1: CameraPrompt([[5, 5]], [1])})])
        assert out.lidar is None and out.obj_ptrs.shape == (1, 1, model.hidden_dim)
        mem = model.encode_memory(f_img, out)[0]
        assert mem.lidar_tokens is None and mem.geometry.token_xyz is None

        f_pts = encode(model, 3, cams=())
        assert f_pts.image is None
        # A LiDAR-only frame attends to the image-only memory (and the other way round).
        out2 = model.track_step(f_pts, [None], [ObjectMemoryInput([(mem, 2)], [(mem, 1)], 3)])
        assert out2.image is None and out2.lidar.point_logits.shape == (1, 600)
        mem2 = model.encode_memory(f_pts, out2)[0]
        out3 = model.track_step(
            f_img, [None], [ObjectMemoryInput([(mem, 1), (mem2, 2)], [(mem2, 1)], 3)]
        )
        assert torch.isfinite(out3.image.mask_logits).all()
        with pytest.raises(ValueError, match="without LiDAR"):
            model.track_step(f_img, [ObjectPrompts(lidar=LidarPrompt([[1, 2, 3]], [1]))])
        with pytest.raises(ValueError, match="at least one camera image or a non-empty sweep"):
            model.encode_frame([None, None], [K, K], [CAM_FROM_LIDAR, CAM_LEFT], None)
    with pytest.raises(NotImplementedError):
        model()


def _pose(yaw: float, t) -> np.ndarray:
    p = np.eye(4)
    p[:3, :3] = so3_exp(torch.tensor([0.0, 0.0, yaw], dtype=torch.float64)).numpy()
    p[:3, 3] = t
    return p


def _assert_outputs_close(a: TrackOutput, b: TrackOutput, atol: float = 1e-5) -> None:
    for x, y in (
        (a.image.mask_logits, b.image.mask_logits),
        (a.image.ious, b.image.ious),
        (a.image.object_score_logits, b.image.object_score_logits),
        (a.image.camera_obj_ptrs, b.image.camera_obj_ptrs),
        (a.lidar.voxel_logits, b.lidar.voxel_logits),
        (a.lidar.point_logits, b.lidar.point_logits),
        (a.lidar.ious, b.lidar.ious),
        (a.lidar.obj_ptr, b.lidar.obj_ptr),
        (a.object_score_logits, b.object_score_logits),
    ):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)


def test_batched_objects_equal_one_at_a_time(model: SAM4D) -> None:
    with torch.inference_mode():
        f0 = encode(model, 0)
        first = [
            ObjectPrompts(cameras={0: CameraPrompt(points=[[50, 30]], labels=[1])}),
            ObjectPrompts(lidar=LidarPrompt(points=[[8.0, 0.0, 0.0]], labels=[1])),
        ]
        mems0 = model.encode_memory(f0, model.track_step(f0, first))
        f1 = encode(model, 1, pose=_pose(0.05, [0.8, 0.1, 0.0]))
        mems1 = model.encode_memory(
            f1,
            model.track_step(
                f1,
                [None, None],
                [
                    ObjectMemoryInput([(mems0[0], 2)], [(mems0[0], 1)], 3),
                    ObjectMemoryInput([(mems0[1], 2)], [(mems0[1], 1)], 3),
                ],
            ),
        )
        f2 = encode(model, 2, pose=_pose(0.1, [1.6, 0.3, 0.0]))
        # Mixed batch: memories of different lengths, no memory, clicks of different counts in
        # both modalities, a box, a mask given with clicks (dense prompt), multimask and not.
        prompts = [
            None,
            ObjectPrompts(
                cameras={1: CameraPrompt(points=[[40, 20], [60, 70]], labels=[1, 0])},
                lidar=LidarPrompt(box=[6.0, -2.0, 10.0, 2.0]),
            ),
            ObjectPrompts(cameras={0: CameraPrompt(points=[[20, 20]], labels=[1])}),
            ObjectPrompts(
                cameras={
                    0: CameraPrompt(
                        points=[[30, 30]], labels=[1], mask=np.ones((60, 100), np.float32)
                    )
                },
                lidar=LidarPrompt(
                    points=[[12.0, 3.0, 0.0]], labels=[0], mask=(np.arange(600) % 3 == 0)
                ),
            ),
        ]
        # ... and a mask prompt without clicks (taken as the output).
        prompts.append(
            ObjectPrompts(
                cameras={1: CameraPrompt(mask=np.eye(80, 120, dtype=bool))},
                lidar=LidarPrompt(mask=np.arange(600) % 5 == 0),
            )
        )
        memories = [
            ObjectMemoryInput([(mems0[0], 2), (mems1[0], 1)], [(mems0[0], 2), (mems1[0], 1)], 3),
            ObjectMemoryInput([(mems1[1], 2)], [(mems1[1], 1)], 3),
            None,
            ObjectMemoryInput([(mems0[1], 0)], [(mems0[1], 2)], 3),
            ObjectMemoryInput([(mems1[0], 2)], [(mems1[0], 1)], 3),
        ]
        batched = model.track_step(f2, prompts, memories)
        batched_mem = model.encode_memory(f2, batched)
        for i in range(len(prompts)):
            single = model.track_step(f2, [prompts[i]], [memories[i]])
            sub = _select(batched, i)
            _assert_outputs_close(sub, single)
            assert sub.multimask.tolist() == single.multimask.tolist()
            mem = model.encode_memory(f2, single)[0]
            # Batched and single runs sum in different orders; through the decoder and the
            # memory encoder that reaches ~2e-5 on some CPUs (seen on an AVX-512 Xeon).
            torch.testing.assert_close(
                mem.image_tokens, batched_mem[i].image_tokens, atol=5e-5, rtol=1e-3
            )
            torch.testing.assert_close(
                mem.lidar_tokens, batched_mem[i].lidar_tokens, atol=5e-5, rtol=1e-3
            )
    assert batched.multimask.tolist() == [True, False, True, True, True]  # max clicks per view
    assert batched.mask_as_output.tolist() == [False, False, False, False, True]


def _select(out: TrackOutput, i: int) -> TrackOutput:
    s = slice(i, i + 1)
    img = dataclasses.replace(
        out.image,
        mask_logits=out.image.mask_logits[s],
        ious=out.image.ious[s],
        object_score_logits=out.image.object_score_logits[s],
        camera_obj_ptrs=out.image.camera_obj_ptrs[s],
    )
    lid = dataclasses.replace(
        out.lidar,
        voxel_logits=out.lidar.voxel_logits[s],
        point_logits=out.lidar.point_logits[s],
        ious=out.lidar.ious[s],
        object_score_logits=out.lidar.object_score_logits[s],
        obj_ptr=out.lidar.obj_ptr[s],
    )
    return TrackOutput(
        img, lid, out.object_score_logits[s], out.multimask[s], out.mask_as_output[s]
    )


def _run_sequence(model: SAM4D, poses: list[np.ndarray]) -> list[TrackOutput]:
    """Three frames through a memory bank, one object prompted on frame 0."""
    bank: ObjectMemoryBank = ObjectMemoryBank(model.config.memory)
    outs = []
    for t, pose in enumerate(poses):
        f = encode(model, 10 + t, pose=pose)
        sel = ObjectMemoryInput.from_selection(bank.select(t), lambda k: bank.get(k).payload)
        prompt = ObjectPrompts(lidar=LidarPrompt([[9.0, 1.0, 0.0]], [1])) if t == 0 else None
        out = model.track_step(f, [prompt], [sel])
        bank.add(t, model.encode_memory(f, out)[0], is_cond=t == 0)
        outs.append(out)
    return outs


def test_world_frame_invariance(model: SAM4D) -> None:
    """Only relative ego motion enters the model: moving the world frame (every pose multiplied
    by the same rigid transform, here 1000 km away and rotated) changes nothing.

    What does *not* hold, by design of the release: translating the points within the LiDAR
    frame (UMPE's RFF and ray MLP take absolute LiDAR-frame metres) changes the encodings."""
    poses = [_pose(0.0, [0, 0, 0]), _pose(0.05, [1.5, 0.1, 0.0]), _pose(0.12, [3.0, 0.4, 0.1])]
    world = _pose(2.0, [1.0e6, -2.5e5, 30.0])
    with torch.inference_mode():
        ref = _run_sequence(model, poses)
        moved = _run_sequence(model, [world @ p for p in poses])
    for a, b in zip(ref, moved, strict=True):
        _assert_outputs_close(a, b, atol=2e-4)
    # The memory really is motion compensated: a different ego motion changes the outputs.
    with torch.inference_mode():
        other = _run_sequence(model, [poses[0], _pose(0.5, [4.0, 2.0, 0.0]), poses[2]])
    assert not torch.allclose(ref[1].lidar.point_logits, other[1].lidar.point_logits, atol=1e-4)
    # LiDAR-frame translation is not an invariance of UMPE (absolute metres).
    xyz = torch.tensor([[5.0, 1.0, 0.0]])
    shifted = model.union_pe_func.point_pe(xyz + torch.tensor([[0.0, 0.0, 1.0]]))
    assert not torch.allclose(model.union_pe_func.point_pe(xyz), shifted)


def test_memory_encodings_follow_ego_motion(model: SAM4D) -> None:
    """Static scene: a past frame's memory encodings, recomputed at the current pose, equal the
    encodings computed directly from the same world geometry seen from the current frame."""
    with torch.inference_mode():
        past = encode(model, 4, pose=_pose(0.0, [10.0, 5.0, 0.0]))
        now_pose = torch.from_numpy(_pose(0.3, [14.0, 6.0, 0.2]))
        img_pe, pts_pe = model.memory_positional_encodings(past.geometry, now_pose)
        t_rel = torch.linalg.solve(now_pose, past.geometry.pose).float()
        direct_pts = model.union_pe_func.point_pe(
            transform_points(t_rel, past.lidar.token_xyz), multi_modal=True
        )
        direct_img = model.union_pe_func.image_pe(
            past.image.K, t_rel @ past.image.lidar_from_cam, multi_modal=True
        )
    torch.testing.assert_close(pts_pe, direct_pts, atol=1e-4, rtol=1e-4)
    c = model.hidden_dim
    torch.testing.assert_close(
        img_pe, direct_img.flatten(2).transpose(1, 2).reshape(-1, c), atol=1e-4, rtol=1e-4
    )
    # No motion: the encodings of the frame itself.
    with torch.inference_mode():
        same_img, same_pts = model.memory_positional_encodings(past.geometry, past.geometry.pose)
    torch.testing.assert_close(same_pts, past.lidar.pe, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        same_img, past.image.pe.flatten(2).transpose(1, 2).reshape(-1, c), atol=1e-5, rtol=1e-5
    )


def test_mask_prompt_taken_as_output(model: SAM4D) -> None:
    cam_mask = np.zeros((60, 100), bool)
    cam_mask[10:40, 20:70] = True
    pts_mask = np.arange(600) % 4 == 0
    with torch.inference_mode():
        f = encode(model, 5)
        out = model.track_step(
            f,
            [
                ObjectPrompts(
                    cameras={0: CameraPrompt(mask=cam_mask)}, lidar=LidarPrompt(mask=pts_mask)
                ),
                ObjectPrompts(cameras={1: CameraPrompt(mask=np.zeros((80, 120), bool))}),
            ],
        )
        mems = model.encode_memory(f, out)
    assert out.mask_as_output.tolist() == [True, True]
    # The LiDAR output is the mask itself (+-10); the camera output its stride-4 version.
    expected = torch.where(torch.from_numpy(pts_mask), 10.0, -10.0)
    torch.testing.assert_close(out.lidar.point_logits[0], expected)
    assert out.lidar.ious[0].item() == 1.0 and out.lidar.object_score_logits[0].item() == 10.0
    up = model.camera_mask_logits(f, out, 0)[0] > 0
    agree = (up == torch.from_numpy(cam_mask)).float().mean().item()
    assert agree > 0.97
    assert out.image.ious[0, 0].item() == 1.0
    # An empty mask: absent on that camera (score -10), the pointer is no_obj_ptr.
    assert out.image.object_score_logits[1, 1].item() == -10.0
    torch.testing.assert_close(
        out.image.camera_obj_ptrs[1, 1], model.sam_head.no_obj_ptr[0], atol=1e-6, rtol=0
    )
    assert mems[0].image_tokens is not None and torch.isfinite(mems[0].lidar_tokens).all()
    with torch.inference_mode(), pytest.raises(ValueError, match="LiDAR mask prompt"):
        model.track_step(f, [ObjectPrompts(lidar=LidarPrompt(mask=np.ones(5, bool)))])


def test_memory_bank_payload_is_bounded(model: SAM4D) -> None:
    """The per-frame memory of the tiny model and the bank's capacity (no growth over frames)."""
    bank: ObjectMemoryBank = ObjectMemoryBank(model.config.memory)
    with torch.inference_mode():
        f = encode(model, 6)
        out = model.track_step(f, [ObjectPrompts(lidar=LidarPrompt([[9.0, 1.0, 0.0]], [1]))])
        mem = model.encode_memory(f, out)[0]
    for t in range(20):
        bank.add(t, mem, is_cond=t == 0)
    assert len(bank) <= bank.capacity
    c = model.hidden_dim
    assert mem.nbytes == 4 * (2 * c * 64 + f.lidar.num_tokens * c + 2 * c + 1)
    assert math.isfinite(float(mem.object_score_logits))


def test_refinement_with_previous_logits_as_dense_prompts(model: SAM4D) -> None:
    """More clicks on the same frame with the previous low-resolution logits as mask prompts
    (SAM2's prev_sam_mask_logits): camera logits at stride 4, LiDAR logits per stride-4 voxel."""
    with torch.inference_mode():
        f = encode(model, 7)
        first = ObjectPrompts(cameras={0: CameraPrompt(points=[[50, 30]], labels=[1])})
        out = model.track_step(f, [first])
        refined = ObjectPrompts(
            cameras={
                0: CameraPrompt(
                    points=[[50, 30], [10, 10]],
                    labels=[1, 0],
                    mask=out.image.mask_logits[0, 0].clamp(-32, 32),
                )
            },
            lidar=LidarPrompt(voxel_mask=out.lidar.voxel_logits[0].clamp(-32, 32)),
        )
        out2 = model.track_step(f, [refined])
        plain = model.track_step(
            f, [ObjectPrompts(cameras={0: CameraPrompt([[50, 30], [10, 10]], [1, 0])})]
        )
        assert not out2.mask_as_output.any() and not out2.multimask.any()
        assert not torch.allclose(out2.lidar.point_logits, plain.lidar.point_logits)
        with pytest.raises(ValueError, match="voxel_mask"):
            model.track_step(f, [ObjectPrompts(lidar=LidarPrompt(voxel_mask=np.zeros(3)))])


@pytest.fixture(scope="module")
def distance_model() -> SAM4D:
    """The tiny model with MCMA's distance bias (gains spread so heads differ)."""
    torch.manual_seed(0)
    cfg = get_config("sam4d_tiny")
    cfg.memory_attention.distance_bias = True
    m = SAM4D(cfg).eval()
    with torch.no_grad():
        for layer in m.memory_attention.layers:
            layer.place_gain.uniform_(0.2, 2.0)
    return m


def test_distance_bias_batches_and_follows_only_relative_motion(distance_model: SAM4D) -> None:
    """With the distance bias the model keeps its contracts: objects with different memories
    batched equal one at a time, and only relative ego motion matters (the places of a memory
    are moved by T_rel). The bias is in effect: other gains change the tracked outputs."""
    assert distance_model.memory_attention.distance_bias
    test_batched_objects_equal_one_at_a_time(distance_model)
    test_world_frame_invariance(distance_model)
    poses = [_pose(0.0, [0, 0, 0]), _pose(0.05, [1.5, 0.1, 0.0]), _pose(0.12, [3.0, 0.4, 0.1])]
    with torch.inference_mode():
        ref = _run_sequence(distance_model, poses)
    saved = [layer.place_gain.detach().clone() for layer in distance_model.memory_attention.layers]
    try:
        with torch.no_grad():
            for layer in distance_model.memory_attention.layers:
                layer.place_gain.fill_(0.0)
        with torch.inference_mode():
            flat = _run_sequence(distance_model, poses)
    finally:
        with torch.no_grad():
            for layer, g in zip(distance_model.memory_attention.layers, saved, strict=True):
                layer.place_gain.copy_(g)
    torch.testing.assert_close(ref[0].lidar.point_logits, flat[0].lidar.point_logits)
    assert not torch.allclose(ref[2].lidar.point_logits, flat[2].lidar.point_logits, atol=1e-4)


def test_memory_places_match_the_gathered_memory(distance_model: SAM4D) -> None:
    """Every memory token gets a place, in gather_memory's order; the no-memory path without
    ``directly_add_no_mem_embed`` attends to one unplaced token."""
    m = distance_model
    with torch.inference_mode():
        f0 = encode(m, 0)
        f1 = encode(m, 1, cams=(1,), pose=_pose(0.05, [0.8, 0.1, 0.0]))
        prompt = ObjectPrompts(lidar=LidarPrompt(points=[[8.0, 0.0, 0.0]], labels=[1]))
        mem0 = m.encode_memory(f0, m.track_step(f0, [prompt]))[0]
        mem1 = m.encode_memory(f1, m.track_step(f1, [prompt]))[0]
        f2 = encode(m, 2, pose=_pose(0.1, [1.6, 0.3, 0.0]))
        inputs = [
            ObjectMemoryInput([(mem0, 2), (mem1, 1)], [(mem0, 2), (mem1, 1)], 3),
            ObjectMemoryInput([(mem1, 2)], [], 3),
        ]
        _, _, valid = m.gather_memory(f2.geometry, inputs)
        places = m.memory_places(f2.geometry, inputs)
    kinds = [[s.kind for s in segs] for segs in places]
    # Frame 0: two cameras and LiDAR; frame 1: one camera and LiDAR; then the pointers.
    assert kinds == [["rays", "rays", "points", "rays", "points", "none"], ["rays", "points"]]
    assert [sum(s.count for s in segs) for segs in places] == valid.sum(dim=1).tolist()
    # One past frame gives the same segment objects to every object (distances computed once).
    assert places[0][3] is places[1][0] and places[0][4] is places[1][1]

    cfg = dataclasses.replace(m.config, directly_add_no_mem_embed=False)
    other = SAM4D(cfg).eval()
    with torch.inference_mode():
        out = other.track_step(encode(other, 3), [prompt])
    assert torch.isfinite(out.lidar.point_logits).all()


def test_stage_clock_belongs_to_the_model(official_meta: SAM4D) -> None:
    """Stage timings use the model's own clock (no process-wide setting): a benchmark's CPU
    clock on one model leaves another model's wall clock alone."""
    import time

    from sam4d_core.modeling.profiling import StageClock

    assert official_meta.clock.now is time.perf_counter
    ticks = iter([1.0, 1.5, 2.0, 2.25])
    clock = StageClock(lambda: next(ticks))
    timings: dict[str, float] = {}
    with clock.timer(timings, "stage"):
        pass
    with clock.timer(timings, "stage"):
        pass
    assert timings == {"stage": 750.0}
    with clock.timer(None, "stage"):  # no dict: nothing is read or written
        pass
    assert StageClock.named("cpu").now is time.process_time
    with pytest.raises(ValueError):
        StageClock.named("gpu")
