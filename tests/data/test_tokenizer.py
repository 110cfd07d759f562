import hashlib
import json
import pickle
import random

import pytest

from ardiff_scale.config import load_config
from ardiff_scale.data.objectives import collate, paragraph_denoise, seq2seq_example
from ardiff_scale.data.pipeline import BatchMaker, open_shards
from ardiff_scale.data.shards import build_shards
from ardiff_scale.data.tokenizer import (
    BOS,
    EOS,
    MASK,
    PAD,
    SENTENCEPIECE_SPECIALS,
    HFTokenizer,
    SentencePieceTokenizer,
    SpecialIds,
    Tokenizer,
    TokenizerOptions,
    tokenizer_file_in,
    tokenizer_file_name,
    train_tokenizer,
)
from ardiff_scale.errors import DataError
from ardiff_scale.tasks.readers import Pair
from ardiff_scale.train.loader import open_loader

TEXT = ["It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
        "want of a wife.\n\nHowever little known the feelings or views of such a man may be on his first "
        "entering a neighbourhood, this truth is so well fixed in the minds of the surrounding families."] * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT, TokenizerOptions(vocab_size=400, model_type="bpe"))


def test_reserved_ids_and_lossless_round_trip(tokenizer):
    p = tokenizer.processor
    assert (p.pad_id(), p.unk_id(), p.bos_id(), p.eos_id(), p.piece_to_id("<mask>")) == (PAD, 1, BOS, EOS, MASK)
    text = "A  single man,\tin possession — naïve café!"
    assert tokenizer.processor.decode(tokenizer.encode(text)) == text


def test_decode_drops_reserved_tokens(tokenizer):
    ids = tokenizer.encode("a single man")
    assert tokenizer.decode([BOS, *ids, MASK, EOS, PAD, PAD]) == "a single man"
    assert tokenizer.encode("the <mask> man").count(MASK) == 1


def test_save_load_and_card(tokenizer, tmp_path):
    path = str(tmp_path / "tok.model")
    tokenizer.save(path)
    card = json.loads((tmp_path / "tok.model.json").read_text())
    assert card["vocab_size"] == 400 and card["sha256"] == tokenizer.sha256
    loaded = Tokenizer.load(path)
    assert loaded.encode("a good fortune") == tokenizer.encode("a good fortune")


def test_tampered_model_is_refused(tokenizer, tmp_path):
    path = tmp_path / "tok.model"
    tokenizer.save(str(path))
    other = train_tokenizer(TEXT, TokenizerOptions(vocab_size=380, model_type="bpe"))
    path.write_bytes(other.model_bytes)
    with pytest.raises(DataError, match="does not match its card"):
        Tokenizer.load(str(path))


def test_missing_tokenizer_and_bad_options(tmp_path):
    with pytest.raises(DataError, match="tokenizer not found"):
        Tokenizer.load(str(tmp_path / "nope.model"))
    with pytest.raises(DataError, match="model_type"):
        train_tokenizer(TEXT, TokenizerOptions(model_type="wordpiece"))
    with pytest.raises(DataError, match="no text"):
        train_tokenizer(["", "  \n"], TokenizerOptions(vocab_size=50))


# --- Hugging Face tokenizers: BERT WordPiece and byte-level BPE -------------------------------------------

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "play", "run", "man", "good", "fortune", "single", "in",
         "of", "truth", "wife", "want", "must", "be", "is", "it", "cafe", "naive", ".", ",", "!", "?"]
PIECES = ["##s", "##ing", "##ed", "##er", "##ly"]


@pytest.fixture(scope="module")
def wordpiece_vocab(tmp_path_factory):
    """A bert-base-uncased-shaped vocab.txt: [PAD] at 0, [unusedN] fillers, [UNK] [CLS] [SEP] [MASK] at 100..103."""
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *PIECES]
    path = tmp_path_factory.mktemp("wordpiece") / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def wordpiece(wordpiece_vocab):
    return HFTokenizer.from_wordpiece(str(wordpiece_vocab))


