"""A deliberately straightforward MBR, and candidate sets built from real sentences, shared by test_mbr.py and
benchmarks/bench_mbr.py (a plain module, not a test).

The reference follows pymteval's smoothed sentence BLEU (see `ardiff_scale.evaluation.mbr`) literally: every
ordered pair (hypothesis j, reference i) is scored from scratch, tokenising both strings and counting their
n-grams with `Counter`; nothing is shared between pairs or between sets.
"""

from __future__ import annotations

import gzip
import json
import math
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
# Real English targets: translations (short to long) and one-sentence descriptions of concept sets.
SENTENCE_FILES = ("tasks/deen/test.jsonl.gz", "tasks/concept2text/test.jsonl.gz")

_tokenize = Tokenizer13a()


def reference_tokens(text: str) -> list[str]:
    return [token.lower() for token in _tokenize(text).split()] or [""]


def reference_ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def reference_bleu(hypothesis: str, reference: str) -> float:
    hyp, ref = reference_tokens(hypothesis), reference_tokens(reference)
    log_precision = 0.0
    for n in range(1, 5):
        hyp_ngrams, ref_ngrams = reference_ngrams(hyp, n), reference_ngrams(ref, n)
        hits = sum(min(count, ref_ngrams[gram]) for gram, count in hyp_ngrams.items())
        total = len(hyp) - n + 1
        log_precision += math.log(max(hits + 1.0, 1e-15) / max(total + 1.0, 1e-9))
    brevity = math.exp(1.0 - len(ref) / len(hyp)) if len(hyp) <= len(ref) else 1.0
    return brevity * math.exp(log_precision / 4)


def reference_mbr_utilities(candidates: Sequence[str]) -> list[float]:
    k = len(candidates)
    if k == 1:
        return [0.0]
    # fsum is exact, so candidates whose scores are the same multiset tie exactly, in any order.
    return [math.fsum(reference_bleu(candidates[j], candidates[i]) for j in range(k) if j != i) / (k - 1)
            for i in range(k)]


def reference_mbr_select(candidate_sets: Sequence[Sequence[str]]) -> list[int]:
    picks = []
    for candidates in candidate_sets:
        utilities = reference_mbr_utilities(candidates)
        best = max(utilities)
        picks.append(max(i for i, utility in enumerate(utilities) if utility == best))
    return picks


def real_sentences(limit_per_file: int = 2000) -> list[str]:
    sentences = []
    for name in SENTENCE_FILES:
        with gzip.open(SHARED / name, "rt", encoding="utf-8") as f:
            sentences += [json.loads(line)["tgt"] for _, line in zip(range(limit_per_file), f)]
    return sentences


def _edited(rng: random.Random, words: list[str], sentences: list[str]) -> list[str]:
    """One to three word-level edits, the kind of noise diffusion samples show."""
    words = list(words)
    for _ in range(rng.randint(1, 3)):
        if not words:
            break
        at = rng.randrange(len(words))
        edit = rng.randrange(4)
        if edit == 0:
            del words[at]
        elif edit == 1:
            words.insert(at, words[at])
        elif edit == 2 and at + 1 < len(words):
            words[at], words[at + 1] = words[at + 1], words[at]
        else:
            words[at] = rng.choice(rng.choice(sentences).split() or ["x"])
    return words


def _candidate(rng: random.Random, base: list[str], sentences: list[str], earlier: list[str]) -> str:
    roll = rng.random()
    if earlier and roll < 0.15:
        return rng.choice(earlier)  # exact duplicate: ties
    if earlier and roll < 0.22:
        return rng.choice(earlier).upper()  # equal after lower-casing: ties through the tokenisation
    if roll < 0.30:
        start = rng.randrange(len(base))
        return " ".join(base[start:start + rng.randint(1, 3)])  # 1-3 tokens: the short-hypothesis quirk
    if roll < 0.38:
        other = rng.choice(sentences).split()
        return " ".join(base[:len(base) // 2] + other[len(other) // 2:])  # half of another sentence
    if roll < 0.41:
        return rng.choice(["", " "])
    if roll < 0.45:
        return rng.choice(sentences)  # unrelated
    return " ".join(_edited(rng, base, sentences))


def candidate_sets(sentences: list[str], count: int, sizes: Sequence[int], seed: int) -> list[list[str]]:
    """`count` sets, each of k = a random choice from `sizes` candidates around one real sentence."""
    rng = random.Random(seed)
    sets: list[list[str]] = []
    while len(sets) < count:
        base = rng.choice(sentences).split()
        if not base:
            continue
        earlier: list[str] = []
        for _ in range(rng.choice(sizes)):
            earlier.append(_candidate(rng, base, sentences, earlier))
        sets.append(earlier)
    return sets
