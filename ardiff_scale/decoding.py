"""One entry for generating targets from either model: the skipping sampler for AR-Diffusion (and its
uniform-timestep variant), greedy or beam search for the autoregressive baseline."""

from __future__ import annotations

import torch
from torch import nn

from ardiff_scale.config import Config
from ardiff_scale.diffusion import NoiseSchedule, SampleOutput, make_schedule, sample
from ardiff_scale.model import AutoregressiveModel
from ardiff_scale.model.search import beam_search
from ardiff_scale.vocab import SENTENCEPIECE_SPECIALS, SpecialIds


def decode(model: nn.Module, config: Config, src_ids: torch.Tensor, src_mask: torch.Tensor, length: int,
           steps: int, candidates: int, generator: torch.Generator | None = None,
           schedule: NoiseSchedule | None = None, autocast_dtype: torch.dtype | None = None,
           return_trajectory: bool = False, specials: SpecialIds = SENTENCEPIECE_SPECIALS) -> SampleOutput:
    """Token ids (batch, k, length) for a batch of sources.

    Diffusion: k = `candidates` samples of `steps` sampler steps each. Autoregressive: `steps` is unused and
    `candidates` is the beam width (1 = greedy); one output per source, the best beam, begun and ended with
    the tokenizer's `specials` (bos, eos, pad).
    """
    if isinstance(model, AutoregressiveModel):
        autocast = torch.autocast(src_ids.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
        with autocast:
            tokens = beam_search(model, src_ids, src_mask, length, beam=candidates, specials=specials)
        return SampleOutput(tokens=tokens, trajectory=None)
    schedule = schedule or make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    return sample(model, src_ids, src_mask, length, schedule, decode_steps=steps, num_candidates=candidates,
                  form=config.diffusion.timestep_form, clamp=config.diffusion.clamp, generator=generator,
                  autocast_dtype=autocast_dtype, return_trajectory=return_trajectory)
