"""Hiera: the hierarchical ViT trunk of SAM4D's image encoder (SAM2's "HieraDet" variant).

Reference: Ryali et al., "Hiera: A Hierarchical Vision Transformer without the Bells-and-Whistles"
(arXiv 2306.00989), with the windowed absolute positional embedding of Bolya et al. (arXiv
2311.05613) as used by SAM2.

Structure (our implementation of the published architecture):

- ``patch_embed.proj``: 7x7 conv, stride 4, padding 3 -> (B, H/4, W/4, C0) channels-last;
- ``pos_embed`` (1, C0, *bkg) bicubically interpolated to the token grid, plus
  ``pos_embed_window`` (1, C0, w0, w0) tiled over it (the grid must be a multiple of w0);
- ``blocks``: ``sum(stages)`` :class:`MultiScaleBlock`; the first block of stages 2..(1+q_pool)
  max-pools its queries 2x2 (q-pooling) and doubles the width (``proj`` on the shortcut) and the
  number of heads; each block attends inside non-overlapping windows (size per stage from
  ``window_spec``, padded when the grid is not a multiple) except the global-attention blocks;
- outputs: the feature map at the end of each stage, finest first: strides 4, 8, 16, 32 for
  four stages, channels C0, 2 C0, 4 C0, 8 C0 (``channel_list`` lists them coarsest first, as the
  FPN neck expects).

Parameter names mirror SAM2 (so that the official checkpoint's ``pure_model.backbone.image.0.*``
entries load as they are): ``patch_embed.proj``, ``pos_embed``, ``pos_embed_window``,
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.layers.0, mlp.layers.1, proj}``.

Official SAM4D / SAM2.1 Hiera-S: embed 96, 1 head, stages (1, 2, 11, 2), global attention in
blocks (7, 10, 13), window spec (8, 4, 14, 7), background pos-embed 7x7, q_pool 3.
Attention uses ``F.scaled_dot_product_attention`` (fused kernels on GPU, exportable to ONNX).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam4d_core.modeling.blocks import MLP
from sam4d_core.modeling.reference_paths import parameter_state, use_inference_caches


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a channels-last map into non-overlapping windows, zero-padding to a multiple.

    Args:
        x: (B, H, W, C).
    Returns:
        windows (B * nH * nW, ws, ws, C) and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window_size, window_size, wp // window_size, window_size, c)
    windows = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size, window_size, c)
    return windows, (hp, wp)


def window_unpartition(
    windows: torch.Tensor, window_size: int, pad_hw: tuple[int, int], hw: tuple[int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition`: (B * nW, ws, ws, C) -> (B, H, W, C), padding cropped."""
    hp, wp = pad_hw
    h, w = hw
    nh, nw = hp // window_size, wp // window_size
    b = windows.shape[0] // (nh * nw)
    x = windows.view(b, nh, nw, window_size, window_size, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    if hp > h or wp > w:
        x = x[:, :h, :w, :].contiguous()
    return x


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop the whole residual branch per sample (training only)."""
    if drop_prob == 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    """Module wrapper of :func:`drop_path`."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)


class PatchEmbed(nn.Module):
    """Image -> channels-last patch tokens: (B, 3, H, W) -> (B, H/s, W/s, C)."""

    def __init__(
        self,
        kernel_size: int = 7,
        stride: int = 4,
        padding: int = 3,
        in_chans: int = 3,
        embed_dim: int = 96,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 1)


def _pool_channels_last(x: torch.Tensor, pool: nn.Module | None) -> torch.Tensor:
    """Apply a 2D pooling module to a (B, H, W, C) map."""
    if pool is None:
        return x
    return pool(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention with optional query pooling (the stage transition).

    Input (B, H, W, dim) -> output (B, H', W', dim_out), where (H', W') = (H, W) pooled by
    ``q_pool`` (keys and values keep the full resolution).
    """

    def __init__(
        self, dim: int, dim_out: int, num_heads: int, q_pool: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.num_heads = num_heads
        self.q_pool = q_pool
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        # (B, HW, 3, heads, head_dim) -> three (B, HW, heads, head_dim)
        qkv = self.qkv(x).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = torch.unbind(qkv, 2)
        if self.q_pool is not None:
            q = _pool_channels_last(q.reshape(b, h, w, -1), self.q_pool)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        # SDPA wants (B, heads, L, head_dim); its default scale is head_dim ** -0.5.
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        )
        out = out.transpose(1, 2).reshape(b, h, w, -1)
        return self.proj(out)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block of Hiera, windowed or global, optionally q-pooling.

    Input (B, H, W, dim) -> output (B, H', W', dim_out) with (H', W') = (H, W) / q_stride when
    ``q_stride`` is set.

    Args:
        dim, dim_out: input / output width (they differ only at a stage transition, where the
            shortcut goes through ``proj`` and the pooling).
        num_heads: attention heads.
        mlp_ratio: MLP hidden width / dim_out.
        drop_path: stochastic-depth probability.
        q_stride: query pooling stride (2, 2) at stage transitions, else None.
        window_size: attention window (in input tokens); 0 = global attention.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path: float = 0.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.dim_out = dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.pool = (
            nn.MaxPool2d(kernel_size=q_stride, stride=q_stride, ceil_mode=False)
            if q_stride
            else None
        )
        self.attn = MultiScaleAttention(dim, dim_out, num_heads=num_heads, q_pool=self.pool)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP(dim_out, int(dim_out * mlp_ratio), dim_out, 2, activation=act_layer)
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # The shortcut takes the normalised input (as in SAM2) through proj and the pooling.
            shortcut = _pool_channels_last(self.proj(x), self.pool)

        window_size = self.window_size
        if window_size > 0:
            h, w = x.shape[1], x.shape[2]
            x, pad_hw = window_partition(x, window_size)

        x = self.attn(x)

        if self.q_stride:
            # Each window was pooled with the queries: unpartition with the pooled window size
            # and the pooled grid (that of the shortcut).
            window_size = self.window_size // self.q_stride[0]
            h, w = shortcut.shape[1:3]
            pad_h = (window_size - h % window_size) % window_size if window_size else 0
            pad_w = (window_size - w % window_size) % window_size if window_size else 0
            pad_hw = (h + pad_h, w + pad_w)

        if self.window_size > 0:
            x = window_unpartition(x, window_size, pad_hw, (h, w))

        x = shortcut + self.drop_path(x)
        return x + self.drop_path(self.mlp(self.norm2(x)))


class Hiera(nn.Module):
    """Hiera trunk: (B, 3, H, W) -> list of per-stage feature maps, finest first.

    Args:
        embed_dim: width C0 of the first stage.
        num_heads: heads of the first stage (multiplied by ``head_mul`` at each stage change).
        drop_path_rate: maximum stochastic-depth probability (linear over blocks).
        q_pool: number of stage transitions that pool queries (<= number of stages - 1).
        q_stride: pooling stride at those transitions.
        stages: number of blocks per stage.
        dim_mul, head_mul: width / heads multipliers at each stage change.
        window_pos_embed_bkg_spatial_size: size of the interpolated background pos-embed.
        window_spec: attention window per stage (the first also sizes ``pos_embed_window``).
        global_att_blocks: indices of blocks with global attention.
        return_interm_layers: return every stage's output (else only the last).

    Output: ``len(stages)`` maps (B, C_i, H / (4 * 2^i), W / (4 * 2^i)) with C_i = C0 * 2^i (for
    the default multipliers). H / 4 and W / 4 must be multiples of ``window_spec[0]`` (the
    window pos-embed is tiled).
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        drop_path_rate: float = 0.0,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: tuple[int, ...] = (1, 2, 11, 2),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (7, 7),
        window_spec: tuple[int, ...] = (8, 4, 14, 7),
        global_att_blocks: tuple[int, ...] = (7, 10, 13),
        return_interm_layers: bool = True,
    ) -> None:
        super().__init__()
        assert len(stages) == len(window_spec), "one window size per stage"
        self.window_spec = tuple(window_spec)
        depth = sum(stages)
        self.q_stride = tuple(q_stride)
        self.stage_ends = [sum(stages[:i]) - 1 for i in range(1, len(stages) + 1)]
        assert 0 <= q_pool <= len(self.stage_ends) - 1
        # The first block of each of the first q_pool later stages pools the queries.
        self.q_pool_blocks = [end + 1 for end in self.stage_ends[:-1]][:q_pool]
        self.return_interm_layers = return_interm_layers
        self.global_att_blocks = tuple(global_att_blocks)
        self.window_pos_embed_bkg_spatial_size = tuple(window_pos_embed_bkg_spatial_size)

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(
            torch.zeros(1, embed_dim, *self.window_pos_embed_bkg_spatial_size)
        )
        self.pos_embed_window = nn.Parameter(
            torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0])
        )

        # Stochastic depth grows linearly over blocks (plain floats: works on the meta device).
        dpr = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        cur_stage = 1
        self.blocks = nn.ModuleList()
        for i in range(depth):
            dim_out = embed_dim
            # The window size lags one block behind the stage change: the first block of a stage
            # still attends with the previous stage's window (on the unpooled grid) and leaves
            # windows of the new stage's size after pooling.
            window_size = self.window_spec[cur_stage - 1]
            if i in self.global_att_blocks:
                window_size = 0
            if i - 1 in self.stage_ends:
                dim_out = int(embed_dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                cur_stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim=embed_dim,
                    dim_out=dim_out,
                    num_heads=num_heads,
                    drop_path=dpr[i],
                    q_stride=self.q_stride if i in self.q_pool_blocks else None,
                    window_size=window_size,
                )
            )
            embed_dim = dim_out

        self.channel_list = (
            [self.blocks[i].dim_out for i in self.stage_ends[::-1]]
            if return_interm_layers
            else [self.blocks[-1].dim_out]
        )

    def _get_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """Background embed interpolated to (h, w) plus the tiled window embed: (1, h, w, C).

        A function of the weights and the input size only: cached in inference (the bicubic
        interpolation is ~1 ms per frame on a CPU).
        """
        if not use_inference_caches():
            return self._compute_pos_embed(hw)
        key = (tuple(hw), *parameter_state(self.pos_embed, self.pos_embed_window))
        cached = self.__dict__.get("_pos_embed_cache")
        if cached is None or cached[0] != key:
            cached = (key, self._compute_pos_embed(hw))
            self.__dict__["_pos_embed_cache"] = cached
        return cached[1]

    def _compute_pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        h, w = hw
        win = self.pos_embed_window
        wh, ww = win.shape[-2:]
        assert h % wh == 0 and w % ww == 0, (
            f"token grid {h}x{w} must be a multiple of the window pos-embed {wh}x{ww} "
            f"(image size a multiple of {4 * wh})"
        )
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + win.repeat(1, 1, h // wh, w // ww)
        return pos.permute(0, 2, 3, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> per-stage maps (B, C_i, H_i, W_i), finest first."""
        x = self.patch_embed(x)
        x = x + self._get_pos_embed((x.shape[1], x.shape[2])).to(x.dtype)
        outputs = []
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i == self.stage_ends[-1] or (i in self.stage_ends and self.return_interm_layers):
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
