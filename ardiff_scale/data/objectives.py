"""From token ids to model-ready tensors: GENIE's continuous paragraph denoise and seq2seq collation.

Every target has the fixed length N of the model's diffusion (`<s> ... </s> <pad> ...`): padding positions
are ordinary targets the model learns to emit, as in the official code (AR_DIFFUSION.md §3).

`<s>`, `</s>`, `<pad>` and `<mask>` stand for the tokenizer's own special ids (`tokenizer.specials`: BERT's
[CLS] [SEP] [PAD] [MASK] for a WordPiece model). The default, sentencepiece's, is for callers that only ever
see this project's tokenizers.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from ardiff_scale.errors import DataError
from ardiff_scale.vocab import SENTENCEPIECE_SPECIALS, SpecialIds


@dataclass
class Example:
    source: list[int]  # encoder input, without padding
    target: list[int]  # decoder target, <s> ... </s>, without padding


def split_document(ids: Sequence[int], max_len: int, min_len: int) -> Iterator[list[int]]:
    """Cut a tokenised document into consecutive windows of at most max_len tokens.

    Over-long documents are split, never truncated, so no text is lost; a tail window shorter than
    min_len is dropped (GENIE drops documents under ~30 tokens), and the caller counts what it drops.
    """
    for start in range(0, len(ids), max_len):
        window = list(ids[start:start + max_len])
        if len(window) >= min_len:
            yield window


def require_mask(specials: SpecialIds) -> int:
    """The mask id, or a DataError for a tokenizer without one (span masking needs the hole's token)."""
    if specials.mask is None:
        raise DataError("span-masking pretraining needs a mask token, and this tokenizer has none "
                        f"(special ids {specials.as_dict()}): pretrain with a tokenizer that has <mask> or "
                        "[MASK], or use it only for seq2seq fine-tuning")
    return specials.mask


def paragraph_denoise(window: Sequence[int], target_len: int, mask_fraction: float, rng: random.Random,
                      specials: SpecialIds = SENTENCEPIECE_SPECIALS) -> Example:
    """Continuous paragraph denoise (§9): one contiguous span becomes the target, a single <mask> holds its
    place in the source. Both sides are wrapped in <s> ... </s>, as task pairs are, so a pretrained model
    reads sources the way `generate` and fine-tuning present them.

    The span has int(len * mask_fraction) tokens, at least 1 and at most target_len - 2 (room for <s> and
    </s>), at a uniform random offset. The source has len(window) - span + 3 tokens.
    """
    span = min(max(1, int(len(window) * mask_fraction)), target_len - 2, len(window) - 1)
    offset = rng.randrange(0, len(window) - span + 1)
    bos, eos = specials.bos, specials.eos
    source = [bos, *window[:offset], require_mask(specials), *window[offset + span:], eos]
    return Example(source=source, target=[bos, *window[offset:offset + span], eos])


def seq2seq_example(source: Sequence[int], target: Sequence[int], source_len: int, target_len: int,
                    specials: SpecialIds = SENTENCEPIECE_SPECIALS) -> Example:
    """A task pair: both sides wrapped in <s> ... </s>, the source truncated to source_len tokens and the target
    to target_len (the truncated side loses its end, keeps its </s>)."""
    bos, eos = specials.bos, specials.eos
    return Example(source=[bos, *source[:source_len - 2], eos], target=[bos, *target[:target_len - 2], eos])


def collate(examples: Sequence[Example], target_len: int, source_len: int | None = None,
            specials: SpecialIds = SENTENCEPIECE_SPECIALS) -> dict[str, torch.Tensor]:
    """Pad targets to the fixed target_len and sources to source_len (default: the longest in the batch).

    Training pads sources to one fixed length: on CPU every new tensor shape costs a fresh kernel plan
    (oneDNN), which made the first hundred steps of a run several times slower than the rest.
    Returns src_ids, src_mask (batch, src_len) and tgt_ids (batch, target_len), all int64.
    """
    longest = max(len(e.source) for e in examples)
    if source_len is not None and longest > source_len:
        raise ValueError(f"source of {longest} tokens exceeds source_len {source_len}")
    src_len = source_len or longest
    # One numpy fill per row: a tensor per row costs more than the row's copy (this runs for every sample).
    src = np.full((len(examples), src_len), specials.pad, dtype=np.int64)
    tgt = np.full((len(examples), target_len), specials.pad, dtype=np.int64)
    for row, example in enumerate(examples):
        if len(example.target) > target_len:
            raise ValueError(f"target of {len(example.target)} tokens exceeds target_len {target_len}")
        src[row, :len(example.source)] = example.source
        tgt[row, :len(example.target)] = example.target
    src_ids = torch.from_numpy(src)
    return {"src_ids": src_ids, "src_mask": (src_ids != specials.pad).long(), "tgt_ids": torch.from_numpy(tgt)}
