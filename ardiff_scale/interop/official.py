"""Checkpoints of the official AR-Diffusion code (microsoft/ProphetNet, AR-diffusion/) as ardiff-scale models.

The official network maps onto ours name by name (design/AR_DIFFUSION.md §1):

    official                                   ardiff-scale
    encoder.embeddings.word_embeddings         src_embedding
    encoder.embeddings.position_embeddings     src_positions, plus token_type_embeddings row 0: BERT adds
      + token_type_embeddings[0]                 that row to every source position (all token types are 0)
    encoder.embeddings.LayerNorm               src_ln
    encoder.encoder.layer.{i}.attention.self.{query,key,value}   encoder.{i}.qkv (concatenated)
    ... .attention.output.dense / .LayerNorm   encoder.{i}.out / ln_attn
    ... .intermediate.dense, .output.dense     encoder.{i}.ff_in, ff_out;  .output.LayerNorm  ln_ff
    encoder.pooler.*                           dropped: its output is multiplied by 0 in the official forward
    word_embedding, lm_head.bias               tgt_embedding, round_bias (lm_head.weight is tied to it)
    input_up_proj, output_down_proj            up_proj, down_proj
    position_embeddings, LayerNorm             tgt_positions, tgt_ln
    time_trans (time_att: false)               time_mlp, added to the decoder input
    transformer_blocks.{i}.time_trans          decoder.{i}.time_mlp (after its dropout)
      .attn1.to_{q,k,v}, .to_out.0             decoder.{i}.self_attn.qkv (concatenated), .out
      .r_w_bias, .r_r_bias                     decoder.{i}.self_attn.content_bias, .time_bias
      .attn2.to_q, .to_{k,v}, .to_out.0        decoder.{i}.cross_attn.q, .kv (concatenated), .out
      .norm1/2/3, .ff.net.0.proj, .ff.net.2    ln_self, ln_cross, ln_ff, ff.proj, ff.out

Sizes come from the checkpoint's shapes, checked against the run config; settings the official code has and
this one does not (self-conditioning, length prediction, rotary time attention, ...) are refused with the
config key that asks for them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from ardiff_scale.config import Config, load_config
from ardiff_scale.data.tokenizer import HFTokenizer, Tokenizer
from ardiff_scale.errors import ConfigError, DataError
from ardiff_scale.export import save_model_dir
from ardiff_scale.model import ModelConfig, build_model

# Official settings that change the network or the diffusion in a way this implementation does not have:
# key -> (the value we support, what the other value would need).
UNSUPPORTED = {
    "self_condition": (False, "self-conditioning (the decoder input doubled with the previous x0 estimate)"),
    "infer_self_condition": (False, "self-conditioned sampling"),
    "pred_len": (False, "length prediction (a length embedding and a length head on the encoder)"),
    "predict_x_start": (False, "the lm_transform head before the rounding head"),
    "scale_embedding": (False, "target embeddings scaled by sqrt(in_channels)"),
    "learn_sigma": (False, "learned variances"),
    "load_bart": (False, "a BART encoder"),
    "predict_xstart": (True, "noise (epsilon) prediction"),
    "rescale_timesteps": (True, "unscaled timesteps"),
    "end_point_scale": (2.0, "another anchor of the timestep line than (2N, T)"),
    "noise_schedule": ("sqrt", "another noise schedule than sqrt"),
    "logits_mode": (1, "another rounding head than the tied linear one"),
    "roformer_timeAtt": (False, "rotary time attention"),
    "add_layer_time": (False, "per-layer time embeddings"),
    "position_att": (False, "position attention"),
    "rel_postion": (False, "relative positions"),
}
TIMESTEP_FORMS = {"xy_uniform": "code", "uniform": "uniform"}


@dataclass
class OfficialModel:
    """An official checkpoint in ardiff-scale's terms."""

    model: ModelConfig
    # Run-config fields that follow from the official config (steps, lengths, form), per section:
    # {"diffusion": {"num_steps": 2000, ...}, "data": {...}}.
    sections: dict[str, dict[str, Any]]
    weights: dict[str, torch.Tensor]  # our state dict
    step: int | None  # the official `offset`, the optimizer step the checkpoint was written at


