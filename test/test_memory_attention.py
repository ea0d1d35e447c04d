"""MCMA memory attention: official size and names, the released algorithm, padding and batching."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from sam4d_core.modeling.memory_attention import (
    MemoryAttention,
    MemoryAttentionLayer,
    add_no_memory_embedding,
    add_temporal_encoding,
    object_pointer_time_encoding,
    pack_memories,
    register_memory_parameters,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from training.analysis.attention_locality import first_layer_self_mass  # noqa: E402

D = 32


def tiny(cross_modal: bool = True, dropout: float = 0.0) -> MemoryAttention:
    torch.manual_seed(0)
    return MemoryAttention(
        d_model=D, num_layers=2, dim_feedforward=64, dropout=dropout, cross_modal=cross_modal
    ).eval()


def frame(seed: int = 1, n_img: int = 12, n_pts: int = 7):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return r(1, n_img, D), r(1, n_img, D), r(1, n_pts, D), r(1, n_pts, D)


def reference(model: MemoryAttention, img, img_pos, pts, pts_pos, memory, memory_pos):
    """The released algorithm, literally: one pass per modality through SAM2 layers, with the
    other modality's current tokens appended to the memory (no masks, one object)."""
    outs = []
    for q, qp, o, op in ((img, img_pos, pts, pts_pos), (pts, pts_pos, img, img_pos)):
        mem = torch.cat([memory, o], dim=1) if model.cross_modal else memory
        mem_pos = torch.cat([memory_pos, op], dim=1) if model.cross_modal else memory_pos
        x = q + 0.1 * qp
        for layer in model.layers:
            x = layer(x, mem, mem_pos, qp)
        outs.append(model.norm(x))
    return outs


def test_official_size_and_names() -> None:
    with torch.device("meta"):
        model = MemoryAttention()
    assert sum(p.numel() for p in model.parameters()) == 6_315_520  # DESIGN.md: 6.3 M
    sd = model.state_dict()
    assert len(sd) == 106
    assert sd["layers.3.cross_attn_image.k_proj.weight"].shape == (256, 256)
    assert sd["layers.0.self_attn.out_proj.bias"].shape == (256,)
    assert sd["layers.2.linear1.weight"].shape == (2048, 256)
    assert {"norm.weight", "norm.bias", "layers.1.norm3.weight"} <= set(sd)


def test_matches_released_algorithm_and_shapes() -> None:
    model = tiny()
    img, img_pos, pts, pts_pos = frame()
    memory, memory_pos = torch.randn(1, 20, D), torch.randn(1, 20, D)
    out_img, out_pts = model(img, img_pos, pts, pts_pos, memory, memory_pos)
    assert out_img.shape == (1, 12, D) and out_pts.shape == (1, 7, D)
    ref_img, ref_pts = reference(model, img, img_pos, pts, pts_pos, memory, memory_pos)
    torch.testing.assert_close(out_img, ref_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_pts, ref_pts, rtol=1e-5, atol=1e-5)


def test_cross_modal_fusion() -> None:
    img, img_pos, pts, pts_pos = frame()
    memory, memory_pos = torch.randn(1, 5, D), torch.randn(1, 5, D)
    for cross in (True, False):
        model = tiny(cross_modal=cross)
        a, _ = model(img, img_pos, pts, pts_pos, memory, memory_pos)
        b, _ = model(img, img_pos, pts + 1.0, pts_pos, memory, memory_pos)
        assert (not torch.allclose(a, b)) == cross
    # Without LiDAR the image query attends to the memory only.
    model = tiny()
    a, none = model(img, img_pos, None, None, memory, memory_pos)
    assert none is None
    ref = tiny(cross_modal=False)(img, img_pos, pts, pts_pos, memory, memory_pos)[0]
    torch.testing.assert_close(a, ref)


