"""The BERT-style source encoder both decoders share (AR-Diffusion's and the autoregressive baseline's).

A base class rather than a submodule, so that parameter names (src_embedding.*, encoder.*) are the same in
either model and a pretrained AR-Diffusion checkpoint's encoder loads into the baseline by name.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ardiff_scale.model.config import ModelConfig
from ardiff_scale.model.layers import EncoderLayer, key_padding_mask

ENCODER_PREFIXES = ("src_embedding.", "src_positions.", "src_ln.", "encoder.")


@dataclass
class Memory:
    """The encoded sources: states (batch, src_len, hidden), SDPA mask, and per-layer cached keys/values."""

    states: torch.Tensor
    mask: torch.Tensor
    kv: list[tuple[torch.Tensor, torch.Tensor]] | None


class EncoderBase(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config.validate()
        self.config = c = config
        self.src_embedding = nn.Embedding(c.vocab_size, c.hidden_size)
        self.src_positions = nn.Embedding(c.max_source_len, c.hidden_size)
        self.src_ln = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.encoder = nn.ModuleList(EncoderLayer(c.hidden_size, c.num_heads, c.ff_mult, c.dropout,
                                                  c.attention_dropout, c.layer_norm_eps)
                                     for _ in range(c.encoder_layers))
        self.dropout = nn.Dropout(c.dropout)
        # HF BERT's init (N(0, 0.02)), randomly initialised as in the official code.
        for module in [self.src_embedding, self.src_positions, *self.encoder.modules()]:
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor, cache_kv: bool = True) -> Memory:
        """src_ids, src_mask: (batch, src_len); mask 1 for real tokens, 0 for padding.

        With cache_kv each decoder layer's cross-attention keys and values are projected here, once.
        """
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


def encoder_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's entries of a state dict (either model's)."""
    return {k: v for k, v in state.items() if k.startswith(ENCODER_PREFIXES)}
