"""MBR selection: hand-worked sentence BLEU values (pymteval's +1 smoothing), ties, consensus, edge cases, and
the vectorised implementation against a straightforward reference on 500 sets built from real sentences."""

import gzip
import json
import math
import random

import pytest
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from ardiff_scale.errors import DataError
from ardiff_scale.evaluation import mbr
from ardiff_scale.evaluation.mbr import (
    mbr_select,
    mbr_utilities,
    sentence_bleu_plus1,
    tokenize_13a,
)

from .mbr_reference import (
    SHARED,
    candidate_sets,
    real_sentences,
    reference_mbr_select,
    reference_mbr_utilities,
)


def test_sentence_bleu_hand_worked():
    # 3 of 6 tokens: hits 3/2/1/0 over totals 3/2/1/0; +1 on both sides gives 4/4, 3/3, 2/2, 1/1, so the
    # precision is 1 and BLEU is the brevity penalty exp(1 - 6/3).
    assert sentence_bleu_plus1("the cat sat", "the cat sat on the mat") == pytest.approx(math.exp(-1))
    assert sentence_bleu_plus1("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # 4 tokens, nothing shared: (1/5 * 1/4 * 1/3 * 1/2) ** (1/4), brevity 1.
    assert sentence_bleu_plus1("a b c d", "w x y z") == pytest.approx((1 / 120) ** 0.25)


def test_sentence_bleu_keeps_pymteval_short_hypothesis_quirk():
    # One token: totals 1, 0, -1, -2 become 2, 1, 0 -> 1e-9, -1 -> 1e-9, so p3 = p4 = 1/1e-9.
    assert sentence_bleu_plus1("cat", "cat") == pytest.approx((1e9 * 1e9) ** 0.25)


def test_sentence_bleu_is_case_insensitive_with_13a_tokens():
    assert sentence_bleu_plus1("The CAT, sat.", "the cat , sat .") == pytest.approx(1.0)


def test_identical_candidates_pick_the_last():
    assert mbr_select([["a b c d"] * 3]) == [2]
    assert mbr_select([["The Cat sat .", "the cat sat.", "THE CAT SAT ."]]) == [2]


def test_consensus_candidate_wins_wherever_it_is():
    consensus = "the cat sat on the mat today"
    others = ["the cat sat on the mat", "the cat sat on a mat today", "the black cat sat on the mat today"]
    outlier = "stock markets fell sharply in asian trading"
    for position in range(4):
        candidates = [outlier, *others]
        candidates.insert(position, consensus)
        assert mbr_select([candidates]) == [candidates.index(consensus)]


def test_ties_between_distinct_candidates_go_to_the_last():
    # Two unrelated pairs: each candidate's utility is the same by symmetry, so the last index wins.
    utilities = mbr_utilities(["a b c d", "e f g h"])
    assert utilities[0] == utilities[1]
    assert mbr_select([["a b c d", "e f g h"]]) == [1]


def test_one_result_per_source_and_single_candidates():
    assert mbr_select([["only one"], ["x y z w", "x y z w", "p q r s"], [""]]) == [0, 1, 0]


def test_empty_candidates():
    assert mbr_select([["", "", ""]]) == [2]
    assert mbr_select([["the cat sat on the mat", "", "the cat sat on the mat"]]) == [2]
    with pytest.raises(DataError, match="source #1 has no candidates"):
        mbr_select([["a"], []])


# --- the vectorised implementation against the straightforward reference (mbr_reference.py) ---

REAL_SETS_SEED = 20261124


@pytest.fixture(scope="module")
def sentences() -> list[str]:
    return real_sentences()


@pytest.fixture(scope="module")
def real_sets(sentences) -> list[list[str]]:
    """500 sets around real sentences: mostly k = 5..20, and 30 at k = 50 (the reference is quadratic in k)."""
    return (candidate_sets(sentences, 470, range(5, 21), REAL_SETS_SEED)
            + candidate_sets(sentences, 30, [50], REAL_SETS_SEED + 1))


def test_tokenize_13a_gives_sacrebleu_tokens(sentences):
    # Package descriptions: versions, URLs, file names, lists; and German with its own punctuation.
    other_lines = []
    for name in ("summ-debian", "deen"):
        with gzip.open(SHARED / "tasks" / name / "valid.jsonl.gz", "rt", encoding="utf-8") as f:
            other_lines += [json.loads(line)["src"] for line in f]
    tricky = ["3.5 1,000 a.b a..1 1.,2 .5 5. -3 3-4 a-b 10.- 1.2.3 1,2,3 1-2-3 U.S.A. $5.00 e.g., it's",
              "&amp; &quot;x&quot; &lt;tag&gt; &amp;lt; <skipped> line-\nbreak multi\nline tab\there",
              "{x}|y~z [a]^_` !\"#$%&()*+:;<=>?@/ ,, .., ... ,.,", "", " ", "\t\n", "Ünïcödé ÇA. İstanbul, 1.º"]
    rng = random.Random(0)
    alphabet = "ab1 2.,-&;<>/'\n\t\"(x)"
    noise = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(3000)]
    sacrebleu_13a = Tokenizer13a()
    for line in [*sentences, *other_lines, *tricky, *noise]:
        assert tokenize_13a(line).split() == sacrebleu_13a(line).split(), line


