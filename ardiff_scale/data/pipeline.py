"""Shards to model-ready batches: open the stream for this rank, apply the objective, collate, count.

The objective's randomness (which span a pretraining window loses) is seeded by (seed, epoch, shard name, key),
not drawn from a running generator, so a resumed stream masks every sample exactly as before.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ardiff_scale.config import Config
from ardiff_scale.data.objectives import Example, collate, paragraph_denoise, seq2seq_example
from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.stream import ShardLoader, ShardStream, StreamOptions
from ardiff_scale.data.tokenizer import Tokenizer
from ardiff_scale.errors import DataError


@dataclass
class BatchMaker:
    """Turns stream samples into one batch for the shards' kind; counts what collation truncates."""

    kind: str
    source_len: int
    target_len: int
    mask_fraction: float
    seed: int
    counts: dict[str, int] = field(default_factory=lambda: {"truncated_sources": 0, "truncated_targets": 0})

    def example(self, sample: dict) -> Example:
        if self.kind == "pretrain":
            ids = sample["ids"].tolist()
            if len(ids) > self.source_len - 2:  # shards built for longer windows than this run's source_len
                self.counts["truncated_sources"] += 1
                ids = ids[:self.source_len - 2]
            # The shard's file name, not its URL: the same shards read from another mount or bucket mask
            # every window as before.
            shard_name = sample["__url__"].rstrip("/").rsplit("/", 1)[-1]
            rng = random.Random(f"{self.seed}:{sample['__epoch__']}:{shard_name}:{sample['__key__']}")
            return paragraph_denoise(ids, self.target_len, self.mask_fraction, rng)
        src, tgt = sample["src_ids"].tolist(), sample["tgt_ids"].tolist()
        self.counts["truncated_sources"] += len(src) > self.source_len - 2
        self.counts["truncated_targets"] += len(tgt) > self.target_len - 2
        return seq2seq_example(src, tgt, self.source_len, self.target_len)

    def __call__(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return collate([self.example(s) for s in samples], self.target_len, self.source_len)


def open_stream(location: str, config: Config, rank: int, world: int, epochs: int,
                tokenizer: Tokenizer | None = None) -> tuple[ShardLoader, BatchMaker]:
    """The loader for this rank and the batch maker for the shards' kind. Fails before any training if a
    shard is missing or the tokenizer is not the one the shards were built with."""
    shard_set = ShardSet.open(location)
    if tokenizer is not None:
        shard_set.check_tokenizer(tokenizer)
    kind = shard_set.kind or "pretrain"
    data = config.data
    options = StreamOptions(seed=config.train.seed, open_shards=data.open_shards, epochs=epochs,
                            on_error=data.on_error)
    loader = ShardLoader(ShardStream(shard_set, options, rank, world), num_workers=data.num_workers)
    maker = BatchMaker(kind, data.source_len, data.target_len, data.mask_fraction, config.train.seed)
    return loader, maker


def batch_iterator(loader: ShardLoader, maker: BatchMaker, batch_size: int) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of `batch_size` samples. At the end of a finite stream a partial batch is dropped (it is
    reported); mid-stream the loader's state, taken between batches, covers exactly the batches yielded."""
    buffer: list[dict] = []
    yielded = 0
    # Page-locked batches let the trainer's copy to the GPU run asynchronously (non_blocking).
    pin = torch.cuda.is_available()
    for sample in loader:
        buffer.append(sample)
        if len(buffer) == batch_size:
            batch = maker(buffer)
            yield {k: v.pin_memory() for k, v in batch.items()} if pin else batch
            yielded += 1
            buffer = []
    if buffer and not yielded:
        raise DataError(f"the stream has {len(buffer)} samples, fewer than one batch of {batch_size}")
    if buffer:
        maker.counts["dropped_at_end"] = maker.counts.get("dropped_at_end", 0) + len(buffer)
