"""MCMA memory attention: conditions the current tokens of both modalities on an object's memory.

SAM4D's memory attention (``pure_model.fusion.memory_attention``) is SAM2's memory attention run
once per modality with shared weights, plus cross-modal fusion:

- queries: the current frame's stride-16 tokens of one modality (image tokens of every camera, or
  LiDAR tokens), each with its positional encoding (UMPE);
- keys/values: one memory shared by both modalities (the spatial memories of both modalities of
  the selected frames, whose encodings were recomputed under ego motion and got a temporal
  embedding per slot, plus the object pointers with their time-gap + ego-pose encodings),
  followed by the *current* tokens of the other modality (the image query also attends to the
  current LiDAR tokens, the LiDAR query to the current image tokens);
- ``num_layers`` (4) pre-norm layers: self-attention (no positional encoding), cross-attention
  (encodings added to the keys only), FFN (ReLU, 2048); a final LayerNorm; ``0.1 * pos`` is added
  to the queries once at the input (``pos_enc_at_input``); 1 head, no RoPE.

As released (SAM4D's config and ``memory_attention.py`` / ``sam4d_base.py``): module tree and
names (``layers.N.{self_attn,cross_attn_image}.
{q,k,v,out}_proj``, ``linear1``, ``linear2``, ``norm1..3``, ``norm``), ``pos_enc_at_input=True``,
``pos_enc_at_attn=False``, ``pos_enc_at_cross_attn_keys=True``, ``pos_enc_at_cross_attn_queries=
False``, dropout 0.1, ``kv_in_dim = mem_dim = 256``; the memory is the concatenation of both
modalities' memories and the other modality's current tokens are appended per query. At the
official sizes this module has 6,315,520 parameters (DESIGN.md: 6.3 M).

Differences from the released code, all numerically neutral: objects are batched with key padding
masks (LiDAR memories differ in token count per frame, objects differ in memory count), padded
keys are excluded with boolean masks in ``F.scaled_dot_product_attention``; the memory's key/value
projections are computed once per layer and shared by both queries (the released code projects
them twice); token order inside the memory is free (there is no RoPE, every token carries its own
encoding).

Options that depart from the release, off by default (``MemoryAttentionConfig``): ``pos_scale``,
``pos_enc_at_cross_attn_queries`` and ``tie_qk_init`` make a freshly drawn module attend by
position (UMPE's raw-metre encodings are much larger than the tokens and the released queries
carry no encoding, so the released form can attend to keys unrelated to the query's place;
``python -m training.analysis.attention_locality`` probes this); the distance bias
(``distance_scales``,
:mod:`~sam4d_core.modeling.token_places`) puts the place into the logits directly:
``- gain * distance(query place, key place)``.

Also here: the top-level memory parameters of the official model (``maskmem_tpos_enc``,
``no_mem_embed``, ``no_mem_pos_enc``, ``no_obj_embed_spatial``, ``mask_downsample_img``,
``mask_downsample_pts``, see :func:`register_memory_parameters`), the no-memory path of a first
conditioning frame, and the packing of per-object memories into padded batches.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from sam4d_core.modeling.blocks import Attention
from sam4d_core.modeling.memory_encoder import build_mask_downsample_img, build_mask_downsample_pts
from sam4d_core.modeling.token_places import DistanceScales, DistanceTable, PlaceSegment


class MemoryAttentionLayer(nn.Module):
    """One pre-norm layer: self-attention, cross-attention to the memory, FFN.

    Args:
        d_model: token width.
        dim_feedforward: FFN hidden width.
        dropout: dropout of the residual branches, the FFN and the attention probabilities.
        num_heads: heads of both attentions.
        kv_in_dim: memory width (``mem_dim``).
        activation: "relu" or "gelu".
        pos_enc_at_attn: add the query encoding to self-attention q/k (SAM4D: False).
        pos_enc_at_cross_attn_queries: add it to cross-attention queries (SAM4D: False).
        pos_enc_at_cross_attn_keys: add the memory encoding to cross-attention keys (SAM4D: True).
        distance_bias: give the cross-attention a per-head ``place_gain`` (init 1): the logits
            get ``- max(place_gain, 0) * distance`` for the distances passed to
            :meth:`forward_cross_attention` (off in SAM4D; see
            :mod:`~sam4d_core.modeling.token_places`).
    """

    def __init__(
        self,
        d_model: int = 256,
        dim_feedforward: int = 2048,
        dropout: float = 0.1,
        num_heads: int = 1,
        kv_in_dim: int | None = None,
        activation: str = "relu",
        pos_enc_at_attn: bool = False,
        pos_enc_at_cross_attn_queries: bool = False,
        pos_enc_at_cross_attn_keys: bool = True,
        distance_bias: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.self_attn = Attention(d_model, num_heads, dropout=dropout)
        self.cross_attn_image = Attention(d_model, num_heads, dropout=dropout, kv_in_dim=kv_in_dim)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.activation = F.relu if activation == "relu" else F.gelu
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys
        self.place_gain: nn.Parameter | None = None
        if distance_bias:
            self.place_gain = nn.Parameter(torch.ones(num_heads))

    def distance_logits(
        self, distances: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B or 1, Nq, Nk) normalised distances -> (B or 1, H, Nq, Nk) logit bias, written into
        ``out`` when given (a buffer reused by every layer at inference: a fresh tensor of the
        attention matrix's size costs more than the multiplication)."""
        if self.place_gain is None:
            raise ValueError("this layer was built without distance_bias")
        gain = -self.place_gain.clamp(min=0.0).to(distances.dtype)[None, :, None, None]
        if out is None:
            return distances[:, None] * gain
        return torch.mul(distances[:, None], gain, out=out)

    def forward_self_attention(
        self, tgt: torch.Tensor, query_pos: torch.Tensor, valid: torch.Tensor | None
    ) -> torch.Tensor:
        """Pre-norm self-attention block: (B, N, C) -> (B, N, C); ``valid`` (B, N) masks keys."""
        x = self.norm1(tgt)
        qk = x + query_pos if self.pos_enc_at_attn else x
        return tgt + self.dropout1(self.self_attn(qk, qk, x, valid))

    def memory_kv(
        self, memory: torch.Tensor, memory_pos: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Projected cross-attention keys/values of a token set (shared by both queries)."""
        k = memory + memory_pos if self.pos_enc_at_cross_attn_keys else memory
        return self.cross_attn_image.project_kv(k, memory)

    def forward_cross_attention(
        self,
        tgt: torch.Tensor,
        query_pos: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        key_valid: torch.Tensor | None,
        distances: torch.Tensor | None = None,
        bias_buffer: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pre-norm cross-attention block on projected keys/values (B, H, Nk, d); ``distances``
        (B or 1, Nq, Nk) for the distance bias (``bias_buffer``: see :meth:`distance_logits`)."""
        x = self.norm2(tgt)
        q = x + query_pos if self.pos_enc_at_cross_attn_queries else x
        q = self.cross_attn_image.project_q(q)
        bias = None if distances is None else self.distance_logits(distances, bias_buffer)
        return tgt + self.dropout2(self.cross_attn_image.attend(q, k, v, key_valid, bias))

    def forward_ffn(self, tgt: torch.Tensor) -> torch.Tensor:
        """Pre-norm FFN block."""
        x = self.linear2(self.dropout(self.activation(self.linear1(self.norm3(tgt)))))
        return tgt + self.dropout3(x)

    def forward(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        pos: torch.Tensor,
        query_pos: torch.Tensor,
        memory_valid: torch.Tensor | None = None,
        tgt_valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Single-modality layer (SAM2 semantics).

        Args:
            tgt: (B, N, C) queries; query_pos: their encodings; tgt_valid: (B, N) bool or None.
            memory: (B, L, C_kv); pos: its encodings; memory_valid: (B, L) bool or None.
        """
        tgt = self.forward_self_attention(tgt, query_pos, tgt_valid)
        k, v = self.memory_kv(memory, pos)
        tgt = self.forward_cross_attention(tgt, query_pos, k, v, memory_valid)
        return self.forward_ffn(tgt)


def _batch_to(x: torch.Tensor, b: int) -> torch.Tensor:
    """Broadcasts a leading batch of 1 to ``b`` (a view); other sizes must already match."""
    if x.shape[0] == b:
        return x
    if x.shape[0] != 1:
        raise ValueError(f"batch size {x.shape[0]} does not match {b}")
    return x.expand(b, *x.shape[1:])


def _ones_valid(x: torch.Tensor, b: int) -> torch.Tensor:
    return torch.ones(b, x.shape[1], dtype=torch.bool, device=x.device)


@dataclass(eq=False)
class AttentionPlaces:
    """Where MCMA's tokens are (for the distance bias), in the current LiDAR frame.

    Attributes:
        image: the current image tokens' segments (one per camera), or None without image.
        points: the current LiDAR tokens' segments, or None without LiDAR.
        memory: per object, the segments of its memory tokens in memory order (before padding).
            Objects whose memories come from the same frames should share segment objects:
            their distances are then computed once.
    """

    image: list[PlaceSegment] | None
    points: list[PlaceSegment] | None
    memory: Sequence[Sequence[PlaceSegment]]

    def distances(
        self, present: list[bool], length: int, scales: DistanceScales
    ) -> list[torch.Tensor]:
        """Per query modality present (image, then LiDAR), (B or 1, Nq, length + N_other)
        distances to [memory padded to ``length``; the other modality's current tokens]."""
        mods = [self.image, self.points]
        for m, there in zip(mods, present, strict=True):
            if there and m is None:
                raise ValueError("places are missing for a query modality")
        table = DistanceTable(scales)
        cross = all(present)
        out: list[torch.Tensor] = []
        for qi in (0, 1):
            q = mods[qi]
            if not present[qi] or q is None:
                continue
            per_layout: dict[tuple[int, ...], torch.Tensor] = {}
            rows: list[torch.Tensor] = []
            for segs in self.memory:
                layout = tuple(id(s) for s in segs)
                if layout not in per_layout:
                    other = mods[1 - qi]
                    extra = other if cross and other is not None else ()
                    per_layout[layout] = table.matrix(q, segs, length, extra)
                rows.append(per_layout[layout])
            if len(per_layout) == 1:
                out.append(rows[0][None])  # one layout: broadcast over objects
            else:
                out.append(torch.stack(rows))
        return out


class MemoryAttention(nn.Module):
    """MCMA: a stack of :class:`MemoryAttentionLayer` shared by the image and LiDAR queries.

    Args:
        d_model: token width (256).
        num_layers: layers (4).
        dim_feedforward: FFN width (2048).
        num_heads: heads (1).
        dropout: dropout (0.1 in training; inactive in eval).
        kv_in_dim: memory width (``mem_dim``; must equal ``d_model`` with cross-modal fusion,
            since the other modality's current tokens are appended to the memory).
        pos_enc_at_input: add ``0.1 * pos`` to the queries before the first layer (True).
        cross_modal: append the other modality's current tokens to each query's memory (True).
        activation, pos_enc_at_attn, pos_enc_at_cross_attn_queries, pos_enc_at_cross_attn_keys:
            see :class:`MemoryAttentionLayer`.
        pos_scale: every encoding entering the module (queries, memory, the other modality's
            tokens) is multiplied by this (SAM4D: 1). UMPE encodings are raw-metre MLP outputs,
            ~15x the token norm in our small model, so the keys are almost pure position and
            the softmax saturates from the first step.
        tie_qk_init: initialise each cross-attention's key projection as a copy of its query
            projection (SAM4D: independent). With equal projections, ``q . k`` of a token and
            the memory token at the same place is a squared norm, so a fresh module already
            attends to where an object was instead of to a few arbitrary keys. Only the
            initialisation; the projections train independently.
        distance_scales: turns on the distance bias (SAM4D: None, off): every cross-attention
            logit gets ``- gain * distance(query place, key place)``, with the normalised
            distances of :mod:`~sam4d_core.modeling.token_places` and a learned per-layer,
            per-head gain (init 1). :meth:`forward` then needs the tokens' ``places``.

    The current-frame tokens may have batch size 1 (one encoding of the frame shared by all
    objects) and are broadcast to the memory's batch size (the number of objects).
    """

    def __init__(
        self,
        d_model: int = 256,
        num_layers: int = 4,
        dim_feedforward: int = 2048,
        num_heads: int = 1,
        dropout: float = 0.1,
        kv_in_dim: int | None = None,
        pos_enc_at_input: bool = True,
        cross_modal: bool = True,
        activation: str = "relu",
        pos_enc_at_attn: bool = False,
        pos_enc_at_cross_attn_queries: bool = False,
        pos_enc_at_cross_attn_keys: bool = True,
        pos_scale: float = 1.0,
        tie_qk_init: bool = False,
        distance_scales: DistanceScales | None = None,
    ) -> None:
        super().__init__()
        kv_in_dim = kv_in_dim if kv_in_dim is not None else d_model
        if not pos_scale > 0:
            raise ValueError(f"pos_scale must be > 0, got {pos_scale}")
        if tie_qk_init and kv_in_dim != d_model:
            raise ValueError("tie_qk_init needs kv_in_dim == d_model (the projections are copied)")
        if cross_modal and kv_in_dim != d_model:
            raise ValueError(
                "cross-modal fusion appends current tokens (d_model wide) to the memory, so "
                f"kv_in_dim must equal d_model (got {kv_in_dim} vs {d_model})"
            )
        self.d_model = d_model
        self.kv_in_dim = kv_in_dim
        self.num_layers = num_layers
        self.pos_enc_at_input = pos_enc_at_input
        self.cross_modal = cross_modal
        layer = MemoryAttentionLayer(
            d_model=d_model,
            dim_feedforward=dim_feedforward,
            dropout=dropout,
            num_heads=num_heads,
            kv_in_dim=kv_in_dim,
            activation=activation,
            pos_enc_at_attn=pos_enc_at_attn,
            pos_enc_at_cross_attn_queries=pos_enc_at_cross_attn_queries,
            pos_enc_at_cross_attn_keys=pos_enc_at_cross_attn_keys,
            distance_bias=distance_scales is not None,
        )
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)
        self.pos_scale = float(pos_scale)
        self.tie_qk_init = tie_qk_init
        self.distance_scales = distance_scales
        if tie_qk_init:
            self._tie_cross_attention_qk()

    @property
    def distance_bias(self) -> bool:
        return self.distance_scales is not None

    def _tie_cross_attention_qk(self) -> None:
        with torch.no_grad():
            for layer in self.layers:
                attn = layer.cross_attn_image
                attn.k_proj.weight.copy_(attn.q_proj.weight)
                attn.k_proj.bias.copy_(attn.q_proj.bias)

    def reset_parameters(self) -> None:
        """A fresh initialisation of every layer (each drawn anew, then tied if
        ``tie_qk_init``), e.g. to retrain MCMA on top of trained encoders."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.LayerNorm)):
                m.reset_parameters()
        with torch.no_grad():
            for layer in self.layers:
                if layer.place_gain is not None:
                    layer.place_gain.fill_(1.0)
        if self.tie_qk_init:
            self._tie_cross_attention_qk()

    def forward(
        self,
        image: torch.Tensor | None,
        image_pos: torch.Tensor | None,
        points: torch.Tensor | None,
        points_pos: torch.Tensor | None,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_valid: torch.Tensor | None = None,
        image_valid: torch.Tensor | None = None,
        points_valid: torch.Tensor | None = None,
        places: AttentionPlaces | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Conditions the current tokens of both modalities on the memory.

        Args:
            image: (B or 1, N_img, C) current image tokens (all cameras concatenated), or None
                when the frame has no image.
            image_pos: encodings of ``image`` (same shape).
            points: (B or 1, N_pts, C) current LiDAR tokens, or None.
            points_pos: encodings of ``points``.
            memory: (B, L, C_kv) memory tokens of B objects (spatial memories of both modalities
                and object pointers, padded to a common L).
            memory_pos: (B, L, C_kv) their encodings (temporal embeddings already added).
            memory_valid: (B, L) bool, True for real memory tokens (None: all real).
            image_valid, points_valid: (B or 1, N) bool, True for real current tokens (None: all
                real). Padded query rows come out finite but meaningless.
            places: where every token is (required with ``distance_scales``, ignored without).

        Returns:
            (image_out (B, N_img, C) or None, points_out (B, N_pts, C) or None).
        """
        if image is None and points is None:
            raise ValueError("need image tokens, LiDAR tokens or both")
        distances = self.distance_tables(places, [image is not None, points is not None], memory)
        return self.forward_with_distances(
            image,
            image_pos,
            points,
            points_pos,
            memory,
            memory_pos,
            memory_valid,
            image_valid,
            points_valid,
            image_distances=distances[0],
            points_distances=distances[1],
        )

    def distance_tables(
        self, places: AttentionPlaces | None, present: list[bool], memory: torch.Tensor
    ) -> list[torch.Tensor | None]:
        """The distance-bias inputs of :meth:`forward_with_distances`.

        Args:
            places: where every token is (required with ``distance_scales``).
            present: [image, LiDAR] queries present.
            memory: (B, L, C_kv) the memory the queries attend to.

        Returns:
            [image_distances (B or 1, N_img, L + N_pts), points_distances (B or 1, N_pts,
            L + N_img)] (:meth:`AttentionPlaces.distances`), None for an absent modality; both
            None without ``distance_scales``.
        """
        if self.distance_scales is None:
            return [None, None]
        if places is None:
            raise ValueError("MCMA with distance_scales needs the tokens' places")
        found = places.distances(present, memory.shape[1], self.distance_scales)
        if len(places.memory) != memory.shape[0]:
            raise ValueError(
                f"places of {len(places.memory)} memories for {memory.shape[0]} objects"
            )
        it = iter(found)
        return [next(it) if there else None for there in present]

    def forward_with_distances(
        self,
        image: torch.Tensor | None,
        image_pos: torch.Tensor | None,
        points: torch.Tensor | None,
        points_pos: torch.Tensor | None,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        memory_valid: torch.Tensor | None = None,
        image_valid: torch.Tensor | None = None,
        points_valid: torch.Tensor | None = None,
        image_distances: torch.Tensor | None = None,
        points_distances: torch.Tensor | None = None,
        reuse_buffers: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """:meth:`forward` with the distance-bias inputs already computed (the exported stage).

        Args:
            image_distances: (B or 1, N_img, L + N_pts) normalised distances of the image queries
                to [memory; current LiDAR tokens] (:meth:`AttentionPlaces.distances`), required
                with ``distance_scales`` when ``image`` is given; ``points_distances`` likewise
                (B or 1, N_pts, L + N_img).
            reuse_buffers: without gradients, write the logit bias into one buffer per query
                reused by every layer (in-place ``out=``; off for ONNX export).
            The rest as in :meth:`forward`.
        """
        if image is None and points is None:
            raise ValueError("need image tokens, LiDAR tokens or both")
        if self.pos_scale != 1.0:
            s = self.pos_scale
            image_pos = None if image_pos is None else image_pos * s
            points_pos = None if points_pos is None else points_pos * s
            memory_pos = memory_pos * s
        b = memory.shape[0]
        queries: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        for tokens, pos, valid in (
            (image, image_pos, image_valid),
            (points, points_pos, points_valid),
        ):
            if tokens is None:
                continue
            if pos is None:
                raise ValueError("every query modality needs its positional encodings")
            queries.append((tokens, pos, valid))
        # Keys of each query: [memory; current tokens of the other modality] (cross-modal fusion).
        # The other modality's tokens enter unchanged in every layer (they are the raw current
        # features, as released), so their masks are built once.
        extra: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None]
        extra = [None] * len(queries)
        if self.cross_modal and len(queries) == 2:
            extra = [queries[1], queries[0]]
        distances: list[torch.Tensor | None] = [None] * len(queries)
        if self.distance_scales is not None:
            given = [image_distances, points_distances]
            distances = [d for d, t in zip(given, (image, points), strict=True) if t is not None]
            if any(d is None for d in distances):
                raise ValueError("MCMA with distance_scales needs the distances of every query")
        buffers: list[torch.Tensor | None] = [None] * len(queries)
        if reuse_buffers and not torch.is_grad_enabled():
            heads = self.layers[0].cross_attn_image.num_heads
            buffers = [
                None if d is None else d.new_empty(d.shape[0], heads, *d.shape[1:])
                for d in distances
            ]
        key_valid: list[torch.Tensor | None] = []
        for e in extra:
            if e is None:
                key_valid.append(memory_valid)
            elif memory_valid is None and e[2] is None:
                # No mask at all keeps SDPA free to pick its fastest kernel.
                key_valid.append(None)
            else:
                mv = _ones_valid(memory, b) if memory_valid is None else memory_valid
                ov = _ones_valid(e[0], b) if e[2] is None else _batch_to(e[2], b)
                key_valid.append(torch.cat([mv, ov], dim=1))

        outputs: list[torch.Tensor] = []
        query_pos: list[torch.Tensor] = []
        self_valid: list[torch.Tensor | None] = []
        for tokens, pos, valid in queries:
            if valid is not None and valid.shape[0] > tokens.shape[0]:
                # Per-object query masks: the queries themselves become per object.
                tokens = _batch_to(tokens, valid.shape[0])
                pos = _batch_to(pos, valid.shape[0])
            x = tokens + 0.1 * pos if self.pos_enc_at_input else tokens
            outputs.append(x)
            query_pos.append(pos)
            self_valid.append(valid)

        for layer in self.layers:
            mem_k, mem_v = layer.memory_kv(memory, memory_pos)
            for qi in range(len(outputs)):
                tgt = outputs[qi]
                pos = query_pos[qi]
                sv = self_valid[qi]
                if sv is not None and sv.shape[0] != tgt.shape[0]:
                    sv = _batch_to(sv, tgt.shape[0])
                # The first self-attention runs at the current frame's batch size (often 1);
                # the cross-attention output then broadcasts the residual to B objects.
                tgt = layer.forward_self_attention(tgt, pos, sv)
                k, v = mem_k, mem_v
                e = extra[qi]
                if e is not None:
                    o_tokens, o_pos, _ = e
                    ok, ov = layer.memory_kv(o_tokens, o_pos)
                    k = torch.cat([k, _batch_to(ok, b)], dim=2)
                    v = torch.cat([v, _batch_to(ov, b)], dim=2)
                tgt_b = _batch_to(tgt, b)
                pos_b = _batch_to(pos, b)
                tgt = layer.forward_cross_attention(
                    tgt_b, pos_b, k, v, key_valid[qi], distances[qi], buffers[qi]
                )
                outputs[qi] = layer.forward_ffn(tgt)
        normed = [self.norm(x) for x in outputs]

        image_out = points_out = None
        idx = 0
        if image is not None:
            image_out = normed[idx]
            idx += 1
        if points is not None:
            points_out = normed[idx]
        return image_out, points_out


# ---------------------------------------------------------------------------------------------
# Top-level memory parameters and tensor helpers around the attention.


def register_memory_parameters(
    model: nn.Module,
    hidden_dim: int = 256,
    mem_dim: int = 256,
    num_maskmem: int = 7,
    no_obj_embed_spatial: bool = True,
    image: bool = True,
    points: bool = True,
    use_obj_ptrs_in_encoder: bool = True,
) -> None:
    """Registers the official model's top-level memory parameters on ``model`` (its root).

    Names and shapes as in the official state dict:

    - ``maskmem_tpos_enc`` [num_maskmem, 1, 1, mem_dim]: temporal embedding per memory slot;
    - ``no_mem_embed``, ``no_mem_pos_enc`` [1, 1, hidden_dim]: the no-memory token (the released
      model adds ``no_mem_embed`` directly to a first conditioning frame's tokens;
      ``no_mem_pos_enc`` is unused then but stored);
    - ``no_obj_embed_spatial`` [1, mem_dim]: added to a memory whose object is absent;
    - ``mask_downsample_img`` Conv2d(1, 1, 4, stride 4) and ``mask_downsample_pts`` sparse
      Conv3d(1, 1, 4, stride 4, bias): bring a mask *input* to the decoder's mask-input stride
      (used to get an object pointer from a mask prompt).

    The embeddings are initialized with a truncated normal (std 0.02) as in SAM2.
    """
    model.maskmem_tpos_enc = nn.Parameter(torch.zeros(num_maskmem, 1, 1, mem_dim))
    trunc_normal_(model.maskmem_tpos_enc, std=0.02)
    model.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden_dim))
    model.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden_dim))
    trunc_normal_(model.no_mem_embed, std=0.02)
    trunc_normal_(model.no_mem_pos_enc, std=0.02)
    if no_obj_embed_spatial:
        model.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        trunc_normal_(model.no_obj_embed_spatial, std=0.02)
    if use_obj_ptrs_in_encoder:
        if image:
            model.mask_downsample_img = build_mask_downsample_img()
        if points:
            model.mask_downsample_pts = build_mask_downsample_pts()


