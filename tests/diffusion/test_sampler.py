import pytest
import torch

from ardiff_scale.diffusion import nearest_embedding, sample, skip_update, sqrt_schedule
from ardiff_scale.diffusion.timesteps import decode_schedule, token_step_indices

SCHEDULE = sqrt_schedule(2000)


def ddpm_posterior(x_t, x0, t):
    """One-step DDPM posterior q(x_{t-1} | x_t, x0) written from betas (Ho et al. 2020, eq. 7)."""
    betas, abar = SCHEDULE.betas, SCHEDULE.alphas_cumprod
    abar_t, abar_prev, beta = abar[t], abar[t - 1], betas[t]
    mean = (abar_prev.sqrt() * beta / (1 - abar_t)).unsqueeze(-1) * x0 \
        + ((1 - beta).sqrt() * (1 - abar_prev) / (1 - abar_t)).unsqueeze(-1) * x_t
    var = (1 - abar_prev) / (1 - abar_t) * beta
    return mean, var.unsqueeze(-1)


def test_skip_update_equals_ddpm_posterior_for_adjacent_steps():
    g = torch.Generator().manual_seed(0)
    s = torch.tensor([[5, 100, 1000, 1999]])
    e = s - 1
    x = torch.randn(3, 4, 8, generator=g, dtype=torch.float64)
    x0 = torch.randn(3, 4, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 4, 8, generator=g, dtype=torch.float64)
    mean, var = ddpm_posterior(x, x0, s.expand(3, -1))
    got = skip_update(x, x0, s, e, SCHEDULE, noise)
    torch.testing.assert_close(got, mean + var.sqrt() * noise, rtol=1e-9, atol=1e-9)


def test_skip_update_leaves_unchanged_steps_untouched_and_adds_no_noise_at_zero():
    g = torch.Generator().manual_seed(1)
    s = torch.tensor([[0, 1999, 700, 30, 1999]])
    e = torch.tensor([[0, 1999, 0, 0, 1500]])
    x = torch.randn(2, 5, 4, generator=g)
    x0 = torch.randn(2, 5, 4, generator=g)
    noise = torch.randn(2, 5, 4, generator=g)
    got = skip_update(x, x0, s, e, SCHEDULE, noise)
    assert torch.equal(got[:, :2], x[:, :2])  # 0 -> 0 (finished) and 1999 -> 1999 (not started)
    without_noise = skip_update(x, x0, s, e, SCHEDULE, torch.zeros_like(noise))
    assert torch.equal(got[:, 2:4], without_noise[:, 2:4])  # next step 0: deterministic
    assert not torch.allclose(got[:, 4], without_noise[:, 4])  # 1999 -> 1500 is noisy


def test_nearest_embedding_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    weight = torch.randn(300, 12, generator=g)
    x = torch.randn(7, 41, 12, generator=g) * 1.5
    expected = weight[torch.cdist(x.reshape(-1, 12), weight).argmin(-1)].reshape(x.shape)
    assert torch.equal(nearest_embedding(x, weight), expected)


class OracleDenoiser:
    """Returns the true clean embedding of each source's target, whatever it is given."""

    def __init__(self, targets: torch.Tensor, vocab: int = 40, dim: int = 16):
        g = torch.Generator().manual_seed(3)
        self.weight = torch.randn(vocab, dim, generator=g)
        # A bias of -|w|^2/2 makes the tied head's argmax the nearest embedding (what rounding training learns).
        self.bias = -0.5 * self.weight.pow(2).sum(-1)
        self.targets = targets
        self.encoder_calls = 0

    def embed(self, ids):
        return self.weight[ids]

    def round_logits(self, x):
        return x @ self.weight.t() + self.bias

    def embedding_weight(self):
        return self.weight

    def encode(self, src_ids, src_mask, cache_kv=True):
        self.encoder_calls += 1
        return src_ids[:, 0]  # sources carry their row index

    def denoise(self, x_t, time, memory):
        rows = x_t.shape[0]
        per_source = rows // memory.shape[0]
        return self.weight[self.targets[memory.repeat_interleave(per_source)]]


@pytest.mark.parametrize("form", ["code", "uniform"])
@pytest.mark.parametrize("steps", [1, 2, 20])
def test_sampler_with_oracle_returns_exact_targets(steps, form):
    g = torch.Generator().manual_seed(4)
    targets = torch.randint(0, 40, (3, 11), generator=g)
    oracle = OracleDenoiser(targets)
    src = torch.arange(3).unsqueeze(1).repeat(1, 5)
    out = sample(oracle, src, torch.ones_like(src), 11, SCHEDULE, decode_steps=steps, num_candidates=4,
                 generator=g, return_trajectory=True, form=form)
    assert out.tokens.shape == (3, 4, 11)
    assert torch.equal(out.tokens, targets.unsqueeze(1).expand(-1, 4, -1))
    assert oracle.encoder_calls == 1
    assert out.trajectory.shape == (steps + 1, 11)
    visited = torch.tensor(decode_schedule(11, 2000, steps, form))
    assert torch.equal(out.trajectory, token_step_indices(visited, 11, 2000, form))
    if form == "uniform":  # the baseline: every position at the same step, all the way down
        assert torch.all(out.trajectory == out.trajectory[:, :1]) and out.trajectory[0, 0] == 1999


