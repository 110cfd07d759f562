"""CPU throughput of the data pipeline: tokenizer training, shard building, and reading the shards (local
disk and HTTP, 0 to 2 workers, the batch path, and the raw tar floor), set beside the token rate of one
training step from results/model.json.

    .venv/bin/python benchmarks/bench_data.py            # the pretraining train file, ~6 minutes on 2 cores
    .venv/bin/python benchmarks/bench_data.py --quick    # first 300 documents, a smoke check in seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from contextlib import contextmanager
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

from bench_model import machine_info, table

from ardiff_scale.data.corpus import read_documents
from ardiff_scale.data.pipeline import BatchMaker, batch_iterator
from ardiff_scale.data.shards import ShardSet, build_shards
from ardiff_scale.data.stream import ShardLoader, ShardStream, StreamOptions
from ardiff_scale.data.tokenizer import Tokenizer, TokenizerOptions, train_tokenizer

log = logging.getLogger("bench_data")

QUICK = dict(documents=300, vocab_size=2000, max_sentences=10_000, samples_per_shard=200,
             out="benchmarks/results/data-quick.json")
MODEL_TYPES = ("unigram", "bpe")
WORKERS = (0, 1, 2)
MB = 1e6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", default="/work/shared/data/pretrain/train.jsonl.gz",
                        help="pretraining corpus, .jsonl(.gz) or .txt (default: the shared pretrain train file)")
    parser.add_argument("--documents", type=int, default=0, help="use only the first N documents (default: 0 = all)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="tokenizer vocabulary (default: 8000)")
    parser.add_argument("--max-sentences", type=int, default=200_000,
                        help="lines the tokenizer samples at most (default: 200000)")
    parser.add_argument("--max-tokens", type=int, default=512, help="shard window length (default: 512)")
    parser.add_argument("--samples-per-shard", type=int, default=2000, help="samples per shard (default: 2000)")
    parser.add_argument("--source-len", type=int, default=512, help="batch path source length (default: 512)")
    parser.add_argument("--target-len", type=int, default=50, help="batch path target length (default: 50)")
    parser.add_argument("--batch", type=int, default=8, help="batch path batch size (default: 8)")
    parser.add_argument("--model-json", default="benchmarks/results/model.json",
                        help="bench_model.py results holding the training step's tokens/s "
                             "(default: benchmarks/results/model.json)")
    parser.add_argument("--workdir", default=None,
                        help="where a fresh folder for tokenizers and shards is made (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the tokenizers and shards instead of removing them")
    parser.add_argument("--out", default="benchmarks/results/data.json",
                        help="JSON results (default: benchmarks/results/data.json; data-quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="first 300 documents, small vocabulary: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        # As defaults, so that flags given explicitly still win.
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def bench_tokenizers(documents: list[str], args: argparse.Namespace, workdir: Path) -> tuple[list[dict], Tokenizer]:
    """Wall seconds to train each model type; returns the rows and the unigram tokenizer (the default)."""
    # The count the tokenizer's reservoir sampler sees: non-empty lines.
    lines = sum(1 for doc in documents for line in doc.splitlines() if line.strip())
    rows, trained = [], {}
    for model_type in MODEL_TYPES:
        log.info("tokenizer %s, vocab %d", model_type, args.vocab_size)
        options = TokenizerOptions(vocab_size=args.vocab_size, model_type=model_type,
                                   max_sentences=args.max_sentences)
        trained[model_type], seconds = timed(train_tokenizer, documents, options)
        trained[model_type].save(str(workdir / f"{model_type}.model"))
        rows.append({"model_type": model_type, "vocab_size": args.vocab_size, "lines": lines,
                     "lines_sampled": min(lines, args.max_sentences), "seconds": seconds})
    return rows, trained["unigram"]


def bench_build(documents: list[str], tokenizer: Tokenizer, args: argparse.Namespace, output: Path,
                processes: int) -> dict:
    log.info("building shards, %d processes", processes)
    manifest, seconds = timed(build_shards, documents, "pretrain", str(output), tokenizer,
                              samples_per_shard=args.samples_per_shard, max_tokens=args.max_tokens, min_tokens=30,
                              processes=processes)
    totals = manifest["totals"]
    return {"processes": processes, "documents": totals["documents"], "samples": totals["samples"],
            "tokens": totals["tokens"], "shards": totals["shards"], "seconds": seconds,
            "documents_per_s": totals["documents"] / seconds, "tokens_per_s": totals["tokens"] / seconds}


def rates(source: str, reader: str, workers: int, samples: int, tokens: int, nbytes: int, seconds: float,
          shards_failed: int = 0) -> dict:
    """`nbytes`: the size of the files an epoch reads, so MB/s is the rate at which a reader gets through them."""
    return {"source": source, "reader": reader, "workers": workers, "samples": samples, "tokens": tokens,
            "bytes": nbytes, "seconds": seconds, "samples_per_s": samples / seconds, "tokens_per_s": tokens / seconds,
            "mb_per_s": nbytes / MB / seconds, "shards_failed": shards_failed}


def counted(samples: Iterable[dict], totals: dict[str, int]) -> Iterator[dict]:
    for sample in samples:
        totals["samples"] += 1
        totals["tokens"] += len(sample["ids"])
        yield sample


def loader_for(location: str, workers: int) -> tuple[ShardLoader, int]:
    """A one-epoch loader over the shards at `location` and the bytes an epoch reads."""
    shard_set = ShardSet.open(location)
    nbytes = sum(shard["bytes"] for shard in shard_set.manifest["shards"])
    return ShardLoader(ShardStream(shard_set, StreamOptions(seed=0, epochs=1), rank=0, world=1),
                       num_workers=workers), nbytes


def bench_loader(location: str, source: str, workers: int) -> dict:
    """One full epoch through ShardLoader, worker start-up included."""
    log.info("ShardLoader, %s, %d workers", source, workers)
    totals = {"samples": 0, "tokens": 0}
    start = time.perf_counter()
    loader, nbytes = loader_for(location, workers)
    for _ in counted(loader, totals):
        pass
    return rates(source, "ShardLoader", workers, totals["samples"], totals["tokens"], nbytes,
                 time.perf_counter() - start, len(loader.stats.failed))


def bench_batches(location: str, workers: int, args: argparse.Namespace) -> dict:
    """One full epoch through batch_iterator + BatchMaker (span denoise, collation to fixed-shape tensors)."""
    log.info("batch path, local, %d workers", workers)
    totals = {"samples": 0, "tokens": 0}
    maker = BatchMaker(kind="pretrain", source_len=args.source_len, target_len=args.target_len, mask_fraction=0.3,
                       seed=0)
    start = time.perf_counter()
    loader, nbytes = loader_for(location, workers)
    batches = sum(1 for _ in batch_iterator(counted(loader, totals), maker, args.batch))
    seconds = time.perf_counter() - start
    row = rates("local", f"batches of {args.batch}", workers, totals["samples"], totals["tokens"], nbytes, seconds,
                len(loader.stats.failed))
    return row | {"batches": batches, "batches_per_s": batches / seconds,
                  "positions_per_s": batches * args.batch * (args.source_len + args.target_len) / seconds}


def bench_raw_tar(paths: list[Path], itemsize: int) -> dict:
    """The floor: members of each tar streamed and their bytes read, nothing decoded."""
    samples = tokens = nbytes = 0
    start = time.perf_counter()
    for path in paths:
        with tarfile.open(path, "r|") as tar:
            for member in tar:
                data = tar.extractfile(member).read()
                if ".ids." in member.name:
                    samples += 1
                    tokens += len(data) // itemsize
        nbytes += path.stat().st_size
    return rates("local", "tarfile r|", 0, samples, tokens, nbytes, time.perf_counter() - start)


def bench_raw_bytes(paths: list[Path], samples: int, tokens: int) -> dict:
    """Plain 1 MiB reads of the same files: the bytes rate with no tar parsing at all."""
    nbytes = 0
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                nbytes += len(chunk)
    return rates("local", "file read", 0, samples, tokens, nbytes, time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_server(directory: Path, timeout: float = 30.0) -> Iterator[str]:
    """`python -m http.server` over `directory` on 127.0.0.1; yields its base URL, always stops it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(directory)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + timeout
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"http.server on 127.0.0.1:{port} did not start (exit code {server.poll()})")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.terminate()
        server.wait(timeout=10)


