"""Tokenizers behind one interface: this project's sentencepiece models, and the Hugging Face `tokenizers`
models of the official AR-Diffusion checkpoints (BERT WordPiece, byte-level BPE for IWSLT).

Every tokenizer names its special ids in `tokenizer.specials` (pad, unk, bos, eos, mask); the code that wraps,
masks, pads or stops on them reads them there, never from a constant:
    sentencepiece (`train_tokenizer`)   <pad>=0 <unk>=1 <s>=2 </s>=3 <mask>=4
    BERT WordPiece (`from_wordpiece`)   [PAD]=0 [UNK]=100 [CLS]=101 (bos) [SEP]=102 (eos) [MASK]=103
    byte-level BPE (`from_bpe`)         <pad> <unk> <s> (bos) </s> (eos) <mask>, looked up in vocab.json
                                        (the official IWSLT vocabulary has them at 0, 3, 1, 2, 4)
A BPE vocabulary without <mask> gets `specials.mask = None` and cannot pretrain with span masking.

A tokenizer is saved as one file (a sentencepiece `.model` or a Hugging Face `tokenizer.json`) with a JSON
card beside it (`path + '.json'`) recording the vocabulary size, the special ids and the sha256 of the file,
so shards and checkpoints can refuse a tokenizer they were not built with.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Iterable, Iterator

import sentencepiece as spm

from ardiff_scale.errors import DataError
from ardiff_scale.io import read_bytes, write_bytes
from ardiff_scale.vocab import BOS, EOS, MASK, PAD, SENTENCEPIECE_SPECIALS, UNK, SpecialIds  # noqa: F401 (re-exported)

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")  # in a model directory, by kind




class Tokenizer(ABC):
    """Text <-> ids. `data` is the tokenizer's file content; `sha256` is its hash, `card` its description."""

    kind: str
    specials: SpecialIds
    data: bytes
    sha256: str
    card: dict

    def _set_identity(self, data: bytes, card: dict | None, **extra) -> None:
        self.data = data
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.card = card or {"kind": self.kind, "vocab_size": self.vocab_size, "sha256": self.sha256,
                             "special_ids": self.specials.as_dict(), **extra}

    @property
    def model_bytes(self) -> bytes:  # the name callers used when only sentencepiece existed
        return self.data

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """The text's ids, without bos/eos: the objectives wrap them."""

    @abstractmethod
    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    @abstractmethod
    def _decode(self, ids: list[int]) -> str: ...

    @abstractmethod
    def id_to_piece(self, token_id: int) -> str: ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` with the special tokens dropped (the official skip_special_tokens)."""
        special = self.specials.ids
        return self._decode([int(i) for i in ids if int(i) not in special])

    def save(self, path: str) -> None:
        """Writes `path` (the tokenizer file) and `path` + '.json' (the card); any fsspec URL."""
        write_bytes(path, self.data)
        write_bytes(path + ".json", json.dumps(self.card, indent=2).encode())

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """A sentencepiece `.model` or a Hugging Face `tokenizer.json` (told apart by content), checked against
        its card `path + '.json'` when there is one."""
        try:
            data = read_bytes(path)
        except FileNotFoundError:
            raise DataError(f"tokenizer not found: {path} (give a sentencepiece .model from `ardiff tokenizer "
                            "train` or a Hugging Face tokenizer.json)") from None
        try:
            card = json.loads(read_bytes(path + ".json"))
        except FileNotFoundError:
            card = None
        tokenizer = tokenizer_from_bytes(data, card, origin=path)
        if card and card.get("sha256") != tokenizer.sha256:
            raise DataError(f"tokenizer {path} does not match its card {path}.json "
                            f"(sha256 {tokenizer.sha256[:12]} vs {str(card.get('sha256'))[:12]})")
        return tokenizer


def tokenizer_from_bytes(data: bytes, card: dict | None = None, origin: str = "tokenizer") -> Tokenizer:
    """The tokenizer in a file's content: JSON is a Hugging Face tokenizer.json, anything else sentencepiece.
    (Also how a worker process rebuilds the tokenizer it was sent as bytes.)"""
    if data.lstrip()[:1] == b"{":
        return HFTokenizer(data, card, origin=origin)
    return SentencePieceTokenizer(data, card, origin=origin)


