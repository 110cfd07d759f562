import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from ardiff_scale.diffusion.objective import training_loss
from ardiff_scale.diffusion.sampler import sample
from ardiff_scale.diffusion.schedule import sqrt_schedule
from ardiff_scale.model import ARDiffusionModel, preset
from ardiff_scale.model.flops import forward_flops, sampling_flops, training_step_flops

BATCH, SRC_LEN, TGT_LEN = 3, 24, 16


# AR-Diffusion's decoder; the uniform baseline's (time at the input); and one whose embedding is as wide as the
# hidden size (no up/down projections, as in the official model).
VARIANTS = [{}, {"time_attention": False}, {"embed_dim": 64}]


@pytest.fixture(scope="module", params=VARIANTS, ids=["txl", "time-at-input", "no-projections"])
def model(request):
    torch.manual_seed(0)
    return ARDiffusionModel(preset("tiny", dropout=0.0, attention_dropout=0.0, **request.param)).eval()


def measured_flops(fn) -> int:
    # FlopCounterMode has no formula for the fused CPU attention kernel; the math backend spells SDPA out
    # as batched matmuls, which it does count.
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def sources(model, batch, src_len):
    ids = torch.randint(0, model.config.vocab_size, (batch, src_len))
    return ids, torch.ones_like(ids)


def test_forward_flops_match_flop_counter(model):
    src_ids, src_mask = sources(model, BATCH, SRC_LEN)
    tgt_ids = torch.randint(0, model.config.vocab_size, (BATCH, TGT_LEN))
    with torch.no_grad():
        measured = measured_flops(lambda: training_loss(model, src_ids, src_mask, tgt_ids, sqrt_schedule(2000)))
    analytic = sum(forward_flops(model.config, BATCH, SRC_LEN, TGT_LEN).values())
    assert analytic == pytest.approx(measured, rel=0.03)


@pytest.mark.parametrize("cached", [True, False])
def test_sampling_flops_match_flop_counter(model, cached):
    src_ids, src_mask = sources(model, 2, SRC_LEN)
    measured = measured_flops(lambda: sample(model, src_ids, src_mask, TGT_LEN, sqrt_schedule(2000), decode_steps=3,
                                             num_candidates=4, cache_memory=cached))
    analytic = sampling_flops(model.config, 2, 4, SRC_LEN, TGT_LEN, steps=3, cached=cached)
    assert analytic == pytest.approx(measured, rel=0.03)


def test_training_step_is_three_forwards():
    cfg = preset("xsum")
    assert training_step_flops(cfg, 8, 256, 50) == 3 * sum(forward_flops(cfg, 8, 256, 50).values())