def test_padding_does_not_change_the_output() -> None:
    model = tiny()
    img, img_pos, pts, pts_pos = frame()
    memory, memory_pos = torch.randn(1, 9, D), torch.randn(1, 9, D)
    ref_img, ref_pts = model(img, img_pos, pts, pts_pos, memory, memory_pos)
    # Garbage memory tokens and garbage LiDAR query tokens, masked out.
    mem_p = torch.cat([memory, 1e3 * torch.randn(1, 6, D)], dim=1)
    pos_p = torch.cat([memory_pos, torch.randn(1, 6, D)], dim=1)
    mem_valid = torch.arange(15)[None] < 9
    pts_p = torch.cat([pts, 50 * torch.randn(1, 4, D)], dim=1)
    pts_pos_p = torch.cat([pts_pos, torch.randn(1, 4, D)], dim=1)
    pts_valid = torch.arange(11)[None] < 7
    out_img, out_pts = model(
        img, img_pos, pts_p, pts_pos_p, mem_p, pos_p, memory_valid=mem_valid, points_valid=pts_valid
    )
    torch.testing.assert_close(out_img, ref_img, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_pts[:, :7], ref_pts, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(out_pts).all()


def test_batched_objects_equal_one_at_a_time() -> None:
    model = tiny()
    img, img_pos, pts, pts_pos = frame()
    g = torch.Generator().manual_seed(3)
    # Three objects with memories of different sizes (e.g. LiDAR memories of different sweeps),
    # each made of pieces: a spatial memory per slot and object pointers.
    pieces = [[torch.randn(n, D, generator=g) for n in sizes] for sizes in ([5, 3], [8], [2, 2, 4])]
    pos = [[torch.randn_like(t) for t in obj] for obj in pieces]
    memory, memory_pos, valid = pack_memories(pieces, pos)
    assert memory.shape == (3, 8, D) and valid.sum(1).tolist() == [8, 8, 8]
    memory, memory_pos, valid = pack_memories(pieces, pos, min_length=10)
    assert memory.shape == (3, 10, D) and valid.sum(1).tolist() == [8, 8, 8]
    out_img, out_pts = model(img, img_pos, pts, pts_pos, memory, memory_pos, memory_valid=valid)
    assert out_img.shape == (3, 12, D) and out_pts.shape == (3, 7, D)
    for i in range(3):
        m = torch.cat(pieces[i])[None]
        mp = torch.cat(pos[i])[None]
        one_img, one_pts = model(img, img_pos, pts, pts_pos, m, mp)
        torch.testing.assert_close(out_img[i : i + 1], one_img, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out_pts[i : i + 1], one_pts, rtol=1e-5, atol=1e-5)


def test_empty_keys_give_a_zero_update_not_nan() -> None:
    layer = MemoryAttentionLayer(d_model=D, dim_feedforward=64, dropout=0.0).eval()
    q = torch.randn(2, 4, D)
    k, v = layer.memory_kv(torch.randn(2, 3, D), torch.randn(2, 3, D))
    valid = torch.tensor([[True, False, True], [False, False, False]])
    out = layer.forward_cross_attention(q, torch.zeros_like(q), k, v, valid)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[1], q[1])  # nothing to attend to: the residual only


def test_training_backward() -> None:
    model = tiny(dropout=0.1).train()
    img, img_pos, pts, pts_pos = frame()
    memory = torch.randn(2, 6, D, requires_grad=True)
    out_img, out_pts = model(img, img_pos, pts, pts_pos, memory, torch.randn(2, 6, D))
    (out_img.sum() + out_pts.sum()).backward()
    assert torch.isfinite(memory.grad).all()
    assert all(p.grad is not None for p in model.parameters())


def test_no_memory_path_and_top_level_parameters() -> None:
    root = torch.nn.Module()
    register_memory_parameters(root, hidden_dim=D, mem_dim=D, num_maskmem=7)
    shapes = {k: tuple(v.shape) for k, v in root.state_dict().items()}
    assert shapes == {
        "maskmem_tpos_enc": (7, 1, 1, D),
        "no_mem_embed": (1, 1, D),
        "no_mem_pos_enc": (1, 1, D),
        "no_obj_embed_spatial": (1, D),
        "mask_downsample_img.weight": (1, 1, 4, 4),
        "mask_downsample_img.bias": (1,),
        "mask_downsample_pts.kernel": (64, 1, 1),
        "mask_downsample_pts.bias": (1,),
    }
    tokens = torch.randn(3, 5, D)
    out = add_no_memory_embedding(tokens, root.no_mem_embed)
    torch.testing.assert_close(out - tokens, root.no_mem_embed.detach().expand(3, 5, D))
    # Temporal embedding of a slot: the most recent frame uses row 0, conditioning frames row 6.
    pos = torch.zeros(4, D)
    torch.testing.assert_close(
        add_temporal_encoding(pos, root.maskmem_tpos_enc, 6),
        root.maskmem_tpos_enc[6, 0].expand(4, D),
    )
    idx = torch.tensor([0, 0, 6, 3])
    per_token = add_temporal_encoding(pos, root.maskmem_tpos_enc, idx)
    torch.testing.assert_close(per_token[3], root.maskmem_tpos_enc[3, 0, 0])


