"""Forward noising and the training objective (AR_DIFFUSION.md §2-3), as pure tensor functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ardiff_scale.diffusion.schedule import NoiseSchedule


def q_sample(x_start: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """Noise each token to its own step: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    x_start, noise: (batch, length, dim); t: (batch, length) int64 step indices.
    """
    abar = schedule.alpha_bar(t, x_start.dtype).unsqueeze(-1)
    return abar.sqrt() * x_start + (1.0 - abar).sqrt() * noise


def sample_x_start(clean_embedding: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """Diffusion-LM's q(x0 | w): the word embedding plus the step-0 noise (std ~0.12 for the sqrt schedule)."""
    abar0 = schedule.first_alpha_bar
    return clean_embedding + (1.0 - abar0) ** 0.5 * noise


@dataclass
class LossTerms:
    """Each term averaged over batch and positions; `loss` is their unweighted sum, as in the official code."""

    loss: torch.Tensor
    mse: torch.Tensor
    nll: torch.Tensor
    prior: torch.Tensor

    def detached(self) -> dict[str, float]:
        return {name: getattr(self, name).detach().float().item() for name in ("loss", "mse", "nll", "prior")}


def diffusion_loss(x0_pred: torch.Tensor, x_start: torch.Tensor, clean_embedding: torch.Tensor, t: torch.Tensor,
                   rounding_logits: torch.Tensor, target_ids: torch.Tensor, schedule: NoiseSchedule,
                   loss_mask: torch.Tensor | None = None) -> LossTerms:
    """The per-token objective of §3.

    x0_pred, x_start, clean_embedding: (batch, length, dim); t: (batch, length) int64;
    rounding_logits: (batch, length, vocab), the tied head applied to x_start (not to x0_pred: the rounding
    loss teaches the embedding to be decodable, the MSE teaches the network to denoise);
    target_ids: (batch, length); loss_mask: optional (batch, length) weights, None = every position counts
    (the official setting, where PAD positions are learned targets).
    """
    # Where a token sits at step 0, the regression target is the clean embedding itself ("t0 loss").
    target = torch.where((t == 0).unsqueeze(-1), clean_embedding, x_start)
    mse = (target - x0_pred).pow(2).mean(-1)
    nll = F.cross_entropy(rounding_logits.flatten(0, 1).float(), target_ids.flatten(), reduction="none")
    nll = nll.view_as(mse)
    # ||mu(x_T)||^2: ~0 for the sqrt schedule (abar_{T-1} ~ 2e-7) but kept for parity.
    abar_last = schedule.last_alpha_bar
    prior = (abar_last ** 0.5 * x_start).pow(2).mean(-1)
    if loss_mask is None:
        terms = [term.mean() for term in (mse, nll, prior)]
    else:
        weight = loss_mask.to(mse.dtype)
        denom = weight.sum().clamp(min=1.0)
        terms = [(term * weight).sum() / denom for term in (mse, nll, prior)]
    mse_m, nll_m, prior_m = terms
    return LossTerms(loss=mse_m + nll_m + prior_m, mse=mse_m, nll=nll_m, prior=prior_m)