def add_no_memory_embedding(tokens: torch.Tensor, no_mem_embed: torch.Tensor) -> torch.Tensor:
    """The first-conditioning-frame path (``directly_add_no_mem_embed``): no attention at all.

    Args:
        tokens: (B, N, C) current tokens of either modality.
        no_mem_embed: [1, 1, C].
    """
    return tokens + no_mem_embed.to(tokens.dtype)


def add_temporal_encoding(
    pos: torch.Tensor, maskmem_tpos_enc: torch.Tensor, tpos_index: int | torch.Tensor
) -> torch.Tensor:
    """Adds a memory slot's temporal embedding to that memory's (N, C) or (B, N, C) encodings.

    ``tpos_index`` is :attr:`~sam4d_core.modeling.memory_bank.MemorySlot.tpos_index`
    (``num_maskmem - t_pos - 1``; 0 for the most recent frame, ``num_maskmem - 1`` for a
    conditioning frame). A tensor of indices (N,) gives one slot per token.
    """
    table = maskmem_tpos_enc.reshape(maskmem_tpos_enc.shape[0], -1)  # (num_maskmem, C)
    return pos + table[tpos_index].to(pos.dtype)


def object_pointer_time_encoding(t_diffs: torch.Tensor, t_diff_max: int, dim: int) -> torch.Tensor:
    """Sine encoding of the object pointers' (signed) frame gaps: (P,) -> (P, dim).

    SAM4D then applies the SAM head's ``obj_ptr_tpos_proj`` and adds the ego-pose encoder's output
    (both outside this module).
    """
    from sam4d_core.modeling.sam.common import get_1d_sine_pe

    return get_1d_sine_pe(t_diffs.float() / max(t_diff_max, 1), dim)


