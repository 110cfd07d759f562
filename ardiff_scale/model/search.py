"""Left-to-right decoding of the autoregressive baseline with a key/value cache: greedy and beam search.

Each step feeds only the newest token; the self-attention keys/values of earlier positions come from the
cache and the cross-attention keys/values are projected once per source. Output has the layout of the
diffusion sampler's: (batch, 1, length) ids `<s> ... </s> <pad> ...`, so the same text decoding applies.
`<s>`, `</s>` and `<pad>` are the tokenizer's (`specials`, from `tokenizer.specials`).
"""

from __future__ import annotations

import torch

from ardiff_scale.model.autoregressive import AutoregressiveModel
from ardiff_scale.vocab import SENTENCEPIECE_SPECIALS, SpecialIds


@torch.no_grad()
def beam_search(model: AutoregressiveModel, src_ids: torch.Tensor, src_mask: torch.Tensor, length: int,
                beam: int = 1, length_penalty: float = 1.0,
                specials: SpecialIds = SENTENCEPIECE_SPECIALS) -> torch.Tensor:
    """The best of `beam` hypotheses per source, at most `length` tokens including <s> and </s>.

    beam=1 is greedy decoding. A hypothesis that has emitted </s> stays in the beam with a frozen score
    (it can only continue with <pad> at no cost), so finished and live hypotheses compete on total
    log-probability during the search; the final pick divides by (generated tokens) ** length_penalty,
    which keeps beam search from preferring short outputs. The default `specials` are sentencepiece's: a
    model with another tokenizer must pass its own.
    Returns (batch, 1, length) int64.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1 (got {beam})")
    batch, device = src_ids.shape[0], src_ids.device
    memory = model.encode(src_ids, src_mask, cache_kv=True)
    rows = batch * beam
    bos, eos, pad = specials.bos, specials.eos, specials.pad
    tokens = torch.full((rows, length), pad, dtype=torch.int64, device=device)
    tokens[:, 0] = bos
    # Only the first beam of each source is live at the start: the others would duplicate it.
    scores = torch.full((batch, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0
    scores = scores.view(rows)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    generated = torch.zeros(rows, dtype=torch.int64, device=device)
    cache = None
    for position in range(1, length):
        logits, cache = model.logits(tokens[:, position - 1:position], memory, cache, start=position - 1)
        logp = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (rows, vocab)
        if position == length - 1:
            # The last slot can only close the sequence.
            closing = torch.full_like(logp, float("-inf"))
            closing[:, eos] = logp[:, eos]
            logp = closing
        frozen = torch.full_like(logp, float("-inf"))
        frozen[:, pad] = 0.0
        logp = torch.where(finished.unsqueeze(1), frozen, logp)
        vocab = logp.shape[1]
        total = (scores.unsqueeze(1) + logp).view(batch, beam * vocab)
        top, index = total.topk(beam, dim=1)  # (batch, beam)
        origin = (index // vocab + torch.arange(batch, device=device).unsqueeze(1) * beam).view(rows)
        token = (index % vocab).view(rows)
        tokens = tokens[origin]
        tokens[:, position] = token
        was_finished = finished[origin]
        generated = generated[origin] + (~was_finished).long()
        finished = was_finished | (token == eos)
        scores = top.view(rows)
        cache = [(k[origin], v[origin]) for k, v in cache]
        if bool(finished.all()):
            break
    normalised = (scores / generated.clamp(min=1).float() ** length_penalty).view(batch, beam)
    best = normalised.argmax(dim=1) + torch.arange(batch, device=device) * beam
    return tokens[best].view(batch, 1, length)


def greedy_decode(model: AutoregressiveModel, src_ids: torch.Tensor, src_mask: torch.Tensor,
                  length: int, specials: SpecialIds = SENTENCEPIECE_SPECIALS) -> torch.Tensor:
    return beam_search(model, src_ids, src_mask, length, beam=1, specials=specials)
