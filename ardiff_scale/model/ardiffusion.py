"""The AR-Diffusion encoder-decoder; implements the diffusion `Denoiser` protocol."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ardiff_scale.model.config import ModelConfig
from ardiff_scale.model.layers import DecoderBlock, EncoderLayer, key_padding_mask, sinusoidal_time_embedding


@dataclass
class Memory:
    """The encoded sources: states (batch, src_len, hidden), SDPA mask, and per-layer cached keys/values."""

    states: torch.Tensor
    mask: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None


class ARDiffusionModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = config
        c = config
        drop = (c.dropout, c.attention_dropout)
        # Encoder: BERT-style, randomly initialised as in the official code.
        self.src_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.src_positions = nn.Embedding(c.max_source_len, c.hidden_size)
        self.src_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.encoder = nn.ModuleList(EncoderLayer(c.hidden_size, c.num_heads, c.ff_mult, *drop, c.layer_norm_eps)
                                     for _ in range(c.encoder_layers))
        # Decoder: target embedding in a small space (embed_dim), projected up to the hidden size and back.
        self.tgt_embedding = nn.Embedding(c.vocab_size, c.embed_dim)
        self.up_proj = nn.Sequential(nn.Linear(c.embed_dim, 2 * c.hidden_size), nn.Tanh(),
                                     nn.Linear(2 * c.hidden_size, c.hidden_size))
        self.tgt_positions = nn.Embedding(c.max_target_len, c.hidden_size)
        self.tgt_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.decoder = nn.ModuleList(DecoderBlock(c.hidden_size, c.num_heads, c.ff_mult, c.time_channels, *drop,
                                                  c.layer_norm_eps) for _ in range(c.decoder_layers))
        self.down_proj = nn.Sequential(nn.Linear(c.hidden_size, 2 * c.hidden_size), nn.Tanh(),
                                       nn.Linear(2 * c.hidden_size, c.embed_dim))
        # Rounding head: weight tied to tgt_embedding, bias its own.
        self.round_bias = nn.Parameter(torch.zeros(c.vocab_size))
        self.dropout = nn.Dropout(c.dropout)
        self._init_encoder()

    def _init_encoder(self) -> None:
        # HF BERT's init (N(0, 0.02)); the decoder keeps PyTorch defaults and the target embedding N(0, 1),
        # as the official model does.
        for module in [self.src_embedding, self.src_positions, *self.encoder.modules()]:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    # --- Denoiser protocol -------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tgt_embedding(ids)

    def round_logits(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.tgt_embedding.weight.to(x.dtype), self.round_bias.to(x.dtype))

    def embedding_weight(self) -> torch.Tensor:
        return self.tgt_embedding.weight

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor, cache_kv: bool = True) -> Memory:
        """src_ids, src_mask: (batch, src_len); mask 1 for real tokens, 0 for padding."""
        if src_ids.shape[1] > self.config.max_source_len:
            raise ValueError(f"source length {src_ids.shape[1]} exceeds model.max_source_len "
                             f"{self.config.max_source_len}")
        positions = torch.arange(src_ids.shape[1], device=src_ids.device)
        h = self.dropout(self.src_ln(self.src_embedding(src_ids) + self.src_positions(positions)))
        mask = key_padding_mask(src_mask)
        for layer in self.encoder:
            h = layer(h, mask)
        kv = [block.cross_attn.project_memory(h) for block in self.decoder] if cache_kv else None
        return Memory(states=h, mask=mask, kv=kv)

    def denoise(self, x_t: torch.Tensor, time: torch.Tensor, memory: Memory) -> torch.Tensor:
        """x_t: (rows, length, embed_dim); time: (rows, length) in model units (t * 1000 / T)."""
        length = x_t.shape[1]
        if length > self.config.max_target_len:
            raise ValueError(f"target length {length} exceeds model.max_target_len {self.config.max_target_len}")
        positions = torch.arange(length, device=x_t.device)
        # Under DeepSpeed's bf16/fp16 modes the weights themselves are half precision: inputs follow them.
        x_t = x_t.to(self.up_proj[0].weight.dtype)
        h = self.dropout(self.tgt_ln(self.up_proj(x_t) + self.tgt_positions(positions)))
        if time.shape[0] > 1 and time.stride(0) == 0:
            # All rows share one time vector (the sampler's case): compute the time features once and let
            # them broadcast over the rows.
            time = time[:1]
        time_features = sinusoidal_time_embedding(time, self.config.time_channels).to(h.dtype)
        for i, block in enumerate(self.decoder):
            kv = memory.kv[i] if memory.kv is not None else None
            h = block(h, time_features, memory.states, memory.mask, kv)
        return self.down_proj(h)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def parameter_breakdown(model: ARDiffusionModel) -> dict[str, int]:
    """Parameter counts by top-level module (the tied rounding head counts once, under tgt_embedding)."""
    counts: dict[str, int] = {}
    for name, param in model.named_parameters():
        top = name.split(".")[0]
        counts[top] = counts.get(top, 0) + param.numel()
    return counts