def pack_sequences(
    sequences: Sequence[torch.Tensor],
    min_length: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pads per-object token sequences into one batch.

    Args:
        sequences: B tensors (L_i, C) (same C, dtype and device).
        min_length: pad to at least this length (fixed shapes for exported graphs).

    Returns:
        padded (B, L, C) with zeros after each sequence, and valid (B, L) bool.
    """
    if not sequences:
        raise ValueError("pack_sequences needs at least one sequence")
    length = max(min_length, max(s.shape[0] for s in sequences))
    ref = sequences[0]
    if len(sequences) == 1 and ref.shape[0] == length:
        # Nothing to pad (one object): a view instead of a zero-filled copy.
        return ref[None], torch.ones(1, length, dtype=torch.bool, device=ref.device)
    out = ref.new_zeros(len(sequences), length, ref.shape[-1])
    valid = torch.zeros(len(sequences), length, dtype=torch.bool, device=ref.device)
    for i, s in enumerate(sequences):
        out[i, : s.shape[0]] = s
        valid[i, : s.shape[0]] = True
    return out, valid


def pack_memories(
    tokens: Sequence[Sequence[torch.Tensor]],
    pos: Sequence[Sequence[torch.Tensor]],
    min_length: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Builds the batched memory of B objects from their per-object pieces.

    Args:
        tokens: per object, the list of (L_j, C) pieces of its memory (each selected slot's image
            memory and LiDAR memory, the object pointers), in any order.
        pos: the matching encodings (same shapes).
        min_length: pad to at least this many tokens.

    Returns:
        memory (B, L, C), memory_pos (B, L, C), memory_valid (B, L) bool.
    """
    if len(tokens) != len(pos):
        raise ValueError("tokens and pos must list the same objects")
    flat_t, flat_p = [], []
    for t_list, p_list in zip(tokens, pos, strict=True):
        if len(t_list) != len(p_list):
            raise ValueError("every memory piece needs its encodings")
        ref = t_list[0] if t_list else None
        if ref is None:
            raise ValueError("an object without memory takes the no-memory path instead")
        flat_t.append(torch.cat(list(t_list), dim=0))
        flat_p.append(torch.cat(list(p_list), dim=0))
    memory, valid = pack_sequences(flat_t, min_length)
    memory_pos, _ = pack_sequences(flat_p, min_length)
    return memory, memory_pos, valid


__all__ = [
    "AttentionPlaces",
    "MemoryAttention",
    "MemoryAttentionLayer",
    "add_no_memory_embedding",
    "add_temporal_encoding",
    "object_pointer_time_encoding",
    "pack_memories",
    "pack_sequences",
    "register_memory_parameters",
]
