"""SAM head: shared mask decoder (camera + sparse LiDAR branch), multimask selection, object
pointers, padding/batching invariance, and the official-size parameter count and key names."""

from __future__ import annotations

import pytest
import torch

from sam4d_core.modeling.ego_pose_encoder import EgoPoseEncoder
from sam4d_core.modeling.sam import (
    NO_OBJ_SCORE,
    PAD_LABEL,
    ImagePrompts,
    LidarPrompts,
    SAMHead,
    pointer_pos_enc,
    use_multimask,
)
from sam4d_core.modeling.sparse.hierarchy import VoxelHierarchy

C = 32
GRID = 4  # image tokens: 4x4 (image 64 px, stride 16)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on the shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_head(**kwargs) -> SAMHead:
    torch.manual_seed(0)
    cfg = dict(
        embed_dim=C,
        mem_dim=C,
        image_size=GRID * 16,
        mask_in_chans=8,
        transformer_heads=2,
        transformer_mlp_dim=64,
        iou_head_hidden_dim=C,
    )
    cfg.update(kwargs)
    return SAMHead(**cfg).eval()


def hierarchy(seed: int = 0) -> tuple[VoxelHierarchy, int, int, int]:
    g = torch.Generator().manual_seed(seed)
    xyz = torch.randint(0, 16, (300, 3), generator=g) * 4
    c4 = torch.unique(torch.cat([torch.zeros(300, 1, dtype=torch.int64), xyz], 1), dim=0)

    def up(c: torch.Tensor, s: int) -> torch.Tensor:
        return torch.unique(
            torch.cat([c[:, :1], torch.div(c[:, 1:], s, rounding_mode="floor") * s], 1), dim=0
        )

    c8 = up(c4, 8)
    c16 = up(c8, 16)
    h = VoxelHierarchy.from_coords(c4, c8, c16)
    return h, h.num_s4, h.num_s8, h.num_s16