def test_trajectory_finishes_left_tokens_first():
    targets = torch.zeros(1, 50, dtype=torch.long)
    out = sample(OracleDenoiser(targets), torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3), 50, SCHEDULE,
                 decode_steps=20, return_trajectory=True)
    traj = out.trajectory
    assert torch.all(traj[0] == 1999) and torch.all(traj[-1] == 0)
    assert torch.all(traj[:, 1:] >= traj[:, :-1])
    assert torch.all(traj[1:-1, 0] < traj[1:-1, 49])  # left tokens are less noisy at every inner step
    # AR_DIFFUSION.md §4's worked transitions at positions 0 / 25 / 49.
    assert traj[1, [0, 25, 49]].tolist() == [1898, 1923, 1947]
    assert traj[-3, [0, 25, 49]].tolist() == [164, 623, 1063]
    assert traj[-2, [0, 25, 49]].tolist() == [62, 546, 1011]


@pytest.mark.parametrize("s, e", [(1999, 1200), (1500, 900), (700, 3), (400, 0)])
def test_skip_update_over_non_adjacent_steps_is_the_closed_form_posterior(s, e):
    """q(x_e | x_s, x0) for any e < s, written out with scalar math: mean = sqrt(abar_e) (1 - abar_s/abar_e) /
    (1 - abar_s) x0 + sqrt(abar_s/abar_e) (1 - abar_e) / (1 - abar_s) x_s, variance (1 - abar_e) (1 - abar_s/abar_e)
    / (1 - abar_s), no noise at e = 0."""
    import math

    schedule = sqrt_schedule(2000)
    a_s, a_e = (float(schedule.alphas_cumprod[i]) for i in (s, e))
    generator = torch.Generator().manual_seed(s + e)
    x, x0, noise = (torch.randn(2, 3, 5, generator=generator, dtype=torch.float64) for _ in range(3))
    got = skip_update(x, x0, torch.tensor(s), torch.tensor(e), schedule, noise)
    mean = (math.sqrt(a_e) * (1 - a_s / a_e) / (1 - a_s)) * x0 + (math.sqrt(a_s / a_e) * (1 - a_e) / (1 - a_s)) * x
    std = 0.0 if e == 0 else math.sqrt((1 - a_e) * (1 - a_s / a_e) / (1 - a_s))
    assert torch.allclose(got, mean + std * noise, rtol=1e-10, atol=1e-12)


def test_skip_update_keeps_the_forward_marginal_over_a_jump():
    """If x_s ~ q(x_s | x0), one jump to e gives x_e ~ q(x_e | x0): mean sqrt(abar_e) x0, variance 1 - abar_e."""
    schedule = sqrt_schedule(2000)
    s, e = 1600, 500
    a_s, a_e = (float(schedule.alphas_cumprod[i]) for i in (s, e))
    generator = torch.Generator().manual_seed(0)
    x0 = torch.full((200_000, 1, 1), 0.7, dtype=torch.float64)
    x_s = a_s ** 0.5 * x0 + (1 - a_s) ** 0.5 * torch.randn(x0.shape, generator=generator, dtype=torch.float64)
    x_e = skip_update(x_s, x0, torch.tensor(s), torch.tensor(e), schedule,
                      torch.randn(x0.shape, generator=generator, dtype=torch.float64))
    assert x_e.mean().item() == pytest.approx(a_e ** 0.5 * 0.7, abs=5e-3)
    assert x_e.var().item() == pytest.approx(1 - a_e, rel=1e-2)


class ShrinkingOracle(OracleDenoiser):
    """Predicts half the clean embedding: an uncertain model's short estimate, which the clamp changes."""

    def denoise(self, x_t, time, memory):
        return 0.5 * super().denoise(x_t, time, memory)


def test_clamping_starts_at_clamp_from():
    targets = torch.randint(0, 40, (2, 9), generator=torch.Generator().manual_seed(6))
    src = torch.arange(2).unsqueeze(1).repeat(1, 3)

    def states(**kwargs):
        return sample(ShrinkingOracle(targets), src, torch.ones_like(src), 9, SCHEDULE, decode_steps=6,
                      generator=torch.Generator().manual_seed(7), return_states=True, **kwargs).states

    never, always, late = states(clamp=False), states(clamp=True), states(clamp=True, clamp_from=3)
    assert torch.equal(states(clamp=True, clamp_from=0), always)
    assert torch.equal(states(clamp=True, clamp_from=6), never)
    # The first three steps are unclamped, the fourth is not.
    assert torch.equal(late[:3], never[:3]) and not torch.allclose(late[3], never[3])
