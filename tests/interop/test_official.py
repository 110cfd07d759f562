"""Parity with the official AR-Diffusion implementation, on a checkpoint in its format and outputs computed by
running it (../shared/parity/official-tiny, or the folder ARDIFF_PARITY_FIXTURE names). Only
model_checkpoint-*, config.yaml and reference.* are read from the folder: sizes come from them, never from
numbers written here."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ardiff_scale.diffusion import LossDraws, SamplerNoise, model_time, sample, sqrt_schedule, training_terms
from ardiff_scale.errors import ConfigError, DataError
from ardiff_scale.interop.official import convert, load_official, read_official_checkpoint, read_official_config
from ardiff_scale.model import ModelConfig, build_model

REPO = Path(__file__).resolve().parents[2]
FIXTURE = Path(os.environ.get("ARDIFF_PARITY_FIXTURE", REPO.parent / "shared" / "parity" / "official-tiny"))


def _newest(pattern: str) -> Path:
    found = sorted(FIXTURE.glob(pattern), key=lambda p: int(re.search(r"(\d+)$", p.name).group(1)))
    assert found, f"no {pattern} in {FIXTURE}"
    return found[-1]


@pytest.fixture(scope="module")
def official():
    return load_official(_newest("model_checkpoint-*"), FIXTURE / "config.yaml")


@pytest.fixture(scope="module")
def model(official):
    net = build_model(official.model)
    net.load_state_dict(official.weights)
    return net.eval()


@pytest.fixture(scope="module")
def ref():
    tensors = load_file(FIXTURE / "reference.safetensors")
    shapes = json.loads((FIXTURE / "reference.json").read_text())["shapes"]
    assert {k: list(v.shape) for k, v in tensors.items()} == {k: shapes[k] for k in tensors}
    return tensors


@pytest.fixture(scope="module")
def config():
    return read_official_config(FIXTURE / "config.yaml")


def test_sizes_come_from_the_checkpoint_and_config(official, config):
    state, step = read_official_checkpoint(_newest("model_checkpoint-*"))
    m = official.model
    assert (m.vocab_size, m.hidden_size) == tuple(state["encoder.embeddings.word_embeddings.weight"].shape)
    assert m.hidden_size == config["intermediate_size"] // 4 and m.embed_dim == config["in_channels"]
    assert m.time_channels == config["time_channels"] and m.num_heads == config["num_attention_heads"]
    assert m.max_source_len == m.max_target_len == config["max_pos_len"]
    assert m.time_attention == bool(config.get("time_att", True))
    assert official.sections["diffusion"]["num_steps"] == config["diffusion_steps"]
    assert official.sections["data"]["target_len"] == config["tgt_len"]
    assert step == official.step


def test_encoder_prediction_and_logits_match(model, ref):
    with torch.no_grad():
        memory = model.encode(ref["src_ids"], ref["src_mask"])
        x0 = model.denoise(ref["forward_x_t"], model_time(ref["forward_t"], _steps(ref)), memory)
        logits = model.round_logits(x0)
    assert (memory.states - ref["encoder_states"]).abs().max() < 1e-5
    assert (x0 - ref["forward_x0"]).abs().max() < 1e-5
    assert (logits - ref["forward_logits"]).abs().max() < 1e-5


def test_per_token_loss_terms_match(model, ref):
    draws = LossDraws(ref["loss_t"], ref["loss_noise_x0"], ref["loss_noise_xt"])
    with torch.no_grad():
        terms = training_terms(model, ref["src_ids"], ref["src_mask"], ref["tgt_ids"], sqrt_schedule(_steps(ref)),
                               draws)
    for ours, theirs in (("mse", "loss_mse"), ("nll", "loss_decoder_nll"), ("prior", "loss_tT_loss"),
                         ("loss", "loss_loss")):
        assert terms[ours].shape == ref[theirs].shape
        assert (terms[ours] - ref[theirs]).abs().max() < 1e-5, ours


def test_skipping_sampler_replays_every_official_step(official, model, ref):
    steps = ref["sample_noise"].shape[0]
    # The timestep form follows the official config (xy_uniform: "code"; uniform: "uniform").
    form = official.sections["diffusion"]["timestep_form"]
    out = sample(model, ref["src_ids"], ref["src_mask"], ref["tgt_ids"].shape[1], sqrt_schedule(_steps(ref)),
                 decode_steps=steps, form=form, clamp=True,
                 noise=SamplerNoise(ref["sample_x_T"], ref["sample_noise"]), return_states=True)
    errors = (out.states - ref["sample_xs"]).abs().amax(dim=(1, 2, 3))
    assert errors.shape == (steps,) and bool((errors < 1e-4).all()), errors
    assert torch.equal(out.tokens[:, 0], ref["sample_tokens"])


def test_sampler_noise_of_the_wrong_shape_is_refused(model, ref):
    bad = SamplerNoise(ref["sample_x_T"], ref["sample_noise"][:-1])
    with pytest.raises(ValueError, match="sampler noise must be"):
        sample(model, ref["src_ids"], ref["src_mask"], ref["tgt_ids"].shape[1], sqrt_schedule(_steps(ref)),
               decode_steps=ref["sample_noise"].shape[0], noise=bad)


def test_ema_file_imports(tmp_path, official, config):
    """The official EMA file has the model file's layout with other weights in model_dict. Written here from
    the model checkpoint (and the fixture's own EMA file too, where it has one)."""
    state, _ = read_official_checkpoint(_newest("model_checkpoint-*"))
    ema_state = {k: (v * 0.5 if v.is_floating_point() else v) for k, v in state.items()}
    path = tmp_path / "ema_0.9999_checkpoint-7"
    torch.save({"model_dict": ema_state, "optimizer_dict": {}, "scheduler_dict": {}, "offset": 7}, path)
    ema = load_official(path, FIXTURE / "config.yaml")
    assert ema.step == 7 and ema.model == official.model
    for name, tensor in official.weights.items():
        assert torch.allclose(ema.weights[name], tensor * 0.5), name
    for shipped in FIXTURE.glob("ema_*_checkpoint-*"):
        imported = load_official(shipped, FIXTURE / "config.yaml")
        raw, _ = read_official_checkpoint(shipped)
        build_model(imported.model).load_state_dict(imported.weights)
        # The EMA embedding, not the raw weights the file keeps under the tied lm_head.weight name.
        assert torch.equal(imported.weights["tgt_embedding.weight"], raw["word_embedding.weight"])


@pytest.mark.parametrize("key, value", [("self_condition", True), ("pred_len", True), ("att_strategy", "rotary"),
                                        ("load_bart", True), ("predict_x_start", True), ("noise_schedule", "linear"),
                                        ("schedule_sampler", "fixed_xy")])
def test_settings_without_a_counterpart_are_refused_by_key(config, key, value):
    state, _ = read_official_checkpoint(_newest("model_checkpoint-*"))
    with pytest.raises(ConfigError, match=f"official config {key}: {value!r}"):
        convert(config | {key: value}, state)


def test_a_tensor_without_a_place_is_refused(config):
    state, _ = read_official_checkpoint(_newest("model_checkpoint-*"))
    with pytest.raises(DataError, match="length_embedding.weight"):
        convert(config, state | {"length_embedding.weight": torch.zeros(3, 4)})
    broken = dict(state)
    del broken["transformer_blocks.0.attn2.to_k.weight"]
    with pytest.raises(DataError, match="transformer_blocks.0.attn2.to_k.weight"):
        convert(config, broken)


def test_uniform_baseline_checkpoint_maps_time_to_the_decoder_input(config):
    """The official uniform baseline (time_att: false) has one time_trans before the blocks and none in them."""
    state, _ = read_official_checkpoint(_newest("model_checkpoint-*"))
    uniform = {k: v for k, v in state.items() if not re.search(r"transformer_blocks\.\d+\.(time_trans|r_w|r_r)", k)}
    hidden, channels = state["LayerNorm.weight"].shape[0], config["time_channels"]
    generator = torch.Generator().manual_seed(0)
    uniform |= {"time_trans.0.weight": torch.randn(4 * channels, channels, generator=generator),
                "time_trans.0.bias": torch.randn(4 * channels, generator=generator),
                "time_trans.2.weight": torch.randn(hidden, 4 * channels, generator=generator),
                "time_trans.2.bias": torch.randn(hidden, generator=generator)}
    imported = convert(config | {"schedule_sampler": "uniform", "time_att": False}, uniform)
    assert not imported.model.time_attention
    assert imported.sections["diffusion"]["timestep_form"] == "uniform"
    assert torch.equal(imported.weights["time_mlp.2.weight"], uniform["time_trans.2.weight"])
    build_model(imported.model).load_state_dict(imported.weights)
    with pytest.raises(ConfigError, match="time_att: true with schedule_sampler: uniform"):
        convert(config | {"schedule_sampler": "uniform", "time_att": True}, state)


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    path = tmp_path / "model_checkpoint-1"
    # A pickle with an arbitrary class is exactly what weights_only=True refuses.
    torch.save({"model_dict": {"w": torch.zeros(1)}, "note": Path("x")}, path)
    with pytest.raises(DataError, match="weights_only=True"):
        read_official_checkpoint(path)


def _steps(ref) -> int:
    """T, from the fixture's config (the reference's t are indices into it)."""
    steps = int(yaml.safe_load((FIXTURE / "config.yaml").read_text()).get("diffusion_steps", 2000))
    assert int(ref["forward_t"].max()) < steps
    return steps


def _as_official(state: dict[str, torch.Tensor], layers: tuple[int, int], time_attention: bool) -> dict:
    """Our state dict in the official names (the inverse of the import), for sizes no fixture has."""
    out = {"position_ids": torch.arange(state["tgt_positions.weight"].shape[0])[None]}
    emb = "encoder.embeddings."
    hidden = state["src_embedding.weight"].shape[1]
    out[emb + "word_embeddings.weight"] = state["src_embedding.weight"]
    type_row = torch.randn(2, hidden, generator=torch.Generator().manual_seed(1))
    out[emb + "token_type_embeddings.weight"] = type_row
    out[emb + "position_embeddings.weight"] = state["src_positions.weight"] - type_row[0]
    for p in ("weight", "bias"):
        out[emb + f"LayerNorm.{p}"] = state[f"src_ln.{p}"]
        out[f"encoder.pooler.dense.{p}"] = torch.zeros(hidden, hidden) if p == "weight" else torch.zeros(hidden)
    for i in range(layers[0]):
        theirs, ours = f"encoder.encoder.layer.{i}.", f"encoder.{i}."
        for p in ("weight", "bias"):
            for name, part in zip(("query", "key", "value"), state[ours + f"qkv.{p}"].chunk(3)):
                out[theirs + f"attention.self.{name}.{p}"] = part
            for mine, official in (("out", "attention.output.dense"), ("ln_attn", "attention.output.LayerNorm"),
                                   ("ff_in", "intermediate.dense"), ("ff_out", "output.dense"),
                                   ("ln_ff", "output.LayerNorm")):
                out[theirs + f"{official}.{p}"] = state[ours + f"{mine}.{p}"]
    out["word_embedding.weight"] = out["lm_head.weight"] = state["tgt_embedding.weight"]
    out["lm_head.bias"] = state["round_bias"]
    out["position_embeddings.weight"] = state["tgt_positions.weight"]
    for p in ("weight", "bias"):
        out[f"LayerNorm.{p}"] = state[f"tgt_ln.{p}"]
        for n in ("0", "2"):
            if f"up_proj.{n}.{p}" in state:
                out[f"input_up_proj.{n}.{p}"] = state[f"up_proj.{n}.{p}"]
                out[f"output_down_proj.{n}.{p}"] = state[f"down_proj.{n}.{p}"]
            if not time_attention:
                out[f"time_trans.{n}.{p}"] = state[f"time_mlp.{n}.{p}"]
    for i in range(layers[1]):
        theirs, ours = f"transformer_blocks.{i}.", f"decoder.{i}."
        for name, part in zip("qkv", state[ours + "self_attn.qkv.weight"].chunk(3)):
            out[theirs + f"attn1.to_{name}.weight"] = part
        out[theirs + "attn2.to_q.weight"] = state[ours + "cross_attn.q.weight"]
        for name, part in zip("kv", state[ours + "cross_attn.kv.weight"].chunk(2)):
            out[theirs + f"attn2.to_{name}.weight"] = part
        if time_attention:
            out[theirs + "r_w_bias"] = state[ours + "self_attn.content_bias"]
            out[theirs + "r_r_bias"] = state[ours + "self_attn.time_bias"]
        for p in ("weight", "bias"):
            for mine, official in (("self_attn.out", "attn1.to_out.0"), ("cross_attn.out", "attn2.to_out.0"),
                                   ("ln_self", "norm1"), ("ln_cross", "norm2"), ("ln_ff", "norm3"),
                                   ("ff.proj", "ff.net.0.proj"), ("ff.out", "ff.net.2")):
                out[theirs + f"{official}.{p}"] = state[ours + f"{mine}.{p}"]
            if time_attention:
                out[theirs + f"time_trans.0.{p}"] = state[ours + f"time_mlp.1.{p}"]
                out[theirs + f"time_trans.2.{p}"] = state[ours + f"time_mlp.3.{p}"]
    return out


@pytest.mark.parametrize("sizes", [
    dict(vocab_size=1234, hidden_size=96, num_heads=3, encoder_layers=2, decoder_layers=3, embed_dim=48,
         time_channels=24, max_source_len=40, max_target_len=40),
    dict(vocab_size=300, hidden_size=64, num_heads=8, encoder_layers=1, decoder_layers=1, embed_dim=64,
         time_channels=16, max_source_len=20, max_target_len=20, time_attention=False),
], ids=["other-sizes", "no-projections-uniform"])
def test_sizes_are_read_from_the_checkpoint_not_assumed(sizes):
    """Other sizes than the fixture's, round-tripped through the official names: the import recovers every
    size from the shapes and config, and the imported model computes what the original does."""
    torch.manual_seed(3)
    config = ModelConfig(dropout=0.0, attention_dropout=0.0, **sizes)
    original = build_model(config).eval()
    time_attention = sizes.get("time_attention", True)
    official_config = {"intermediate_size": 4 * config.hidden_size, "in_channels": config.embed_dim,
                       "time_channels": config.time_channels, "num_attention_heads": config.num_heads,
                       "dropout": 0.0, "att_dropout": 0.0, "time_att": time_attention, "tgt_len": 12,
                       "schedule_sampler": "xy_uniform" if time_attention else "uniform",
                       "max_pos_len": config.max_source_len}
    state = _as_official(original.state_dict(), (config.encoder_layers, config.decoder_layers), time_attention)
    imported = convert(official_config, state)
    assert imported.model == config
    model = build_model(imported.model).eval()
    model.load_state_dict(imported.weights)
    src = torch.randint(5, config.vocab_size, (2, 9))
    x = torch.randn(2, 12, config.embed_dim)
    time = torch.rand(2, 12) * 1000
    with torch.no_grad():
        want = original.denoise(x, time, original.encode(src, torch.ones_like(src)))
        got = model.denoise(x, time, model.encode(src, torch.ones_like(src)))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
