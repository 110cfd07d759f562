"""What diffusion needs of a network (the `Denoiser` protocol) and one training loss evaluation (§3).

The diffusion code never imports the model: anything with these five methods can be trained and sampled,
which is how the tests drive the sampler with an oracle network.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from ardiff_scale.diffusion.losses import LossTerms, diffusion_loss, q_sample, sample_x_start
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


def training_loss(denoiser: Denoiser, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_ids: torch.Tensor,
                  schedule: NoiseSchedule, form: str = "code", generator: torch.Generator | None = None,
                  loss_mask: torch.Tensor | None = None) -> LossTerms:
    """One draw of the AR-Diffusion objective for a batch of (source, target) pairs.

    src_ids, src_mask: (batch, src_len); tgt_ids: (batch, length), padded to the fixed target length.
    """
    batch, length = tgt_ids.shape
    num_steps = schedule.num_steps
    clean = denoiser.embed(tgt_ids)
    noise0 = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    x_start = sample_x_start(clean, schedule, noise0)
    sentence = sample_sentence_steps(batch, length, num_steps, form, generator=generator, device=clean.device)
    t = token_step_indices(sentence, length, num_steps, form)
    x_t = q_sample(x_start, t, schedule, noise)
    memory = denoiser.encode(src_ids, src_mask)
    x0_pred = denoiser.denoise(x_t, model_time(t, num_steps), memory)
    logits = denoiser.round_logits(x_start)
    return diffusion_loss(x0_pred.float(), x_start.float(), clean.float(), t, logits, tgt_ids, schedule, loss_mask)