def test_picks_equal_the_reference_on_500_real_candidate_sets(real_sets):
    picks = mbr_select(real_sets)
    expected = reference_mbr_select(real_sets)
    agreement = sum(a == b for a, b in zip(picks, expected)) / len(real_sets)
    assert agreement == 1.0, f"agreement {agreement:.2%}"
    # The sets exercise what matters: exact ties at the top (duplicates, case variants) and short candidates.
    top_ties = 0
    for candidates in real_sets[:100]:
        utilities = reference_mbr_utilities(candidates)
        top_ties += utilities.count(max(utilities)) > 1
    assert top_ties >= 20
    assert sum(len(text.split()) <= 2 for s in real_sets for text in s) >= 500


def test_utilities_equal_the_reference(real_sets):
    for candidates in real_sets[:60] + real_sets[-3:]:
        assert mbr_utilities(candidates) == pytest.approx(reference_mbr_utilities(candidates), rel=1e-9, abs=1e-12)


def test_tiny_vocabulary_sets_full_of_ties_and_short_candidates():
    rng = random.Random(1)
    sets = [[" ".join(rng.choice("ab c") for _ in range(rng.randint(0, 6))) for _ in range(rng.randint(1, 8))]
            for _ in range(400)]
    assert mbr_select(sets) == reference_mbr_select(sets)


def test_different_k_in_one_call_and_across_chunks(real_sets, monkeypatch):
    sets = [real_sets[-1], ["just one"], real_sets[0][:2], real_sets[1], ["", "x"], real_sets[-2][:3]]
    assert {len(s) for s in sets} >= {1, 2, 3, 50}
    expected = reference_mbr_select(sets)
    assert mbr_select(sets) == expected
    assert [mbr_select([s])[0] for s in sets] == expected
    # A pair budget smaller than one k = 50 set: every set is a chunk of its own, picks unchanged.
    monkeypatch.setattr(mbr, "MAX_PAIRS", 10)
    assert mbr_select(sets) == expected


def test_exact_ties_between_different_sequences_go_to_the_last():
    # "b a" and "a b" are different token sequences with the same scores against each other and against "c":
    # the numpy path sees a near tie and the exact rule decides it, as the reference does.
    candidates = ["a b", "b a", "c"]
    utilities = reference_mbr_utilities(candidates)
    assert utilities[0] == utilities[1] > utilities[2]
    assert mbr_select([candidates]) == reference_mbr_select([candidates]) == [1]
