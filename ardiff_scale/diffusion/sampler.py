"""The skipping sampler (AR_DIFFUSION.md §4): M network calls from pure noise to tokens.

Each transition moves every token from its own step s_n to its own step e_n <= s_n with the exact DDPM
posterior q(x_e | x_s, x0_hat); tokens whose step does not change are left as they are.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ardiff_scale.diffusion.objective import Denoiser, model_time
from ardiff_scale.diffusion.schedule import NoiseSchedule
from ardiff_scale.diffusion.timesteps import decode_schedule, token_step_indices


def skip_update(x: torch.Tensor, x0_pred: torch.Tensor, s: torch.Tensor, e: torch.Tensor,
                schedule: NoiseSchedule, noise: torch.Tensor) -> torch.Tensor:
    """One per-token jump s -> e of the posterior; noise only where e != 0.

    x, x0_pred, noise: (rows, length, dim); s, e: int64 step indices broadcastable to (rows, length).
    """
    a = schedule.alpha_bar(s, torch.float64)
    a_next = schedule.alpha_bar(e, torch.float64)
    ratio = a / a_next
    # Coefficients in float64: near e = 0 they are differences of numbers close to 1.
    coef_x = (ratio.sqrt() * (1 - a_next) / (1 - a)).to(x.dtype).unsqueeze(-1)
    coef_0 = (a_next.sqrt() * (1 - ratio) / (1 - a)).to(x.dtype).unsqueeze(-1)
    std = ((1 - ratio) * (1 - a_next) / (1 - a)).clamp(min=0).sqrt().to(x.dtype).unsqueeze(-1)
    std = torch.where((e == 0).unsqueeze(-1), torch.zeros_like(std), std)
    moved = coef_x * x + coef_0 * x0_pred.to(x.dtype) + std * noise
    return torch.where((s == e).unsqueeze(-1), x, moved)


class NearestEmbedding:
    """Replaces vectors by their nearest row of an embedding table (vocab, dim) in L2 distance.

    argmin |x - w|^2 = argmax (x.w - |w|^2 / 2) = argmax ([x, 1] . [w, -|w|^2 / 2]): one matrix product
    against an augmented table built once per sampling call. Rows go in chunks through one reused score
    buffer, because a fresh (rows, vocab) tensor per step costs more in page faults than in arithmetic.
    """

    def __init__(self, weight: torch.Tensor, chunk_rows: int = 256):
        self.weight = weight
        half_sq_norm = 0.5 * weight.pow(2).sum(-1, keepdim=True)
        self.augmented_t = torch.cat([weight, -half_sq_norm], dim=1).t().contiguous()  # (dim + 1, vocab)
        self.chunk_rows = chunk_rows
        self._scores: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> same shape, every vector replaced by a row of the table."""
        return self.weight[self.index(x)].to(x.dtype)

    def index(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., dim) -> (...) int64: the row of the table nearest to each vector."""
        flat = x.reshape(-1, x.shape[-1]).to(self.weight.dtype)
        flat = torch.cat([flat, torch.ones_like(flat[:, :1])], dim=1)
        index = torch.empty(flat.shape[0], dtype=torch.int64, device=x.device)
        if self._scores is None:
            self._scores = flat.new_empty(self.chunk_rows, self.augmented_t.shape[1])
        for start in range(0, flat.shape[0], self.chunk_rows):
            chunk = flat[start:start + self.chunk_rows]
            scores = self._scores[:chunk.shape[0]]
            torch.mm(chunk, self.augmented_t, out=scores)
            index[start:start + chunk.shape[0]] = scores.argmax(-1)
        return index.reshape(x.shape[:-1])


def nearest_embedding(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Each vector of x (..., dim) replaced by its nearest row of weight (vocab, dim) in L2 distance."""
    return NearestEmbedding(weight)(x)


@dataclass
class SampleOutput:
    tokens: torch.Tensor  # (batch, candidates, length) int64
    trajectory: torch.Tensor | None  # (M + 1, length) int64 token steps at each visited sentence step
    states: torch.Tensor | None = None  # (M, batch * candidates, length, dim): x after each step, if asked


