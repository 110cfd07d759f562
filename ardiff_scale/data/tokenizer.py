"""A sentencepiece tokenizer with the reserved ids the model relies on, saved with a JSON card.

Reserved ids: <pad>=0 (the learned tail of every fixed-length target), <unk>=1, <s>=2, </s>=3, <mask>=4
(the hole left in a pretraining source). The card records the vocabulary size, the training options and
the sha256 of the model file, so shards and checkpoints can refuse a tokenizer they were not built with.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import sentencepiece as spm

from ardiff_scale.errors import DataError
from ardiff_scale.io import read_bytes, write_bytes

PAD, UNK, BOS, EOS, MASK = 0, 1, 2, 3, 4
SPECIAL_IDS = frozenset({PAD, UNK, BOS, EOS, MASK})


@dataclass
class TokenizerOptions:
    vocab_size: int = 8000
    model_type: str = "unigram"  # or "bpe"
    # At most this many sentences (lines) are sampled from the input to train on.
    max_sentences: int = 200_000
    seed: int = 0
    # Lossless round trips: no NFKC folding or whitespace collapsing; unknown characters become bytes.
    normalization: str = "identity"
    byte_fallback: bool = True


class Tokenizer:
    def __init__(self, model_bytes: bytes, card: dict | None = None):
        self.processor = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.model_bytes = model_bytes
        self.sha256 = hashlib.sha256(model_bytes).hexdigest()
        self.card = card or {"vocab_size": self.vocab_size, "sha256": self.sha256}
        if self.processor.piece_to_id("<mask>") != MASK or self.processor.pad_id() != PAD:
            raise DataError("tokenizer does not reserve <pad>=0 and <mask>=4; train it with `ardiff tokenizer train`")

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` with the reserved tokens dropped (the official skip_special_tokens)."""
        return self.processor.decode([int(i) for i in ids if int(i) not in SPECIAL_IDS])

    def save(self, path: str) -> None:
        """Writes `path` (the .model file) and `path` + '.json' (the card); any fsspec URL."""
        write_bytes(path, self.model_bytes)
        write_bytes(path + ".json", json.dumps(self.card, indent=2).encode())

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        try:
            model_bytes = read_bytes(path)
        except FileNotFoundError:
            raise DataError(f"tokenizer not found: {path} (train one with `ardiff tokenizer train`)") from None
        try:
            card = json.loads(read_bytes(path + ".json"))
        except FileNotFoundError:
            card = None
        tokenizer = cls(model_bytes, card)
        if card and card.get("sha256") != tokenizer.sha256:
            raise DataError(f"tokenizer {path} does not match its card {path}.json "
                            f"(sha256 {tokenizer.sha256[:12]} vs {str(card.get('sha256'))[:12]})")
        return tokenizer


def _sample_lines(texts: Iterable[str], limit: int, seed: int) -> Iterator[str]:
    """Reservoir sample of non-empty lines, so a corpus larger than memory trains in bounded space."""
    rng = random.Random(seed)
    reservoir: list[str] = []
    seen = 0
    for text in texts:
        for line in text.splitlines():
            if not line.strip():
                continue
            seen += 1
            if len(reservoir) < limit:
                reservoir.append(line)
            else:
                j = rng.randrange(seen)
                if j < limit:
                    reservoir[j] = line
    if not reservoir:
        raise DataError("no text to train the tokenizer on: every input was empty")
    return iter(reservoir)


def train_tokenizer(texts: Iterable[str], options: TokenizerOptions) -> Tokenizer:
    """Train on an iterable of documents (each may span many lines)."""
    if options.model_type not in ("unigram", "bpe"):
        raise DataError(f"tokenizer model_type must be 'unigram' or 'bpe' (got {options.model_type!r})")
    if options.vocab_size < 16:
        raise DataError(f"tokenizer vocab_size must be >= 16 (got {options.vocab_size})")
    import io
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_sample_lines(texts, options.max_sentences, options.seed),
        model_writer=model,
        vocab_size=options.vocab_size,
        model_type=options.model_type,
        pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS,
        user_defined_symbols=["<mask>"],
        normalization_rule_name=options.normalization,
        remove_extra_whitespaces=False,
        byte_fallback=options.byte_fallback,
        character_coverage=0.9995,
        max_sentence_length=1 << 16,
        # Small corpora cannot always fill the requested vocabulary; fail loudly instead of silently shrinking.
        hard_vocab_limit=True,
        minloglevel=2,
    )
    model_bytes = model.getvalue()
    card = {"vocab_size": options.vocab_size, "options": asdict(options),
            "sha256": hashlib.sha256(model_bytes).hexdigest(),
            "special_ids": {"pad": PAD, "unk": UNK, "bos": BOS, "eos": EOS, "mask": MASK}}
    return Tokenizer(model_bytes, card)
