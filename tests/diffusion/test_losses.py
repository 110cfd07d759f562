import math

import pytest
import torch

from ardiff_scale.diffusion import diffusion_loss, q_sample, sample_x_start, sqrt_schedule

SCHEDULE = sqrt_schedule(2000)


def test_q_sample_noises_each_token_at_its_own_step():
    x0 = torch.ones(1, 3, 2)
    noise = torch.full((1, 3, 2), 2.0)
    t = torch.tensor([[0, 1000, 1999]])
    got = q_sample(x0, t, SCHEDULE, noise)
    for n, step in enumerate([0, 1000, 1999]):
        abar = SCHEDULE.alphas_cumprod[step].item()
        assert got[0, n, 0].item() == pytest.approx(math.sqrt(abar) + 2 * math.sqrt(1 - abar), rel=1e-6)


def test_x_start_noise_has_step_zero_scale():
    clean = torch.zeros(1, 1, 1)
    got = sample_x_start(clean, SCHEDULE, torch.ones(1, 1, 1))
    assert got.item() == pytest.approx(math.sqrt(1 - 0.98536), rel=1e-3)


def test_loss_terms_on_hand_worked_values():
    clean = torch.zeros(1, 2, 2)
    x_start = torch.ones(1, 2, 2)
    x0_pred = torch.full((1, 2, 2), 3.0)
    t = torch.tensor([[0, 5]])
    # Token 0 sits at step 0: its target is the clean embedding, (3-0)^2 = 9; token 1: (3-1)^2 = 4.
    logits = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0]]])
    targets = torch.tensor([[0, 0]])
    terms = diffusion_loss(x0_pred, x_start, clean, t, logits, targets, SCHEDULE)
    assert terms.mse.item() == pytest.approx((9 + 4) / 2)
    assert terms.nll.item() == pytest.approx((math.log(2) + math.log(4 / 3)) / 2, rel=1e-6)
    assert terms.prior.item() == pytest.approx(SCHEDULE.alphas_cumprod[-1].item(), rel=1e-5)
    assert terms.loss.item() == pytest.approx(terms.mse.item() + terms.nll.item() + terms.prior.item())


def test_loss_mask_excludes_positions():
    x0_pred = torch.tensor([[[1.0], [5.0]]])
    zeros = torch.zeros(1, 2, 1)
    logits = torch.zeros(1, 2, 3)
    terms = diffusion_loss(x0_pred, zeros, zeros, torch.tensor([[3, 3]]), logits, torch.tensor([[0, 1]]), SCHEDULE,
                           loss_mask=torch.tensor([[1, 0]]))
    assert terms.mse.item() == pytest.approx(1.0)
