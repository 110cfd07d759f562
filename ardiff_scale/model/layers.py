"""Building blocks of the encoder-decoder (AR_DIFFUSION.md §1), all attention through PyTorch's SDPA."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_time_embedding(time: torch.Tensor, channels: int) -> torch.Tensor:
    """(..., ) float times -> (..., channels) features [cos(t f_k), sin(t f_k)], f_k = 10000^(-k / (channels/2))."""
    half = channels // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=time.device, dtype=torch.float32) / half)
    args = time.float().unsqueeze(-1) * freqs
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(batch, length, hidden) -> (batch, heads, length, hidden / heads)."""
    b, n, h = x.shape
    return x.view(b, n, heads, h // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, heads, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, heads * dh)


def key_padding_mask(src_mask: torch.Tensor) -> torch.Tensor:
    """(batch, src_len) with 1 = real token -> bool (batch, 1, 1, src_len) for SDPA, True = may attend."""
    return src_mask.bool()[:, None, None, :]


class EncoderLayer(nn.Module):
    """BERT layer: post-LN self-attention and GELU feed-forward."""

    def __init__(self, hidden: int, heads: int, ff_mult: int, dropout: float, attention_dropout: float, eps: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.ln_attn = nn.LayerNorm(hidden, eps=eps)
        self.ff_in = nn.Linear(hidden, ff_mult * hidden)
        self.ff_out = nn.Linear(ff_mult * hidden, hidden)
        self.ln_ff = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(h).chunk(3, dim=-1))
        p = self.attention_dropout if self.training else 0.0
        attn = merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p))
        h = self.ln_attn(h + self.dropout(self.out(attn)))
        return self.ln_ff(h + self.dropout(self.ff_out(F.gelu(self.ff_in(h)))))


class TimeAwareSelfAttention(nn.Module):
    """Transformer-XL style "txl" attention with per-key time features tau_j:

        score_ij = [(q_i + u) . k_j + (q_i + v) . tau_j] / sqrt(d)
                 = [q_i . (k_j + tau_j)] / sqrt(d) + [u . k_j + v . tau_j] / sqrt(d)

    The second term depends on the key alone, so it is an additive mask and the whole thing is one SDPA call.
    With time_aware=False (the official `time_att: false`, the uniform baseline's setting) it is plain
    self-attention and has no u, v: time then enters at the decoder input instead.
    """

    def __init__(self, hidden: int, heads: int, dropout: float, attention_dropout: float, time_aware: bool = True):
        super().__init__()
        self.heads = heads
        head_dim = hidden // heads
        self.qkv = nn.Linear(hidden, 3 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden)
        if time_aware:
            self.content_bias = nn.Parameter(torch.rand(heads, head_dim))  # u, "r_w_bias"
            self.time_bias = nn.Parameter(torch.rand(heads, head_dim))  # v, "r_r_bias"
        self.time_aware = time_aware
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def forward(self, h: torch.Tensor, tau: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(h).chunk(3, dim=-1))
        p = self.attention_dropout if self.training else 0.0
        if not self.time_aware:
            return self.dropout(self.out(merge_heads(F.scaled_dot_product_attention(q, k, v, dropout_p=p))))
        tau = split_heads(tau, self.heads)
        scale = q.shape[-1] ** -0.5
        key_bias = (torch.einsum("bhnd,hd->bhn", k, self.content_bias.to(k.dtype))
                    + torch.einsum("bhnd,hd->bhn", tau, self.time_bias.to(tau.dtype))) * scale
        attn = F.scaled_dot_product_attention(q, k + tau, v, attn_mask=key_bias.unsqueeze(2), dropout_p=p)
        return self.dropout(self.out(merge_heads(attn)))


class CrossAttention(nn.Module):
    """Attention from target positions to the encoder states; keys and values may be precomputed."""

    def __init__(self, hidden: int, heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(hidden, hidden, bias=False)
        self.kv = nn.Linear(hidden, 2 * hidden, bias=False)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def project_memory(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(states).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, h: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        k, v = kv if kv is not None else self.project_memory(states)
        rows, length, hidden = h.shape
        sources = k.shape[0]
        # r candidates of one source attend to the same keys: stack their queries along the length axis
        # instead of copying the keys r times. Attention is per query, so the result is the same.
        q = split_heads(self.q(h).reshape(sources, rows // sources * length, hidden), self.heads)
        p = self.attention_dropout if self.training else 0.0
        attn = merge_heads(F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask,
                                                          dropout_p=p))
        return self.dropout(self.out(attn.reshape(rows, length, hidden)))


class GEGLU(nn.Module):
    def __init__(self, hidden: int, ff_mult: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(hidden, 2 * ff_mult * hidden)
        self.out = nn.Linear(ff_mult * hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a, gate = self.proj(h).chunk(2, dim=-1)
        return self.out(self.dropout(a * F.gelu(gate)))


class DecoderBlock(nn.Module):
    """Pre-LN: h += SA(LN h, tau); h += CA(LN h, enc); h += FF(LN h).

    With time_attention, time enters only through tau, this block's projection of the time features; without
    it the block is time-blind and the model adds time to its input.
    """

    def __init__(self, hidden: int, heads: int, ff_mult: int, time_channels: int, dropout: float,
                 attention_dropout: float, eps: float, time_attention: bool = True):
        super().__init__()
        if time_attention:
            self.time_mlp = time_mlp(time_channels, hidden, dropout)
        self.time_attention = time_attention
        self.ln_self = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = TimeAwareSelfAttention(hidden, heads, dropout, attention_dropout, time_attention)
        self.ln_cross = nn.LayerNorm(hidden, eps=eps)
        self.cross_attn = CrossAttention(hidden, heads, dropout, attention_dropout)
        self.ln_ff = nn.LayerNorm(hidden, eps=eps)
        self.ff = GEGLU(hidden, ff_mult, dropout)

    def forward(self, h: torch.Tensor, time_features: torch.Tensor | None, states: torch.Tensor, mask: torch.Tensor,
                kv: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        tau = self.time_mlp(time_features).to(h.dtype) if self.time_attention else None
        h = h + self.self_attn(self.ln_self(h), tau)
        h = h + self.cross_attn(self.ln_cross(h), states, mask, kv)
        return h + self.ff(self.ln_ff(h))


def time_mlp(time_channels: int, hidden: int, dropout: float | None) -> nn.Sequential:
    """The official `time_trans`: Linear(C, 4C), SiLU, Linear(4C, hidden), after a dropout in the blocks."""
    layers = [nn.Linear(time_channels, 4 * time_channels), nn.SiLU(), nn.Linear(4 * time_channels, hidden)]
    return nn.Sequential(nn.Dropout(dropout), *layers) if dropout is not None else nn.Sequential(*layers)