def scene(head: SAMHead, b: int, seed: int = 1):
    """Per-object features (as after memory attention) and shared PEs / high-res features."""
    g = torch.Generator().manual_seed(seed)
    h, n4, n8, n16 = hierarchy()
    dec = head.sam_mask_decoder
    img_hr = dec.project_image_high_res(
        torch.randn(1, C, 4 * GRID, 4 * GRID, generator=g),
        torch.randn(1, C, 2 * GRID, 2 * GRID, generator=g),
    )
    pts_hr = dec.project_lidar_high_res(
        torch.randn(n4, C // 2, generator=g), torch.randn(n8, C, generator=g)
    )
    img_feat = torch.randn(b, C, GRID, GRID, generator=g)
    img_pe = torch.randn(1, C, GRID, GRID, generator=g)
    pts_feat = torch.randn(b, n16, C, generator=g)
    pts_pe = torch.randn(n16, C, generator=g)
    return dict(
        h=h,
        img_hr=img_hr,
        pts_hr=pts_hr,
        img_feat=img_feat,
        img_pe=img_pe,
        pts_feat=pts_feat,
        pts_pe=pts_pe,
    )


def run(
    head: SAMHead,
    s: dict,
    rows,
    img_pts=None,
    pts_pts=None,
    multimask=False,
    img_mask=None,
    pts_mask=None,
):
    """Run the head on object rows ``rows`` with optional (labels, pe) prompts per modality."""
    img = ImagePrompts(
        s["img_feat"][rows],
        s["img_pe"],
        s["img_hr"],
        point_pe=None if img_pts is None else img_pts[1],
        point_labels=None if img_pts is None else img_pts[0],
        mask=img_mask,
    )
    pts = LidarPrompts(
        s["pts_feat"][rows],
        s["pts_pe"],
        s["h"],
        s["pts_hr"],
        point_pe=None if pts_pts is None else pts_pts[1],
        point_labels=None if pts_pts is None else pts_pts[0],
        mask=pts_mask,
    )
    return head(img, pts, multimask_output=multimask)


def test_shapes_and_dtypes() -> None:
    head = tiny_head()
    b = 3
    s = scene(head, b)
    n4 = s["h"].num_s4
    labels = torch.ones(b, 1, dtype=torch.int64)
    for multimask, m in ((True, 3), (False, 1)):
        out = run(head, s, slice(0, b), (labels, torch.randn(b, 1, C)), None, multimask)
        img, pts = out["img"], out["pts"]
        assert img.low_res_multimasks.shape == (b, m, 4 * GRID, 4 * GRID)
        assert pts.low_res_multimasks.shape == (b, m, n4)
        for o in (img, pts):
            assert o.ious.shape == (b, m)
            assert o.low_res_masks.shape == (b, 1, *o.low_res_multimasks.shape[2:])
            assert o.obj_ptr.shape == (b, C)
            assert o.object_score_logits.shape == (b, 1)
            assert o.best_index.shape == (b,) and o.best_index.dtype == torch.int64
            assert o.low_res_multimasks.dtype == o.obj_ptr.dtype == torch.float32
            assert ((o.ious >= 0) & (o.ious <= 1)).all()  # sigmoid IoU head
    # Mask prompts in both modalities, one modality alone.
    out = run(
        head,
        s,
        slice(0, b),
        img_mask=torch.randn(b, 1, 4 * GRID, 4 * GRID),
        pts_mask=torch.randn(b, n4),
    )
    assert out["pts"].low_res_masks.shape == (b, 1, n4)
    only_pts = head(pts=LidarPrompts(s["pts_feat"], s["pts_pe"], s["h"], s["pts_hr"]))
    assert set(only_pts) == {"pts"}
    only_img = head(ImagePrompts(s["img_feat"], s["img_pe"], s["img_hr"]), multimask_output=True)
    assert set(only_img) == {"img"} and only_img["img"].ious.shape == (b, 3)


def test_float64_end_to_end() -> None:
    head = tiny_head()
    s = scene(head, 2)
    head = head.double()

    def f64(v):
        if isinstance(v, torch.Tensor):
            return v.double()
        return [t.double() for t in v] if isinstance(v, list) else v

    s = {k: f64(v) for k, v in s.items()}
    labels = torch.ones(2, 1, dtype=torch.int64)
    out = run(head, s, slice(0, 2), (labels, torch.randn(2, 1, C, dtype=torch.float64)))
    assert out["img"].low_res_multimasks.dtype == out["pts"].obj_ptr.dtype == torch.float64


def test_padding_and_batching_invariance() -> None:
    """Objects with 1, 2, 3 clicks (padded with PAD_LABEL) batched == one at a time."""
    head = tiny_head()
    b = 3
    s = scene(head, b, seed=2)
    g = torch.Generator().manual_seed(3)
    counts_img, counts_pts = [1, 3, 2], [2, 0, 1]
    pe_img = torch.randn(b, 3, C, generator=g)
    pe_pts = torch.randn(b, 2, C, generator=g)
    lab_img = torch.full((b, 3), PAD_LABEL)
    lab_pts = torch.full((b, 2), PAD_LABEL)
    for i in range(b):
        lab_img[i, : counts_img[i]] = torch.randint(0, 2, (counts_img[i],), generator=g)
        lab_pts[i, : counts_pts[i]] = torch.randint(0, 2, (counts_pts[i],), generator=g)
    for multimask in (True, False):
        batched = run(head, s, slice(0, b), (lab_img, pe_img), (lab_pts, pe_pts), multimask)
        for i in range(b):
            ni, np_ = counts_img[i], counts_pts[i]
            single = run(
                head,
                s,
                slice(i, i + 1),
                (lab_img[i : i + 1, :ni], pe_img[i : i + 1, :ni]),
                (lab_pts[i : i + 1, :np_], pe_pts[i : i + 1, :np_]),
                multimask,
            )
            for key in ("img", "pts"):
                x, y = batched[key], single[key]
                for name in ("low_res_multimasks", "ious", "obj_ptr", "object_score_logits"):
                    torch.testing.assert_close(
                        getattr(x, name)[i : i + 1], getattr(y, name), rtol=1e-4, atol=1e-4
                    )
                assert torch.equal(x.best_index[i : i + 1], y.best_index)
    # Extra padding changes nothing either.
    more = torch.cat([lab_img, torch.full((b, 4), PAD_LABEL)], 1)
    more_pe = torch.cat([pe_img, torch.randn(b, 4, C, generator=g)], 1)
    a = run(head, s, slice(0, b), (lab_img, pe_img), (lab_pts, pe_pts))
    c = run(head, s, slice(0, b), (more, more_pe), (lab_pts, pe_pts))
    for key in ("img", "pts"):
        torch.testing.assert_close(
            a[key].low_res_multimasks, c[key].low_res_multimasks, rtol=1e-5, atol=1e-5
        )


def test_multimask_selection_and_object_pointer() -> None:
    head = tiny_head()
    b = 4
    s = scene(head, b, seed=4)
    labels = torch.ones(b, 1, dtype=torch.int64)
    out = run(head, s, slice(0, b), (labels, torch.randn(b, 1, C)), None, multimask=True)
    for o in out.values():
        best = o.ious.argmax(dim=1)
        assert torch.equal(o.best_index, best)
        torch.testing.assert_close(
            o.low_res_masks[:, 0], o.low_res_multimasks[torch.arange(b), best]
        )
    # The pointer comes from the chosen multimask token: recompute it from the decoder directly.
    dec = head.sam_mask_decoder
    p = head.encode_lidar_prompts(LidarPrompts(s["pts_feat"], s["pts_pe"], s["h"], s["pts_hr"]), b)
    d = dec.forward_lidar(
        s["pts_feat"], s["pts_pe"], p.sparse, p.dense, True, s["h"], s["pts_hr"], p.valid
    )
    assert d.sam_tokens_out.shape == (b, 3, C)
    o = head(
        pts=LidarPrompts(s["pts_feat"], s["pts_pe"], s["h"], s["pts_hr"]), multimask_output=True
    )["pts"]
    token = d.sam_tokens_out[torch.arange(b), d.iou_pred.argmax(1)]
    torch.testing.assert_close(o.obj_ptr, head.object_pointer(token, d.object_score_logits))
    # Single-mask mode uses the single-mask token.
    d1 = dec.forward_lidar(
        s["pts_feat"], s["pts_pe"], p.sparse, p.dense, False, s["h"], s["pts_hr"], p.valid
    )
    assert d1.sam_tokens_out.shape == (b, 1, C)


def test_absent_object_masks_and_pointer() -> None:
    head = tiny_head()
    with torch.no_grad():
        head.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(-1e4)
    s = scene(head, 2)
    out = run(head, s, slice(0, 2), multimask=True)
    for o in out.values():
        assert (o.object_score_logits < 0).all()
        assert (o.low_res_multimasks == NO_OBJ_SCORE).all()
        torch.testing.assert_close(o.obj_ptr, head.no_obj_ptr.expand(2, C))  # fixed_no_obj_ptr
    soft = tiny_head(fixed_no_obj_ptr=False)
    token = torch.randn(2, C)
    present = soft.object_pointer(token, torch.full((2, 1), 5.0))
    torch.testing.assert_close(present, soft.obj_ptr_proj(token))
    absent = soft.object_pointer(token, torch.full((2, 1), -5.0))
    torch.testing.assert_close(absent, soft.obj_ptr_proj(token) + soft.no_obj_ptr)


def test_without_high_res_features() -> None:
    head = tiny_head(use_high_res_features=False)
    s = scene(tiny_head(), 2)
    out = head(
        ImagePrompts(s["img_feat"], s["img_pe"]),
        LidarPrompts(s["pts_feat"], s["pts_pe"], s["h"]),
        multimask_output=True,
    )
    assert out["img"].low_res_multimasks.shape[-1] == 4 * GRID
    assert not hasattr(head.sam_mask_decoder, "conv_s0_pts")
    with pytest.raises(ValueError):
        tiny_head().sam_mask_decoder.forward_image(
            s["img_feat"], s["img_pe"], torch.zeros(2, 0, C), torch.zeros(2, C, GRID, GRID), False
        )


def test_pointer_positional_encoding() -> None:
    head = tiny_head()
    t_diff = torch.tensor([0, 1, 3, 7])
    pe = head.pointer_temporal_pe(t_diff, 7)
    assert pe.shape == (4, C)
    pose_enc = EgoPoseEncoder(C)
    cur = torch.eye(4, dtype=torch.float64)
    prev = torch.eye(4, dtype=torch.float64).repeat(4, 1, 1)
    prev[:, 0, 3] = torch.tensor([0.0, -1.0, -3.0, -7.0])
    full = pointer_pos_enc(head, t_diff, 7, pose_enc, cur, prev)
    torch.testing.assert_close(full, pe + pose_enc(cur.expand(4, 4, 4), prev))


def test_use_multimask_rules() -> None:
    assert use_multimask(1, True) and use_multimask(0, False)  # first click, tracking
    assert not use_multimask(2, True)  # a box or two clicks: single mask
    assert not use_multimask(1, False, multimask_output_for_tracking=False)


def test_official_size_parameters_and_keys() -> None:
    head = SAMHead()  # official sizes: C 256, 768 px, Hiera-S + MinkUNet34 channels
    n_params = sum(p.numel() for p in head.parameters())
    # prompt encoders 6,220 + 6,216; decoder 4,383,205 (transformer 3,291,264); obj_ptr_proj
    # 197,376; obj_ptr_tpos_proj 65,792; no_obj_ptr 256. DESIGN.md: "SAM head 4.7 M".
    assert n_params == 4_659_065
    sd = head.state_dict()
    assert len(sd) == 185  # 176 parameters + 9 BatchNorm buffers
    expected = {
        "sam_prompt_encoder.point_embeddings.3.weight": (1, 256),
        "sam_prompt_encoder.not_a_point_embed.weight": (1, 256),
        "sam_prompt_encoder.mask_downscaling.6.weight": (256, 16, 1, 1),
        "sam_prompt_encoder.no_mask_embed.weight": (1, 256),
        "psam_prompt_encoder.mask_downscaling.0.net.0.kernel": (8, 1, 4),
        "psam_prompt_encoder.mask_downscaling.1.net.1.running_var": (16,),
        "psam_prompt_encoder.mask_downscaling.2.kernel": (16, 256),
        "sam_mask_decoder.transformer.layers.1.cross_attn_image_to_token.q_proj.weight": (128, 256),
        "sam_mask_decoder.transformer.layers.0.mlp.layers.1.weight": (256, 2048),
        "sam_mask_decoder.transformer.final_attn_token_to_image.out_proj.weight": (256, 128),
        "sam_mask_decoder.transformer.norm_final_attn.bias": (256,),
        "sam_mask_decoder.obj_score_token.weight": (1, 256),
        "sam_mask_decoder.mask_tokens.weight": (4, 256),
        "sam_mask_decoder.output_upscaling.3.weight": (64, 32, 2, 2),
        "sam_mask_decoder.output_upscaling_pts.0.kernel": (8, 256, 64),
        "sam_mask_decoder.output_upscaling_pts.3.bias": (32,),
        "sam_mask_decoder.conv_s0.weight": (32, 256, 1, 1),
        "sam_mask_decoder.conv_s1_pts.kernel": (256, 64),
        "sam_mask_decoder.conv_s0_pts.kernel": (128, 32),
        "sam_mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (32, 256),
        "sam_mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
        "sam_mask_decoder.pred_obj_score_head.layers.2.weight": (1, 256),
        "obj_ptr_proj.layers.2.weight": (256, 256),
        "obj_ptr_tpos_proj.weight": (256, 256),
        "no_obj_ptr": (1, 256),
    }
    for key, shape in expected.items():
        assert tuple(sd[key].shape) == shape, key
    assert "sam_mask_decoder.output_upscaling_pts.0.bias" not in sd
    assert "psam_prompt_encoder.mask_downscaling.2.bias" not in sd
    pose = EgoPoseEncoder()
    assert sorted(pose.state_dict()) == [
        "d_max",
        "fc.0.bias",
        "fc.0.weight",
        "fc.2.bias",
        "fc.2.weight",
    ]
    assert pose.d_max.dim() == 0 and sum(p.numel() for p in pose.parameters()) == 67_585


def test_dynamic_multimask_fallback() -> None:
    head = tiny_head()
    dec = head.sam_mask_decoder
    s = scene(head, 3)
    p = head.encode_image_prompts(ImagePrompts(s["img_feat"], s["img_pe"], s["img_hr"]), 3)
    args = (s["img_feat"], s["img_pe"], p.sparse, p.dense)
    multi = dec.forward_image(*args, True, s["img_hr"], p.valid)
    single = dec.forward_image(*args, False, s["img_hr"], p.valid)
    dec.dynamic_multimask_via_stability = True
    dec.dynamic_multimask_stability_thresh = 2.0  # never stable: best multimask
    out = dec.forward_image(*args, False, s["img_hr"], p.valid)
    best = multi.iou_pred.argmax(1)
    torch.testing.assert_close(out.masks[:, 0], multi.masks[torch.arange(3), best])
    torch.testing.assert_close(out.iou_pred[:, 0], multi.iou_pred.max(1).values)
    dec.dynamic_multimask_stability_thresh = -1.0  # always stable: the single mask
    torch.testing.assert_close(
        dec.forward_image(*args, False, s["img_hr"], p.valid).masks, single.masks
    )
