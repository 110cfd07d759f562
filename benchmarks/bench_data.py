"""The data path before and after the batched reader, side by side in one run: samples/s and the training
process's CPU time per batch of the old reader (ShardLoader samples, batched by `batch_iterator` in the training
process; the `--baseline` commit) and the new one (BatchLoader: batches made in the DataLoader workers; this
working tree), with 0, 1 and 2 workers, from local disk and over HTTP, beside the tar floor.

Steps, on the pretraining corpus:
  1. a unigram tokenizer is trained and shards are built with 2 processes, by this working tree (wall seconds
     of each are reported); the shard format is the same in both versions, so both read these bytes;
  2. the floor: the same shard files streamed with `tarfile` ("r|"), every member read, nothing decoded (best
     of 3);
  3. `git worktree add --detach` of the baseline commit (removed at the end, always);
  4. each reading row in a fresh process, `benchmarks/_data_worker.py --impl old|new`, with the tree's package
     first on PYTHONPATH: one epoch (or `--seconds`) of batches of `--batch`, source/target `--source-len` /
     `--target-len`, from the shard folder and from `python -m http.server` on 127.0.0.1 (started and stopped
     here). Rates and CPU are taken after the first batch; the time to it is reported separately.

Targets, reported and not asserted: the new reader delivers per worker core at least 80% of the tar floor's
samples/s, and its training process spends under 10% of the old CPU time per sample.

    .venv/bin/python benchmarks/bench_data.py              # the whole train file, one epoch a row -> results/data.json
    .venv/bin/python benchmarks/bench_data.py --quick      # first 300 documents, ~1 minute -> results/data-quick.json
    .venv/bin/python benchmarks/bench_data.py --seconds 10 # each row 10 s after its first batch, not one epoch
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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
from typing import Iterator

from bench_checkpoint import REPO, add_worktree, git, remove_worktree, tree_env
from bench_model import machine_info, table
from bench_train import free_port

from ardiff_scale.data.corpus import read_documents
from ardiff_scale.data.shards import ShardSet, build_shards
from ardiff_scale.data.tokenizer import TokenizerOptions, train_tokenizer

log = logging.getLogger("bench_data")

WORKER = Path(__file__).resolve().parent / "_data_worker.py"
QUICK = dict(documents=300, vocab_size=2000, max_sentences=10_000, samples_per_shard=200,
             out="benchmarks/results/data-quick.json")
WORKERS = (0, 1, 2)
SOURCES = ("local", "http")
IMPLS = {"old": "before", "new": "after"}
FLOOR_SHARE = 0.8  # target: the new reader's samples/s per worker core over the tar floor's
CPU_SHARE = 0.1  # target: the new training-process CPU per sample over the old


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="f2accee",
                        help="git ref holding the old reader (ShardLoader + batch_iterator) (default: f2accee)")
    parser.add_argument("--input", default="/work/shared/data/pretrain/train.jsonl.gz",
                        help="pretraining corpus, .jsonl(.gz) or .txt (default: the shared pretrain train file)")
    parser.add_argument("--documents", type=int, default=0, help="use only the first N documents (default: 0 = all)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="unigram tokenizer vocabulary (default: 8000)")
    parser.add_argument("--max-sentences", type=int, default=200_000,
                        help="lines the tokenizer samples at most (default: 200000)")
    parser.add_argument("--max-tokens", type=int, default=512, help="shard window length (default: 512)")
    parser.add_argument("--samples-per-shard", type=int, default=2000, help="samples per shard (default: 2000)")
    parser.add_argument("--source-len", type=int, default=512, help="batch source length (default: 512)")
    parser.add_argument("--target-len", type=int, default=50, help="batch target length (default: 50)")
    parser.add_argument("--batch", type=int, default=8, help="samples per batch (default: 8)")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="measure each reading row this long after its first batch (default: 0 = one epoch)")
    parser.add_argument("--workdir", default=None,
                        help="where a fresh folder for the tokenizer and shards is made (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the tokenizer and shards instead of removing them")
    parser.add_argument("--out", default="benchmarks/results/data.json",
                        help="JSON results (default: benchmarks/results/data.json; data-quick.json with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="first 300 documents, vocabulary 2000, 200 samples per shard: a smoke check")
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


def make_shards(documents: list[str], args: argparse.Namespace, workdir: Path) -> tuple[dict, dict]:
    """A unigram tokenizer and shards built with 2 processes; (tokenizer row, building row)."""
    log.info("tokenizer unigram, vocab %d", args.vocab_size)
    options = TokenizerOptions(vocab_size=args.vocab_size, model_type="unigram", max_sentences=args.max_sentences)
    tokenizer, tokenizer_s = timed(train_tokenizer, documents, options)
    tokenizer.save(str(workdir / "unigram.model"))
    # The count the tokenizer's reservoir sampler sees: non-empty lines.
    lines = sum(1 for doc in documents for line in doc.splitlines() if line.strip())
    log.info("building shards, 2 processes")
    manifest, build_s = timed(build_shards, documents, "pretrain", str(workdir / "shards"), tokenizer,
                              samples_per_shard=args.samples_per_shard, max_tokens=args.max_tokens, min_tokens=30,
                              processes=2)
    totals = manifest["totals"]
    return ({"model_type": "unigram", "vocab_size": args.vocab_size, "lines": lines,
             "lines_sampled": min(lines, args.max_sentences), "seconds": tokenizer_s},
            {"processes": 2, "documents": totals["documents"], "samples": totals["samples"],
             "tokens": totals["tokens"], "shards": totals["shards"], "seconds": build_s,
             "documents_per_s": totals["documents"] / build_s, "tokens_per_s": totals["tokens"] / build_s})


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
    seconds = time.perf_counter() - start
    return {"source": "local", "reader": "tarfile r|", "samples": samples, "tokens": tokens, "bytes": nbytes,
            "seconds": seconds, "samples_per_s": samples / seconds, "mb_per_s": nbytes / 1e6 / seconds}


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


def read_row(impl: str, root: Path, source: str, location: str, workers: int, args: argparse.Namespace) -> dict:
    """One `_data_worker.py` run against the `ardiff_scale` of `root`, checked to be the one it imported."""
    command = [sys.executable, str(WORKER), "--impl", impl, "--location", location, "--workers", str(workers),
               "--batch", str(args.batch), "--source-len", str(args.source_len), "--target-len",
               str(args.target_len), "--seconds", str(args.seconds)]
    done = subprocess.run(command, cwd=root, env=tree_env(root), capture_output=True, text=True, timeout=1200)
    if done.returncode:
        raise RuntimeError(f"{impl} reader, {source}, {workers} workers: exit {done.returncode}\n"
                           f"{(done.stdout + done.stderr)[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(row["package"]).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"the {impl} reader imported {row['package']}, not the package of {root}")
    log.info("%s %s %dw: %.0f samples/s, first batch %.2f s, main CPU %.3f ms/batch%s", IMPLS[impl], source,
             workers, row["samples_per_s"], row["first_batch_s"], row["main_cpu_ms_per_batch"],
             f", {row['shards_failed']} UNREADABLE SHARDS" if row["shards_failed"] else "")
    return {"source": source, **row}


def compare(rows: list[dict], floor: dict) -> list[dict]:
    """Before and after of each (source, workers), with the ratios the targets are about."""
    by_key = {(r["impl"], r["source"], r["workers"]): r for r in rows}
    comparison = []
    for source in SOURCES:
        for workers in WORKERS:
            before, after = by_key["old", source, workers], by_key["new", source, workers]
            comparison.append({
                "source": source, "workers": workers, "before_samples_per_s": before["samples_per_s"],
                "after_samples_per_s": after["samples_per_s"],
                "speedup": after["samples_per_s"] / before["samples_per_s"],
                # Without workers the training process's core does all the reading.
                "after_per_worker_core_vs_floor": after["samples_per_s"] / max(1, workers) / floor["samples_per_s"],
                "before_first_batch_s": before["first_batch_s"], "after_first_batch_s": after["first_batch_s"],
                "before_main_cpu_ms_per_batch": before["main_cpu_ms_per_batch"],
                "after_main_cpu_ms_per_batch": after["main_cpu_ms_per_batch"],
                "cpu_per_sample_after_over_before": after["main_cpu_us_per_sample"] / before["main_cpu_us_per_sample"],
                "shards_failed": before["shards_failed"] + after["shards_failed"]})
    return comparison


def verdicts(comparison: list[dict]) -> list[str]:
    """One line per target, over the rows with workers (without them both readers do everything in the
    training process, so neither target applies)."""
    rows = [c for c in comparison if c["workers"] > 0 and not c["shards_failed"]]
    floor = [f"{c['source']} {c['workers']}w {c['after_per_worker_core_vs_floor']:.0%}" for c in rows]
    floor_met = sum(c["after_per_worker_core_vs_floor"] >= FLOOR_SHARE for c in rows)
    cpu = [f"{c['source']} {c['workers']}w {c['cpu_per_sample_after_over_before']:.1%}" for c in rows]
    cpu_met = sum(c["cpu_per_sample_after_over_before"] < CPU_SHARE for c in rows)
    lines = [f"after per worker core >= {FLOOR_SHARE:.0%} of the tar floor: met in {floor_met} of {len(rows)} rows "
             f"({', '.join(floor)})",
             f"after main-process CPU per sample < {CPU_SHARE:.0%} of before: met in {cpu_met} of {len(rows)} rows "
             f"({', '.join(cpu)})"]
    cores = os.cpu_count() or 1
    if max(WORKERS) + 1 > cores:
        lines.append(f"note: {cores} cores here, so with {max(WORKERS)} workers the workers and the training process "
                     "share cores and the per-core figure understates what a worker can do")
    return lines


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    started = time.perf_counter()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_data-", dir=args.workdir))
    worktree = None
    try:
        log.info("reading %s", args.input)
        documents, read_seconds = timed(list, islice(read_documents(args.input), args.documents or None))
        corpus = {"input": args.input, "documents": len(documents), "words": sum(len(d.split()) for d in documents),
                  "read_seconds": read_seconds}
        tokenizer, building = make_shards(documents, args, workdir)
        shard_dir = workdir / "shards"
        shard_set = ShardSet.open(str(shard_dir))
        # What scaling.py sizes readers with (bytes and token ids per sample), straight from the manifest.
        shards = {**{k: shard_set.manifest["totals"][k] for k in ("shards", "samples", "tokens")},
                  "bytes": sum(shard["bytes"] for shard in shard_set.manifest["shards"]), "dtype": shard_set.dtype}
        # The best of 3: a floor is the fastest the files can be streamed, and this machine may be shared.
        floor = max((bench_raw_tar([Path(url) for url in shard_set.urls], 2 if shard_set.dtype == "uint16" else 4)
                     for _ in range(3)), key=lambda row: row["samples_per_s"])
        log.info("tar floor: %.0f samples/s", floor["samples_per_s"])
        worktree = add_worktree(args.baseline)
        log.info("baseline %s checked out at %s", args.baseline, worktree)
        roots = {"old": worktree, "new": REPO}
        rows = []
        with http_server(shard_dir) as url:
            locations = {"local": str(shard_dir), "http": url}
            # Before and after of one configuration back to back, so that a change in the machine's load (it is
            # shared) falls on both alike.
            for source in SOURCES:
                for workers in WORKERS:
                    rows += [read_row(impl, roots[impl], source, locations[source], workers, args) for impl in IMPLS]
    finally:
        if worktree:
            remove_worktree(worktree)
        if args.keep:
            log.info("kept the tokenizer and shards in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    comparison = compare(rows, floor)
    verdict = verdicts(comparison)
    machine = machine_info()
    print(f"\n{machine['cpu_model']}, {os.cpu_count()} cores, torch {machine['torch']}")
    print(f"corpus {corpus['input']}: {corpus['documents']:,} documents, {corpus['words']:,} words; unigram "
          f"tokenizer (vocab {args.vocab_size}) trained in {tokenizer['seconds']:.1f} s; {shards['shards']} shards, "
          f"{shards['samples']:,} samples of <= {args.max_tokens} tokens, {shards['bytes'] / 1e6:,.1f} MB, built with "
          f"2 processes in {building['seconds']:.1f} s ({building['tokens_per_s']:,.0f} tok/s)")
    print(f"tar floor (tarfile r|, local, one process, best of 3): {floor['samples_per_s']:,.0f} samples/s, "
          f"{floor['mb_per_s']:,.0f} MB/s")
    span = "one epoch" if args.seconds <= 0 else f"{args.seconds:g} s"
    print(f"\nbatches of {args.batch}, source {args.source_len}, target {args.target_len}; {span} per row after the "
          f"first batch; before = {args.baseline}, after = working tree; main CPU = the training process's")
    print(table(["source", "workers", "before samples/s", "after samples/s", "speed-up", "after/worker core vs floor",
                 "before main CPU ms/batch", "after main CPU ms/batch", "after/before CPU per sample"],
                [[c["source"], c["workers"], c["before_samples_per_s"], c["after_samples_per_s"],
                  f"{c['speedup']:.2f}x", f"{c['after_per_worker_core_vs_floor']:.0%}",
                  c["before_main_cpu_ms_per_batch"], c["after_main_cpu_ms_per_batch"],
                  f"{c['cpu_per_sample_after_over_before']:.1%}"] for c in comparison]))
    failed = [f"{c['source']} {c['workers']}w" for c in comparison if c["shards_failed"]]
    if failed:
        print(f"UNREADABLE SHARDS (see the log), left out of the verdicts: {', '.join(failed)}")
    print("\n" + "\n".join(verdict))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine | {"cores": os.cpu_count()}, "args": vars(args),
        "baseline_commit": git("rev-parse", args.baseline), "work_head": git("rev-parse", "HEAD"),
        "work_dirty": bool(git("status", "--porcelain", "--", "ardiff_scale")), "corpus": corpus,
        "tokenizer": tokenizer, "building": building, "shards": shards, "floor": floor, "rows": rows,
        "comparison": comparison, "verdicts": verdict,
        "notes": "rows: one fresh process each (benchmarks/_data_worker.py); samples, tokens, rates and main CPU are "
                 "counted after the first batch; main CPU is the reading process with its threads, not the "
                 "DataLoader workers; tokens are non-padding source + target positions; the old reader drops a "
                 "last partial batch, the new one delivers a short last batch per worker"}, indent=2) + "\n")
    log.info("wrote %s in %.0f s", out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
