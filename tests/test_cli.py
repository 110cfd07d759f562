"""The `ardiff` command as a user runs it: real subprocesses, real files."""

import gzip
import json
import subprocess
import sys

import pytest

from ardiff_scale.export import load_model_dir


def ardiff(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "ardiff_scale.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_help_lists_the_subcommands():
    out = ardiff("--help")
    assert out.returncode == 0
    for name in ("model-info", "tokenizer", "pretrain", "generate", "demo"):
        assert name in out.stdout


def test_model_info_counts_the_xsum_preset():
    out = ardiff("model-info", "--preset", "xsum")
    assert out.returncode == 0, out.stderr
    assert "73,806,522 parameters" in out.stdout and "decoder" in out.stdout and "GFLOP" in out.stdout


def test_bad_override_fails_with_a_message_naming_the_field():
    out = ardiff("model-info", "--preset", "tiny", "train.lr=fast")
    assert out.returncode == 2
    assert "train.lr" in out.stderr and "'fast'" in out.stderr and "Traceback" not in out.stderr


def test_generate_from_a_missing_model_dir_is_a_clear_error(tmp_path):
    out = ardiff("generate", "--model", str(tmp_path), "--source", "hello")
    assert out.returncode == 2
    assert "missing model.safetensors" in out.stderr


@pytest.mark.slow
def test_tokenizer_pretrain_generate_end_to_end(tmp_path):
    corpus = tmp_path / "corpus.jsonl.gz"
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        for i in range(60):
            text = (f"Chapter {i}. It is a truth universally acknowledged that a single man in possession of a good "
                    f"fortune must be in want of a wife, said the {i}th narrator to the assembled company. ") * 3
            f.write(json.dumps({"text": text}) + "\n")
    tok = tmp_path / "tok.model"
    out = ardiff("tokenizer", "train", "--input", str(corpus), "--output", str(tok), "--vocab-size", "400",
                 "--model-type", "bpe")
    assert out.returncode == 0, out.stderr
    shards = tmp_path / "shards"
    out = ardiff("shards", "build", "--input", str(corpus), "--tokenizer", str(tok), "--output", str(shards),
                 "--samples-per-shard", "20", "--max-tokens", "64", "--min-tokens", "10")
    assert out.returncode == 0, out.stderr
    out = ardiff("shards", "inspect", str(shards))
    assert out.returncode == 0 and '"kind": "pretrain"' in out.stdout and "Chapter" in out.stdout
    out = ardiff("shards", "bench", str(shards), "--workers", "1", "--batch", "4", "--seconds", "0",
                 "--source-len", "80", "--target-len", "24", "--json")
    assert out.returncode == 0, out.stderr
    bench = json.loads(out.stdout)
    manifest = json.loads((shards / "manifest.json").read_text())
    # One epoch: every sample but the first batch's is measured (the first batch times the start-up).
    assert bench["samples"] == manifest["totals"]["samples"] - 4 and bench["workers"] == 1
    assert bench["samples_per_s"] > 0 and bench["main_cpu_ms_per_batch"] > 0 and bench["shards_failed"] == 0
    out = ardiff("shards", "bench", str(tmp_path / "nowhere"))
    assert out.returncode != 0 and "manifest.json" in out.stderr
    run = tmp_path / "run"
    out = ardiff("pretrain", f"data.train={shards}", f"data.valid={shards}", f"data.tokenizer={tok}",
                 "model.vocab_size=400", "train.max_steps=15", "train.micro_batch_size=4", "train.log_every=5",
                 f"train.output_dir={run}")
    assert out.returncode == 0, out.stderr
    assert "validation loss" in out.stderr and "step 15/15" in out.stderr
    assert (run / "loss.png").stat().st_size > 1000
    assert (run / "model-ema" / "model.safetensors").exists() and (run / "metrics.jsonl").exists()
    model, config, tokenizer = load_model_dir(str(run / "model"))
    assert config.train.max_steps == 15 and tokenizer.vocab_size == 400
    out = ardiff("generate", "--model", str(run / "model"), "--source", "a single man <mask> a good fortune",
                 "--candidates", "2", "--steps", "3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("source:") == 1 and "[1]" in out.stdout
    figure = tmp_path / "figures" / "fig1.png"
    out = ardiff("generate", "--model", str(run / "model"), "--source", "a single man <mask> a good fortune",
                 "--steps", "3", "--plot-trajectory", str(figure))
    assert out.returncode == 0, out.stderr
    assert "[0]" in out.stdout and str(figure) in out.stderr
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    out = ardiff("generate", "--model", str(run / "model"), "--source", "x", "--plot-trajectory",
                 str(tmp_path / "fig1.pdf"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "--plot-trajectory" in out.stderr and "fig1.pdf" in out.stderr


def test_pretrain_with_a_mismatched_vocabulary_names_the_fix(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": f"word{i} " * 50}) for i in range(30)))
    tok = tmp_path / "tok.model"
    assert ardiff("tokenizer", "train", "--input", str(corpus), "--output", str(tok), "--vocab-size", "300",
                  "--model-type", "bpe").returncode == 0
    out = ardiff("pretrain", f"data.train={corpus}", f"data.tokenizer={tok}", f"train.output_dir={tmp_path}/r")
    assert out.returncode == 2
    assert "model.vocab_size=300" in out.stderr



@pytest.mark.integration
def test_demo_reports_what_the_model_learned_beside_its_samples(tmp_path):
    """`make demo` end to end on the bundled corpus, at a few steps: samples, then the span scores against the
    unigram baseline, so that nobody reads meaning into word salad."""
    out = ardiff("demo", "--output", str(tmp_path / "demo"), "--minutes", "2", "train.max_steps=30",
                 "train.log_every=10")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("generated:") == 4
    assert "what it learned, on 32 held-out windows: span-token accuracy" in out.stdout
    assert "unigram baseline (always the most frequent span token" in out.stdout
    assert "masked spans at step 30" in out.stderr
    load_model_dir(str(tmp_path / "demo" / "model"))
