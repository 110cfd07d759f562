"""Forward noising and the training objective (AR_DIFFUSION.md §2-3), as pure tensor functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ardiff_scale.diffusion.schedule import NoiseSchedule


def q_sample(x_start: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """Noise each token to its own step: sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    x_start, noise: (batch, length, dim); t: (batch, length) int64 step indices. The result is float32
    whatever the inputs' dtype: in bf16 only a few dozen distinct alpha-bar values survive among the first
    hundred steps.
    """
    abar = schedule.alpha_bar(t, torch.float32).unsqueeze(-1)
    return abar.sqrt() * x_start.float() + (1.0 - abar).sqrt() * noise.float()


def sample_x_start(clean_embedding: torch.Tensor, schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """Diffusion-LM's q(x0 | w): the word embedding plus the step-0 noise (std ~0.12 for the sqrt schedule)."""
    abar0 = schedule.first_alpha_bar
    return clean_embedding.float() + (1.0 - abar0) ** 0.5 * noise.float()


@dataclass
class LossTerms:
    """Each term averaged over batch and positions; `loss` is their unweighted sum, as in the official code."""

    loss: torch.Tensor
    mse: torch.Tensor
    nll: torch.Tensor
    prior: torch.Tensor

    def detached(self) -> dict[str, float]:
        return {name: getattr(self, name).detach().float().item() for name in ("loss", "mse", "nll", "prior")}


def token_loss_terms(x0_pred: torch.Tensor, x_start: torch.Tensor, clean_embedding: torch.Tensor, t: torch.Tensor,
                     rounding_logits: torch.Tensor, target_ids: torch.Tensor,
                     schedule: NoiseSchedule) -> dict[str, torch.Tensor]:
    """The per-token terms of §3, each (batch, length) float32: "mse", "nll", "prior" and their sum "loss"
    (the official `mse`, `decoder_nll`, `tT_loss` and `loss`).

    x0_pred, x_start, clean_embedding: (batch, length, dim); t: (batch, length) int64;
    rounding_logits: (batch, length, vocab), the tied head applied to x_start (not to x0_pred: the rounding
    loss teaches the embedding to be decodable, the MSE teaches the network to denoise); target_ids:
    (batch, length). Everything is computed in float32 whatever the inputs' dtype.
    """
    x0_pred, x_start, clean_embedding = x0_pred.float(), x_start.float(), clean_embedding.float()
    # Where a token sits at step 0, the regression target is the clean embedding itself ("t0 loss").
    target = torch.where((t == 0).unsqueeze(-1), clean_embedding, x_start)
    mse = (target - x0_pred).pow(2).mean(-1)
    nll = F.cross_entropy(rounding_logits.flatten(0, 1).float(), target_ids.flatten(), reduction="none")
    nll = nll.view_as(mse)
    # ||mu(x_T)||^2: ~0 for the sqrt schedule (abar_{T-1} ~ 2e-7) but kept for parity.
    prior = (schedule.last_alpha_bar ** 0.5 * x_start).pow(2).mean(-1)
    return {"loss": mse + nll + prior, "mse": mse, "nll": nll, "prior": prior}


def diffusion_loss(x0_pred: torch.Tensor, x_start: torch.Tensor, clean_embedding: torch.Tensor, t: torch.Tensor,
                   rounding_logits: torch.Tensor, target_ids: torch.Tensor, schedule: NoiseSchedule,
                   loss_mask: torch.Tensor | None = None) -> LossTerms:
    """`token_loss_terms` averaged over batch and positions; loss_mask: optional (batch, length) weights,
    None = every position counts (the official setting, where PAD positions are learned targets)."""
    terms = token_loss_terms(x0_pred, x_start, clean_embedding, t, rounding_logits, target_ids, schedule)
    return reduce_terms(terms, loss_mask)


def reduce_terms(terms: dict[str, torch.Tensor], loss_mask: torch.Tensor | None = None) -> LossTerms:
    """Per-token terms to their (optionally weighted) means."""
    if loss_mask is None:
        means = {name: term.mean() for name, term in terms.items()}
    else:
        weight = loss_mask.to(torch.float32)
        denom = weight.sum().clamp(min=1.0)
        means = {name: (term * weight).sum() / denom for name, term in terms.items()}
    return LossTerms(**means)
