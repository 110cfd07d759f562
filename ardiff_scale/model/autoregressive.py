"""The autoregressive baseline: AR-Diffusion's encoder and a causal Transformer decoder of the same width
and depth (model.decoder=autoregressive). Trained with teacher forcing; decoded left to right with a
key/value cache (ardiff_scale/model/search.py: greedy and beam search).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ardiff_scale.model.config import ModelConfig
from ardiff_scale.model.encoder import EncoderBase, Memory
from ardiff_scale.model.layers import GEGLU, CrossAttention, merge_heads, split_heads

# Per decoder layer, the self-attention keys and values of the positions decoded so far.
KVCache = list[tuple[torch.Tensor, torch.Tensor] | None]


class CausalSelfAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, attention_dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.attention_dropout = attention_dropout

    def forward(self, h: torch.Tensor, past: tuple[torch.Tensor, torch.Tensor] | None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """h: (rows, new, hidden) for the positions after `past`; returns the output and the grown cache."""
        q, k, v = (split_heads(part, self.heads) for part in self.qkv(h).chunk(3, dim=-1))
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        p = self.attention_dropout if self.training else 0.0
        # One new position sees every cached one, so only a multi-position call needs the causal mask;
        # with a cache in front the mask is the lower-right-aligned triangle.
        new, total = q.shape[2], k.shape[2]
        mask = None
        if new > 1:
            mask = torch.ones(new, total, dtype=torch.bool, device=h.device).tril(total - new)
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.dropout(self.out(merge_heads(attn))), (k, v)


class CausalDecoderBlock(nn.Module):
    """Pre-LN: h += SA_causal(LN h); h += CA(LN h, enc); h += FF(LN h)."""

    def __init__(self, hidden: int, heads: int, ff_mult: int, dropout: float, attention_dropout: float, eps: float):
        super().__init__()
        self.ln_self = nn.LayerNorm(hidden, eps=eps)
        self.self_attn = CausalSelfAttention(hidden, heads, dropout, attention_dropout)
        self.ln_cross = nn.LayerNorm(hidden, eps=eps)
        self.cross_attn = CrossAttention(hidden, heads, dropout, attention_dropout)
        self.ln_ff = nn.LayerNorm(hidden, eps=eps)
        self.ff = GEGLU(hidden, ff_mult, dropout)

    def forward(self, h, memory: Memory, kv, past):
        attn, past = self.self_attn(self.ln_self(h), past)
        h = h + attn
        h = h + self.cross_attn(self.ln_cross(h), memory.states, memory.mask, kv)
        return h + self.ff(self.ln_ff(h)), past


class AutoregressiveModel(EncoderBase):
    def __init__(self, config: ModelConfig):
        super().__init__(config)  # the same encoder as ARDiffusionModel, same parameter names
        c = config
        self.tgt_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        nn.init.normal_(self.tgt_embedding.weight, std=c.hidden_size ** -0.5)
        self.tgt_positions = nn.Embedding(c.max_target_len, c.hidden_size)
        self.tgt_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.decoder = nn.ModuleList(CausalDecoderBlock(c.hidden_size, c.num_heads, c.ff_mult, c.dropout,
                                                        c.attention_dropout, c.layer_norm_eps)
                                     for _ in range(c.decoder_layers))
        self.final_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        # Output head: weight tied to tgt_embedding, bias its own.
        self.out_bias = nn.Parameter(torch.zeros(c.vocab_size))

    def logits(self, tokens: torch.Tensor, memory: Memory, cache: KVCache | None = None,
               start: int = 0) -> tuple[torch.Tensor, KVCache]:
        """Next-token logits (rows, new, vocab) for `tokens` (rows, new) at positions start, start+1, ...

        `cache` holds the self-attention keys/values of positions < start (None: nothing before); the grown
        cache comes back. Rows may be a multiple r of the encoded sources (beams), source-major.
        """
        new = tokens.shape[1]
        if start + new > self.config.max_target_len:
            raise ValueError(f"target length {start + new} exceeds model.max_target_len "
                             f"{self.config.max_target_len}")
        positions = torch.arange(start, start + new, device=tokens.device)
        h = self.dropout(self.tgt_ln(self.tgt_embedding(tokens) + self.tgt_positions(positions)))
        cache = cache if cache is not None else [None] * len(self.decoder)
        grown: KVCache = []
        for i, block in enumerate(self.decoder):
            kv = memory.kv[i] if memory.kv is not None else None
            h, past = block(h, memory, kv, cache[i])
            grown.append(past)
        h = self.final_ln(h)
        return F.linear(h, self.tgt_embedding.weight.to(h.dtype), self.out_bias.to(h.dtype)), grown

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: logits (batch, length, vocab) of the token after each of tgt_in's."""
        return self.logits(tgt_in, self.encode(src_ids, src_mask))[0]
