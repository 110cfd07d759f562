"""Span-fill scores: hand-worked cases for accuracy, the unigram baseline and the collapse measures."""

import pytest
import torch

from ardiff_scale.data.infill import infill_scores, span_positions
from ardiff_scale.data.tokenizer import SpecialIds

SPECIALS = SpecialIds(pad=0, unk=1, bos=2, eos=3, mask=4)


def test_only_real_span_tokens_are_scored():
    reference = torch.tensor([[2, 10, 11, 3, 0, 0], [2, 10, 3, 0, 0, 0]])
    assert span_positions(reference, SPECIALS).tolist() == [[False, True, True, False, False, False],
                                                            [False, True, False, False, False, False]]
    # Specials elsewhere in the generation do not count for or against it.
    generated = torch.tensor([[2, 10, 12, 3, 0, 0], [9, 10, 9, 9, 9, 9]])
    scores = infill_scores(generated, reference, SPECIALS)
    assert (scores.windows, scores.span_tokens) == (2, 3)
    assert scores.accuracy == pytest.approx(2 / 3)
    # 10 is 2 of the 3 reference span tokens: always writing it scores 2/3.
    assert scores.unigram_token == 10 and scores.unigram_accuracy == pytest.approx(2 / 3)
    assert scores.distinct == pytest.approx(2 / 3)  # 10, 12 and 10 written: two distinct of three
    assert scores.top5_share == 1.0


def test_a_collapsed_sampler_is_visible():
    reference = torch.arange(5, 45).view(4, 10)
    collapsed = torch.full_like(reference, 99)
    scores = infill_scores(collapsed, reference, SPECIALS)
    assert scores.accuracy == 0.0 and scores.distinct == 1 / 40 and scores.top5_share == 1.0
    perfect = infill_scores(reference.clone(), reference, SPECIALS)
    assert perfect.accuracy == 1.0 and perfect.distinct == 1.0 and perfect.top5_share == 5 / 40
    assert set(perfect.metrics()) == {"infill_windows", "infill_span_tokens", "infill_accuracy",
                                      "infill_unigram_accuracy", "infill_distinct", "infill_top5_share"}


def test_mismatched_or_empty_inputs_are_refused():
    with pytest.raises(ValueError, match="must match"):
        infill_scores(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long), SPECIALS)
    with pytest.raises(ValueError, match="no span tokens"):
        infill_scores(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long), SPECIALS)
