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
