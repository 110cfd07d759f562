"""What diffusion needs of a network (the `Denoiser` protocol) and one training loss evaluation (§3).

The diffusion code never imports the model: anything with these five methods can be trained and sampled,
which is how the tests drive the sampler with an oracle network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ardiff_scale.diffusion.losses import LossTerms, q_sample, reduce_terms, sample_x_start, token_loss_terms
from ardiff_scale.diffusion.schedule import NoiseSchedule
from ardiff_scale.diffusion.timesteps import sample_sentence_steps, token_step_indices


class Denoiser(Protocol):
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(batch, length) token ids -> (batch, length, dim) clean target embeddings."""

    def round_logits(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, length, dim) -> (batch, length, vocab) logits of the rounding head."""

    def embedding_weight(self) -> torch.Tensor:
        """(vocab, dim) target embedding table, for nearest-embedding clamping."""

    def encode(self, src_ids: torch.Tensor, src_mask: torch.Tensor, cache_kv: bool = True) -> Any:
        """Encode (batch, src_len) sources once; the result is handed back to `denoise` unchanged.

        With cache_kv the per-layer cross-attention keys and values are computed here, once, instead of
        at every `denoise` call.
        """

    def denoise(self, x_t: torch.Tensor, time: torch.Tensor, memory: Any) -> torch.Tensor:
        """Predict x0 (rows, length, dim) from x_t and per-token times (rows, length), float in [0, 1000).

        rows may be a multiple r of the encoded batch: rows b*r .. b*r + r - 1 then belong to source b.
        """


def model_time(t: torch.Tensor, num_steps: int) -> torch.Tensor:
    """Step indices as the network sees them: t * 1000 / T (the official rescale_timesteps)."""
    return t.to(torch.float32) * (1000.0 / num_steps)


@dataclass
class LossDraws:
    """The random draws of one loss evaluation: t (batch, length) int64 per-token step indices; noise_x0 and
    noise_xt (batch, length, dim) float32, for x_start = emb + sqrt(1 - abar_0) noise_x0 and
    x_t = q_sample(x_start, t, noise_xt). Given explicitly, the loss is a deterministic function (parity tests
    feed the official implementation's draws)."""

    t: torch.Tensor
    noise_x0: torch.Tensor
    noise_xt: torch.Tensor


def draw(batch: int, length: int, dim: int, num_steps: int, form: str = "code",
         generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> LossDraws:
    """Draws for one training step: the two noises (float32), then the sentence-level steps."""
    shape = (batch, length, dim)
    noise_x0 = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    noise_xt = torch.randn(shape, generator=generator, device=device, dtype=torch.float32)
    sentence = sample_sentence_steps(batch, length, num_steps, form, generator=generator, device=device)
    return LossDraws(token_step_indices(sentence, length, num_steps, form), noise_x0, noise_xt)


def training_terms(denoiser: Denoiser, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_ids: torch.Tensor,
                   schedule: NoiseSchedule, draws: LossDraws) -> dict[str, torch.Tensor]:
    """The per-token loss terms (`token_loss_terms`) for the given draws.

    Noising, x_start, the schedule values and the loss are float32 whatever the weights' dtype: under bf16
    weights only the network itself runs in bf16 (a bf16 step-0 noise is off by 3% and the rounding logits
    are quantised). The rounding head sees x_start in float32 too; its weights are cast up for it.
    """
    clean = denoiser.embed(tgt_ids).float()
    x_start = sample_x_start(clean, schedule, draws.noise_x0)
    x_t = q_sample(x_start, draws.t, schedule, draws.noise_xt)
    memory = denoiser.encode(src_ids, src_mask)
    x0_pred = denoiser.denoise(x_t, model_time(draws.t, schedule.num_steps), memory)
    logits = denoiser.round_logits(x_start)
    return token_loss_terms(x0_pred, x_start, clean, draws.t, logits, tgt_ids, schedule)


def training_loss(denoiser: Denoiser, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_ids: torch.Tensor,
                  schedule: NoiseSchedule, form: str = "code", generator: torch.Generator | None = None,
                  loss_mask: torch.Tensor | None = None) -> LossTerms:
    """One draw of the AR-Diffusion objective for a batch of (source, target) pairs, averaged.

    src_ids, src_mask: (batch, src_len); tgt_ids: (batch, length), padded to the fixed target length.
    """
    batch, length = tgt_ids.shape
    dim = denoiser.embedding_weight().shape[1]
    draws = draw(batch, length, dim, schedule.num_steps, form, generator, tgt_ids.device)
    return reduce_terms(training_terms(denoiser, src_ids, src_mask, tgt_ids, schedule, draws), loss_mask)
