"""MBR selection: hand-worked sentence BLEU values (pymteval's +1 smoothing), ties, consensus, edge cases."""

import math

import pytest

from ardiff_scale.errors import DataError
from ardiff_scale.evaluation.mbr import mbr_select, mbr_utilities, sentence_bleu_plus1


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
