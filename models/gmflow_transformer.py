"""GMFlow's attention parts: the feature transformer and the flow propagation.

Xu et al., "GMFlow: Learning Optical Flow via Global Matching", CVPR 2022, Sec. 3.2 (a
transformer with self- and cross-attention between the two frames' features, computed in
Swin-style split windows) and Sec. 3.4 (flow propagation by self-attention on features).
Module and parameter names follow haofeixu/gmflow (``gmflow/transformer.py``) so that
official state_dicts load unchanged. All attention is single-head softmax(QKᵀ/√C)V, run
with :func:`torch.nn.functional.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Additive attention bias between positions of a shifted window that came from different
# image regions; the official value (Swin uses the same), not -inf, so kept for exactness.
SHIFT_MASK_BIAS = -100.0


def sine_position_embedding(height: int, width: int, channels: int, *, device: torch.device) -> torch.Tensor:
    """DETR's normalized 2-D sine embedding → C×H×W float32 (first half encodes y, second half x)."""
    num_feats = channels // 2
    eps, scale, temperature = 1e-6, 2 * math.pi, 10000.0
    y = torch.arange(1, height + 1, dtype=torch.float32, device=device)
    x = torch.arange(1, width + 1, dtype=torch.float32, device=device)
    y = y / (y[-1:] + eps) * scale
    x = x / (x[-1:] + eps) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = temperature ** (2 * (dim_t // 2) / num_feats)

    def encode(pos: torch.Tensor) -> torch.Tensor:  # N → N×F, sin/cos interleaved
        p = pos[:, None] / dim_t
        return torch.stack((p[:, 0::2].sin(), p[:, 1::2].cos()), dim=2).flatten(1)

    pos_y = encode(y)[:, None, :].expand(height, width, num_feats)
    pos_x = encode(x)[None, :, :].expand(height, width, num_feats)
    return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1)


def add_window_position(
    feature0: torch.Tensor, feature1: torch.Tensor, num_splits: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add the same position embedding to both B×C×H×W features, restarting in each of the
    num_splits × num_splits attention windows (the windows only ever see their own positions)."""
    _, c, h, w = feature0.shape
    pos = sine_position_embedding(h // num_splits, w // num_splits, c, device=feature0.device)
    pos = pos.repeat(1, num_splits, num_splits)
    return feature0 + pos, feature1 + pos


def split_windows(x: torch.Tensor, num_splits: int) -> torch.Tensor:
    """B×H×W×C → B×K²×(H/K·W/K)×C, K = num_splits windows per side, row-major."""
    b, h, w, c = x.shape
    k = num_splits
    x = x.view(b, k, h // k, k, w // k, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, k * k, (h // k) * (w // k), c)


def merge_windows(x: torch.Tensor, num_splits: int, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`split_windows`: B×K²×L×C → B×H×W×C."""
    b, _, _, c = x.shape
    k = num_splits
    x = x.view(b, k, k, height // k, width // k, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, height, width, c)


def shifted_window_mask(height: int, width: int, num_splits: int, *, device: torch.device) -> torch.Tensor:
    """K²×L×L additive bias for attention in windows shifted by half a window (Swin, Liu et al. 2021).

    After the cyclic shift, the last windows of each axis hold pixels from opposite borders;
    positions from different regions must not attend to each other.
    """

    def regions(n: int, window: int) -> torch.Tensor:
        shift = window // 2
        label = torch.zeros(n, device=device)
        label[n - window : n - shift] = 1
        label[n - shift :] = 2
        return label

    wh, ww = height // num_splits, width // num_splits
    label = regions(height, wh)[:, None] * 3 + regions(width, ww)[None, :]
    label = split_windows(label[None, :, :, None], num_splits)[0, :, :, 0]  # K²×L
    different = label[:, None, :] != label[:, :, None]
    return torch.zeros(different.shape, device=device).masked_fill(different, SHIFT_MASK_BIAS)


def window_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    *,
    height: int,
    width: int,
    num_splits: int,
    shift_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention within num_splits² windows of the H×W grid; B×L×C inputs, L = H·W → B×L×C.

    With ``shift_mask`` (from :func:`shifted_window_mask`) the windows are shifted by half their size.
    """
    b, _, c = query.shape
    shift = (height // num_splits // 2, width // num_splits // 2)
    grids = []
    for t in (query, key, value):
        t = t.view(b, height, width, c)
        if shift_mask is not None:
            t = torch.roll(t, shifts=(-shift[0], -shift[1]), dims=(1, 2))
        grids.append(split_windows(t, num_splits))
    mask = None if shift_mask is None else shift_mask.to(query.dtype)
    out = F.scaled_dot_product_attention(*grids, attn_mask=mask)
    out = merge_windows(out, num_splits, height, width)
    if shift_mask is not None:
        out = torch.roll(out, shifts=shift, dims=(1, 2))
    return out.reshape(b, height * width, c)


class TransformerLayer(nn.Module):
    """Single-head attention from ``source`` to ``target`` (self-attention when they are the same),
    then, with ``with_ffn``, an MLP on [source, message]; residual on ``source``."""

    def __init__(self, *, d_model: int, with_ffn: bool, ffn_dim_expansion: int, with_shift: bool):
        super().__init__()
        self.with_shift = with_shift
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.norm1 = nn.LayerNorm(d_model)
        self.mlp = None
        if with_ffn:
            hidden = 2 * d_model * ffn_dim_expansion
            self.mlp = nn.Sequential(
                nn.Linear(2 * d_model, hidden, bias=False), nn.GELU(), nn.Linear(hidden, d_model, bias=False)
            )
            self.norm2 = nn.LayerNorm(d_model)

    def forward(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        *,
        height: int,
        width: int,
        num_splits: int,
        shift_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """source, target: B×L×C, L = height·width → B×L×C."""
        query, key, value = self.q_proj(source), self.k_proj(target), self.v_proj(target)
        if num_splits > 1:
            message = window_attention(
                query,
                key,
                value,
                height=height,
                width=width,
                num_splits=num_splits,
                shift_mask=shift_mask if self.with_shift else None,
            )
        else:
            message = F.scaled_dot_product_attention(query, key, value)
        message = self.norm1(self.merge(message))
        if self.mlp is not None:
            message = self.norm2(self.mlp(torch.cat((source, message), dim=-1)))
        return source + message


class TransformerBlock(nn.Module):
    """Self-attention, then cross-attention to the other frame followed by the FFN."""

    def __init__(self, *, d_model: int, ffn_dim_expansion: int, with_shift: bool):
        super().__init__()
        self.self_attn = TransformerLayer(
            d_model=d_model, with_ffn=False, ffn_dim_expansion=ffn_dim_expansion, with_shift=with_shift
        )
        self.cross_attn_ffn = TransformerLayer(
            d_model=d_model, with_ffn=True, ffn_dim_expansion=ffn_dim_expansion, with_shift=with_shift
        )

    def forward(self, source: torch.Tensor, target: torch.Tensor, **window: object) -> torch.Tensor:
        source = self.self_attn(source, source, **window)
        return self.cross_attn_ffn(source, target, **window)


class FeatureTransformer(nn.Module):
    """Enhances both frames' features jointly; every other block uses shifted windows.

    It is symmetric in its two inputs (both directions run batched), so swapping the inputs
    swaps the outputs: the backward flow can reuse its result.
    """

    def __init__(self, *, num_layers: int, d_model: int, ffn_dim_expansion: int):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(d_model=d_model, ffn_dim_expansion=ffn_dim_expansion, with_shift=i % 2 == 1)
            for i in range(num_layers)
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(
        self, feature0: torch.Tensor, feature1: torch.Tensor, *, num_splits: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """B×C×H×W features of frame 0 and 1, H and W divisible by num_splits → same shapes."""
        b, c, h, w = feature0.shape
        shift_mask = shifted_window_mask(h, w, num_splits, device=feature0.device) if num_splits > 1 else None
        source = torch.cat((feature0, feature1)).flatten(2).transpose(1, 2)  # 2B×L×C
        for layer in self.layers:
            target = torch.cat(source.chunk(2)[::-1])
            source = layer(source, target, height=h, width=w, num_splits=num_splits, shift_mask=shift_mask)
        out = source.transpose(1, 2).reshape(2 * b, c, h, w)
        return out[:b], out[b:]


def local_windows(x: torch.Tensor, radius: int) -> list[torch.Tensor]:
    """The (2r+1)² shifted copies of B×C×H×W ``x``, zero outside the image, offsets row-major
    (dy outer, dx inner, each from -r to r): element k at (y, x) is x at (y + dy_k, x + dx_k)."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (radius, radius, radius, radius))
    size = 2 * radius + 1
    return [padded[..., dy : dy + h, dx : dx + w] for dy in range(size) for dx in range(size)]


class FeatureFlowAttention(nn.Module):
    """Flow propagation: each pixel's flow becomes an attention-weighted average of the flow
    of pixels with similar frame-0 features (globally, or in a (2r+1)² window)."""

    def __init__(self, *, in_channels: int):
        super().__init__()
        self.q_proj = nn.Linear(in_channels, in_channels)
        self.k_proj = nn.Linear(in_channels, in_channels)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, feature0: torch.Tensor, flow: torch.Tensor, *, radius: int = -1) -> torch.Tensor:
        """feature0: B×C×H×W, flow: B×2×H×W pixels; radius -1 = global, r > 0 = local window → B×2×H×W."""
        b, c, h, w = feature0.shape
        feature = feature0.flatten(2).transpose(1, 2)  # B×L×C
        query = self.q_proj(feature)
        if radius < 0:
            # The official model projects the *query* again for the key; two linear maps compose
            # into one, so it is equivalent and kept to match the released weights (see the
            # note in haofeixu/gmflow gmflow/transformer.py).
            key = self.k_proj(query)
            value = flow.flatten(2).transpose(1, 2)  # B×L×2
            out = F.scaled_dot_product_attention(query, key, value)
            return out.transpose(1, 2).reshape(b, 2, h, w)

        key = self.k_proj(feature)
        query = query.transpose(1, 2).reshape(b, c, h, w)
        key = key.transpose(1, 2).reshape(b, c, h, w)
        scores = torch.stack([(query * k).sum(1) for k in local_windows(key, radius)], dim=1) / c**0.5
        prob = scores.softmax(dim=1)  # B×K×H×W; pixels outside the image count, as zero keys
        flows = torch.stack(local_windows(flow, radius), dim=2)  # B×2×K×H×W
        return (prob[:, None] * flows).sum(2)