def training_comparison(model_json: Path, slowest: dict) -> dict:
    """Slowest reader tokens/s over each training step's tokens/s (source + target positions)."""
    if not model_json.exists():
        return {"error": f"{model_json} not found: run benchmarks/bench_model.py for the training rate"}
    results = json.loads(model_json.read_text())
    training = {row["precision"]: row["tokens_per_s_src_plus_tgt"] for row in results["training"]}
    step = results["args"]
    return {"model_json": str(model_json), "preset": step["preset"], "batch": step["batch"],
            "src_len": step["src_len"], "tgt_len": step["tgt_len"], "training_tokens_per_s": training,
            "slowest_reader": {k: slowest[k] for k in ("source", "reader", "workers", "tokens_per_s")},
            "ratio": {precision: slowest["tokens_per_s"] / rate for precision, rate in training.items()},
            "required_ratio": 10.0}


def describe(row: dict) -> str:
    return f"{row['reader']} {row['source']} {row['workers']}w"


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_data-", dir=args.workdir))
    try:
        log.info("reading %s", args.input)
        documents, read_seconds = timed(list, islice(read_documents(args.input), args.documents or None))
        corpus = {"input": args.input, "documents": len(documents), "words": sum(len(d.split()) for d in documents),
                  "read_seconds": read_seconds}
        tokenizers, tokenizer = bench_tokenizers(documents, args, workdir)
        shard_dir = workdir / "shards"
        building = [bench_build(documents, tokenizer, args, shard_dir, 2),
                    bench_build(documents, tokenizer, args, workdir / "shards-1-process", 1)]
        shard_set = ShardSet.open(str(shard_dir))
        paths = [Path(url) for url in shard_set.urls]
        itemsize = 2 if shard_set.dtype == "uint16" else 4
        raw_tar = bench_raw_tar(paths, itemsize)
        reading = [raw_tar, bench_raw_bytes(paths, raw_tar["samples"], raw_tar["tokens"])]
        reading += [bench_loader(str(shard_dir), "local", workers) for workers in WORKERS]
        with http_server(shard_dir) as url:
            reading += [bench_loader(url, "http", workers) for workers in WORKERS]
        reading.append(bench_batches(str(shard_dir), 2, args))
    finally:
        if args.keep:
            log.info("kept tokenizers and shards in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    # A reader that skipped unreadable shards has no meaningful rate: the comparison leaves it out.
    failed = [describe(row) for row in reading if row["shards_failed"]]
    slowest = min((row for row in reading[2:] if not row["shards_failed"]), key=lambda row: row["tokens_per_s"])
    comparison = training_comparison(Path(args.model_json), slowest) | {"excluded_for_failed_shards": failed}
    batches = reading[-1]

    machine = machine_info()
    print(f"\n{machine['cpu_model']}, torch {machine['torch']}, {machine['threads']} threads")
    print(f"corpus {corpus['input']}: {corpus['documents']:,} documents, {corpus['words']:,} words, "
          f"read and parsed in {read_seconds:.1f} s\n")
    print("tokenizer training (wall seconds, reservoir sampling included)")
    print(table(["model", "vocab", "lines", "lines sampled", "s"],
                [[r["model_type"], r["vocab_size"], r["lines"], r["lines_sampled"], r["seconds"]]
                 for r in tokenizers]))
    print(f"\nshard building, unigram tokenizer, max_tokens {args.max_tokens}, {args.samples_per_shard} samples/shard")
    print(table(["processes", "documents", "samples", "tokens", "shards", "s", "docs/s", "tok/s"],
                [[r["processes"], r["documents"], r["samples"], r["tokens"], r["shards"], r["seconds"],
                  r["documents_per_s"], r["tokens_per_s"]] for r in building]))
    print("\nreading the shards: one full epoch each, worker start-up included; files in the page cache")
    print(table(["reader", "source", "workers", "samples", "s", "samples/s", "tok/s", "MB/s", "failed shards"],
                [[r["reader"], r["source"], r["workers"], r["samples"], r["seconds"], r["samples_per_s"],
                  r["tokens_per_s"], r["mb_per_s"], r["shards_failed"]] for r in reading]))
    print(f"batch path (span denoise + collation, src {args.source_len}, tgt {args.target_len}): "
          f"{batches['batches_per_s']:,.1f} batches/s, {batches['positions_per_s']:,.0f} tensor positions/s")
    if failed:
        print(f"UNREADABLE SHARDS (see the warnings above), left out of the comparison: {', '.join(failed)}")
    if "error" in comparison:
        print(f"\nreader vs training: {comparison['error']}")
    else:
        step = (f"{comparison['preset']} training step (batch {comparison['batch']}, src {comparison['src_len']} "
                f"+ tgt {comparison['tgt_len']} positions)")
        print(f"\nslowest reader ({describe(slowest)}): {slowest['tokens_per_s']:,.0f} tok/s vs {step}:")
        for precision, ratio in comparison["ratio"].items():
            rate = comparison["training_tokens_per_s"][precision]
            verdict = "meets" if ratio >= comparison["required_ratio"] else "FAILS"
            print(f"  {precision}: {rate:,.0f} tok/s -> {ratio:,.0f}x ({verdict} the 10x requirement)")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine, "args": vars(args), "corpus": corpus, "tokenizers": tokenizers, "building": building,
        "reading": reading, "reading_note": "one full epoch per row, worker start-up included, files in the page "
        "cache; tokens are the samples' token ids", "training_comparison": comparison}, indent=2) + "\n")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
