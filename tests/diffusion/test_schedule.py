import pytest
import torch

from ardiff_scale.diffusion import make_schedule, sqrt_schedule


@pytest.mark.parametrize("index, expected, rel", [
    (0, 0.98536, 1e-4), (100, 0.783, 2e-3), (500, 0.504, 2e-3), (1000, 0.295, 2e-3),
    (1500, 0.135, 4e-3), (1900, 0.0253, 4e-3), (1999, 2.0e-7, 0.05),
])
def test_sqrt_alpha_bar_matches_worked_table(index, expected, rel):
    schedule = sqrt_schedule(2000)
    assert schedule.alphas_cumprod[index].item() == pytest.approx(expected, rel=rel)


def test_alpha_bar_is_decreasing_and_betas_capped():
    schedule = sqrt_schedule(2000)
    assert schedule.num_steps == 2000
    assert torch.all(schedule.alphas_cumprod[1:] < schedule.alphas_cumprod[:-1])
    assert schedule.betas.max().item() <= 0.999


def test_alpha_bar_gathers_per_token():
    schedule = sqrt_schedule(2000)
    t = torch.tensor([[0, 1999], [1000, 0]])
    got = schedule.alpha_bar(t, torch.float64)
    assert got.shape == (2, 2)
    table = schedule.alphas_cumprod
    assert torch.equal(got, torch.stack([table[[0, 1999]], table[[1000, 0]]]))
    assert schedule.alpha_bar(t).dtype == torch.float32


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="sqrt"):
        make_schedule("cosine", 10)


@pytest.mark.parametrize("num_steps", [2000, 50])
def test_every_alpha_bar_matches_the_telescoped_closed_form(num_steps):
    """Without the 0.999 cap, cumprod(1 - beta) telescopes: abar[i] = f((i+1)/T) / f(0) with f(s) = 1 - sqrt(s +
    1e-4). Only the last beta is capped (f(1) < 0), so abar[T-1] = abar[T-2] * (1 - 0.999). Every index, to 1e-6."""
    import math

    def f(s):
        return 1.0 - math.sqrt(s + 1e-4)

    table = sqrt_schedule(num_steps).alphas_cumprod.tolist()
    expected = [f((i + 1) / num_steps) / f(0.0) for i in range(num_steps - 1)]
    expected.append(expected[-1] * (1 - 0.999))
    for index, (got, want) in enumerate(zip(table, expected)):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-12), index
