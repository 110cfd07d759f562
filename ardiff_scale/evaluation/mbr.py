"""Minimum-Bayes-risk selection among the k candidates sampled for one source, as AR-Diffusion does it
(design/AR_DIFFUSION.md §4; official `eval_utils/mbr/mbr_select.py` with `pymteval.BLEUScore(smoothing=1.0)`).

For candidates y_1..y_k, the utility of y_i is the mean over j != i of sentence-BLEU(y_j, reference y_i);
the candidate with the highest utility wins, and among equal utilities the LAST one (the official code takes
the last item of a stable sort by utility). No gold reference is used.

Sentence BLEU, exactly as pymteval computes it for one hypothesis h against one reference r:
- tokens: mteval-v13a tokenisation (SacreBLEU's `Tokenizer13a`, the same regexes), then lower-cased. An empty
  or blank string is ONE empty token, as in pymteval (`"".split(" ") == [""]`).
- for n = 1..4: hits_n = clipped n-gram matches, total_n = len(h) - n + 1 (negative when h is short);
  p_n = max(hits_n + 1, 1e-15) / max(total_n + 1, 1e-9). The +1 goes on numerator and denominator of EVERY
  order, unigrams included (Moses sentence-BLEU style, not Lin & Och's n >= 2 variant).
- BLEU = BP * exp(mean_n log p_n), BP = exp(1 - len(r)/len(h)) when len(h) <= len(r), else 1.
A consequence kept for fidelity: for a hypothesis shorter than n - 1 tokens total_n + 1 <= 0 is floored to
1e-9, so p_n = 1e9 and one- or two-token hypotheses get BLEU far above 1.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from ardiff_scale.errors import DataError

MAX_ORDER = 4
SMOOTHING = 1.0
_TINY = 1e-15  # floor of a smoothed hit count (pymteval's TINY)
_SMALL = 1e-9  # floor of a smoothed n-gram total (pymteval's SMALL)
_EMPTY_LENGTH = 1e-5  # pymteval's stand-in for a zero hypothesis length in the brevity penalty


@dataclass(frozen=True)
class _Sentence:
    length: int  # tokens
    ngrams: tuple[Counter, ...]  # counts of n-grams for n = 1..MAX_ORDER


def _prepare(text: str, tokenize: Tokenizer13a) -> _Sentence:
    tokens = [token.lower() for token in tokenize(text).split()] or [""]
    ngrams = tuple(Counter(zip(*(tokens[i:] for i in range(n)))) for n in range(1, MAX_ORDER + 1))
    return _Sentence(len(tokens), ngrams)


def _hits(a: _Sentence, b: _Sentence) -> list[int]:
    """Clipped matches per order; symmetric in a and b, so one count serves both directions."""
    hits = []
    for small, large in zip(a.ngrams, b.ngrams):
        if len(small) > len(large):
            small, large = large, small
        hits.append(sum(min(count, large[gram]) for gram, count in small.items() if gram in large))
    return hits


def _bleu(hits: Sequence[int], hypothesis_length: int, reference_length: int) -> float:
    log_precision = 0.0
    for n, n_hits in enumerate(hits):
        total = hypothesis_length - n
        log_precision += math.log(max(n_hits + SMOOTHING, _TINY) / max(total + SMOOTHING, _SMALL))
    brevity = 1.0
    if hypothesis_length <= reference_length:
        brevity = math.exp(1.0 - reference_length / (hypothesis_length or _EMPTY_LENGTH))
    return brevity * math.exp(log_precision / MAX_ORDER)


def sentence_bleu_plus1(hypothesis: str, reference: str) -> float:
    """pymteval's smoothed sentence BLEU (module docstring) of one hypothesis against one reference, in [0, 1]
    for hypotheses of 3 or more tokens."""
    tokenize = Tokenizer13a()
    h, r = _prepare(hypothesis, tokenize), _prepare(reference, tokenize)
    return _bleu(_hits(h, r), h.length, r.length)


def mbr_utilities(candidates: Sequence[str], tokenize: Tokenizer13a | None = None) -> list[float]:
    """Utility of each candidate: mean sentence BLEU of the others against it (k = 1: [0.0])."""
    tokenize = tokenize or Tokenizer13a()
    sentences = [_prepare(text, tokenize) for text in candidates]
    k = len(sentences)
    if k == 1:
        return [0.0]
    # scores[i][j] = BLEU(hypothesis j, reference i)
    scores = [[0.0] * k for _ in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            hits = _hits(sentences[i], sentences[j])
            scores[i][j] = _bleu(hits, sentences[j].length, sentences[i].length)
            scores[j][i] = _bleu(hits, sentences[i].length, sentences[j].length)
    # fsum is exact, so equal sets of scores give equal utilities whatever their order and ties stay ties.
    return [math.fsum(row[:i] + row[i + 1:]) / (k - 1) for i, row in enumerate(scores)]


def mbr_select(candidate_sets: Sequence[Sequence[str]]) -> list[int]:
    """For each source's candidates, the index of the MBR choice (module docstring)."""
    tokenize = Tokenizer13a()
    chosen = []
    for source_no, candidates in enumerate(candidate_sets):
        if not candidates:
            raise DataError(f"mbr_select: source #{source_no} has no candidates")
        utilities = mbr_utilities(candidates, tokenize)
        best = 0
        for i, utility in enumerate(utilities):
            if utility >= utilities[best]:
                best = i
        chosen.append(best)
    return chosen
