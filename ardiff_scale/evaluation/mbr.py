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

How it is computed. Scoring the k(k - 1) pairs one at a time in Python (tokenising, counting n-grams with
`Counter`s) costs tens of milliseconds per source at k = 50, so sources are scored together with numpy and
scipy, in chunks of at most `MAX_PAIRS` ordered pairs (sum of k^2) to bound memory:
- each distinct string is tokenised once (diffusion samples repeat), by `tokenize_13a`, an equivalent of
  `Tokenizer13a` about ten times faster, and its tokens are mapped to integer ids;
- an n-gram's key is (dense id of its (n - 1)-gram prefix) * vocabulary + last token, starting from the
  source id, so equal n-grams of different sources differ; one stable argsort per order groups the keys,
  numbers them densely for the next order (ids stay small) and ranks each copy of an n-gram within its row;
- clipped matches for ALL pairs come from one sparse product per order, through
  min(a, b) = sum_{t >= 1} [a >= t][b >= t]: the t-th copy of an n-gram in a row is a 1 in the n-gram's t-th
  column, so B @ B.T holds sum over n-grams of min(c_i, c_j). Columns belong to one source, so the product is
  block-diagonal and sources never mix;
- BLEU for every pair follows in float64 (`_pair_bleu`: the formula above, rearranged to one root and one
  exp a pair), then the utilities as sums over each row of pairs.
Ties. The official rule (and the plain-Python reference of the tests) sums a candidate's scores exactly
(`math.fsum`), so candidates whose scores are the same multiset (duplicates, wherever they stand) tie
exactly and the last wins. numpy's sums depend on the order of the terms and its rearranged formula can
differ from `math`'s log/exp in the last bits, so a numpy utility is only good to about 1e-13 relative.
Selection therefore treats every candidate within `NEAR_TIE` (relative) of its source's best as a contender:
when the contenders are all one token sequence, their exact utilities are equal and the last contender wins;
otherwise (rare: 5 of the 500 test sets) the contenders' utilities are recomputed as the official code does
(`_bleu` with `math` on the integer counts, `fsum`), so picks are those of the exact rule.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain

import numpy as np
from scipy import sparse

from ardiff_scale.errors import DataError

MAX_ORDER = 4
SMOOTHING = 1.0
_TINY = 1e-15  # floor of a smoothed hit count (pymteval's TINY)
_SMALL = 1e-9  # floor of a smoothed n-gram total (pymteval's SMALL)
_EMPTY_LENGTH = 1e-5  # pymteval's stand-in for a zero hypothesis length in the brevity penalty
# Ordered pairs (sum of k^2) scored in one batch, which bounds the working arrays to some 100 MB.
MAX_PAIRS = 1 << 20
# Relative gap under which two numpy utilities may be an exact tie; far above numpy's own error (~1e-13).
NEAR_TIE = 1e-9

# mteval-v13a's first rule puts spaces around every character of the code point ranges 0x20-0x26, 0x28-0x2B,
# 0x2F, 0x3A-0x40, 0x5B-0x60 and 0x7B-0x7E. The space (0x20) is left out here: padding a space with spaces
# changes no token, and the later rules see a space next to the same characters either way.
_SPLIT_OFF = tuple(chr(code) for first, last in ((0x21, 0x26), (0x28, 0x2B), (0x2F, 0x2F), (0x3A, 0x40),
                                                 (0x5B, 0x60), (0x7B, 0x7E)) for code in range(first, last + 1))
# The other rules look at the neighbouring character (a match consumes it), so they stay regular expressions,
# applied in this order: period or comma after a non-digit, period or comma before one, dash after a digit.
_AFTER_NON_DIGIT = re.compile(r"([^0-9])([.,])")
_BEFORE_NON_DIGIT = re.compile(r"([.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")


