"""The diffusion math: schedule, token-level timesteps, losses and the skipping sampler.

Pure tensor functions; the network is reached only through the `Denoiser` protocol.
"""

from ardiff_scale.diffusion.losses import (LossTerms, diffusion_loss, q_sample, reduce_terms, sample_x_start,
                                           token_loss_terms)
from ardiff_scale.diffusion.objective import Denoiser, LossDraws, draw, model_time, training_loss, training_terms
from ardiff_scale.diffusion.sampler import SampleOutput, SamplerNoise, nearest_embedding, sample, skip_update
from ardiff_scale.diffusion.schedule import NoiseSchedule, make_schedule, sqrt_schedule
from ardiff_scale.diffusion.timesteps import (decode_schedule, sample_sentence_steps, token_step_indices,
                                              token_timesteps)

__all__ = [
    "Denoiser", "LossDraws", "LossTerms", "NoiseSchedule", "SampleOutput", "SamplerNoise", "decode_schedule",
    "diffusion_loss", "draw", "make_schedule", "model_time", "nearest_embedding", "q_sample", "reduce_terms",
    "sample", "sample_sentence_steps", "sample_x_start", "skip_update", "sqrt_schedule", "token_loss_terms",
    "token_step_indices", "token_timesteps", "training_loss", "training_terms",
]
