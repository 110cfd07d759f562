"""The autoregressive baseline: same encoder as AR-Diffusion, causal decoder, cached greedy and beam search."""

import itertools

import pytest
import torch

from ardiff_scale.data.tokenizer import BOS, EOS, PAD
from ardiff_scale.model import (
    ARDiffusionModel,
    AutoregressiveModel,
    build_model,
    encoder_weights,
    preset,
)
from ardiff_scale.model.search import beam_search, greedy_decode
from ardiff_scale.train.objective import TeacherForcingObjective

CONFIG = preset("tiny", vocab_size=40, hidden_size=32, num_heads=2, decoder="autoregressive", dropout=0.0,
                attention_dropout=0.0)


def test_build_model_picks_the_decoder_and_the_encoders_share_names():
    ar, diffusion = build_model(CONFIG), build_model(preset("tiny", vocab_size=40, hidden_size=32, num_heads=2))
    assert isinstance(ar, AutoregressiveModel) and isinstance(diffusion, ARDiffusionModel)
    shared = encoder_weights(diffusion.state_dict())
    assert shared and {k: v.shape for k, v in shared.items()} == {
        k: v.shape for k, v in encoder_weights(ar.state_dict()).items()}


def test_cached_incremental_logits_equal_the_full_causal_pass():
    torch.manual_seed(0)
    model = AutoregressiveModel(CONFIG).eval()
    src = torch.randint(5, 40, (3, 9))
    mask = torch.ones_like(src)
    mask[0, 6:] = 0
    tgt = torch.randint(5, 40, (3, 7))
    memory = model.encode(src, mask)
    full, _ = model.logits(tgt, memory)
    cache, steps = None, []
    for position in range(tgt.shape[1]):
        logits, cache = model.logits(tgt[:, position:position + 1], memory, cache, start=position)
        steps.append(logits)
    assert torch.allclose(torch.cat(steps, 1), full, atol=1e-5)
    # The causal mask: changing a later token leaves earlier logits alone.
    changed = tgt.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 40
    assert torch.allclose(model.logits(changed, memory)[0][:, :4], full[:, :4], atol=1e-6)
    assert not torch.allclose(model.logits(changed, memory)[0][:, 4:], full[:, 4:], atol=1e-6)


def _sequence_logprob(model, src, mask, tokens) -> float:
    """Log-probability of tokens[1:] up to and including </s>, by one teacher-forced pass."""
    logp = torch.log_softmax(model(src, mask, tokens[:, :-1]), -1)[0]
    total = 0.0
    for position, token in enumerate(tokens[0, 1:].tolist()):
        total += logp[position, token].item()
        if token == EOS:
            break
    return total


def test_beam_search_finds_the_exact_best_sequence_of_a_small_space():
    # With vocab 6 (ids 5 is the only ordinary token besides EOS) and length 5, every sequence can be
    # enumerated: beam search with a wide beam and no length penalty must find the most probable one.
    torch.manual_seed(3)
    config = preset("tiny", vocab_size=7, hidden_size=16, num_heads=2, decoder="autoregressive", dropout=0.0,
                    attention_dropout=0.0)
    model = AutoregressiveModel(config).eval()
    with torch.no_grad():
        model.out_bias[BOS] = -1e4  # never generated: keeps the enumeration to real choices
        model.out_bias[PAD] = -1e4
        model.out_bias[1] = model.out_bias[4] = -1e4
    src, mask = torch.randint(5, 7, (1, 6)), torch.ones(1, 6, dtype=torch.int64)
    length = 5
    best, best_score = None, float("-inf")
    for body_len in range(0, length - 1):  # <s> body </s> fits in `length`
        for body in itertools.product([5, 6], repeat=body_len):
            seq = [BOS, *body, EOS] + [PAD] * (length - body_len - 2)
            with torch.no_grad():
                score = _sequence_logprob(model, src, mask, torch.tensor([seq]))
            if score > best_score:
                best, best_score = seq, score
    found = beam_search(model, src, mask, length, beam=16, length_penalty=0.0)
    assert found[0, 0].tolist() == best


def test_greedy_is_beam_one_and_beam_never_scores_worse():
    torch.manual_seed(1)
    model = AutoregressiveModel(CONFIG).eval()
    src, mask = torch.randint(5, 40, (4, 8)), torch.ones(4, 8, dtype=torch.int64)
    greedy = greedy_decode(model, src, mask, 10)
    assert torch.equal(greedy, beam_search(model, src, mask, 10, beam=1))
    beam = beam_search(model, src, mask, 10, beam=4, length_penalty=0.0)
    assert greedy.shape == beam.shape == (4, 1, 10)
    for row in range(4):
        with torch.no_grad():
            g = _sequence_logprob(model, src[row:row + 1], mask[row:row + 1], greedy[row])
            b = _sequence_logprob(model, src[row:row + 1], mask[row:row + 1], beam[row])
        assert b >= g - 1e-5
    # Layout: <s> first, and after </s> only padding.
    for seq in greedy[:, 0].tolist():
        assert seq[0] == BOS
        if EOS in seq:
            assert set(seq[seq.index(EOS) + 1:]) <= {PAD}


def test_teacher_forcing_scores_each_token_up_to_eos_and_no_padding():
    torch.manual_seed(2)
    model = AutoregressiveModel(CONFIG).eval()
    src, mask = torch.randint(5, 40, (2, 6)), torch.ones(2, 6, dtype=torch.int64)
    tgt = torch.tensor([[BOS, 7, 8, EOS, PAD, PAD], [BOS, 9, 10, 11, 12, EOS]])
    loss = TeacherForcingObjective(model)(src, mask, tgt).loss
    logp = torch.log_softmax(model(src, mask, tgt[:, :-1]), -1)
    scored = [(0, 0, 7), (0, 1, 8), (0, 2, EOS), (1, 0, 9), (1, 1, 10), (1, 2, 11), (1, 3, 12), (1, 4, EOS)]
    expected = -sum(logp[row, position, token] for row, position, token in scored) / len(scored)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.slow
def test_tiny_baseline_overfits_a_batch_and_decodes_it_back():
    torch.manual_seed(0)
    model = AutoregressiveModel(CONFIG)
    objective = TeacherForcingObjective(model)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(5, 40, (6, 10), generator=g)
    mask = torch.ones_like(src)
    tgt = torch.full((6, 12), PAD)
    for row in range(6):
        body = torch.randint(5, 40, (3 + row,), generator=g)
        tgt[row, :len(body) + 2] = torch.cat([torch.tensor([BOS]), body, torch.tensor([EOS])])
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = objective(src, mask, tgt).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.05
    model.eval()
    assert torch.equal(greedy_decode(model, src, mask, 12)[:, 0], tgt)
    assert torch.equal(beam_search(model, src, mask, 12, beam=3)[:, 0], tgt)
