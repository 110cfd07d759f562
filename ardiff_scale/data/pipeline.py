"""Shards to model-ready batches: validate a shard set once, open the stream for a rank, apply the objective
and collate inside the reader's workers.

The special ids the objective wraps, masks and pads with travel inside `BatchMaker`, which the workers unpickle;
they come from the shards' manifest, so they are those of the tokenizer that built the shards.

The objective's randomness (which span a pretraining window loses) is seeded by (seed, epoch, shard name, key),
not drawn from a running generator, so a resumed stream masks every sample exactly as before.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from ardiff_scale.data.objectives import Example, collate, paragraph_denoise, require_mask, seq2seq_example
from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.stream import BatchLoader, BatchStream, StreamOptions
from ardiff_scale.data.tokenizer import Tokenizer
from ardiff_scale.vocab import SENTENCEPIECE_SPECIALS, SpecialIds


@dataclass
class BatchMaker:
    """Turns stream samples into one batch for the shards' kind, in the reader's worker process; returns the
    tensors and what it counted (samples truncated to the run's lengths)."""

    kind: str
    source_len: int
    target_len: int
    mask_fraction: float
    seed: int
    specials: SpecialIds = SENTENCEPIECE_SPECIALS

    def __post_init__(self) -> None:
        if self.kind == "pretrain":
            require_mask(self.specials)

    def example(self, sample: dict, notes: dict[str, int]) -> Example:
        if self.kind == "pretrain":
            ids = sample["ids"].tolist()
            if len(ids) > self.source_len - 2:  # shards built for longer windows than this run's source_len
                notes["truncated_sources"] += 1
                ids = ids[:self.source_len - 2]
            # The shard's file name, not its URL: the same shards read from another mount or bucket mask
            # every window as before.
            shard_name = sample["__url__"].rstrip("/").rsplit("/", 1)[-1]
            rng = random.Random(f"{self.seed}:{sample['__epoch__']}:{shard_name}:{sample['__key__']}")
            return paragraph_denoise(ids, self.target_len, self.mask_fraction, rng, self.specials)
        src, tgt = sample["src_ids"].tolist(), sample["tgt_ids"].tolist()
        notes["truncated_sources"] += len(src) > self.source_len - 2
        notes["truncated_targets"] += len(tgt) > self.target_len - 2
        return seq2seq_example(src, tgt, self.source_len, self.target_len, self.specials)

    def __call__(self, samples: list[dict]) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        notes = {"truncated_sources": 0, "truncated_targets": 0}
        examples = [self.example(s, notes) for s in samples]
        return collate(examples, self.target_len, self.source_len, self.specials), notes


def open_shards(location: str, tokenizer: Tokenizer | None = None) -> ShardSet:
    """The shard set at `location`, every shard checked to exist, and the tokenizer checked against the
    manifest: the one-time validation that a job's rank 0 does before it hands the set to every rank."""
    shard_set = ShardSet.open(location)
    if tokenizer is not None:
        shard_set.check_tokenizer(tokenizer)
    return shard_set


@dataclass(frozen=True)
class BatchOptions:
    """How stream samples become this run's batches."""

    source_len: int
    target_len: int
    mask_fraction: float  # pretraining: the share of a window's tokens masked to form the target
    seed: int  # keys the masking, with the epoch and the sample
    batch_size: int


def open_stream(shard_set: ShardSet, stream: StreamOptions, batch: BatchOptions, rank: int, world: int,
                num_workers: int, specials: SpecialIds | None = None) -> BatchLoader:
    """The batch loader of this rank for an already validated shard set (see `open_shards`): batches made in
    `num_workers` worker processes (-1: auto, see `BatchLoader`), with the special ids of the shards'
    tokenizer (or `specials`)."""
    maker = BatchMaker(shard_set.kind or "pretrain", batch.source_len, batch.target_len, batch.mask_fraction,
                       batch.seed, specials or shard_set.specials)
    return BatchLoader(BatchStream(shard_set, stream, rank, world, batch.batch_size, maker), num_workers=num_workers)
