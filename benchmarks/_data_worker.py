"""One reading measurement for bench_data.py, in a fresh process: batches of a shard set through the old reader
(`--impl old`: ShardLoader samples, batched by `batch_iterator` in this process) or the new one (`--impl new`:
BatchLoader, batches made in the DataLoader workers), printed as one JSON line.

Run it with the `ardiff_scale` to measure first on PYTHONPATH (bench_data.py points it at a worktree of the
baseline commit for `old`). Each implementation's imports happen inside its function, so this script starts
under either version of the package.

    PYTHONPATH=/tmp/ardiff-baseline-f2accee python benchmarks/_data_worker.py --impl old --location SHARDS \\
        --workers 2 --batch 8 --source-len 512 --target-len 50

Measured identically for both: the wall time from opening the shard set (imports done) to the first batch
(worker start-up included) and to the end; after the first batch (the steady state a training run lives in):
the samples, batches and tokens (non-padding source + target positions) delivered, their rates, and the CPU time
of this process, all its threads included but not the DataLoader worker processes, and less this script's own
token counting: with workers, that is the training process's own share of the data path.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable, Iterator


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--impl", required=True, choices=("old", "new"),
                        help="old: ShardLoader + batch_iterator (commit f2accee and before); new: BatchLoader")
    parser.add_argument("--location", required=True, help="shard set: a folder, or the http URL of one")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (default: 0, read in-process)")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch (default: 8)")
    parser.add_argument("--source-len", type=int, default=512, help="source length of a batch (default: 512)")
    parser.add_argument("--target-len", type=int, default=50, help="target length of a batch (default: 50)")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="stop this long after the first batch (default: 0 = read one whole epoch)")
    return parser.parse_args(argv)


def old_reader(args: argparse.Namespace) -> Callable[[], tuple[Iterator[dict], Any]]:
    """Imports the old API now and returns what opens the reader: (the batches' tensors, the loader)."""
    from ardiff_scale.data.pipeline import BatchMaker, batch_iterator
    from ardiff_scale.data.shards import ShardSet
    from ardiff_scale.data.stream import ShardLoader, ShardStream, StreamOptions

    def open_reader() -> tuple[Iterator[dict], Any]:
        stream = ShardStream(ShardSet.open(args.location), StreamOptions(seed=0, epochs=1), rank=0, world=1)
        loader = ShardLoader(stream, num_workers=args.workers)
        maker = BatchMaker(kind="pretrain", source_len=args.source_len, target_len=args.target_len,
                           mask_fraction=0.3, seed=0)
        return batch_iterator(loader, maker, args.batch), loader

    return open_reader


def new_reader(args: argparse.Namespace) -> Callable[[], tuple[Iterator[dict], Any]]:
    """The same for the new API."""
    from ardiff_scale.data.pipeline import BatchMaker
    from ardiff_scale.data.shards import ShardSet
    from ardiff_scale.data.stream import BatchLoader, BatchStream, StreamOptions

    def open_reader() -> tuple[Iterator[dict], Any]:
        maker = BatchMaker("pretrain", args.source_len, args.target_len, 0.3, 0)
        stream = BatchStream(ShardSet.open(args.location), StreamOptions(seed=0, epochs=1, prefetch_shards=2), 0,
                             1, args.batch, maker)
        loader = BatchLoader(stream, num_workers=args.workers)
        return (batch.tensors for batch in loader), loader

    return open_reader


def measure(args: argparse.Namespace) -> dict:
    import ardiff_scale
    from ardiff_scale.data.tokenizer import PAD  # the same id in both versions

    # Imports first: the time to the first batch is the reader's, as in a training process that has started.
    open_reader = (old_reader if args.impl == "old" else new_reader)(args)
    started = time.perf_counter()
    cpu_started = time.process_time()
    batches = samples = tokens = samples_total = 0
    first_batch_s = startup_cpu_s = steady_from = cpu_from = 0.0
    count_cpu = 0.0  # this script's own counting, taken out of the reader's CPU time
    source, loader = open_reader()
    for tensors in source:
        samples_total += len(tensors["src_ids"])
        if batches == 0:
            steady_from, cpu_from = time.perf_counter(), time.process_time()
            first_batch_s, startup_cpu_s = steady_from - started, cpu_from - cpu_started
        else:
            counting = time.thread_time()
            samples += len(tensors["src_ids"])
            tokens += int(tensors["src_mask"].sum()) + int((tensors["tgt_ids"] != PAD).sum())
            count_cpu += time.thread_time() - counting
        batches += 1
        if args.seconds > 0 and time.perf_counter() - steady_from >= args.seconds:
            break
    ended = time.perf_counter()
    main_cpu_s = time.process_time() - cpu_from - count_cpu
    if batches < 2:
        raise SystemExit(f"{args.location}: {batches} batch(es) of {args.batch}: too few to measure a rate")
    seconds, measured = ended - steady_from, batches - 1
    return {"impl": args.impl, "package": ardiff_scale.__file__, "location": args.location, "workers": args.workers,
            "batch": args.batch, "source_len": args.source_len, "target_len": args.target_len,
            "samples_total": samples_total, "wall_s": ended - started, "first_batch_s": first_batch_s,
            "startup_cpu_s": startup_cpu_s, "seconds": seconds, "batches": measured, "samples": samples,
            "tokens": tokens, "samples_per_s": samples / seconds, "batches_per_s": measured / seconds,
            "tokens_per_s": tokens / seconds, "main_cpu_s": main_cpu_s,
            "main_cpu_ms_per_batch": 1e3 * main_cpu_s / measured, "main_cpu_us_per_sample": 1e6 * main_cpu_s / samples,
            "shards_failed": loader.stats.as_dict()["shards_failed"]}


if __name__ == "__main__":
    print(json.dumps(measure(parse_args())), flush=True)
