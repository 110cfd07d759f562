import math

import torch

from ardiff_scale.diffusion import sample, sqrt_schedule
from ardiff_scale.model import ARDiffusionModel, preset
from ardiff_scale.model.layers import TimeAwareSelfAttention


def tiny_model(**overrides) -> ARDiffusionModel:
    torch.manual_seed(0)
    return ARDiffusionModel(preset("tiny", vocab_size=97, dropout=0.0, attention_dropout=0.0, **overrides)).eval()


def test_time_aware_attention_equals_explicit_txl_score():
    torch.manual_seed(1)
    attn = TimeAwareSelfAttention(hidden=16, heads=2, dropout=0.0, attention_dropout=0.0).eval()
    h, tau = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    q, k, v = attn.qkv(h).chunk(3, dim=-1)
    heads = lambda t: t.view(3, 5, 2, 8).transpose(1, 2)  # noqa: E731
    q, k, v, tau_h = heads(q), heads(k), heads(v), heads(tau)
    u, w = attn.content_bias[None, :, None, :], attn.time_bias[None, :, None, :]
    # score_ij = [(q_i + u) . k_j + (q_i + v) . tau_j] / sqrt(d), written out term by term.
    score = ((q + u) @ k.transpose(-1, -2) + (q + w) @ tau_h.transpose(-1, -2)) / math.sqrt(8)
    expected = (score.softmax(-1) @ v).transpose(1, 2).reshape(3, 5, 16)
    torch.testing.assert_close(attn(h, tau), attn.out(expected), rtol=1e-5, atol=1e-5)


def test_shapes_and_source_padding_is_ignored():
    model = tiny_model()
    src = torch.randint(5, 97, (2, 9))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 6:] = 0
    x = torch.randn(2, 7, model.config.embed_dim)
    time = torch.rand(2, 7) * 1000
    out = model.denoise(x, time, model.encode(src, mask))
    assert out.shape == x.shape
    other = src.clone()
    other[0, 6:] = 3  # change only padded positions
    torch.testing.assert_close(model.denoise(x, time, model.encode(other, mask)), out)
    assert model.round_logits(x).shape == (2, 7, 97)


def test_output_depends_on_per_token_time():
    model = tiny_model()
    src = torch.randint(5, 97, (1, 4))
    memory = model.encode(src, torch.ones_like(src))
    x = torch.randn(1, 6, model.config.embed_dim)
    time = torch.full((1, 6), 500.0)
    later = time.clone()
    later[0, 5] = 999.0
    assert not torch.allclose(model.denoise(x, time, memory), model.denoise(x, later, memory))


def test_cached_sampler_equals_uncached_reference_for_same_noise():
    model = tiny_model()
    src = torch.randint(5, 97, (2, 12))
    mask = torch.ones_like(src)
    mask[1, 8:] = 0
    schedule = sqrt_schedule(2000)
    runs = {}
    for cached in (True, False):
        g = torch.Generator().manual_seed(7)
        runs[cached] = sample(model, src, mask, 10, schedule, decode_steps=5, num_candidates=3, generator=g,
                              cache_memory=cached)
    assert torch.equal(runs[True].tokens, runs[False].tokens)


def test_shared_time_rows_give_the_same_prediction_as_full_rows():
    model = tiny_model()
    src = torch.randint(5, 97, (2, 5))
    memory = model.encode(src, torch.ones_like(src))
    x = torch.randn(6, 8, model.config.embed_dim)
    time = torch.rand(1, 8) * 1000
    shared = model.denoise(x, time.expand(6, -1), memory)
    full = model.denoise(x, time.repeat(6, 1).contiguous(), memory)
    torch.testing.assert_close(shared, full)


def _shifted_predictions(model: ARDiffusionModel) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions with every token at step 300, then every token at step 1400 (model units 150 and 700)."""
    src = torch.randint(5, 97, (2, 5))
    memory = model.encode(src, torch.ones_like(src))
    x = torch.randn(2, 6, model.config.embed_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        return (model.denoise(x, torch.full((2, 6), 150.0), memory),
                model.denoise(x, torch.full((2, 6), 700.0), memory))


def test_uniform_baseline_sees_a_time_shared_by_every_token():
    """The uniform baseline (time at the decoder input, the official time_att: false) must change its prediction
    when every token's time moves by the same amount."""
    early, late = _shifted_predictions(tiny_model(time_attention=False))
    assert (early - late).abs().max() > 1e-3


def test_time_attention_alone_is_blind_to_a_shared_time():
    """Why the uniform baseline needs the input time embedding: with one step for every token the txl time term
    is constant along each softmax row and the values carry no time, so the prediction cannot move."""
    early, late = _shifted_predictions(tiny_model(time_attention=True))
    torch.testing.assert_close(early, late, rtol=1e-5, atol=1e-5)


def test_time_layers_follow_the_time_conditioning():
    blind = {k for k in tiny_model(time_attention=False).state_dict()}
    aware = {k for k in tiny_model(time_attention=True).state_dict()}
    assert {"time_mlp.0.weight", "time_mlp.2.bias"} <= blind - aware
    assert {"decoder.0.time_mlp.1.weight", "decoder.0.self_attn.content_bias"} <= aware - blind


def test_rounding_bias_starts_as_the_official_linear_bias():
    """nn.Linear(embed_dim, vocab)'s bias init, U(-1/sqrt(embed_dim), 1/sqrt(embed_dim)), as the official lm_head."""
    bias = ARDiffusionModel(preset("tiny", vocab_size=4000)).round_bias.detach()
    bound = preset("tiny").embed_dim ** -0.5
    assert float(bias.abs().max()) <= bound
    assert abs(float(bias.std()) - bound / math.sqrt(3)) < 0.1 * bound  # uniform, not zeros
