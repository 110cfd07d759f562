"""The acceptance check that model, loss and sampler fit together: memorise a batch, then sample it back."""

import statistics

import pytest
import torch

from ardiff_scale.diffusion import sample, sqrt_schedule, training_loss
from ardiff_scale.model import ARDiffusionModel, preset


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_tiny_model_overfits_a_batch_and_sampler_reproduces_it(precision):
    # bf16 autocast is the fast training switch: its loss must fall like fp32's.
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    torch.manual_seed(0)
    model = ARDiffusionModel(preset("tiny", dropout=0.0, attention_dropout=0.0))
    schedule = sqrt_schedule(2000)
    g = torch.Generator().manual_seed(1)
    src = torch.randint(5, model.config.vocab_size, (8, 24), generator=g)
    mask = torch.ones_like(src)
    tgt = torch.randint(5, model.config.vocab_size, (8, 16), generator=g)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        with autocast:
            terms = training_loss(model, src, mask, tgt, schedule)
        terms.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(terms.loss.item())
    first, last = statistics.mean(losses[:10]), statistics.mean(losses[-20:])
    assert last <= 0.2 * first, f"loss fell only from {first:.3f} to {last:.3f}"
    model.eval()
    out = sample(model, src, mask, 16, schedule, decode_steps=20, num_candidates=2,
                 generator=torch.Generator().manual_seed(3))
    assert torch.equal(out.tokens, tgt.unsqueeze(1).expand(-1, 2, -1))
