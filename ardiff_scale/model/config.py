"""Model sizes: one typed config and the named presets.

The paper-size presets follow the official scripts (design/AR_DIFFUSION.md §1): hidden size H is
intermediate/4, six encoder and six decoder layers, a target embedding of `embed_dim` much smaller than
H, and per-token sinusoidal time features of `time_channels`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ardiff_scale.errors import ConfigError

DECODERS = ("diffusion", "autoregressive")


@dataclass
class ModelConfig:
    vocab_size: int = 8000
    hidden_size: int = 64
    num_heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    # GEGLU and the BERT feed-forward both widen by this factor (official: intermediate = 4H).
    ff_mult: int = 4
    # Width of the continuous target embedding the diffusion runs in ("in_channels" in the official code).
    embed_dim: int = 32
    time_channels: int = 32
    # Longest source the encoder's position table covers; the decoder's table covers max_target_len.
    max_source_len: int = 128
    max_target_len: int = 128
    dropout: float = 0.1
    attention_dropout: float = 0.1
    layer_norm_eps: float = 1e-12
    # "diffusion": AR-Diffusion's time-aware denoiser; "autoregressive": the left-to-right baseline with a
    # causal decoder of the same width and depth (teacher forcing, greedy or beam search).
    decoder: str = "diffusion"
    # How the diffusion decoder sees each token's time. True: per-block time features in the self-attention
    # ("txl", the official `time_att: true`), which is what makes AR-Diffusion position-aware. False: one time
    # embedding added to the decoder input (`time_att: false`), the official uniform baseline's setting: with
    # every token at the same step the txl time term is the same for every key and cancels in the softmax.
    time_attention: bool = True

    def validate(self, prefix: str = "model") -> None:
        positive = ("vocab_size", "hidden_size", "num_heads", "encoder_layers", "decoder_layers",
                    "ff_mult", "embed_dim", "time_channels", "max_source_len", "max_target_len")
        for name in positive:
            value = getattr(self, name)
            if value <= 0:
                raise ConfigError(f"{prefix}.{name} must be > 0 (got {value})")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"{prefix}.hidden_size must be divisible by {prefix}.num_heads "
                f"(got hidden_size={self.hidden_size}, num_heads={self.num_heads})")
        if self.time_channels % 2:
            raise ConfigError(f"{prefix}.time_channels must be even: sin and cos halves (got {self.time_channels})")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ConfigError(f"{prefix}.{name} must be in [0, 1) (got {value})")
        if self.decoder not in DECODERS:
            raise ConfigError(f"{prefix}.decoder must be one of {', '.join(DECODERS)} (got {self.decoder!r})")
        if self.vocab_size < 5:
            raise ConfigError(f"{prefix}.vocab_size must hold the 5 reserved tokens (got {self.vocab_size})")

    def to_dict(self) -> dict:
        return asdict(self)


# Sizes from the official train.sh (AR_DIFFUSION.md §1). `paper_params` is the table's analytic count,
# used by the tests to keep the presets honest.
PRESETS: dict[str, ModelConfig] = {
    # Small enough that a training step takes a few tens of milliseconds on two CPU cores.
    "tiny": ModelConfig(),
    "commongen": ModelConfig(vocab_size=30522, hidden_size=128, num_heads=8, encoder_layers=6, decoder_layers=6,
                             embed_dim=64, time_channels=64, max_source_len=128, max_target_len=128,
                             dropout=0.2, attention_dropout=0.1),
    "iwslt": ModelConfig(vocab_size=10005, hidden_size=256, num_heads=4, encoder_layers=6, decoder_layers=6,
                         embed_dim=64, time_channels=64, max_source_len=256, max_target_len=256,
                         dropout=0.2, attention_dropout=0.1),
    "xsum": ModelConfig(vocab_size=30522, hidden_size=512, num_heads=8, encoder_layers=6, decoder_layers=6,
                        embed_dim=128, time_channels=128, max_source_len=512, max_target_len=512,
                        dropout=0.2, attention_dropout=0.1),
    # GENIE's width (H=768) with AR-Diffusion's time-aware decoder.
    "genie-base": ModelConfig(vocab_size=30522, hidden_size=768, num_heads=12, encoder_layers=6, decoder_layers=6,
                              embed_dim=128, time_channels=128, max_source_len=512, max_target_len=512,
                              dropout=0.1, attention_dropout=0.1),
    # About one billion parameters: for planning ZeRO stages and memory, not for this CPU.
    "1b": ModelConfig(vocab_size=32000, hidden_size=1536, num_heads=16, encoder_layers=12, decoder_layers=12,
                      embed_dim=256, time_channels=256, max_source_len=1024, max_target_len=512,
                      dropout=0.1, attention_dropout=0.1),
}

PAPER_PARAMS = {"xsum": 74e6, "iwslt": 17e6, "commongen": 9.5e6}


def preset(name: str, **overrides) -> ModelConfig:
    """A copy of the named preset with `overrides` applied."""
    if name not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset {name!r} (valid: {', '.join(PRESETS)})")
    return replace(PRESETS[name], **overrides)