def tokenizer_file_in(directory: str) -> str:
    """The tokenizer file of a model directory: its tokenizer.model (sentencepiece) or tokenizer.json."""
    for name in TOKENIZER_FILES:
        path = os.path.join(directory, name)
        if os.path.exists(path):
            return path
    raise DataError(f"{directory} has no tokenizer: expected {' or '.join(TOKENIZER_FILES)} "
                    "(a model directory written by `ardiff pretrain` or `ardiff export`)")


def tokenizer_file_name(tokenizer: Tokenizer) -> str:
    """The name a model directory gives this tokenizer's file."""
    return "tokenizer.model" if isinstance(tokenizer, SentencePieceTokenizer) else "tokenizer.json"


# --- sentencepiece ---------------------------------------------------------------------------------------

class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece"
    specials = SENTENCEPIECE_SPECIALS

    def __init__(self, model_bytes: bytes, card: dict | None = None, origin: str = "tokenizer"):
        try:
            self.processor = spm.SentencePieceProcessor(model_proto=model_bytes)
        except RuntimeError:
            raise DataError(f"{origin} is neither a sentencepiece model nor a Hugging Face tokenizer.json "
                            "(train a sentencepiece model with `ardiff tokenizer train`, or convert a BERT "
                            "vocab.txt / BPE vocab.json + merges.txt with HFTokenizer.from_wordpiece / "
                            "from_bpe and save it as tokenizer.json)") from None
        if self.processor.piece_to_id("<mask>") != MASK or self.processor.pad_id() != PAD:
            raise DataError(f"{origin} does not reserve <pad>=0 and <mask>=4; train it with "
                            "`ardiff tokenizer train`")
        self._set_identity(model_bytes, card)

    @property
    def vocab_size(self) -> int:
        return self.processor.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts)

    def _decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids)

    def id_to_piece(self, token_id: int) -> str:
        return self.processor.id_to_piece(int(token_id))


# --- Hugging Face tokenizers -------------------------------------------------------------------------------

# The special tokens by naming scheme: BERT's, and the fairseq/RoBERTa names the official byte-level BPE uses.
_SCHEMES = {
    "BERT": {"pad": "[PAD]", "unk": "[UNK]", "bos": "[CLS]", "eos": "[SEP]", "mask": "[MASK]"},
    "BPE": {"pad": "<pad>", "unk": "<unk>", "bos": "<s>", "eos": "</s>", "mask": "<mask>"},
}


def _specials_of(vocab: dict[str, int], origin: str) -> SpecialIds:
    """Special ids looked up by name: the scheme whose bos is present must have pad, unk and eos too."""
    for scheme, names in _SCHEMES.items():
        if names["bos"] not in vocab:
            continue
        missing = [names[role] for role in ("pad", "unk", "eos") if names[role] not in vocab]
        if missing:
            raise DataError(f"{origin}: has {names['bos']} but not {', '.join(missing)}; a {scheme} vocabulary "
                            f"needs {' '.join(n for n in names.values() if n != names['mask'])} "
                            f"(and {names['mask']} to pretrain)")
        return SpecialIds(**{role: vocab.get(name) for role, name in names.items()})
    raise DataError(f"{origin}: no known special tokens; expected BERT's [PAD] [UNK] [CLS] [SEP] [MASK] or "
                    "the BPE <pad> <unk> <s> </s> <mask>")