def train_bpe(directory, specials=("<pad>", "<s>", "</s>", "<unk>", "<mask>")):
    """A byte-level BPE as the official IWSLT script trains one, saved as vocab.json + merges.txt."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator([*TEXT, "Ein Satz über Bären, naïve café — 日本語 🙂"] * 3, trainer)
    directory.mkdir(parents=True, exist_ok=True)
    backend.model.save(str(directory))
    return directory / "vocab.json", directory / "merges.txt"


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    vocab, merges = train_bpe(tmp_path_factory.mktemp("bpe"))
    return HFTokenizer.from_bpe(str(vocab), str(merges))


def test_wordpiece_has_berts_special_ids(wordpiece):
    assert wordpiece.specials == SpecialIds(pad=0, unk=100, bos=101, eos=102, mask=103)
    assert wordpiece.vocab_size == 104 + len(WORDS) + len(PIECES)
    assert [wordpiece.id_to_piece(i) for i in (0, 101, 102, 103)] == ["[PAD]", "[CLS]", "[SEP]", "[MASK]"]


def test_wordpiece_lowercases_splits_pieces_and_round_trips(wordpiece):
    ids = wordpiece.encode("The Cats SAT on a Mat!")
    assert [wordpiece.id_to_piece(i) for i in ids] == ["the", "cat", "##s", "sat", "on", "a", "mat", "!"]
    assert wordpiece.decode(ids) == "the cats sat on a mat!"
    assert wordpiece.encode("Café naïve") == wordpiece.encode("cafe naive")  # uncased BERT strips accents
    assert wordpiece.encode_batch(["a cat", "the dog"]) == [wordpiece.encode("a cat"), wordpiece.encode("the dog")]


def test_wordpiece_unknown_words_and_specials(wordpiece):
    assert wordpiece.encode("the zebra sat") == [wordpiece.encode("the")[0], 100, wordpiece.encode("sat")[0]]
    assert wordpiece.encode("the [MASK] sat")[1] == 103  # the mask token is one token, not five characters
    assert 101 not in wordpiece.encode("the cat")  # encode never wraps: the objectives do
    cat = wordpiece.encode("a cat")
    assert wordpiece.decode([101, *cat, 103, 100, 102, 0, 0]) == "a cat"


def test_wordpiece_cased_keeps_case(wordpiece_vocab):
    cased = HFTokenizer.from_wordpiece(str(wordpiece_vocab), lowercase=False)
    assert cased.encode("The cat")[0] == 100 and cased.encode("the cat")[0] != 100
    assert cased.sha256 != HFTokenizer.from_wordpiece(str(wordpiece_vocab)).sha256


def test_wordpiece_save_load_through_tokenizer_json(wordpiece, tmp_path):
    path = tmp_path / "tokenizer.json"
    wordpiece.save(str(path))
    card = json.loads((tmp_path / "tokenizer.json.json").read_text())
    assert card["sha256"] == wordpiece.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert card["special_ids"] == {"pad": 0, "unk": 100, "bos": 101, "eos": 102, "mask": 103}
    loaded = Tokenizer.load(str(path))
    assert isinstance(loaded, HFTokenizer) and loaded.sha256 == wordpiece.sha256
    assert loaded.specials == wordpiece.specials
    assert loaded.encode("The cats sat!") == wordpiece.encode("The cats sat!")
    (tmp_path / "tokenizer.json.json").unlink()  # a tokenizer.json from elsewhere has no card
    assert Tokenizer.load(str(path)).specials == wordpiece.specials


def test_byte_level_bpe_round_trips_arbitrary_unicode(bpe):
    assert bpe.specials == SpecialIds(pad=0, unk=3, bos=1, eos=2, mask=4)  # the official IWSLT order
    texts = ["Ünïcödé ✓ 中文 😀 𝔘𝔫𝔦", "  leading and  double spaces\tand tabs\nand lines ",
             "ẞ ǅ ﬁ \u202ertl\u202c \u200b zero-width"]
    for text in texts:
        ids = bpe.encode(text)
        assert bpe.decode(ids) == text
        assert bpe.decode([bpe.specials.bos, *ids, bpe.specials.eos, 0, 0]) == text
    assert bpe.encode("the <mask> man").count(4) == 1


def test_byte_level_bpe_save_load(bpe, tmp_path):
    bpe.save(str(tmp_path / "tokenizer.json"))
    loaded = Tokenizer.load(str(tmp_path / "tokenizer.json"))
    assert loaded.sha256 == bpe.sha256 and loaded.specials == bpe.specials
    assert loaded.encode("naïve café 🙂") == bpe.encode("naïve café 🙂")


def test_load_dispatches_on_content(tokenizer, wordpiece, tmp_path):
    tokenizer.save(str(tmp_path / "a.model"))
    wordpiece.save(str(tmp_path / "b.json"))
    (tmp_path / "b.model").write_bytes((tmp_path / "b.json").read_bytes())  # the name does not decide
    assert isinstance(Tokenizer.load(str(tmp_path / "a.model")), SentencePieceTokenizer)
    assert isinstance(Tokenizer.load(str(tmp_path / "b.model")), HFTokenizer)
    assert Tokenizer.load(str(tmp_path / "a.model")).specials == SENTENCEPIECE_SPECIALS


def test_tokenizer_file_in_a_model_directory(tokenizer, wordpiece, tmp_path):
    with pytest.raises(DataError, match=f"{tmp_path} has no tokenizer: expected tokenizer.model or tokenizer.json"):
        tokenizer_file_in(str(tmp_path))
    wordpiece.save(str(tmp_path / tokenizer_file_name(wordpiece)))
    assert tokenizer_file_in(str(tmp_path)) == str(tmp_path / "tokenizer.json")
    assert tokenizer_file_name(tokenizer) == "tokenizer.model"


def test_missing_vocab_files_are_named(tmp_path):
    with pytest.raises(DataError, match=r"vocab.txt not found; expected a BERT vocab.txt \(one token per line"):
        HFTokenizer.from_wordpiece(str(tmp_path / "vocab.txt"))
    vocab, merges = train_bpe(tmp_path / "bpe")
    with pytest.raises(DataError, match="nope.json not found; expected a BPE vocab.json"):
        HFTokenizer.from_bpe(str(tmp_path / "nope.json"), str(merges))
    with pytest.raises(DataError, match="nope.txt not found; expected a BPE merges.txt"):
        HFTokenizer.from_bpe(str(vocab), str(tmp_path / "nope.txt"))
    with pytest.raises(DataError, match="tokenizer not found: .*tokenizer.json"):
        Tokenizer.load(str(tmp_path / "tokenizer.json"))


def test_garbled_vocab_files_say_what_is_valid(tmp_path, wordpiece_vocab):
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe\x00\x01garbage")
    with pytest.raises(DataError, match=r"binary is not UTF-8 text \(byte 0\); expected a BERT vocab.txt"):
        HFTokenizer.from_wordpiece(str(binary))
    no_specials = tmp_path / "words.txt"
    no_specials.write_text("the\ncat\n")
    with pytest.raises(DataError, match=r"words.txt has no \[CLS\] token; expected a BERT vocab.txt"):
        HFTokenizer.from_wordpiece(str(no_specials))
    partial = tmp_path / "partial.txt"
    partial.write_text("[CLS]\n[SEP]\nthe\n")
    with pytest.raises(DataError, match=r"partial.txt: has \[CLS\] but not \[PAD\], \[UNK\]"):
        HFTokenizer.from_wordpiece(str(partial))
    repeated = tmp_path / "repeated.txt"
    repeated.write_text(wordpiece_vocab.read_text() + "cat\n")
    with pytest.raises(DataError, match=r"repeated.txt:\d+: token 'cat' repeats line 107"):
        HFTokenizer.from_wordpiece(str(repeated))

    vocab, merges = train_bpe(tmp_path / "bpe")
    with pytest.raises(DataError, match=r"merges.txt is not JSON .*; expected a BPE vocab.json"):
        HFTokenizer.from_bpe(str(merges), str(vocab))  # the two files swapped
    bad_merges = tmp_path / "bad_merges.txt"
    bad_merges.write_text("#version: 0.2\nĠ t\nabc\n")
    with pytest.raises(DataError, match=r"bad_merges.txt:3: 'abc' is not a merge; expected two tokens"):
        HFTokenizer.from_bpe(str(vocab), str(bad_merges))

    for name, content in [("garbled.model", b"\x0a\x03abc garbage"), ("tokenizer.json", b'{"not": "a tokenizer"}')]:
        (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match="garbled.model is neither a sentencepiece model nor a Hugging Face"):
        Tokenizer.load(str(tmp_path / "garbled.model"))
    with pytest.raises(DataError, match="tokenizer.json is not a valid Hugging Face tokenizer.json"):
        Tokenizer.load(str(tmp_path / "tokenizer.json"))


def test_bpe_without_mask_token_is_refused_by_span_masking(tmp_path):
    vocab, merges = train_bpe(tmp_path, specials=("<pad>", "<s>", "</s>", "<unk>"))
    no_mask = HFTokenizer.from_bpe(str(vocab), str(merges))
    assert no_mask.specials.mask is None
    # Fine-tuning pairs need no mask token.
    pair = seq2seq_example(no_mask.encode("ein Satz"), no_mask.encode("a sentence"), 16, 16, no_mask.specials)
    assert pair.source[0] == no_mask.specials.bos
    with pytest.raises(DataError, match="span-masking pretraining needs a mask token, and this tokenizer has none"):
        paragraph_denoise(list(range(10, 40)), 16, 0.3, random.Random(0), no_mask.specials)
    with pytest.raises(DataError, match="needs a mask token"):
        BatchMaker("pretrain", 64, 16, 0.3, 0, no_mask.specials)
    with pytest.raises(DataError, match="needs a mask token"):
        build_shards(TEXT, "pretrain", str(tmp_path / "shards"), no_mask, processes=1)


def test_wordpiece_pairs_are_wrapped_in_cls_sep_and_padded_with_zero(wordpiece):
    specials = wordpiece.specials
    src, tgt = wordpiece.encode("the cat sat on the mat"), wordpiece.encode("a dog")
    long = seq2seq_example(src, tgt, 6, 8, specials)
    assert long.source == [101, *src[:4], 102] and long.target == [101, *tgt, 102]
    short = seq2seq_example(tgt, tgt, 6, 8, specials)
    batch = collate([long, short], target_len=8, specials=specials)
    assert batch["src_ids"][1].tolist() == [101, *tgt, 102, 0, 0]
    assert batch["src_mask"][1].tolist() == [1, 1, 1, 1, 0, 0]
    assert batch["tgt_ids"][0].tolist() == [101, *tgt, 102, 0, 0, 0, 0]
    masked = paragraph_denoise(src, 8, 0.3, random.Random(0), specials)
    assert masked.source[0] == 101 and masked.source[-1] == 102 and masked.source.count(103) == 1


def test_wordpiece_seq2seq_shards_read_back_through_the_stream(wordpiece, tmp_path):
    # Distinct sources, targets of 1 to 4 words; the last target is longer than target_len and is cut.
    pairs = [Pair(id=f"p{i}", src=" ".join(WORDS[i:i + 3]).title(), tgt=" ".join(WORDS[i + 3:i + 4 + i % 4]),
                  refs=[]) for i in range(11)]
    pairs.append(Pair(id="long", src="the truth", tgt="a good fortune " * 4, refs=[]))
    manifest = build_shards(pairs, "seq2seq", str(tmp_path), wordpiece, samples_per_shard=4, processes=1)
    assert manifest["tokenizer"]["special_ids"] == {"pad": 0, "unk": 100, "bos": 101, "eos": 102, "mask": 103}
    shard_set = open_shards(str(tmp_path), wordpiece)
    assert shard_set.specials == wordpiece.specials
    config = load_config(None, ["data.source_len=16", "data.target_len=10", "train.micro_batch_size=12",
                                "data.num_workers=1"])
    maker = BatchMaker("seq2seq", 16, 10, 0.3, 0, shard_set.specials)
    assert pickle.loads(pickle.dumps(maker)) == maker  # what a spawned DataLoader worker receives
    # One worker process: the special ids reach it inside the batch maker.
    batch = next(open_loader(shard_set, config, rank=0, world=1, epochs=1).tensors())
    src, mask, tgt = batch["src_ids"], batch["src_mask"], batch["tgt_ids"]
    assert src.shape == (12, 16) and tgt.shape == (12, 10)
    expected = {tuple([101, *wordpiece.encode(p.src), 102]): [101, *wordpiece.encode(p.tgt)[:8], 102] for p in pairs}
    assert len(expected) == 12
    for row in range(12):
        length = int(mask[row].sum())
        source = src[row, :length].tolist()
        assert mask[row].tolist() == [1] * length + [0] * (16 - length)
        assert src[row, length:].eq(0).all()
        target = expected[tuple(source)]
        assert tgt[row].tolist() == target + [0] * (10 - len(target))
        del expected[tuple(source)]
    assert not expected  # every pair came back once