def test_pointer_time_encoding() -> None:
    enc = object_pointer_time_encoding(torch.tensor([7, 1, 2, -3]), t_diff_max=7, dim=D)
    assert enc.shape == (4, D)
    # gap == t_diff_max -> position 1: sin(1) in the first channel, cos(1) in the middle.
    assert enc[0, 0].item() == pytest.approx(torch.sin(torch.tensor(1.0)).item(), abs=1e-6)
    assert enc[0, D // 2].item() == pytest.approx(torch.cos(torch.tensor(1.0)).item(), abs=1e-6)


def test_rejects_mismatched_memory_width_with_cross_modal() -> None:
    with pytest.raises(ValueError, match="kv_in_dim"):
        MemoryAttention(d_model=64, kv_in_dim=32)
    MemoryAttention(d_model=64, kv_in_dim=32, cross_modal=False, num_layers=1)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")
def test_exports_to_onnx_with_dynamic_objects_and_tokens(tmp_path) -> None:
    """No Python control flow on data: one graph for any number of objects and memory tokens."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = tiny()

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, img, img_pos, pts, pts_pos, memory, memory_pos, memory_valid):
            return self.model(img, img_pos, pts, pts_pos, memory, memory_pos, memory_valid)

    img, img_pos, pts, pts_pos = frame()
    args = (img, img_pos, pts, pts_pos, torch.randn(2, 6, D), torch.randn(2, 6, D))
    args = (*args, torch.ones(2, 6, dtype=torch.bool))
    b, n, m = (torch.export.Dim(k, min=2, max=4096) for k in ("B", "L", "M"))
    dyn = ({}, {}, {1: m}, {1: m}, {0: b, 1: n}, {0: b, 1: n}, {0: b, 1: n})
    path = tmp_path / "mcma.onnx"
    torch.onnx.export(Wrapper(), args, path, dynamo=True, dynamic_shapes=dyn, verbose=False)
    session = ort.InferenceSession(str(path))
    img, img_pos, pts, pts_pos = frame(seed=5, n_pts=9)
    test = (img, img_pos, pts, pts_pos, torch.randn(5, 11, D), torch.randn(5, 11, D))
    test = (*test, torch.rand(5, 11) > 0.3)
    names = [i.name for i in session.get_inputs()]
    got = session.run(None, {k: v.numpy() for k, v in zip(names, test, strict=True)})
    with torch.no_grad():
        ref = model(*test[:6], memory_valid=test[6])
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(torch.from_numpy(g), r, rtol=1e-4, atol=1e-4)


def test_pos_scale_scales_every_encoding() -> None:
    base = tiny()
    scaled = MemoryAttention(
        d_model=D, num_layers=2, dim_feedforward=64, dropout=0.0, pos_scale=0.25
    ).eval()
    scaled.load_state_dict(base.state_dict())
    img, img_pos, pts, pts_pos = frame()
    memory, memory_pos = torch.randn(2, 6, D), torch.randn(2, 6, D)
    a = scaled(img, img_pos, pts, pts_pos, memory, memory_pos)
    b = base(img, 0.25 * img_pos, pts, 0.25 * pts_pos, memory, 0.25 * memory_pos)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    with pytest.raises(ValueError, match="pos_scale"):
        MemoryAttention(d_model=D, pos_scale=0.0)


def test_tied_initialisation_attends_to_the_same_place() -> None:
    """The point of ``tie_qk_init``: a fresh module reads the memory where the query is. Tokens
    on a 12 x 12 grid with large sine encodings (like UMPE's, ~15x the token norm)."""
    torch.manual_seed(0)
    n, d = 144, 64
    ij = torch.stack(torch.meshgrid(torch.arange(12.0), torch.arange(12.0), indexing="ij"), -1)
    freqs = torch.logspace(0, -2, d // 4)
    ang = ij.reshape(n, 2, 1) * freqs
    pos = torch.cat([ang.sin(), ang.cos()], dim=-1).reshape(1, n, d) * 15.0
    tokens = torch.randn(1, n, d)
    masses = {}
    for tie in (False, True):
        torch.manual_seed(1)
        m = MemoryAttention(
            d_model=d,
            num_layers=1,
            dim_feedforward=64,
            dropout=0.0,
            cross_modal=False,
            pos_scale=0.1,
            pos_enc_at_cross_attn_queries=True,
            tie_qk_init=tie,
        ).eval()
        with torch.no_grad():
            # The memory is the current frame itself (a static scene): key i is query i's place.
            masses[tie], uniform = first_layer_self_mass(m, tokens, pos, tokens, pos, 0)
    assert masses[True] > 10 * uniform and masses[True] > 5 * masses[False], masses

    # reset_parameters draws every layer anew and ties again.
    m = MemoryAttention(d_model=D, num_layers=2, dim_feedforward=64, tie_qk_init=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.reset_parameters()
    assert not torch.equal(before["layers.0.linear1.weight"], m.layers[0].linear1.weight)
    assert not torch.equal(m.layers[0].linear1.weight, m.layers[1].linear1.weight)
    for layer in m.layers:
        attn = layer.cross_attn_image
        assert torch.equal(attn.k_proj.weight, attn.q_proj.weight)
        assert torch.equal(attn.k_proj.bias, attn.q_proj.bias)
