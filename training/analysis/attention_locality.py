"""Where does attention look? A diagnostic of the decoder's clicks and of MCMA's memory.

    python -m training.analysis.attention_locality --help
    python -m training.analysis.attention_locality --config sam4d_small_synthetic \
        --checkpoint sam4d_core/weights/sam4d_small_synthetic.pt --json locality.json

Prompting needs the decoder's click token to find the clicked object, and propagation needs MCMA
to route each object's memory to the current tokens at the object's place (the decoder sees no
prompt after the first frame, only the conditioned tokens). Both are attention by position,
through UMPE encodings added to the tokens. This tool measures them on held-out frames (the
config's validation sources, else its training sources), per modality:

- ``click_mass`` / ``click_area``: the weight the click token (one centre click per object, in
  camera slot 0 / in the LiDAR) puts on the object's scene tokens in the decoder's first
  token -> scene attention, against the share of tokens the object covers (what attention that
  ignores the click's position gives). A decoder that localises clicks has mass >> area;
- ``pe_ratio``: mean norm of the scene tokens' encodings over that of the tokens. Far above 1,
  the encodings swamp the features and the softmax saturates on position alone;
- ``self_mass`` (MCMA, a static frame that is its own memory, each object's memory encoded from
  its ground-truth mask): the first layer's cross-attention weight a current token puts on the
  memory token of its own cell (image) / voxel (LiDAR), mean over tokens, heads and objects;
  ``uniform`` is 1 / (number of keys), what attention that ignores position gives;
- ``memory_locality`` / ``conditioned_locality``: how much an object's tokens deviate from the
  mean over the frame's objects inside the object (stride-16 cells / LiDAR tokens with at least
  ``--inside`` of their pixels / points on it) relative to outside; the median over objects.
  The memory tokens of a working memory encoder are local (> 1); conditioned tokens of ~1 mean
  MCMA spreads the object's signal over the whole frame;
- ``memory_probe_iou`` / ``conditioned_probe_iou``: can one linear readout tell an object's
  places from the rest, the same way for every object? A logistic-regression probe on the
  object-specific part of the tokens (minus the mean over the frame's objects), fit on the
  objects of the first two thirds of the frames, scored (token IoU) on the rest. The decoder
  needs this of the conditioned tokens after the prompted frame; memory tokens that score well
  while the conditioned tokens do not mean MCMA loses the memory on its way to the tokens.

Without ``--checkpoint`` the model is what the config's run starts from (``init_checkpoint``,
``model_overrides``, ``reinit``). Prints a table; ``--json`` writes the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sam4d_core.build_sam import build_sam4d
from sam4d_core.modeling.memory_attention import MemoryAttention
from sam4d_core.modeling.memory_bank import select_memory_frames
from sam4d_core.modeling.prompts import ObjectPrompts
from sam4d_core.modeling.records import FrameFeatures, ObjectMemoryInput
from sam4d_core.modeling.sam4d_base import SAM4D

from ..config import PromptConfig, TrainConfig, load_train_config
from ..datasets import ClipDataset, ClipSample, build_source
from ..prompt_simulation import LIDAR, initial_prompt
from ..train import build_model


@dataclass
class LocalityReport:
    """Mean / median numbers over the measured frames and objects (None: modality absent)."""

    frames: int
    objects: int
    image_self_mass: float | None
    image_uniform: float | None
    lidar_self_mass: float | None
    lidar_uniform: float | None
    image_memory_locality: float | None
    image_conditioned_locality: float | None
    lidar_memory_locality: float | None
    lidar_conditioned_locality: float | None
    image_click_mass: float | None = None
    image_click_area: float | None = None
    lidar_click_mass: float | None = None
    lidar_click_area: float | None = None
    image_pe_ratio: float | None = None
    lidar_pe_ratio: float | None = None
    image_memory_probe_iou: float | None = None
    image_conditioned_probe_iou: float | None = None
    lidar_memory_probe_iou: float | None = None
    lidar_conditioned_probe_iou: float | None = None


def deviation_locality(tokens: torch.Tensor, inside: torch.Tensor) -> list[float]:
    """Per object: mean deviation from the objects' mean token inside / outside the object.

    Args:
        tokens: (B, N, C) per-object tokens of the same N places (B >= 2).
        inside: (B, N) bool, the places covered by each object.

    Returns:
        one ratio per object that has places both inside and outside (others are skipped).
    """
    dev = (tokens - tokens.mean(dim=0, keepdim=True)).norm(dim=-1)  # (B, N)
    out = []
    for k in range(tokens.shape[0]):
        m = inside[k]
        if bool(m.any()) and bool((~m).any()):
            outside = dev[k][~m].mean()
            out.append(float(dev[k][m].mean() / outside.clamp_min(1e-12)))
    return out


ProbeSample = tuple[torch.Tensor, torch.Tensor]
"""One object's (tokens (N, C) minus the objects' mean token, inside (N,) bool)."""


def object_deviations(tokens: torch.Tensor, inside: torch.Tensor) -> list[ProbeSample]:
    """Per object that covers a place: its tokens minus the mean over the objects (what is
    specific to the object), with the places it covers.

    Args:
        tokens: (B, N, C) per-object tokens of the same N places; inside: (B, N) bool.
    """
    dev = tokens - tokens.mean(dim=0, keepdim=True)
    return [(dev[k].float(), inside[k]) for k in range(tokens.shape[0]) if bool(inside[k].any())]


def linear_probe_iou(
    train: list[ProbeSample], test: list[ProbeSample], steps: int = 300, lr: float = 1e-2
) -> float | None:
    """Mean token IoU on ``test`` of one logistic-regression probe fit on ``train``.

    The probe is a single direction plus a bias for every object: high when the tokens say
    "inside the object" in the same way for all objects, which is what the decoder can read
    after the prompted frame. Memory tokens made from a mask score well above the conditioned
    tokens of an MCMA that does not route them by place. Positives are weighted by the
    negatives / positives ratio. None without samples on either side.
    """
    if not train or not test:
        return None
    x = torch.cat([t for t, _ in train])
    y = torch.cat([m for _, m in train]).float()
    pos = float(y.mean())
    if pos in (0.0, 1.0):
        return None
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    weight = torch.tensor((1.0 - pos) / pos)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y, pos_weight=weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
    ious = []
    with torch.no_grad():
        for t, m in test:
            p = (t @ w + b) > 0
            ious.append(float((p & m).sum()) / max(int((p | m).sum()), 1))
    return float(np.mean(ious))


def first_layer_self_mass(
    ma: MemoryAttention,
    queries: torch.Tensor,
    query_pos: torch.Tensor,
    keys: torch.Tensor,
    key_pos: torch.Tensor,
    offset: int,
    distances: torch.Tensor | None = None,
) -> tuple[float, float]:
    """(self mass, uniform) of MCMA's first cross-attention for one query modality.

    Follows :meth:`~sam4d_core.modeling.memory_attention.MemoryAttention.forward` up to the first
    layer's attention weights (which the fused attention kernel does not return).

    Args:
        queries: (1, Nq, C) current tokens; query_pos: their encodings.
        keys: (B, Nk, C) every key of the query (memory and other-modality tokens, unpadded);
            key_pos: their encodings.
        offset: row of the key at the same place as query 0 (query i pairs with key offset + i).
        distances: (B or 1, Nq, Nk) the distance bias's distances, when MCMA has one.
    """
    layer = ma.layers[0]
    s = ma.pos_scale
    qp = query_pos * s
    x = queries + 0.1 * qp if ma.pos_enc_at_input else queries
    x = layer.forward_self_attention(x, qp, None)
    q_in = layer.norm2(x)
    if layer.pos_enc_at_cross_attn_queries:
        q_in = q_in + qp
    attn = layer.cross_attn_image
    q = attn.project_q(q_in)
    k, _ = layer.memory_kv(keys, key_pos * s)
    logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (B, H, Nq, Nk)
    if distances is not None:
        logits = logits + layer.distance_logits(distances)
    w = torch.softmax(logits, dim=-1)
    nq = queries.shape[1]
    diag = torch.diagonal(w[..., offset : offset + nq], dim1=-2, dim2=-1)
    return float(diag.mean()), 1.0 / keys.shape[1]


def _memories_from_ground_truth(
    model: SAM4D, sample: ClipSample, features: FrameFeatures, prompt_cfg: PromptConfig
) -> list[ObjectMemoryInput]:
    """Each object's memory of frame 0, made from its ground-truth mask."""
    rng = np.random.default_rng(0)
    prompts = [
        initial_prompt(sample, b, prompt_cfg, rng, kind="mask").to_prompts(None, None)
        or ObjectPrompts()
        for b in range(sample.num_objects)
    ]
    out = model.track_step(features, prompts)
    mems = model.encode_memory(features, out)
    sel = select_memory_frames(1, [0], [], model.config.memory, training=False, num_frames=2)
    return [ObjectMemoryInput.from_selection(sel, lambda f, m=m: m) for m in mems]