def read_official_config(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except FileNotFoundError:
        raise DataError(f"official config not found: {path} (the config.yaml the official run was started "
                        "with, merged with its command-line overrides)") from None
    except yaml.YAMLError as error:
        raise DataError(f"{path} is not YAML: {error}") from None
    if not isinstance(config, dict):
        raise DataError(f"{path}: expected a mapping of official config keys (got {type(config).__name__})")
    return config


def read_official_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], int | None]:
    """The model's state dict from an official `model_checkpoint-N` or `ema_<rate>_checkpoint-N` file, read
    with weights_only=True: a checkpoint is data, and unpickling arbitrary objects would run code."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DataError(f"official checkpoint not found: {path}") from None
    except Exception as error:  # noqa: BLE001 - torch raises several types for a file that is not a checkpoint
        raise DataError(f"{path} is not a checkpoint torch.load(weights_only=True) can read: {error}") from None
    if isinstance(payload, dict) and "model_dict" in payload:
        state, step = payload["model_dict"], payload.get("offset")
    elif isinstance(payload, dict) and all(isinstance(v, torch.Tensor) for v in payload.values()):
        state, step = payload, None  # a bare state dict
    else:
        raise DataError(f"{path}: expected the official trainer's dict with 'model_dict' (or a bare state dict)")
    # A DistributedDataParallel module saved as is has every name prefixed with "module.".
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state, int(step) if step is not None else None


def _refuse_unsupported(config: dict[str, Any]) -> None:
    for key, (supported, meaning) in UNSUPPORTED.items():
        if key in config and config[key] is not None and config[key] != supported:
            raise ConfigError(f"official config {key}: {config[key]!r} asks for {meaning}, which ardiff-scale does "
                              f"not implement (importable: {key}: {supported!r})")
    mode = (config.get("model") or {}).get("mode", "s2s")
    if mode != "s2s":
        raise ConfigError(f"official config model.mode: {mode!r}: only the sequence-to-sequence model (s2s) imports")
    sampler = config.get("schedule_sampler", "xy_uniform")
    if sampler not in TIMESTEP_FORMS:
        raise ConfigError(f"official config schedule_sampler: {sampler!r} has no ardiff-scale counterpart "
                          f"(importable: {', '.join(TIMESTEP_FORMS)})")
    time_att = bool(config.get("time_att", True))
    if time_att and config.get("att_strategy", "txl") != "txl":
        raise ConfigError(f"official config att_strategy: {config.get('att_strategy')!r}: only the 'txl' time "
                          "attention imports (rotary time attention is not implemented)")
    if sampler == "uniform" and time_att:
        raise ConfigError("official config time_att: true with schedule_sampler: uniform: with every token at one "
                          "step the txl time term cancels and the network cannot see t; ardiff-scale refuses that "
                          "combination (the official uniform baseline sets time_att: false)")
    if config.get("out_channels", config.get("in_channels")) != config.get("in_channels"):
        raise ConfigError(f"official config out_channels: {config.get('out_channels')} must equal in_channels "
                          f"({config.get('in_channels')}): the denoiser predicts x0 in the embedding space")


def _count(state: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for k in state if (m := re.match(pattern, k))}
    if indices != set(range(len(indices))):
        raise DataError(f"checkpoint layers {sorted(indices)} are not numbered 0..n-1 ({pattern})")
    return len(indices)


def _need(state: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in state:
        raise DataError(f"official checkpoint has no {key}: not an AR-Diffusion s2s checkpoint with a BERT encoder")
    return state[key]


def model_config(config: dict[str, Any], state: dict[str, torch.Tensor]) -> ModelConfig:
    """Our model config from the checkpoint's shapes, checked against the official config where both say."""
    _refuse_unsupported(config)
    words = _need(state, "encoder.embeddings.word_embeddings.weight")
    vocab, hidden = words.shape
    embed = _need(state, "word_embedding.weight")
    if "intermediate_size" in config and config["intermediate_size"] // 4 != hidden:
        raise ConfigError(f"official config intermediate_size: {config['intermediate_size']} implies hidden size "
                          f"{config['intermediate_size'] // 4}, but the checkpoint's encoder is {hidden} wide")
    if "in_channels" in config and config["in_channels"] != embed.shape[1]:
        raise ConfigError(f"official config in_channels: {config['in_channels']} but the checkpoint's "
                          f"word_embedding is {embed.shape[1]} wide")
    heads = int(config.get("num_attention_heads", 0))
    if "transformer_blocks.0.r_w_bias" in state:
        heads = state["transformer_blocks.0.r_w_bias"].shape[0]
    if heads <= 0:
        raise ConfigError("official config num_attention_heads is missing: the checkpoint does not show it")
    time_attention = "time_trans.0.weight" not in state
    time_key = "transformer_blocks.0.time_trans.0.weight" if time_attention else "time_trans.0.weight"
    encoder_ff = _need(state, "encoder.encoder.layer.0.intermediate.dense.weight").shape[0]
    decoder_ff = _need(state, "transformer_blocks.0.ff.net.2.weight").shape[1]
    if encoder_ff != decoder_ff or encoder_ff % hidden:
        raise ConfigError(f"checkpoint feed-forward widths {encoder_ff} (encoder) and {decoder_ff} (decoder) must be "
                          f"the same multiple of the hidden size {hidden}")
    src_positions = _need(state, "encoder.embeddings.position_embeddings.weight").shape[0]
    tgt_positions = _need(state, "position_embeddings.weight").shape[0]
    model = ModelConfig(
        vocab_size=vocab, hidden_size=hidden, num_heads=heads,
        encoder_layers=_count(state, r"encoder\.encoder\.layer\.(\d+)\."),
        decoder_layers=_count(state, r"transformer_blocks\.(\d+)\."),
        ff_mult=encoder_ff // hidden, embed_dim=embed.shape[1], time_channels=_need(state, time_key).shape[1],
        max_source_len=src_positions, max_target_len=tgt_positions,
        dropout=float(config.get("dropout", 0.1)), attention_dropout=float(config.get("att_dropout", 0.1)),
        layer_norm_eps=1e-12, decoder="diffusion", time_attention=time_attention)
    model.validate()
    return model


