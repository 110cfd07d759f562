"""The token ids the model and the data pipeline give a meaning to, apart from any tokenizer.

Layer 0: the model's search, the objectives and the trainer read special ids from here (or from a tokenizer's
`specials`) without importing a tokenizer library.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# The sentencepiece tokenizer's reserved ids, fixed by `train_tokenizer`. Other tokenizers differ: read
# `tokenizer.specials`.
PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class SpecialIds:
    """The ids the model and data pipeline give a meaning to. mask is None when the vocabulary has no mask
    token (fine for seq2seq fine-tuning, refused by span-masking pretraining)."""

    pad: int
    unk: int
    bos: int
    eos: int
    mask: int | None

    @property
    def ids(self) -> frozenset[int]:
        return frozenset(i for i in (self.pad, self.unk, self.bos, self.eos, self.mask) if i is not None)

    def as_dict(self) -> dict[str, int | None]:
        return asdict(self)


SENTENCEPIECE_SPECIALS = SpecialIds(pad=PAD, unk=UNK, bos=BOS, eos=EOS, mask=MASK)
