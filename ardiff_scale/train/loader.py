"""The run config's view of the data: a rank's batch loader with the stream and batch options the config
sets (`data.*`, `train.seed`, `train.micro_batch_size`)."""

from __future__ import annotations

from ardiff_scale.config import Config
from ardiff_scale.data.pipeline import BatchOptions, open_stream
from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.stream import BatchLoader, StreamOptions
from ardiff_scale.vocab import SpecialIds


def open_loader(shard_set: ShardSet, config: Config, rank: int, world: int, epochs: int,
                batch_size: int | None = None, num_workers: int | None = None,
                specials: SpecialIds | None = None) -> BatchLoader:
    """This rank's loader over a validated shard set: micro-batches of `batch_size` (default
    train.micro_batch_size) made in data.num_workers worker processes (or `num_workers`); `epochs` 0 is
    endless."""
    data = config.data
    stream = StreamOptions(seed=config.train.seed, open_shards=data.open_shards, epochs=epochs,
                           on_error=data.on_error, prefetch_shards=data.prefetch_shards)
    batch = BatchOptions(data.source_len, data.target_len, data.mask_fraction, config.train.seed,
                         batch_size or config.train.micro_batch_size)
    return open_stream(shard_set, stream, batch, rank, world,
                       data.num_workers if num_workers is None else num_workers, specials)