def _cat(state: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([_need(state, k) for k in keys], dim=0)


def map_weights(state: dict[str, torch.Tensor], model: ModelConfig) -> dict[str, torch.Tensor]:
    """The official state dict as ours; every official tensor is used or deliberately dropped."""
    out: dict[str, torch.Tensor] = {}
    used: set[str] = {"position_ids", "encoder.embeddings.position_ids", "lm_head.weight"}

    def take(ours: str, theirs: str) -> None:
        out[ours] = _need(state, theirs)
        used.add(theirs)

    def take_cat(ours: str, theirs: list[str]) -> None:
        out[ours] = _cat(state, theirs)
        used.update(theirs)

    emb = "encoder.embeddings."
    take("src_embedding.weight", emb + "word_embeddings.weight")
    token_type = _need(state, emb + "token_type_embeddings.weight")
    out["src_positions.weight"] = _need(state, emb + "position_embeddings.weight") + token_type[0]
    used.update({emb + "position_embeddings.weight", emb + "token_type_embeddings.weight"})
    for p in ("weight", "bias"):
        take(f"src_ln.{p}", emb + f"LayerNorm.{p}")
    for i in range(model.encoder_layers):
        theirs, ours = f"encoder.encoder.layer.{i}.", f"encoder.{i}."
        for p in ("weight", "bias"):
            take_cat(ours + f"qkv.{p}", [theirs + f"attention.self.{n}.{p}" for n in ("query", "key", "value")])
            take(ours + f"out.{p}", theirs + f"attention.output.dense.{p}")
            take(ours + f"ln_attn.{p}", theirs + f"attention.output.LayerNorm.{p}")
            take(ours + f"ff_in.{p}", theirs + f"intermediate.dense.{p}")
            take(ours + f"ff_out.{p}", theirs + f"output.dense.{p}")
            take(ours + f"ln_ff.{p}", theirs + f"output.LayerNorm.{p}")
    used.update(k for k in state if k.startswith("encoder.pooler."))

    # lm_head.weight is tied to word_embedding.weight and not read. In an official EMA file the two differ:
    # the EMA is kept per named parameter, a tied weight is named once (word_embedding), and lm_head.weight
    # is written from the raw model. We keep the EMA embedding for both roles.
    take("tgt_embedding.weight", "word_embedding.weight")
    take("round_bias", "lm_head.bias")
    take("tgt_positions.weight", "position_embeddings.weight")
    for p in ("weight", "bias"):
        take(f"tgt_ln.{p}", f"LayerNorm.{p}")
        if model.embed_dim != model.hidden_size:
            for n in ("0", "2"):
                take(f"up_proj.{n}.{p}", f"input_up_proj.{n}.{p}")
                take(f"down_proj.{n}.{p}", f"output_down_proj.{n}.{p}")
        if not model.time_attention:
            for n in ("0", "2"):
                take(f"time_mlp.{n}.{p}", f"time_trans.{n}.{p}")
    for i in range(model.decoder_layers):
        theirs, ours = f"transformer_blocks.{i}.", f"decoder.{i}."
        take_cat(ours + "self_attn.qkv.weight", [theirs + f"attn1.to_{n}.weight" for n in "qkv"])
        take(ours + "cross_attn.q.weight", theirs + "attn2.to_q.weight")
        take_cat(ours + "cross_attn.kv.weight", [theirs + f"attn2.to_{n}.weight" for n in "kv"])
        if model.time_attention:
            take(ours + "self_attn.content_bias", theirs + "r_w_bias")
            take(ours + "self_attn.time_bias", theirs + "r_r_bias")
        for p in ("weight", "bias"):
            take(ours + f"self_attn.out.{p}", theirs + f"attn1.to_out.0.{p}")
            take(ours + f"cross_attn.out.{p}", theirs + f"attn2.to_out.0.{p}")
            take(ours + f"ln_self.{p}", theirs + f"norm1.{p}")
            take(ours + f"ln_cross.{p}", theirs + f"norm2.{p}")
            take(ours + f"ln_ff.{p}", theirs + f"norm3.{p}")
            take(ours + f"ff.proj.{p}", theirs + f"ff.net.0.proj.{p}")
            take(ours + f"ff.out.{p}", theirs + f"ff.net.2.{p}")
            if model.time_attention:
                take(ours + f"time_mlp.1.{p}", theirs + f"time_trans.0.{p}")
                take(ours + f"time_mlp.3.{p}", theirs + f"time_trans.2.{p}")
    left = sorted(set(state) - used)
    if left:
        raise DataError(f"official checkpoint has {len(left)} tensors this model has no place for, e.g. {left[0]} "
                        f"(all: {', '.join(left[:8])}{', ...' if len(left) > 8 else ''}): a setting or an encoder "
                        "ardiff-scale does not implement")
    return out


def convert(config: dict[str, Any], state: dict[str, torch.Tensor], step: int | None = None) -> OfficialModel:
    """An official (config, state dict) pair as our model config, run-config fields and state dict."""
    model = model_config(config, state)
    weights = map_weights(state, model)
    with torch.device("meta"):  # shapes only: the weights are built once, by whoever loads these
        expected = build_model(model).state_dict()
    wrong = [k for k in expected if k not in weights or weights[k].shape != expected[k].shape]
    if wrong or set(weights) - set(expected):
        raise DataError(f"mapped official weights do not fit the model (first mismatch: "
                        f"{(wrong or sorted(set(weights) - set(expected)))[0]})")
    form = TIMESTEP_FORMS[config.get("schedule_sampler", "xy_uniform")]
    steps = int(config.get("diffusion_steps", 2000))
    diffusion: dict[str, Any] = {"num_steps": steps, "timestep_form": form, "clamp": True}
    if form == "uniform":
        # The official uniform sampler strides by skip_timestep over T: as many steps as that visits.
        skip = int(config.get("skip_timestep", 100))
        diffusion["decode_steps"] = len(range(steps - 1, -1, -skip))
    elif config.get("gen_timesteps"):
        diffusion["decode_steps"] = int(config["gen_timesteps"])
    target_len = int(config.get("tgt_len", model.max_target_len))
    data = {"target_len": min(target_len, model.max_target_len), "source_len": model.max_source_len}
    return OfficialModel(model=model, sections={"diffusion": diffusion, "data": data}, weights=weights, step=step)


def load_official(checkpoint: str | os.PathLike, config: str | os.PathLike) -> OfficialModel:
    state, step = read_official_checkpoint(checkpoint)
    return convert(read_official_config(config), state, step)


def run_config(official: OfficialModel) -> Config:
    """A full run config for the imported model (what a model directory's config.yaml holds)."""
    return load_config(None, model=official.model.to_dict(), **official.sections)


def describe(official: OfficialModel) -> str:
    m = official.model
    return (f"vocab {m.vocab_size}, hidden {m.hidden_size}, {m.num_heads} heads, {m.encoder_layers}+"
            f"{m.decoder_layers} layers, embed {m.embed_dim}, time {m.time_channels} "
            f"({'time attention' if m.time_attention else 'time at the decoder input'})"
            + (f", step {official.step}" if official.step is not None else ""))


def official_tokenizer(vocab: str | None = None, tokenizer: str | None = None,
                       bpe: tuple[str, str] | None = None) -> Tokenizer:
    """The imported model's own tokenizer: BERT WordPiece (vocab.txt), a saved tokenizer.json, or a
    byte-level BPE (vocab.json, merges.txt)."""
    given = [name for name, value in (("--vocab", vocab), ("--tokenizer", tokenizer), ("--bpe", bpe)) if value]
    if len(given) != 1:
        raise ConfigError("give exactly one of --vocab vocab.txt (BERT WordPiece, as bert-base-uncased), "
                          "--tokenizer tokenizer.json, or --bpe vocab.json merges.txt (byte-level BPE, as the "
                          f"IWSLT models) (got {', '.join(given) if given else 'none'})")
    if vocab:
        return HFTokenizer.from_wordpiece(vocab)
    if bpe:
        return HFTokenizer.from_bpe(*bpe)
    return Tokenizer.load(tokenizer)


def import_official(checkpoint: str, config: str, output: str, tokenizer: Tokenizer) -> OfficialModel:
    """Write the official checkpoint as a model directory (what `ardiff generate`, `evaluate`, `finetune --init`
    and the MLflow pyfunc load). The vocabulary sizes of the checkpoint and the tokenizer must agree."""
    path = Path(output)
    if path.exists() and any(path.iterdir()):
        raise ConfigError(f"--output {output} exists and is not empty: choose a new directory")
    official = load_official(checkpoint, config)
    if tokenizer.vocab_size != official.model.vocab_size:
        raise DataError(f"the tokenizer has {tokenizer.vocab_size} entries but the checkpoint's vocabulary is "
                        f"{official.model.vocab_size} (word_embedding rows): use the tokenizer the model was "
                        "trained with")
    run = run_config(official)
    model = build_model(official.model)
    model.load_state_dict(official.weights)
    save_model_dir(str(path), model, run, tokenizer)
    return official
