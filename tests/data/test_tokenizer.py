import json

import pytest

from ardiff_scale.data.tokenizer import BOS, EOS, MASK, PAD, Tokenizer, TokenizerOptions, train_tokenizer
from ardiff_scale.errors import DataError

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