@dataclass
class SamplerNoise:
    """Noise given by the caller instead of drawn from the generator: `start` (rows, length, dim) is x at the
    top of the schedule, `steps` (M, rows, length, dim) the noise of each transition, in order. Rows are
    sources times candidates, candidate-minor (row b * k + j is candidate j of source b). This is how a run of
    another implementation is replayed step by step (the official parity test)."""

    start: torch.Tensor
    steps: torch.Tensor


@torch.no_grad()
def sample(denoiser: Denoiser, src_ids: torch.Tensor, src_mask: torch.Tensor, length: int,
           schedule: NoiseSchedule, decode_steps: int = 20, num_candidates: int = 1, form: str = "code",
           clamp: bool = True, generator: torch.Generator | None = None, cache_memory: bool = True,
           autocast_dtype: torch.dtype | None = None, return_trajectory: bool = False,
           noise: SamplerNoise | None = None, return_states: bool = False, clamp_from: int = 0) -> SampleOutput:
    """Generate `num_candidates` targets of `length` tokens per source.

    The encoder runs once per source. With cache_memory (the default) its cross-attention keys and values
    are also projected once and shared by all M steps and all k candidates; cache_memory=False is the
    straightforward computation (sources repeated k times, keys and values re-projected at every step),
    kept as the reference the fast path is tested and benchmarked against. Both draw the same noise.
    `noise` replaces every draw (see SamplerNoise); return_states keeps x after each step. With clamp, x0-hat
    is clamped from step `clamp_from` (0-based) on: 0 is the official sampler, later starts leave an uncertain
    model's early, shrunken estimates alone (benchmarks/infill_clamp.py).
    """
    batch = src_ids.shape[0]
    num_steps = schedule.num_steps
    weight = denoiser.embedding_weight().detach().float()
    rows = batch * num_candidates
    if cache_memory:
        memory = denoiser.encode(src_ids, src_mask, cache_kv=True)
    else:
        memory = denoiser.encode(src_ids.repeat_interleave(num_candidates, 0),
                                 src_mask.repeat_interleave(num_candidates, 0), cache_kv=False)
    device = src_ids.device
    shape = (rows, length, weight.shape[1])
    if noise is not None and (tuple(noise.start.shape) != shape
                              or tuple(noise.steps.shape) != (decode_steps, *shape)):
        raise ValueError(f"sampler noise must be start {shape} and steps {(decode_steps, *shape)} "
                         f"(got {tuple(noise.start.shape)} and {tuple(noise.steps.shape)})")
    x = noise.start.to(device, torch.float32) if noise is not None else torch.randn(shape, generator=generator,
                                                                                     device=device)
    states = []
    visited = decode_schedule(length, num_steps, decode_steps, form)
    steps = token_step_indices(torch.tensor(visited, device=device), length, num_steps, form)  # (M+1, length)
    clamp_fn = NearestEmbedding(weight) if clamp else None
    autocast = (torch.autocast(device_type=device.type, dtype=autocast_dtype) if autocast_dtype
                else contextlib.nullcontext())
    for k in range(decode_steps):
        s, e = steps[k:k + 1], steps[k + 1:k + 2]
        with autocast:
            x0_pred = denoiser.denoise(x, model_time(s, num_steps).expand(rows, -1), memory)
        x0_pred = x0_pred.float()
        if clamp_fn is not None and k >= clamp_from:
            x0_pred = clamp_fn(x0_pred)
        step_noise = (noise.steps[k].to(device, torch.float32) if noise is not None
                      else torch.randn(x.shape, generator=generator, device=device))
        x = skip_update(x, x0_pred, s, e, schedule, step_noise)
        if return_states:
            states.append(x)
    # Rounded a few rows at a time: the full (rows, length, vocab) logits would be hundreds of MB.
    tokens = torch.cat([denoiser.round_logits(part).argmax(-1) for part in x.split(8)])
    tokens = tokens.view(batch, num_candidates, length)
    return SampleOutput(tokens=tokens, trajectory=steps if return_trajectory else None,
                        states=torch.stack(states) if return_states else None)
