import hashlib
import json

import pytest

from ardiff_scale.data.shards import ShardSet, build_shards, read_shard
from ardiff_scale.data.tokenizer import TokenizerOptions, train_tokenizer
from ardiff_scale.errors import DataError


def test_real_documents_decode_back_to_their_text(tmp_path, docs, tokenizer):
    # Windows long enough that no document is split: each sample is one whole document.
    manifest = build_shards(docs[:12], "pretrain", str(tmp_path), tokenizer, samples_per_shard=5,
                            max_tokens=1_000_000, min_tokens=1, processes=2)
    assert manifest["totals"]["samples"] == 12 and manifest["totals"]["shards"] == 3
    shard_set = ShardSet.open(str(tmp_path))
    samples = [s for url in shard_set.urls for s in read_shard(url, shard_set.dtype)]
    assert [s["text"] for s in samples] == docs[:12]
    # identity normalisation and byte fallback: the ids decode to exactly the original text
    assert [tokenizer.decode(s["ids"].tolist()) for s in samples] == docs[:12]


def test_manifest_counts_hashes_and_provenance(shard_dir, tokenizer):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert manifest["kind"] == "pretrain" and manifest["dtype"] == "uint16"
    assert manifest["tokenizer"] == {"sha256": tokenizer.sha256, "vocab_size": 1000,
                                     "special_ids": {"pad": 0, "unk": 1, "bos": 2, "eos": 3, "mask": 4}}
    total = 0
    for entry in manifest["shards"]:
        data = (shard_dir / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["bytes"]
        samples = read_shard(str(shard_dir / entry["name"]), "uint16")
        assert len(samples) == entry["samples"]
        assert sum(len(s["ids"]) for s in samples) == entry["tokens"]
        total += entry["samples"]
    totals = manifest["totals"]
    assert total == totals["samples"] and totals["documents"] == 40
    # 40 documents of 200+ words cannot fit 128 tokens: every one is split, and the rule is recorded
    assert totals["documents_split"] == 40 and manifest["rules"] == {"max_tokens": 128, "min_tokens": 16}
    assert all(len(s["ids"]) <= 128 for s in read_shard(str(shard_dir / "shard-000000.tar"), "uint16"))


def test_build_is_deterministic(tmp_path, docs, tokenizer):
    a = build_shards(docs[:6], "pretrain", str(tmp_path / "a"), tokenizer, samples_per_shard=4, max_tokens=256)
    b = build_shards(docs[:6], "pretrain", str(tmp_path / "b"), tokenizer, samples_per_shard=4, max_tokens=256)
    assert [s["sha256"] for s in a["shards"]] == [s["sha256"] for s in b["shards"]]


def test_tokenizer_mismatch_is_refused(shard_dir, docs):
    other = train_tokenizer(docs[:5], TokenizerOptions(vocab_size=600, model_type="bpe"))
    with pytest.raises(DataError, match="tokenizer mismatch"):
        ShardSet.open(str(shard_dir)).check_tokenizer(other)


def test_missing_shards_fail_before_reading(shard_dir, tmp_path):
    with pytest.raises(DataError, match=r"1 of 3 shards do not exist, first: .*shard-000099.tar"):  # 2 real + 1
        ShardSet.open(f"{shard_dir}/shard-{{000000..000001}}.tar,{shard_dir}/shard-000099.tar")
    with pytest.raises(DataError, match="no manifest.json"):
        ShardSet.open(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="corpus file, not shards"):
        ShardSet.open(str(tmp_path / "corpus.jsonl.gz"))


def test_brace_expanded_urls_without_manifest_dir(shard_dir):
    shard_set = ShardSet.open(f"file://{shard_dir}/shard-{{000000..000002}}.tar")
    assert len(shard_set.urls) == 3 and shard_set.manifest is not None


def test_truncated_shard_is_reported_with_its_url(shard_dir, tmp_path):
    data = (shard_dir / "shard-000001.tar").read_bytes()
    bad = tmp_path / "shard-000001.tar"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=f"unreadable shard {bad}"):
        read_shard(str(bad), "uint16")


def test_seq2seq_shards_keep_both_sides_and_references(tmp_path, tokenizer):
    from ardiff_scale.tasks.readers import Pair
    pairs = [Pair(id=f"p{i}", src=f"ein Satz {i}", tgt=f"a sentence {i}", refs=[f"a sentence {i}", "other"])
             for i in range(7)]
    manifest = build_shards(pairs, "seq2seq", str(tmp_path), tokenizer, samples_per_shard=4)
    assert manifest["kind"] == "seq2seq" and manifest["totals"]["samples"] == 7
    shard_set = ShardSet.open(str(tmp_path))
    samples = [s for url in shard_set.urls for s in read_shard(url, shard_set.dtype)]
    assert [s["id"] for s in samples] == [f"p{i}" for i in range(7)]
    assert tokenizer.decode(samples[3]["src_ids"].tolist()) == "ein Satz 3"
    assert samples[3]["refs"] == ["a sentence 3", "other"]