def _text_of(path: str, what: str) -> str:
    try:
        return read_bytes(path).decode("utf-8")
    except FileNotFoundError:
        raise DataError(f"{path} not found; expected {what}") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}); expected {what}") from None


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers.Tokenizer`, held as its tokenizer.json. Encoding never adds the backend's own
    [CLS]/[SEP] or <s>/</s>, and never truncates or pads: the objectives do that with `specials`."""

    kind = "huggingface"

    def __init__(self, tokenizer_json: bytes, card: dict | None = None, origin: str = "tokenizer.json",
                 **card_extra):
        import tokenizers

        try:
            self.backend = tokenizers.Tokenizer.from_str(tokenizer_json.decode("utf-8"))
        except Exception as error:  # tokenizers raises a bare Exception on bad JSON or unknown fields
            raise DataError(f"{origin} is not a valid Hugging Face tokenizer.json ({error}); write one with "
                            "HFTokenizer.from_wordpiece / from_bpe and save()") from None
        self.backend.no_truncation()
        self.backend.no_padding()
        self.specials = _specials_of(self.backend.get_vocab(with_added_tokens=True), origin)
        self._set_identity(tokenizer_json, card, **card_extra)

    @classmethod
    def _build(cls, backend, origin: str, **card_extra) -> "HFTokenizer":
        names = _SCHEMES["BERT" if "[CLS]" in backend.get_vocab() else "BPE"]
        present = [n for n in names.values() if backend.token_to_id(n) is not None]
        # Registered as special: "[MASK]" in a text is the mask token, not five characters.
        backend.add_special_tokens(present)
        return cls(backend.to_str(pretty=True).encode("utf-8"), origin=origin, **card_extra)

    @classmethod
    def from_wordpiece(cls, vocab_txt_path: str, lowercase: bool = True) -> "HFTokenizer":
        """A BERT WordPiece tokenizer from its vocab.txt (one token per line, the line number is the id), with
        BERT's normalisation (lowercased and accents stripped when `lowercase`, as bert-base-uncased)."""
        from tokenizers import Tokenizer as Backend, decoders, models, normalizers, pre_tokenizers

        what = "a BERT vocab.txt (one token per line, [PAD] [UNK] [CLS] [SEP] [MASK] among them)"
        lines = _text_of(vocab_txt_path, what).split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        vocab: dict[str, int] = {}
        for number, line in enumerate(lines):
            token = line.rstrip("\r")
            if token in vocab:
                raise DataError(f"{vocab_txt_path}:{number + 1}: token {token!r} repeats line "
                                f"{vocab[token] + 1}; expected {what}")
            vocab[token] = number
        if "[CLS]" not in vocab:
            raise DataError(f"{vocab_txt_path} has no [CLS] token; expected {what}")
        _specials_of(vocab, vocab_txt_path)
        backend = Backend(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        backend.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                        strip_accents=None, lowercase=lowercase)
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        return cls._build(backend, vocab_txt_path, model="wordpiece", lowercase=lowercase, files=[vocab_txt_path])

    @classmethod
    def from_bpe(cls, vocab_json_path: str, merges_txt_path: str) -> "HFTokenizer":
        """A byte-level BPE tokenizer from vocab.json ({token: id}) and merges.txt (one "a b" merge per line),
        set up as the official IWSLT one: no normalisation, no prefix space, byte-level decoding."""
        from tokenizers import Tokenizer as Backend, decoders, models, pre_tokenizers

        try:
            vocab = json.loads(_text_of(vocab_json_path, "a BPE vocab.json"))
        except json.JSONDecodeError as error:
            raise DataError(f"{vocab_json_path} is not JSON ({error}); expected a BPE vocab.json, "
                            '{"token": id, ...}') from None
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise DataError(f"{vocab_json_path} is not a BPE vocab.json: expected one object "
                            '{"token": id, ...} with integer ids')
        merges = []
        for number, line in enumerate(_text_of(merges_txt_path, "a BPE merges.txt").split("\n")):
            line = line.rstrip("\r")
            if not line or (number == 0 and line.startswith("#version")):
                continue
            parts = line.split(" ")
            if len(parts) != 2:
                raise DataError(f"{merges_txt_path}:{number + 1}: {line[:60]!r} is not a merge; expected "
                                "two tokens separated by one space per line")
            merges.append((parts[0], parts[1]))
        specials = _specials_of(vocab, vocab_json_path)
        try:
            model = models.BPE(vocab, merges, unk_token="<unk>" if specials.unk is not None else None)
        except Exception as error:  # e.g. a merge of tokens the vocabulary lacks
            raise DataError(f"{merges_txt_path} does not fit {vocab_json_path}: {error}") from None
        backend = Backend(model)
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        return cls._build(backend, vocab_json_path, model="byte-level-bpe", files=[vocab_json_path, merges_txt_path])

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def _decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=True)

    def id_to_piece(self, token_id: int) -> str:
        return self.backend.id_to_token(int(token_id)) or ""


# --- training a sentencepiece tokenizer --------------------------------------------------------------------

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


def train_tokenizer(texts: Iterable[str], options: TokenizerOptions) -> SentencePieceTokenizer:
    """Train on an iterable of documents (each may span many lines)."""
    if options.model_type not in ("unigram", "bpe"):
        raise DataError(f"tokenizer model_type must be 'unigram' or 'bpe' (got {options.model_type!r})")
    if options.vocab_size < 16:
        raise DataError(f"tokenizer vocab_size must be >= 16 (got {options.vocab_size})")
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
            "special_ids": SENTENCEPIECE_SPECIALS.as_dict()}
    return SentencePieceTokenizer(model_bytes, card)
