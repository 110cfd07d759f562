"""Analytic matmul FLOPs of the AR-Diffusion model, for MFU (AR_DIFFUSION.md §1 for the architecture).

Only matrix products are counted, at 2 FLOPs per multiply-add; layer norms, activations, softmax and the
diffusion arithmetic are left out, as in the usual MFU convention. The formulas follow
`ardiff_scale/model/layers.py` and `ardiffusion.py` module by module.
"""

from __future__ import annotations

from ardiff_scale.model.config import ModelConfig


def _matmul(rows: float, d_in: float, d_out: float) -> float:
    """FLOPs of (rows, d_in) @ (d_in, d_out)."""
    return 2.0 * rows * d_in * d_out


def _encoder(cfg: ModelConfig, batch: int, src_len: int) -> dict[str, float]:
    h, tokens = cfg.hidden_size, batch * src_len
    # Per layer: fused qkv (3H), output (H), feed-forward in and out (ff_mult * H each).
    linears = _matmul(tokens, h, (4 + 2 * cfg.ff_mult) * h)
    scores_and_values = 2 * _matmul(tokens, h, src_len)
    return {"encoder_linears": cfg.encoder_layers * linears,
            "encoder_attention": cfg.encoder_layers * scores_and_values}


def _memory_kv(cfg: ModelConfig, memory_rows: int, src_len: int) -> float:
    """Every decoder layer's cross-attention keys and values, projected from (memory_rows, src_len, H)."""
    h = cfg.hidden_size
    return cfg.decoder_layers * _matmul(memory_rows * src_len, h, 2 * h)


def _denoise(cfg: ModelConfig, rows: int, src_len: int, tgt_len: int, time_rows: int) -> dict[str, float]:
    """One `denoise` call without the memory K/V projection; time_rows rows go through the time MLPs
    (all of them in training, one in the sampler, whose rows share one time vector)."""
    h, d, tc, layers = cfg.hidden_size, cfg.embed_dim, cfg.time_channels, cfg.decoder_layers
    tokens = rows * tgt_len
    # Per layer: self-attention qkv (3H) and output (H), cross-attention query (H) and output (H),
    # GEGLU in (2 * ff_mult * H) and out (ff_mult * H).
    block = _matmul(tokens, h, (6 + 3 * cfg.ff_mult) * h)
    time_mlp = _matmul(time_rows * tgt_len, tc, 4 * tc) + _matmul(time_rows * tgt_len, 4 * tc, h)
    if cfg.time_attention:
        # The txl key bias u . k_j + v . tau_j, with tau computed (and dotted) for time_rows rows only.
        key_bias = _matmul(tokens, h, 1) + _matmul(time_rows * tgt_len, h, 1)
        decoder = layers * (block + time_mlp + key_bias)
    else:  # one time MLP, at the decoder input
        decoder = layers * block + time_mlp
    # Without a width change there are no projections (nn.Identity), as in the official model.
    projections = 0.0 if d == h else 2 * (_matmul(tokens, d, 2 * h) + _matmul(tokens, 2 * h, h))
    return {"decoder_linears": decoder,
            "up_down_proj": projections,
            "self_attention": layers * 2 * _matmul(tokens, h, tgt_len),
            "cross_attention": layers * 2 * _matmul(tokens, h, src_len)}


def forward_flops(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int) -> dict[str, float]:
    """Matmul FLOPs of one `training_loss` forward, by part.

    Parts: encoder_linears, encoder_attention (scores and values), decoder_linears (time MLPs included),
    up_down_proj, self_attention (scores and values), cross_attention (scores and values plus the K/V
    projection of the memory), rounding_head (logits of x_start: tgt_len x embed_dim x vocab per row).
    """
    flops = {**_encoder(cfg, batch, src_len), **_denoise(cfg, batch, src_len, tgt_len, time_rows=batch)}
    flops["cross_attention"] += _memory_kv(cfg, batch, src_len)
    flops["rounding_head"] = _matmul(batch * tgt_len, cfg.embed_dim, cfg.vocab_size)
    return flops


def training_step_flops(cfg: ModelConfig, batch: int, src_len: int, tgt_len: int) -> float:
    """FLOPs of one optimizer step: 3 x forward, the standard convention (the backward pass costs about
    twice the forward: one product for the input gradient and one for the weight gradient)."""
    return 3.0 * sum(forward_flops(cfg, batch, src_len, tgt_len).values())


def sampling_flops(cfg: ModelConfig, sources: int, candidates: int, src_len: int, tgt_len: int, steps: int,
                   cached: bool = True) -> float:
    """Matmul FLOPs of `sample(...)` for `sources` sources, `candidates` targets each and `steps` steps.

    cached=True: the encoder and the memory K/V projection run once per source. cached=False: the
    reference path encodes every row (sources repeated) and re-projects the memory K/V at every step.
    Every step runs the decoder over sources x candidates rows and a nearest-embedding search
    (tgt_len x (embed_dim + 1) x vocab per row); the rounding head runs once at the end.
    """
    rows = sources * candidates
    encoded = sources if cached else rows
    vocab_product = _matmul(rows * tgt_len, cfg.embed_dim, cfg.vocab_size)
    per_step = (sum(_denoise(cfg, rows, src_len, tgt_len, time_rows=1).values())
                + _matmul(rows * tgt_len, cfg.embed_dim + 1, cfg.vocab_size))
    memory_kv = _memory_kv(cfg, encoded, src_len) * (1 if cached else steps)
    return sum(_encoder(cfg, encoded, src_len).values()) + memory_kv + steps * per_step + vocab_product
