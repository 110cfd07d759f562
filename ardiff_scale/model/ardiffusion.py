"""The AR-Diffusion encoder-decoder; implements the diffusion `Denoiser` protocol."""

from __future__ import annotations

import torch
from torch import nn

from ardiff_scale.model.config import ModelConfig
from ardiff_scale.model.encoder import EncoderBase, Memory
from ardiff_scale.model.layers import DecoderBlock, sinusoidal_time_embedding, time_mlp


class ARDiffusionModel(EncoderBase):
    def __init__(self, config: ModelConfig):
        super().__init__(config)  # the encoder
        c = config
        drop = (c.dropout, c.attention_dropout)
        # Decoder: target embedding in a small space (embed_dim), projected up to the hidden size and back.
        # (The official model projects only when the widths differ, and so do we.)
        self.tgt_embedding = nn.Embedding(c.vocab_size, c.embed_dim)
        self.up_proj = _projection(c.embed_dim, c.hidden_size, 2 * c.hidden_size)
        self.tgt_positions = nn.Embedding(c.max_target_len, c.hidden_size)
        if not c.time_attention:
            self.time_mlp = time_mlp(c.time_channels, c.hidden_size, dropout=None)
        self.tgt_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.decoder = nn.ModuleList(DecoderBlock(c.hidden_size, c.num_heads, c.ff_mult, c.time_channels, *drop,
                                                  c.layer_norm_eps, c.time_attention)
                                     for _ in range(c.decoder_layers))
        self.down_proj = _projection(c.hidden_size, c.embed_dim, 2 * c.hidden_size)
        # Rounding head: weight tied to tgt_embedding, bias its own, initialised as the official nn.Linear's
        # bias is: U(-1/sqrt(embed_dim), 1/sqrt(embed_dim)).
        bound = c.embed_dim ** -0.5
        self.round_bias = nn.Parameter(torch.empty(c.vocab_size).uniform_(-bound, bound))
        # The decoder keeps PyTorch's default init and the target embedding N(0, 1), as the official model does.

    # --- Denoiser protocol -------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tgt_embedding(ids)

    def round_logits(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.tgt_embedding.weight.to(x.dtype), self.round_bias.to(x.dtype))

    def embedding_weight(self) -> torch.Tensor:
        return self.tgt_embedding.weight

    def denoise(self, x_t: torch.Tensor, time: torch.Tensor, memory: Memory) -> torch.Tensor:
        """x_t: (rows, length, embed_dim); time: (rows, length) in model units (t * 1000 / T)."""
        length = x_t.shape[1]
        if length > self.config.max_target_len:
            raise ValueError(f"target length {length} exceeds model.max_target_len {self.config.max_target_len}")
        positions = torch.arange(length, device=x_t.device)
        # Under DeepSpeed's bf16/fp16 modes the weights themselves are half precision: inputs follow them.
        x_t = x_t.to(self.tgt_positions.weight.dtype)
        h = self.up_proj(x_t) + self.tgt_positions(positions)
        if time.shape[0] > 1 and time.stride(0) == 0:
            # All rows share one time vector (the sampler's case): compute the time features once and let
            # them broadcast over the rows.
            time = time[:1]
        time_features = sinusoidal_time_embedding(time, self.config.time_channels).to(h.dtype)
        if not self.config.time_attention:
            h = h + self.time_mlp(time_features)
            time_features = None
        h = self.dropout(self.tgt_ln(h))
        for i, block in enumerate(self.decoder):
            kv = memory.kv[i] if memory.kv is not None else None
            h = block(h, time_features, memory.states, memory.mask, kv)
        return self.down_proj(h)


def _projection(width_in: int, width_out: int, inner: int) -> nn.Module:
    if width_in == width_out:
        return nn.Identity()
    return nn.Sequential(nn.Linear(width_in, inner), nn.Tanh(), nn.Linear(inner, width_out))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameter counts by top-level module (a tied output head counts once, under tgt_embedding)."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        counts[top] = counts.get(top, 0) + param.numel()
    return counts
