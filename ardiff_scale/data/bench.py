"""`ardiff shards bench`: how fast the training data path serves a shard set, measured before renting GPUs.

The shards go through exactly what training runs (the shard set opened and checked once, `BatchStream` in
DataLoader workers making micro-batches with the recipe's objective, `BatchLoader` in this process), and the
figures are the ones a GPU needs to be fed: samples, tokens and batches per second, the time to the first
batch, and the CPU time this process spends per batch (the training process's share; on a GPU host it is
time not spent launching kernels).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

from ardiff_scale.data.pipeline import BatchMaker
from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.stream import BatchLoader, BatchStream, StreamOptions
from ardiff_scale.errors import DataError


@dataclass
class BenchResult:
    location: str
    kind: str
    workers: int
    batch: int
    source_len: int
    target_len: int
    shards: int
    seconds: float  # measured after the first batch
    first_batch_s: float  # from opening the shard set, worker start-up included
    batches: int
    samples: int
    tokens: int  # tokens of the samples (source and target, padding left out)
    samples_per_s: float
    tokens_per_s: float
    batches_per_s: float
    main_cpu_ms_per_batch: float  # CPU time of this process (all its threads) per batch, after the first
    shards_failed: int


def bench_shards(location: str, workers: int = -1, batch: int = 8, seconds: float = 30.0, kind: str | None = None,
                 source_len: int = 512, target_len: int = 64, mask_fraction: float = 0.3, open_shards: int = 4,
                 prefetch_shards: int = 2, seed: int = 0) -> BenchResult:
    """Stream `location` for `seconds` (or to the end of one epoch with `seconds` <= 0)."""
    if batch < 1:
        raise DataError(f"--batch must be >= 1 (got {batch})")
    started = time.perf_counter()
    shard_set = ShardSet.open(location)
    kind = kind or shard_set.kind or "pretrain"
    maker = BatchMaker(kind, source_len, target_len, mask_fraction, seed, shard_set.specials)
    options = StreamOptions(seed=seed, open_shards=open_shards, epochs=1 if seconds <= 0 else 0,
                            prefetch_shards=prefetch_shards)
    loader = BatchLoader(BatchStream(shard_set, options, 0, 1, batch, maker), num_workers=workers)
    batches = samples = tokens = 0
    first_batch_s = steady_from = cpu_from = 0.0
    for item in loader:
        if batches == 0:
            steady_from, cpu_from = time.perf_counter(), time.process_time()
            first_batch_s = steady_from - started
        else:
            tensors = item.tensors
            samples += len(item.keys)
            tokens += int(tensors["src_mask"].sum()) + int((tensors["tgt_ids"] != maker.specials.pad).sum())
        batches += 1
        if seconds > 0 and time.perf_counter() - steady_from >= seconds:
            break
    if batches < 2:
        raise DataError(f"{location}: {batches} batch(es) of {batch}: too few samples to measure a rate; give a "
                        "smaller --batch or more shards")
    elapsed = time.perf_counter() - steady_from
    cpu = time.process_time() - cpu_from
    measured = batches - 1
    return BenchResult(location=location, kind=kind, workers=loader.num_workers, batch=batch, source_len=source_len,
                       target_len=target_len, shards=len(shard_set.urls), seconds=round(elapsed, 3),
                       first_batch_s=round(first_batch_s, 3), batches=measured, samples=samples, tokens=tokens,
                       samples_per_s=samples / elapsed, tokens_per_s=tokens / elapsed,
                       batches_per_s=measured / elapsed, main_cpu_ms_per_batch=1000 * cpu / measured,
                       shards_failed=len(loader.stats.failed))


def report(result: BenchResult, as_json: bool) -> str:
    if as_json:
        return json.dumps(asdict(result), indent=2)
    rows = [("shards", f"{result.shards} ({result.kind}), {result.shards_failed} unreadable"),
            ("workers", str(result.workers)),
            ("batch", f"{result.batch} x (source {result.source_len} + target {result.target_len})"),
            ("time to first batch", f"{result.first_batch_s:.2f} s"),
            ("measured", f"{result.seconds:.1f} s, {result.batches:,} batches"),
            ("samples/s", f"{result.samples_per_s:,.0f}"),
            ("tokens/s", f"{result.tokens_per_s:,.0f}"),
            ("batches/s", f"{result.batches_per_s:,.1f}"),
            ("main-process CPU per batch", f"{result.main_cpu_ms_per_batch:.3f} ms")]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
