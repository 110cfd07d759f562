"""`ardiff import-official` end to end: an official checkpoint and a WordPiece vocabulary in, a model directory
that load_model_dir and `ardiff generate` read out (fixture: as in test_official.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_official import FIXTURE, _newest

from ardiff_scale.export import load_model_dir
from ardiff_scale.interop.official import load_official


@pytest.fixture(scope="module")
def official():
    return load_official(_newest("model_checkpoint-*"), FIXTURE / "config.yaml")

def _wordpiece_vocab(path: Path, size: int) -> Path:
    """A BERT-layout vocab.txt of `size` entries: [PAD] 0, [unused*], [UNK] [CLS] [SEP] [MASK] at 100..103."""
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    base = ["the", "a", "cat", "dog", "sat", "on", "mat", "and", "ran", "away", "house", "big", "small", "red"]
    while len(words) < size:
        n = len(words)
        words.append(base[n % len(base)] + ("" if n < 104 + len(base) else f"{n}"))
    path.write_text("\n".join(words[:size]) + "\n")
    return path


@pytest.mark.integration
def test_import_official_writes_a_model_directory_generate_loads(tmp_path, official):
    vocab = _wordpiece_vocab(tmp_path / "vocab.txt", official.model.vocab_size)
    out = tmp_path / "imported"
    ardiff = [sys.executable, "-m", "ardiff_scale.cli"]
    done = subprocess.run([*ardiff, "import-official", "--checkpoint", str(_newest("model_checkpoint-*")),
                           "--config", str(FIXTURE / "config.yaml"), "--vocab", str(vocab), "--output", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "imported" in done.stderr
    model, run_config, tokenizer = load_model_dir(str(out))
    assert run_config.model == official.model and tokenizer.vocab_size == official.model.vocab_size
    for name, tensor in official.weights.items():
        assert torch.equal(model.state_dict()[name], tensor), name
    # The MLflow pyfunc wrapper loads it like any model directory and generates.
    from types import SimpleNamespace

    from ardiff_scale.tracking.registry import ARDiffusionPyfunc
    pyfunc = ARDiffusionPyfunc()
    pyfunc.load_context(SimpleNamespace(artifacts={"model_dir": str(out)}))
    (text,) = pyfunc.predict(None, ["the dog ran away"])
    assert isinstance(text, str)
    generated = subprocess.run([*ardiff, "generate", "--model", str(out), "--source", "the cat sat on the mat"],
                               capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.strip()
    # A second import into the same directory is refused; a vocabulary of another size too.
    again = subprocess.run([*ardiff, "import-official", "--checkpoint", str(_newest("model_checkpoint-*")),
                            "--config", str(FIXTURE / "config.yaml"), "--vocab", str(vocab), "--output", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "not empty" in again.stderr
    small = _wordpiece_vocab(tmp_path / "small.txt", official.model.vocab_size - 1)
    wrong = subprocess.run([*ardiff, "import-official", "--checkpoint", str(_newest("model_checkpoint-*")),
                            "--config", str(FIXTURE / "config.yaml"), "--vocab", str(small),
                            "--output", str(tmp_path / "other")], capture_output=True, text=True, timeout=300)
    assert wrong.returncode != 0 and "word_embedding rows" in wrong.stderr


