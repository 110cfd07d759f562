"""How well masked spans were filled, in tokens, beside what a model that learned nothing would score.

Samples alone flatter or slander a small model: a reader sees word salad or a lucky phrase. These numbers say
what it learned: span-token accuracy (the generated id equals the reference id at the same position, over the
span's real tokens), against the unigram baseline that always writes the most frequent span token, plus how
varied the generated tokens are (a sampler that collapses onto a few hub embeddings writes the same handful of
tokens whatever the source).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass

import torch

from ardiff_scale.vocab import SpecialIds


@dataclass
class InfillScores:
    windows: int
    span_tokens: int  # real (non-special) reference tokens scored
    accuracy: float  # generated == reference at those positions
    # Always writing the most frequent span token of these very references: an optimistic baseline, a unigram
    # model estimated on training data would score at most this.
    unigram_accuracy: float
    unigram_token: int
    distinct: float  # distinct generated ids / generated ids, at those positions
    top5_share: float  # share of those generated ids that are the 5 most generated ones

    def metrics(self, prefix: str = "infill_") -> dict[str, float]:
        return {f"{prefix}{k}": float(v) for k, v in asdict(self).items() if k != "unigram_token"}

    def summary(self, token_text: str = "") -> str:
        token = f" ({token_text!r})" if token_text else ""
        return (f"span-token accuracy {100 * self.accuracy:.1f}% over {self.span_tokens} tokens of {self.windows} "
                f"windows; unigram baseline (always the most frequent span token{token}) "
                f"{100 * self.unigram_accuracy:.1f}%; distinct generated tokens {100 * self.distinct:.0f}%, "
                f"the 5 most generated {100 * self.top5_share:.0f}% of all")


def span_positions(reference: torch.Tensor, specials: SpecialIds) -> torch.Tensor:
    """(windows, length) bool: the positions holding a real reference token (not <pad>, <s>, </s>, ...)."""
    special = torch.tensor(sorted(specials.ids), dtype=reference.dtype, device=reference.device)
    return ~torch.isin(reference, special)


def infill_scores(generated: torch.Tensor, reference: torch.Tensor, specials: SpecialIds) -> InfillScores:
    """generated, reference: (windows, length) int64 target ids, position for position."""
    if generated.shape != reference.shape:
        raise ValueError(f"generated {tuple(generated.shape)} and reference {tuple(reference.shape)} must match")
    where = span_positions(reference, specials)
    wanted, written = reference[where], generated[where]
    count = int(wanted.numel())
    if count == 0:
        raise ValueError("no span tokens to score: every reference position is a special token")
    unigram, unigram_hits = Counter(wanted.tolist()).most_common(1)[0]
    written_counts = Counter(written.tolist())
    top5 = sum(n for _, n in written_counts.most_common(5))
    return InfillScores(windows=int(reference.shape[0]), span_tokens=count,
                        accuracy=float((written == wanted).float().mean()), unigram_accuracy=unigram_hits / count,
                        unigram_token=int(unigram), distinct=len(written_counts) / count, top5_share=top5 / count)
