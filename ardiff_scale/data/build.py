"""The data commands: train a tokenizer and build shards from corpora, task files or existing shards."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Iterator, Sequence

from ardiff_scale.data.corpus import read_documents
from ardiff_scale.data.shards import MANIFEST, ShardSet, build_shards, read_shard
from ardiff_scale.data.tokenizer import Tokenizer, TokenizerOptions, train_tokenizer
from ardiff_scale.errors import DataError
from ardiff_scale.tasks.readers import read_pairs

log = logging.getLogger("ardiff.data")


def is_shard_location(url: str) -> bool:
    return url.endswith(".tar") or url.endswith(MANIFEST) or "{" in url or not any(
        url.endswith(ext) for ext in (".jsonl", ".jsonl.gz", ".txt", ".txt.gz"))


def texts_of(inputs: Sequence[str], field: str = "text") -> Iterator[str]:
    """Documents from corpus files, or the texts inside shards (both sides of seq2seq pairs)."""
    for url in inputs:
        if not is_shard_location(url):
            yield from read_documents(url, field)
            continue
        shard_set = ShardSet.open(url)
        for shard in shard_set.urls:
            for sample in read_shard(shard, shard_set.dtype):
                if "text" in sample:
                    yield sample["text"]
                else:
                    yield sample["src"]
                    yield sample["tgt"]


def tokenizer_command(inputs: Sequence[str], output: str, options: TokenizerOptions, field: str) -> Tokenizer:
    started = time.perf_counter()
    tokenizer = train_tokenizer(texts_of(inputs, field), options)
    tokenizer.save(output)
    log.info("tokenizer: %d pieces, sha256 %s, trained in %.1f s -> %s", tokenizer.vocab_size,
             tokenizer.sha256[:12], time.perf_counter() - started, output)
    return tokenizer


@dataclass
class ShardsOptions:
    """What `ardiff shards build` tokenises, with what, and into which shards."""

    inputs: Sequence[str]  # files, directories or URLs to read
    tokenizer: str  # a sentencepiece .model or a Hugging Face tokenizer.json, its card beside it
    output: str  # shard directory: a local path or a URL
    kind: str = "pretrain"  # "pretrain" (documents) or "seq2seq" (task pairs)
    # pretrain: text or jsonl; seq2seq: a task reader's format (jsonl, xsum, xsum-lines, cnndm, iwslt, commongen).
    format: str = "jsonl"
    split: str = "train"  # the seq2seq split read: train, valid or test
    samples_per_shard: int = 2000
    max_tokens: int = 512  # pretrain window length; longer documents are split into windows
    min_tokens: int = 30  # shorter pretrain windows are dropped and counted
    processes: int = 2  # tokenising processes
    field: str = "text"  # the JSON field holding a document's text


def shards_command(options: ShardsOptions) -> dict:
    tokenizer = Tokenizer.load(options.tokenizer)
    inputs = list(options.inputs)
    if options.kind == "pretrain":
        if options.format not in ("text", "jsonl"):
            raise DataError(f"pretraining shards read plain documents: --format text or jsonl "
                            f"(got {options.format!r})")
        records: Iterator = (doc for url in inputs for doc in read_documents(url, options.field))
    else:
        records = (pair for url in inputs for pair in read_pairs(url, options.format, options.split))
    return build_shards(records, options.kind, options.output, tokenizer, samples_per_shard=options.samples_per_shard,
                        max_tokens=options.max_tokens, min_tokens=options.min_tokens, processes=options.processes,
                        inputs=inputs)


def inspect_command(location: str, samples: int) -> None:
    shard_set = ShardSet.open(location)
    if shard_set.manifest:
        summary = {k: shard_set.manifest[k] for k in ("kind", "dtype", "tokenizer", "totals", "rules")}
        print(json.dumps(summary, indent=2))
    else:
        print(f"{len(shard_set.urls)} shards, no manifest")
    for sample in read_shard(shard_set.urls[0], shard_set.dtype)[:samples]:
        text = sample.get("text") or f"{sample['src']}  =>  {sample['tgt']}"
        print(f"- {sample['__key__']}: {' '.join(text.split())[:200]}")