def _token_fractions(
    sample: ClipSample, features: FrameFeatures, model: SAM4D
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per object the fraction of each image cell (camera slot 0) and LiDAR token on it."""
    tg = sample.targets[0]
    img = lid = None
    if features.image is not None and tg.camera_masks and tg.camera_masks[0] is not None:
        m = torch.from_numpy(tg.camera_masks[0]).float()[:, None]  # (B, 1, H, W)
        # The model resizes the camera image to its input size; the cells follow that.
        m = F.interpolate(m, size=model.image_size, mode="bilinear", align_corners=False)
        img = F.avg_pool2d(m, model.config.backbone_stride)[:, 0].flatten(1)  # (B, h * w)
    if features.lidar is not None and tg.point_masks is not None:
        lf = features.lidar
        h = lf.hierarchy
        # -1 anywhere on the chain (exact-release mode drops top planes): the point has no token.
        p4 = lf.point_to_s4.clamp_min(0)
        p8 = h.parent_s4[p4]
        p16 = h.parent_s8[p8.clamp_min(0)]
        ok = (lf.point_to_s4 >= 0) & (p8 >= 0) & (p16 >= 0)
        tok = p16[ok]
        pts = torch.from_numpy(tg.point_masks).float()[:, ok.cpu().numpy()]  # (B, N)
        count = torch.zeros(lf.num_tokens).index_add_(
            0, tok, torch.ones_like(tok, dtype=torch.float)
        )
        on = torch.zeros(pts.shape[0], lf.num_tokens).index_add_(1, tok, pts)
        lid = on / count.clamp_min(1.0)
    return img, lid


def click_attention_mass(
    model: SAM4D,
    features: FrameFeatures,
    prompt: ObjectPrompts,
    on_object: torch.Tensor,
    lidar: bool,
) -> float:
    """Weight the click token puts on the object in the decoder's first token -> scene attention.

    Args:
        prompt: one object's single click, in camera slot 0 or (``lidar``) in the LiDAR.
        on_object: (N,) bool, the scene tokens (cells of camera slot 0 / LiDAR tokens) on it.

    Returns:
        the summed weight on those tokens, mean over heads.
    """
    decoder = model.sam_head.sam_mask_decoder
    attn = decoder.transformer.layers[0].cross_attn_token_to_image
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    hook = attn.register_forward_pre_hook(lambda _m, args: calls.append((args[0], args[1])))
    try:
        model.track_step(features, [prompt])
    finally:
        hook.remove()
    # Camera branches run first (one call per camera), then the LiDAR branch.
    ncam = 0 if features.image is None else features.image.num_cameras
    q, k = calls[ncam if lidar else 0]
    qh, kh = attn._split(attn.q_proj(q)), attn._split(attn.k_proj(k))
    w = torch.softmax(qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5, dim=-1)  # (1, H, T, N)
    # The click is the first prompt token of its own branch, after the decoder's output tokens.
    click = w[0, :, decoder.num_output_tokens]  # (H, N)
    return float(click[:, on_object].sum(dim=-1).mean())


_METRICS = tuple(f.name for f in dataclasses.fields(LocalityReport))[2:]


def _with_other_modality(
    ma: MemoryAttention,
    memory: torch.Tensor,
    memory_pos: torch.Tensor,
    other: torch.Tensor | None,
    other_pos: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A query's keys: the memory, then (cross-modal fusion) the other modality's (1, N, C)
    current tokens broadcast to the B objects."""
    if other is None or other_pos is None or not ma.cross_modal:
        return memory, memory_pos
    b = memory.shape[0]
    return (
        torch.cat([memory, other.expand(b, -1, -1)], dim=1),
        torch.cat([memory_pos, other_pos.expand(b, -1, -1)], dim=1),
    )


@torch.no_grad()
def measure(
    model: SAM4D, cfg: TrainConfig, num_frames: int = 8, inside: float = 0.25
) -> LocalityReport:
    """The diagnostic on ``num_frames`` held-out static frames (module docstring)."""
    model.eval()
    sources = cfg.val.sources or cfg.data.sources
    data = dataclasses.replace(cfg.data, clip_length=1, frame_stride=(0, 0))
    ds = ClipDataset([build_source(s) for s in sources], data, seed=cfg.seed + 1)
    acc: dict[str, list[float]] = {k: [] for k in _METRICS if not k.endswith("probe_iou")}
    # Per probe metric, per measured frame, the objects' samples (fit on the first two thirds of
    # the frames, scored on the rest).
    probes: dict[str, list[list[ProbeSample]]] = {
        k: [] for k in _METRICS if k.endswith("probe_iou")
    }
    click_cfg = dataclasses.replace(cfg.prompts, click_mode="center")
    frames = objects = 0
    g = 0
    while frames < num_frames and g < 50 * num_frames:
        sample = ds.sample(g)
        g += 1
        if sample.num_objects < 2:
            continue
        features = model.encode_frame(**sample.model_inputs(0))
        memories = _memories_from_ground_truth(model, sample, features, cfg.prompts)
        memory, memory_pos, _ = model.gather_memory(features.geometry, memories)
        img_cond, pts_cond = model.condition_on_memory(features, memories)
        img, lid = features.image, features.lidar
        dists: list[torch.Tensor | None] = [None, None]
        if model.memory_attention.distance_scales is not None:
            places = model.current_places(
                features, model.memory_places(features.geometry, memories)
            )
            present = [img is not None, lid is not None]
            found = iter(
                places.distances(present, memory.shape[1], model.memory_attention.distance_scales)
            )
            dists = [next(found) if there else None for there in present]
        frac_img, frac_lid = _token_fractions(sample, features, model)
        c = model.hidden_dim
        ma = model.memory_attention
        n_img = 0
        cur_img = cur_img_pos = None
        if img is not None:
            n, _, hh, ww = img.tokens.shape
            n_img = n * hh * ww
            cur_img = img.tokens.flatten(2).transpose(1, 2).reshape(1, n_img, c)
            cur_img_pos = img.pe.flatten(2).transpose(1, 2).reshape(1, n_img, c)
        b = sample.num_objects
        if img is not None:
            other = (None, None) if lid is None else (lid.tokens[None], lid.pe[None])
            keys, pos = _with_other_modality(ma, memory, memory_pos, *other)
            sm, un = first_layer_self_mass(ma, cur_img, cur_img_pos, keys, pos, 0, dists[0])
            acc["image_self_mass"].append(sm)
            acc["image_uniform"].append(un)
            if frac_img is not None:
                cells = frac_img.shape[1]
                on = frac_img > inside
                mem_tok = memory[:, :cells]
                cond = img_cond[:, 0].flatten(2).transpose(1, 2)
                acc["image_memory_locality"] += deviation_locality(mem_tok, on)
                acc["image_conditioned_locality"] += deviation_locality(cond, on)
                probes["image_memory_probe_iou"].append(object_deviations(mem_tok, on))
                probes["image_conditioned_probe_iou"].append(object_deviations(cond, on))
        if lid is not None:
            n16 = lid.num_tokens
            keys, pos = _with_other_modality(ma, memory, memory_pos, cur_img, cur_img_pos)
            sm, un = first_layer_self_mass(
                ma, lid.tokens[None], lid.pe[None], keys, pos, n_img, dists[1]
            )
            acc["lidar_self_mass"].append(sm)
            acc["lidar_uniform"].append(un)
            if frac_lid is not None:
                on = frac_lid > inside
                mem_tok = memory[:, n_img : n_img + n16]
                acc["lidar_memory_locality"] += deviation_locality(mem_tok, on)
                acc["lidar_conditioned_locality"] += deviation_locality(pts_cond, on)
                probes["lidar_memory_probe_iou"].append(object_deviations(mem_tok, on))
                probes["lidar_conditioned_probe_iou"].append(object_deviations(pts_cond, on))
        rng = np.random.default_rng(g)
        for k in range(b):
            for name, frac, view in (("image", frac_img, 0), ("lidar", frac_lid, LIDAR)):
                if frac is None or not bool((frac[k] > inside).any()):
                    continue
                st = initial_prompt(
                    sample, k, click_cfg, rng, modality=name, kind="click", num_clicks=1
                )
                prompt = st.to_prompts(None, None)
                if st.view != view or prompt is None:
                    continue
                on = frac[k] > inside
                mass = click_attention_mass(model, features, prompt, on, name == "lidar")
                acc[f"{name}_click_mass"].append(mass)
                acc[f"{name}_click_area"].append(float(on.float().mean()))
        if img is not None:
            acc["image_pe_ratio"].append(
                float(img.pe.norm(dim=1).mean() / img.tokens.norm(dim=1).mean())
            )
        if lid is not None:
            acc["lidar_pe_ratio"].append(
                float(lid.pe.norm(dim=-1).mean() / lid.tokens.norm(dim=-1).mean())
            )
        frames += 1
        objects += b

    # Self masses and norm ratios are means over frames, click masses and areas over clicked
    # objects; localities are medians over objects.
    stats = {
        k: None if not v else float(np.median(v) if k.endswith("locality") else np.mean(v))
        for k, v in acc.items()
    }
    for k, per_frame in probes.items():
        cut = (2 * len(per_frame) + 2) // 3
        train = [x for f in per_frame[:cut] for x in f]
        test = [x for f in per_frame[cut:] for x in f]
        stats[k] = linear_probe_iou(train, test)
    return LocalityReport(frames=frames, objects=objects, **stats)


def format_table(r: LocalityReport) -> str:
    f = lambda x: "-" if x is None else f"{x:.4f}"  # noqa: E731
    g = lambda x: "-" if x is None else f"{x:.2f}"  # noqa: E731
    rows = [
        f"Attention locality on {r.frames} frames, {r.objects} objects",
        "| modality | pe / token norm | click mass | click area | MCMA self mass | uniform "
        "| memory locality | conditioned locality | memory probe IoU | conditioned probe IoU |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, label in (("image", "image"), ("lidar", "LiDAR")):
        v = {k.removeprefix(name + "_"): getattr(r, k) for k in _METRICS if k.startswith(name)}
        rows.append(
            f"| {label} | {g(v['pe_ratio'])} | {f(v['click_mass'])} | {f(v['click_area'])} | "
            f"{f(v['self_mass'])} | {f(v['uniform'])} | {g(v['memory_locality'])} | "
            f"{g(v['conditioned_locality'])} | {g(v['memory_probe_iou'])} | "
            f"{g(v['conditioned_probe_iou'])} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m training.analysis.attention_locality",
        description=__doc__.split("\n\n")[2] if __doc__ else None,
    )
    p.add_argument("--config", required=True, help="a training config (name or YAML)")
    p.add_argument("--checkpoint", type=Path, help="weights to measure (default: the run's start)")
    p.add_argument("--frames", type=int, default=8, help="static frames to measure (default 8)")
    p.add_argument("--inside", type=float, default=0.25, help="cell / token fraction on an object")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, help="write the numbers here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_train_config(args.config)
    torch.manual_seed(cfg.seed)
    if args.checkpoint is not None:
        model = build_sam4d(checkpoint=str(args.checkpoint), device="cpu")
    else:
        model = build_model(cfg, torch.device("cpu"))
    report = measure(model, cfg, args.frames, args.inside)
    print(format_table(report))
    if args.json is not None:
        args.json.write_text(json.dumps(dataclasses.asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
