"""Position-aware, token-level timesteps (AR_DIFFUSION.md §2) and the skipping decode schedule (§4).

A *sentence-level* step i in [0, N+T] is mapped to one timestep per target position along a line through
a sliding start point and a fixed anchor at (2N, T): left positions get less noise and reach 0 first.

Two forms:
- "code": the official implementation's line, 0-based positions 0..N-1, anchor (2N, T-1), rounded to an
  integer step index in [0, T-1]. This is the default (parity with released checkpoints).
- "paper": the paper's continuous line, 1-based positions 1..N, anchor (2N, T), values in [0, T], unrounded.

And the baseline the paper compares against:
- "uniform": every token at the sentence step itself (Diffusion-LM, GENIE): sentence steps are [0, T-1],
  there is no position dependence, and the skipping sampler strides over T instead of N+T.
"""

from __future__ import annotations

import torch

FORMS = ("code", "paper", "uniform")


def token_timesteps(sentence_step: torch.Tensor, length: int, num_steps: int, form: str = "code") -> torch.Tensor:
    """Per-token timesteps for each sentence-level step.

    sentence_step: (batch,) sentence-level steps; integers in [0, N+T-1] for "code", reals in [0, N+T] for
        "paper", integers in [0, T-1] for "uniform".
    Returns (batch, length): int64 step indices in [0, T-1] for "code" and "uniform", float64 in [0, T] for
    "paper".
    """
    if form not in FORMS:
        raise ValueError(f"timestep form must be one of {FORMS} (got {form!r})")
    if length < 1:
        raise ValueError(f"length must be >= 1 (got {length})")
    big_t, n = num_steps, length
    if form == "uniform":
        steps = sentence_step.to(torch.int64).clamp(0, big_t - 1).reshape(-1, 1)
        return steps.expand(-1, n).contiguous()
    step = sentence_step.to(torch.float64).reshape(-1, 1)
    pos = torch.arange(n, dtype=torch.float64, device=step.device).reshape(1, -1)
    if form == "code":
        # Start point (n_s, t_s) slides down the left edge, then along the bottom; anchor is (2N, T-1).
        n_s = (n - 1 - step).clamp(min=0)
        t_s = (step - (n - 1)).clamp(min=0)
        n_e, t_e = 2.0 * n, big_t - 1.0
        line = (pos - n_e) / (n_s - n_e) * (t_s - t_e) + t_e
        return torch.round(line).clamp(0, big_t - 1).to(torch.int64)
    n_s = (n - step).clamp(0, n)
    t_s = (step - n).clamp(0, big_t)
    n_e, t_e = 2.0 * n, float(big_t)
    line = (t_e - t_s) / (n_e - n_s) * (pos + 1 - n_s) + t_s
    return line.clamp(0, big_t)


def token_step_indices(sentence_step: torch.Tensor, length: int, num_steps: int, form: str = "code") -> torch.Tensor:
    """Integer step indices (batch, length) in [0, T-1] for either form, for indexing the schedule.

    The paper form's continuous value is rounded and its top value T folded onto T-1, which is exactly the
    off-by-one the official code makes.
    """
    steps = token_timesteps(sentence_step, length, num_steps, form)
    if form != "paper":
        return steps
    return torch.round(steps).clamp(0, num_steps - 1).to(torch.int64)


def sample_sentence_steps(batch: int, length: int, num_steps: int, form: str = "code",
                          generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training draws of the sentence-level step, uniform over [0, N+T-1] (code), [0, N+T] (paper) or
    [0, T-1] (uniform)."""
    if form == "uniform":
        return torch.randint(0, num_steps, (batch,), generator=generator, device=device)
    if form == "code":
        return torch.randint(0, length + num_steps, (batch,), generator=generator, device=device)
    return torch.rand(batch, generator=generator, device=device, dtype=torch.float64) * (length + num_steps)


def decode_schedule(length: int, num_steps: int, decode_steps: int, form: str = "code") -> list[int]:
    """The sentence-level steps the skipping sampler visits, highest first, ending at 0.

    Official rule: stride = (N+T) // M over the descending list N+T-1, ..., 0; keep its first M entries and
    append 0, so there are always M transitions (M network calls). For N=50, T=2000, M=20 this is
    2049, 1947, ..., 111, 0. The "uniform" form has no position offset: the same rule over T.
    """
    total = num_steps if form == "uniform" else length + num_steps
    if not 1 <= decode_steps <= total:
        raise ValueError(f"decode_steps must be in [1, {total}] for length {length}, {num_steps} steps and the "
                         f"{form} timestep form (got {decode_steps})")
    stride = total // decode_steps
    return list(range(total - 1, -1, -stride))[:decode_steps] + [0]