def tokenize_13a(line: str) -> str:
    """mteval-v13a tokenisation: the same tokens as SacreBLEU's `Tokenizer13a()(line).split()` (tested against
    it). Tokenizer13a applies its first rule as a regular expression that calls back into Python at every
    match, each space included: about 45 us a sentence, more than all of the vectorised scoring. Here that rule
    is a handful of `str.replace` calls and the context rules run only when their characters occur."""
    line = line.replace("<skipped>", "").replace("-\n", "").replace("\n", " ")
    if "&" in line:
        line = line.replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">")
    line = f" {line} "
    for char in _SPLIT_OFF:
        if char in line:
            line = line.replace(char, f" {char} ")
    if "." in line or "," in line:
        line = _AFTER_NON_DIGIT.sub(lambda match: f"{match[1]} {match[2]} ", line)
        line = _BEFORE_NON_DIGIT.sub(lambda match: f" {match[1]} {match[2]}", line)
    if "-" in line:
        line = _DASH_AFTER_DIGIT.sub(lambda match: f"{match[1]} {match[2]} ", line)
    return line


class _Encoder:
    """Token ids of candidate strings: each distinct string is tokenised once (diffusion samples repeat), and
    each distinct token sequence gets a sequence id (equal ids: exactly equal utilities)."""

    def __init__(self, tokenize: Callable[[str], str]):
        self._tokenize = tokenize
        self._vocab: dict[str, int] = {}
        self._sequences: dict[tuple[int, ...], int] = {}
        self._texts: dict[str, tuple[tuple[int, ...], int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self._vocab)

    def encode(self, text: str) -> tuple[tuple[int, ...], int]:
        known = self._texts.get(text)
        if known is None:
            # Lower-casing the line equals lower-casing each token: no character is, or lower-cases to,
            # whitespace unless it is whitespace.
            tokens = self._tokenize(text).lower().split() or [""]
            vocab = self._vocab
            ids = tuple([vocab.setdefault(token, len(vocab)) for token in tokens])
            known = self._texts[text] = ids, self._sequences.setdefault(ids, len(self._sequences))
        return known


@dataclass(frozen=True)
class _Batch:
    """A chunk of sources. Rows are candidates, each source's rows consecutive. Ordered pairs are laid out
    source by source, row by row: reference row a of source s against hypothesis row b is pair
    row_pairs[first_row[s] + a] + b."""

    sizes: np.ndarray  # k per source
    first_row: np.ndarray  # per source
    row_source: np.ndarray  # per row
    row_pairs: np.ndarray  # per row: its first pair as the reference
    lengths: np.ndarray  # tokens per row (>= 1: a blank string is one empty token)
    sequence: np.ndarray  # token-sequence id per row
    hits: np.ndarray  # (MAX_ORDER, pairs) clipped matches, symmetric in reference and hypothesis

    def pair_rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Reference row and hypothesis row of every pair."""
        k = self.sizes[self.row_source]
        ref = np.repeat(np.arange(len(k)), k)
        hyp = np.arange(len(ref)) - np.repeat(self.row_pairs - self.first_row[self.row_source], k)
        return ref, hyp


def _starts(counts: np.ndarray) -> np.ndarray:
    return np.cumsum(counts) - counts


def _clipped_matches(rows: np.ndarray, columns: np.ndarray, pair_offsets: np.ndarray, n_pairs: int) -> np.ndarray:
    """Per pair, the inner product of the two rows of the binary matrix with a 1 at (rows, columns), where a
    row's c copies of an n-gram sit in c columns of their own that the same n-gram's copies in other rows of
    the source share: sum over n-grams of min(c_i, c_j), the clipped matches."""
    b = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, columns)),
                          shape=(len(pair_offsets), len(rows)))
    product = b @ b.T  # block-diagonal: no column spans two sources
    hits = np.zeros(n_pairs, dtype=np.int64)
    hits[np.repeat(pair_offsets, np.diff(product.indptr)) + product.indices] = product.data
    return hits


def _all_hits(tokens: np.ndarray, lengths: np.ndarray, row_source: np.ndarray, pair_offsets: np.ndarray,
              n_pairs: int, vocab_size: int) -> np.ndarray:
    """(MAX_ORDER, n_pairs) clipped matches; rows (candidates) hold `lengths` of the `tokens`, and the pair of
    rows (i, j) is pair_offsets[i] + j."""
    token_row = np.repeat(np.arange(len(lengths)), lengths)
    # Tokens from each position to the end of its row: position p starts an n-gram of order n + 1 when left > n.
    left = np.repeat(lengths, lengths) - (np.arange(len(tokens)) - np.repeat(_starts(lengths), lengths))
    hits = np.zeros((MAX_ORDER, n_pairs), dtype=np.int64)
    # An n-gram's key is its source and tokens, built as (dense id of the shorter n-gram) * vocab + next token.
    grams = row_source[token_row]
    for n in range(MAX_ORDER):
        at = np.flatnonzero(left > n)
        if not len(at):  # every candidate is shorter than n + 1 tokens
            break
        keys = grams[at] * vocab_size + tokens[at + n]
        # Stable: each n-gram's occurrences stay in row order, so a row's copies of it are consecutive.
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], token_row[at][order]
        new_gram = np.r_[True, keys[1:] != keys[:-1]]
        new_run = new_gram | np.r_[True, rows[1:] != rows[:-1]]
        index = np.arange(len(keys))
        # The t-th copy of an n-gram in a row goes to column (first occurrence of the n-gram) + t - 1.
        gram_start = np.maximum.accumulate(np.where(new_gram, index, 0))
        run_start = np.maximum.accumulate(np.where(new_run, index, 0))
        hits[n] = _clipped_matches(rows, gram_start + index - run_start, pair_offsets, n_pairs)
        grams = np.zeros_like(tokens)
        grams[at[order]] = np.cumsum(new_gram) - 1
    return hits


def _batch(candidate_sets: Sequence[Sequence[str]], encoder: _Encoder) -> _Batch:
    encoded = [encoder.encode(text) for candidates in candidate_sets for text in candidates]
    lengths = np.array([len(ids) for ids, _ in encoded], dtype=np.int64)
    tokens = np.fromiter(chain.from_iterable(ids for ids, _ in encoded), dtype=np.int64, count=int(lengths.sum()))
    sizes = np.array([len(candidates) for candidates in candidate_sets], dtype=np.int64)
    first_row, row_source = _starts(sizes), np.repeat(np.arange(len(sizes)), sizes)
    row_pairs = _starts(sizes[row_source])
    hits = _all_hits(tokens, lengths, row_source, row_pairs - first_row[row_source], int(sizes @ sizes),
                     encoder.vocab_size)
    return _Batch(sizes=sizes, first_row=first_row, row_source=row_source, row_pairs=row_pairs, lengths=lengths,
                  sequence=np.array([sequence for _, sequence in encoded], dtype=np.int64), hits=hits)


def _bleu(hits: Sequence[int], hypothesis_length: int, reference_length: int) -> float:
    """One pair, with `math`, in the official order of operations: the exact path of ties."""
    log_precision = 0.0
    for n, n_hits in enumerate(hits):
        total = hypothesis_length - n
        log_precision += math.log(max(n_hits + SMOOTHING, _TINY) / max(total + SMOOTHING, _SMALL))
    brevity = 1.0
    if hypothesis_length <= reference_length:
        brevity = math.exp(1.0 - reference_length / (hypothesis_length or _EMPTY_LENGTH))
    return brevity * math.exp(log_precision / MAX_ORDER)


def _pair_bleu(batch: _Batch, ref: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """`_bleu` of every pair in numpy, rearranged to cost one root and one exp a pair: exp(mean_n log p_n) is
    the fourth root of prod_n p_n, whose numerator prod_n (hits_n + 1) is an exact integer (the 1e-15 floor
    never applies to hits + 1 >= 1) and whose denominator depends on the hypothesis length alone. Lengths are
    >= 1, so the zero-length stand-in never applies either."""
    length = batch.lengths.astype(np.float64)
    totals = np.maximum(length[:, None] - np.arange(MAX_ORDER) + SMOOTHING, _SMALL)  # per row and order
    numerator = np.prod(batch.hits + SMOOTHING, axis=0)
    precision = numerator / np.prod(totals, axis=1)[hyp]
    brevity = np.exp(np.minimum(1.0 - length[ref] / length[hyp], 0.0))  # 1 when the hypothesis is longer
    return brevity * np.sqrt(np.sqrt(precision))


def _utilities(batch: _Batch) -> np.ndarray:
    """Per row, the mean BLEU of the other candidates of its source against it (k = 1: 0.0)."""
    ref, hyp = batch.pair_rows()
    scores = np.where(ref == hyp, 0.0, _pair_bleu(batch, ref, hyp))
    # A row's pairs as the reference are one run, from row_pairs.
    return np.add.reduceat(scores, batch.row_pairs) / np.maximum(batch.sizes[batch.row_source] - 1, 1)


def _exact_pick(batch: _Batch, source: int, contenders: np.ndarray) -> int:
    """The official rule among `contenders` (rows of `source`): exact fsum utilities, last of the best."""
    first, k = int(batch.first_row[source]), int(batch.sizes[source])
    lengths = batch.lengths.tolist()
    best_row, best = -1, -math.inf
    for ref in contenders.tolist():
        start = int(batch.row_pairs[ref])
        hits = batch.hits[:, start:start + k].T.tolist()
        utility = math.fsum(_bleu(pair_hits, lengths[hyp], lengths[ref])
                            for hyp, pair_hits in enumerate(hits, first) if hyp != ref)
        if utility >= best:
            best_row, best = ref, utility
    return best_row - first


def _select(batch: _Batch) -> list[int]:
    """Per source, the last contender when they are all one token sequence, else the exact rule among them."""
    utilities = _utilities(batch)
    starts = batch.first_row
    best = np.maximum.reduceat(utilities, starts)
    contender = utilities >= best[batch.row_source] * (1.0 - NEAR_TIE)
    local = np.arange(len(utilities)) - starts[batch.row_source]
    picks = np.maximum.reduceat(np.where(contender, local, -1), starts)
    lowest = np.minimum.reduceat(np.where(contender, batch.sequence, np.iinfo(np.int64).max), starts)
    highest = np.maximum.reduceat(np.where(contender, batch.sequence, -1), starts)
    for source in np.flatnonzero(lowest != highest).tolist():
        picks[source] = _exact_pick(batch, source, np.flatnonzero(contender & (batch.row_source == source)))
    return picks.tolist()


def _chunks(candidate_sets: Sequence[Sequence[str]]) -> Iterator[Sequence[Sequence[str]]]:
    start, pairs = 0, 0
    for end, candidates in enumerate(candidate_sets):
        if pairs and pairs + len(candidates) ** 2 > MAX_PAIRS:
            yield candidate_sets[start:end]
            start, pairs = end, 0
        pairs += len(candidates) ** 2
    if pairs:
        yield candidate_sets[start:]


def sentence_bleu_plus1(hypothesis: str, reference: str) -> float:
    """pymteval's smoothed sentence BLEU (module docstring) of one hypothesis against one reference, in [0, 1]
    for hypotheses of 3 or more tokens."""
    batch = _batch([[reference, hypothesis]], _Encoder(tokenize_13a))
    return _bleu(batch.hits[:, 1].tolist(), int(batch.lengths[1]), int(batch.lengths[0]))


def mbr_utilities(candidates: Sequence[str], tokenize: Callable[[str], str] | None = None) -> list[float]:
    """Utility of each candidate: mean sentence BLEU of the others against it (k = 1: [0.0]), from the numpy
    path, so within about 1e-13 relative of the exact values (`mbr_select` settles near ties exactly).
    `tokenize` maps a line to its tokenised line (default `tokenize_13a`; SacreBLEU's `Tokenizer13a()` fits)."""
    if not candidates:
        return []
    return _utilities(_batch([candidates], _Encoder(tokenize or tokenize_13a))).tolist()


def mbr_select(candidate_sets: Sequence[Sequence[str]]) -> list[int]:
    """For each source's candidates, the index of the MBR choice (module docstring)."""
    for source_no, candidates in enumerate(candidate_sets):
        if not candidates:
            raise DataError(f"mbr_select: source #{source_no} has no candidates")
    encoder = _Encoder(tokenize_13a)
    return [pick for chunk in _chunks(candidate_sets) for pick in _select(_batch(chunk, encoder))]
