import random

import pytest

from ardiff_scale.data.objectives import collate, paragraph_denoise, seq2seq_example, split_document
from ardiff_scale.data.tokenizer import BOS, EOS, MASK, PAD


def test_split_document_keeps_every_token_of_full_windows():
    doc = list(range(10, 260))
    windows = list(split_document(doc, 100, 30))
    assert [len(w) for w in windows] == [100, 100, 50]
    assert sum(windows, []) == doc
    assert [len(w) for w in split_document(doc, 100, 60)] == [100, 100]  # short tail dropped


@pytest.mark.parametrize("seed", range(20))
def test_paragraph_denoise_never_leaks_the_span_into_the_source(seed):
    rng = random.Random(seed)
    window = list(range(100, 100 + rng.randrange(5, 200)))  # distinct ids make leaks visible
    ex = paragraph_denoise(window, target_len=32, mask_fraction=0.3, rng=rng)
    span = ex.target[1:-1]
    assert ex.target[0] == BOS and ex.target[-1] == EOS
    assert 1 <= len(span) <= 30
    assert not set(span) & set(ex.source)
    assert ex.source[0] == BOS and ex.source[-1] == EOS
    hole = ex.source.index(MASK)
    assert ex.source[1:hole] + span + ex.source[hole + 1:-1] == window


def test_seq2seq_truncation_and_collate_padding():
    ex = seq2seq_example(list(range(5, 20)), list(range(30, 40)), source_len=8, target_len=6)
    assert ex.source == [BOS, 5, 6, 7, 8, 9, 10, EOS] and ex.target == [BOS, 30, 31, 32, 33, EOS]
    short = seq2seq_example([7], [8], 8, 6)
    batch = collate([ex, short], target_len=6)
    assert batch["src_ids"].shape == (2, 8) and batch["tgt_ids"].shape == (2, 6)
    assert batch["src_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert batch["tgt_ids"][1].tolist() == [BOS, 8, EOS, PAD, PAD, PAD]
    assert collate([short], 6, source_len=16)["src_ids"].shape == (1, 16)
    with pytest.raises(ValueError, match="exceeds source_len"):
        collate([ex], 6, source_len=4)
