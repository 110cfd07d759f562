import pytest
import torch

from ardiff_scale.diffusion import decode_schedule, sample_sentence_steps, token_step_indices, token_timesteps

T = 2000


def pseudo_code_line(i: int, n_tokens: int, big_t: int) -> list[int]:
    """AR_DIFFUSION.md §2 'code form', written as plainly as the spec states it."""
    n_s = max(n_tokens - 1 - i, 0)
    t_s = max(i - (n_tokens - 1), 0)
    n_e = int(2.0 * n_tokens)
    t_e = big_t - 1
    out = []
    for n in range(n_tokens):
        value = round((n - n_e) / (n_s - n_e) * (t_s - t_e) + t_e)
        out.append(min(max(value, 0), big_t - 1))
    return out


def test_paper_form_hand_worked_value():
    # N = 50, t = 100: start (0, 50), anchor (100, 2000); f(25) = 19.5 * 25 + 50.
    steps = token_timesteps(torch.tensor([100.0]), 50, T, form="paper")
    assert steps.dtype == torch.float64
    assert steps[0, 24].item() == pytest.approx(537.5)


def test_code_form_example_from_spec():
    # The spec's example: the code form gives 519 for the 25th token at sentence step 100.
    assert token_timesteps(torch.tensor([100]), 50, T)[0, 24].item() == 519


@pytest.mark.parametrize("n_tokens", [1, 7, 50, 180])
def test_code_form_equals_pseudo_code_for_every_sentence_step(n_tokens):
    steps = torch.arange(n_tokens + T)
    got = token_timesteps(steps, n_tokens, T, form="code")
    assert got.dtype == torch.int64 and got.shape == (n_tokens + T, n_tokens)
    expected = torch.tensor([pseudo_code_line(i, n_tokens, T) for i in range(n_tokens + T)])
    assert torch.equal(got, expected)


@pytest.mark.parametrize("form", ["code", "paper"])
@pytest.mark.parametrize("n_tokens", [1, 7, 50, 180])
def test_non_decreasing_in_position_and_boundaries(form, n_tokens):
    steps = torch.arange(n_tokens + T + (1 if form == "paper" else 0))
    got = token_timesteps(steps, n_tokens, T, form=form)
    assert torch.all(got[:, 1:] >= got[:, :-1])
    top = T - 1 if form == "code" else T
    assert torch.all(got[-1] == top)
    assert torch.all(got[0] == 0)
    assert got.min() >= 0 and got.max() <= top


def test_left_tokens_are_less_noisy_on_average():
    steps = torch.arange(50 + T)
    mean = token_timesteps(steps, 50, T).float().mean(0)
    assert mean[0] < mean[25] < mean[49]


def test_step_indices_of_paper_form_are_valid_indices():
    got = token_step_indices(torch.tensor([0.0, 1000.5, 2050.0]), 50, T, form="paper")
    assert got.dtype == torch.int64 and got.min() >= 0 and got.max() == T - 1


def test_sentence_step_sampling_covers_range():
    g = torch.Generator().manual_seed(0)
    draws = sample_sentence_steps(20000, 50, T, generator=g)
    assert draws.min() >= 0 and draws.max() <= 50 + T - 1
    assert draws.float().mean().item() == pytest.approx((50 + T - 1) / 2, rel=0.03)
    paper = sample_sentence_steps(100, 50, T, form="paper", generator=g)
    assert paper.dtype == torch.float64 and paper.max() <= 50 + T


def test_decode_schedule_xsum_example():
    got = decode_schedule(50, 2000, 20)
    assert got == [2049 - 102 * k for k in range(20)] + [0]
    assert got[0] == 2049 and got[1] == 1947 and got[-2] == 111 and got[-1] == 0
    assert len(got) == 21


@pytest.mark.parametrize("m", [1, 2, 3, 7, 2050])
def test_decode_schedule_has_m_transitions_descending(m):
    got = decode_schedule(50, 2000, m)
    assert len(got) == m + 1 and got[0] == 2049 and got[-1] == 0
    assert all(a >= b for a, b in zip(got, got[1:]))


@pytest.mark.parametrize("m", [0, 2051])
def test_decode_schedule_rejects_out_of_range(m):
    with pytest.raises(ValueError, match="decode_steps"):
        decode_schedule(50, 2000, m)


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="form"):
        token_timesteps(torch.tensor([1]), 5, T, form="linear")


def test_uniform_form_puts_every_token_at_the_sentence_step():
    steps = torch.tensor([0, 7, 1999])
    got = token_timesteps(steps, 5, 2000, "uniform")
    assert got.dtype == torch.int64 and got.tolist() == [[0] * 5, [7] * 5, [1999] * 5]
    assert torch.equal(token_step_indices(steps, 5, 2000, "uniform"), got)
    draws = sample_sentence_steps(4000, 50, 2000, "uniform", generator=torch.Generator().manual_seed(0))
    assert draws.min() >= 0 and draws.max() == 1999  # over T, not N + T
    # The sampler strides over T alone: M transitions from T-1 to 0.
    assert decode_schedule(50, 2000, 20, "uniform") == list(range(1999, 0, -100)) + [0]
    assert decode_schedule(50, 2000, 1, "uniform") == [1999, 0]
    with pytest.raises(ValueError, match="uniform"):
        decode_schedule(50, 2000, 2001, "uniform")
