"""The noise schedule: Diffusion-LM's "sqrt" schedule over T steps (AR_DIFFUSION.md §2).

Tables are kept in float64 and cast at the point of use: alpha-bar at the last step is ~2e-7 and the
posterior coefficients divide by (1 - alpha-bar) at the first step, where float32 loses digits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


def sqrt_alpha_bar(s: float) -> float:
    """Continuous alpha-bar of the sqrt schedule at s in [0, 1]."""
    return 1.0 - math.sqrt(s + 1e-4)


@dataclass(frozen=True)
class NoiseSchedule:
    """alpha-bar table for step indices 0..T-1: index t holds the signal fraction after t+1 noising steps."""

    betas: torch.Tensor  # (T,), float64
    alphas_cumprod: torch.Tensor  # (T,), float64
    # The two scalars the loss needs at every step, read on the host once: `.item()` on a GPU table would
    # wait for the device at every forward.
    first_alpha_bar: float = field(init=False)
    last_alpha_bar: float = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "first_alpha_bar", float(self.alphas_cumprod[0]))
        object.__setattr__(self, "last_alpha_bar", float(self.alphas_cumprod[-1]))

    @property
    def num_steps(self) -> int:
        return self.betas.numel()

    def alpha_bar(self, t: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """alpha-bar gathered at integer step indices `t` (any shape), cast to `dtype`. Move the schedule to
        `t`'s device once (`to`) rather than copying the table here at every call."""
        table = self.alphas_cumprod.to(device=t.device)
        return table[t].to(dtype)

    def to(self, device: torch.device | str) -> "NoiseSchedule":
        return NoiseSchedule(self.betas.to(device), self.alphas_cumprod.to(device))


def sqrt_schedule(num_steps: int = 2000) -> NoiseSchedule:
    """beta_i = min(1 - abar((i+1)/T) / abar(i/T), 0.999), alpha-bar = cumprod(1 - beta)."""
    if num_steps < 1:
        raise ValueError(f"num_steps must be >= 1 (got {num_steps})")
    betas = torch.tensor(
        [min(1.0 - sqrt_alpha_bar((i + 1) / num_steps) / sqrt_alpha_bar(i / num_steps), 0.999)
         for i in range(num_steps)],
        dtype=torch.float64,
    )
    return NoiseSchedule(betas=betas, alphas_cumprod=torch.cumprod(1.0 - betas, dim=0))


def make_schedule(name: str, num_steps: int) -> NoiseSchedule:
    if name != "sqrt":
        raise ValueError(f"unknown noise schedule {name!r} (valid: 'sqrt')")
    return sqrt_schedule(num_steps)
