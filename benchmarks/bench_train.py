"""DeepSpeed training-step benchmarks on CPU, in two modes.

breakdown (default): the step-time breakdown WITH the data wait, before and after a change to the training
loop, side by side. The training loop of a git ref (default 2c96d3d, the loop before the windowed rewrite;
checked out into a temporary `git worktree`, removed at the end) and the working tree's each train one
process, ZeRO-0, on batches read from real pretraining shards through `open_stream` / `batch_iterator`
(a tokenizer and shards are built once, with the working tree's code, from the first --documents documents
of --corpus; model.vocab_size is set to the tokenizer's). Each step is timed from outside, the same way for
both trees: data wait = wall time of `next(batches)`, step = wall time of `train_step`. For the working tree
the loop's own breakdown (forward+backward, optimizer; `Trainer.flush` -> `Callback.on_log`) is read too.
Reported per tree and precision, as means over the timed steps: seconds per step including the data wait,
the data wait, train_step, forward+backward and optimizer seconds, tokens/s (source + target positions,
padding included) and MFU against this machine's matmul rate in the run's precision, measured here.
bf16 is emulated on CPUs without AVX512-BF16/AMX (0.5-1.4 GFLOP/s against 30-160 for fp32 here), so bf16 runs use
the smaller --bf16-shape; the working tree is given train.force_precision=true for it (the ref has no such key).

zero: the ZeRO-stage sweep, the working tree only: throughput, model-state memory and checkpoint times under
ZeRO stages 0-3 with one process and with two, on one random token batch. Each (processes, stage) pair is a
fresh run of `_train_worker.py`: a plain process for one rank, `deepspeed --num_gpus N` for more. MFU is set
against this machine's matmul rate at each process's thread count, times the number of processes.

Every worker runs inside a network namespace with only loopback where `unshare -n` works.

    .venv/bin/python benchmarks/bench_train.py                 # breakdown, xsum, ~15 minutes on 2 cores
    .venv/bin/python benchmarks/bench_train.py --quick         # breakdown, tiny preset, a smoke check (~1 min)
    .venv/bin/python benchmarks/bench_train.py --report benchmarks/results/train-breakdown.json  # tables again
    .venv/bin/python benchmarks/bench_train.py --mode zero     # ZeRO sweep, xsum, ~12 minutes on 2 cores
    .venv/bin/python benchmarks/bench_train.py --mode zero --quick
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from itertools import islice
from pathlib import Path

import torch

from _train_worker import RESULT
from bench_model import fmt, machine_info, matmul_gflops, table

from ardiff_scale.data.corpus import read_documents
from ardiff_scale.data.shards import build_shards
from ardiff_scale.data.tokenizer import TokenizerOptions, train_tokenizer
from ardiff_scale.jobs.cluster import free_port
from ardiff_scale.model import preset
from ardiff_scale.model.flops import training_step_flops

log = logging.getLogger("bench_train")

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "_train_worker.py"
BIN = Path(sys.executable).parent
QUICK = dict(preset="tiny", batch=4, src_len=64, tgt_len=16, warmup=1, steps=2, stages="0,3", bf16_shape="",
             documents=100, vocab_size=1000, matmul_size=1024, bf16_matmul_size=256)
OUT = {("breakdown", False): "benchmarks/results/train-breakdown.json",
       ("breakdown", True): "benchmarks/results/train-breakdown-quick.json",
       ("zero", False): "benchmarks/results/train.json", ("zero", True): "benchmarks/results/train-quick.json"}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CHECKPOINTED = {(1, 0), (2, 2), (2, 3)}  # (processes, stage) runs of the zero mode that also save and load
MEMORY_PARTS = ("params", "grads", "optimizer")
MB = 1e6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", default="breakdown", choices=["breakdown", "zero"],
                        help="breakdown: before/after step times with the data wait; zero: ZeRO sweep of the "
                             "working tree (default: breakdown)")
    parser.add_argument("--preset", default="xsum", help="model preset (default: xsum)")
    parser.add_argument("--batch", type=int, default=8, help="micro-batch per rank (default: 8)")
    parser.add_argument("--src-len", type=int, default=256, help="source length (default: 256)")
    parser.add_argument("--tgt-len", type=int, default=50, help="target length (default: 50)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (default: 3)")
    parser.add_argument("--threads", type=int, default=2,
                        help="cores to share: each of N processes gets threads / N (default: 2)")
    parser.add_argument("--matmul-size", type=int, default=2048,
                        help="side of the square fp32 matmuls of the peak rate (default: 2048)")
    parser.add_argument("--bf16-matmul-size", type=int, default=512,
                        help="side of the bf16 ones: emulated bf16 takes ~20 s for one 2048 matmul (default: 512)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one worker may take (default: 900)")
    parser.add_argument("--out", default=None, help="JSON results (default: benchmarks/results/train-breakdown.json, "
                                                    "train.json in zero mode; -quick before .json with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny preset, src 64, tgt 16, batch 4, 1 warmup + 2 timed steps, 100 documents, "
                             "vocab 1000, bf16 at the fp32 shape, matmuls of 1024 and 256; stages 0 and 3 in "
                             "zero mode")
    breakdown = parser.add_argument_group("breakdown mode")
    breakdown.add_argument("--ref", default="2c96d3d", help="git ref of the 'before' tree (default: 2c96d3d)")
    breakdown.add_argument("--precisions", default="fp32,bf16", help="train.precision of the runs (default: fp32,bf16)")
    breakdown.add_argument("--bf16-shape", default="2,64,50",
                           help="BATCH,SRC,TGT of the bf16 runs, '' for the fp32 shape (default: 2,64,50)")
    breakdown.add_argument("--workers", type=int, default=0, help="data.num_workers (default: 0, as the recipes)")
    breakdown.add_argument("--corpus", default="/work/shared/data/pretrain/train.jsonl.gz",
                           help="documents for the tokenizer and shards (default: the shared pretrain train file)")
    breakdown.add_argument("--documents", type=int, default=2000, help="documents read from it (default: 2000)")
    breakdown.add_argument("--report", default=None, metavar="JSON",
                           help="print the tables of a breakdown JSON written before, run nothing")
    breakdown.add_argument("--vocab-size", type=int, default=8000,
                           help="tokenizer vocabulary, also model.vocab_size (default: 8000)")
    zero = parser.add_argument_group("zero mode")
    zero.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="train.precision (default: fp32)")
    zero.add_argument("--stages", default="0,1,2,3", help="comma-separated ZeRO stages (default: 0,1,2,3)")
    zero.add_argument("--procs", default="1,2", help="comma-separated process counts (default: 1,2)")
    args = parser.parse_args(argv)
    if args.quick:
        # As defaults, so that flags given explicitly still win.
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    args.out = args.out or OUT[(args.mode, args.quick)]
    args.stages = [int(s) for s in args.stages.split(",")]
    args.procs = [int(n) for n in args.procs.split(",")]
    args.precisions = args.precisions.split(",")
    unknown = set(args.precisions) - set(DTYPES)
    if unknown:
        parser.error(f"--precisions: {', '.join(sorted(unknown))} not one of {', '.join(DTYPES)}")
    return args


def isolation() -> list[str]:
    """A command prefix that runs inside a fresh network namespace with only loopback up, or [] where this
    machine does not allow it: torch's rendezvous store listens on every interface."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else []


def run_worker(tree: Path, worker_args: list[str], procs: int, threads: int, isolate: list[str],
               timeout: int) -> dict:
    """One `_train_worker.py` run against the `ardiff_scale` of `tree` (PYTHONPATH first, cwd there)."""
    if procs == 1:
        command = [sys.executable, str(WORKER), *worker_args]
    else:
        command = [str(BIN / "deepspeed"), "--num_gpus", str(procs), "--master_addr", "127.0.0.1",
                   "--master_port", str(free_port()), str(WORKER), *worker_args]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(threads // procs), "PYTHONPATH": str(tree)}
    done = subprocess.run([*isolate, *command], capture_output=True, text=True, env=env, cwd=tree, timeout=timeout)
    results = [line.partition(RESULT)[2] for line in done.stdout.splitlines() if RESULT in line]
    if done.returncode or not results:
        raise RuntimeError(f"exit {done.returncode}\n{(done.stdout + done.stderr)[-4000:]}")
    return json.loads(results[-1])


def shape_args(preset_name: str, batch: int, src_len: int, tgt_len: int, warmup: int, steps: int) -> list[str]:
    return ["--preset", preset_name, "--batch", str(batch), "--src-len", str(src_len), "--tgt-len", str(tgt_len),
            "--warmup", str(warmup), "--steps", str(steps)]


def peak_rates(args: argparse.Namespace, precisions: list[str], threads: int) -> dict[str, dict]:
    """The fastest square matmul in each precision, GFLOP/s, at `threads` threads: the MFU denominators."""
    torch.set_num_threads(threads)
    rates = {}
    for precision in precisions:
        size = args.bf16_matmul_size if precision == "bf16" else args.matmul_size
        log.info("%s matmul rate, %d^3, %d thread(s)", precision, size, threads)
        rates[precision] = {"size": size, "threads": threads, "gflops": matmul_gflops(size, DTYPES[precision])}
    torch.set_num_threads(args.threads)
    return rates


# --- breakdown mode ------------------------------------------------------------------------------------------
def bf16_shape(args: argparse.Namespace) -> tuple[int, int, int]:
    if not args.bf16_shape:
        return args.batch, args.src_len, args.tgt_len
    batch, src_len, tgt_len = (int(v) for v in args.bf16_shape.split(","))
    return batch, src_len, tgt_len


def build_data(args: argparse.Namespace, workdir: Path, max_tokens: int) -> tuple[Path, Path, int]:
    """A tokenizer and pretraining shards, with the working tree's code; both trees read this format."""
    log.info("tokenizer (vocab %d) and shards (max_tokens %d) from %d documents of %s", args.vocab_size,
             max_tokens, args.documents, args.corpus)
    started = time.perf_counter()
    documents = list(islice(read_documents(args.corpus), args.documents))
    tokenizer = train_tokenizer(documents, TokenizerOptions(vocab_size=args.vocab_size))
    tokenizer_path = workdir / "tokenizer.model"
    tokenizer.save(str(tokenizer_path))
    shards = workdir / "shards"
    # A process pool's start-up (each worker imports torch) costs more than it saves on a few hundred documents.
    manifest = build_shards(documents, "pretrain", str(shards), tokenizer, samples_per_shard=200,
                            max_tokens=max_tokens, min_tokens=30, processes=2 if len(documents) >= 1000 else 1)
    log.info("%d samples in %d shards, %.0f s with the tokenizer", manifest["totals"]["samples"],
             manifest["totals"]["shards"], time.perf_counter() - started)
    return shards, tokenizer_path, tokenizer.vocab_size


def checkout(ref: str) -> Path:
    """The tree of `ref` in a detached worktree at /tmp/ardiff-bench-<ref> (a leftover one is replaced)."""
    path = Path(tempfile.gettempdir()) / f"ardiff-bench-{ref}"
    if path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), ref], check=True,
                   capture_output=True)
    return path


def remove_checkout(path: Path) -> None:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)], check=False)


def with_rates(run: dict, args: argparse.Namespace, rates: dict[str, dict]) -> dict:
    model = replace(preset(args.preset), vocab_size=run["vocab_size"])
    flops = training_step_flops(model, run["batch"] * run["procs"], run["src_len"], run["tgt_len"])
    gflops = flops / run["seconds_per_step"] / 1e9
    return run | {"gflop_per_step": flops / 1e9, "gflops": gflops, "tokens_per_s": run["tokens_per_step"] /
                  run["seconds_per_step"], "mfu": gflops / (run["procs"] * rates[run["precision"]]["gflops"])}


def markdown(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join("---:" if all(isinstance(r[i], (int, float)) for r in rows) else "---"
                            for i in range(len(headers))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows])


def fastest(run: dict) -> float:
    return min(d + s for d, s in zip(run["data_seconds"], run["step_seconds"]))


def breakdown_rows(runs: list[dict]) -> list[list]:
    rows = []
    for r in runs:
        label = [r["label"], r["precision"], f"{r['batch']} x ({r['src_len']}+{r['tgt_len']})"]
        if "error" in r:
            rows.append(label + ["FAILED"] + ["-"] * 9)
            continue
        loop = r.get("loop_report", {})
        parts = [loop[k] if k in loop else "n/a" for k in ("time/forward_backward_s", "time/optimizer_s")]
        rows.append(label + [r["seconds_per_step"], fastest(r), r["data_seconds_per_step"],
                             r["train_step_seconds_per_step"],
                             *parts, r["tokens_per_s"], 100 * r["mfu"], r["load_average_1min_at_start"]])
    return rows


def run_breakdown(args: argparse.Namespace) -> dict:
    shapes = {"fp32": (args.batch, args.src_len, args.tgt_len), "bf16": bf16_shape(args)}
    rates = peak_rates(args, args.precisions, args.threads)
    isolate = isolation()
    load_before = os.getloadavg()
    runs = []
    baseline = checkout(args.ref)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-train-") as workdir:
            max_src = max(shapes[p][1] for p in args.precisions)
            shards, tokenizer, vocab = build_data(args, Path(workdir), max_src)
            trees = [(f"before ({args.ref})", baseline), ("after (working tree)", ROOT)]
            # Precision outermost: the two trees of one precision run back to back, under the same load.
            for precision in args.precisions:
                batch, src_len, tgt_len = shapes[precision]
                for label, tree in trees:
                    log.info("%s, %s, batch %d, src %d, tgt %d", label, precision, batch, src_len, tgt_len)
                    worker = shape_args(args.preset, batch, src_len, tgt_len, args.warmup, args.steps) + [
                        "--stage", "0", "--precision", precision, "--vocab-size", str(vocab),
                        "--shards", str(shards), "--tokenizer", str(tokenizer), "--workers", str(args.workers)]
                    started, load = time.perf_counter(), os.getloadavg()[0]
                    try:
                        run = with_rates(run_worker(tree, worker, 1, args.threads, isolate, args.timeout), args, rates)
                    except (RuntimeError, subprocess.TimeoutExpired) as error:
                        log.error("%s, %s failed: %s", label, precision, error)
                        run = {"precision": precision, "batch": batch, "src_len": src_len, "tgt_len": tgt_len,
                               "error": str(error)}
                    run |= {"label": label, "tree_path": str(tree), "wall_s": time.perf_counter() - started,
                            "load_average_1min_at_start": load}
                    if "module" in run and not run["module"].startswith(str(tree)):
                        run["error"] = f"imported {run['module']}, not the tree under test {tree}"
                    runs.append(run)
    finally:
        remove_checkout(baseline)

    return {"machine": machine_info(), "args": vars(args),
            "model": replace(preset(args.preset), vocab_size=vocab).to_dict(), "network_isolated": bool(isolate),
            "matmul_gflops": rates, "load_average": {"before": load_before, "after": os.getloadavg()}, "runs": runs}


def print_breakdown(results: dict) -> None:
    args, runs, rates, load = results["args"], results["runs"], results["matmul_gflops"], results["load_average"]
    machine = results["machine"]
    print(f"\n{args['preset']} (vocab {results['model']['vocab_size']}), 1 process, ZeRO-0, {args['threads']} threads, "
          f"data.num_workers {args['workers']}, shards from {args['documents']} documents: {machine['cpu_model']}, "
          f"torch {machine['torch']}")
    print("matmul peak: " + ", ".join(f"{p} {r['gflops']:.2f} GFLOP/s ({r['size']}^3)" for p, r in rates.items())
          + f"; load average {load['before'][0]:.1f} before, {load['after'][0]:.1f} after")
    print(f"means over {args['steps']} timed steps after {args['warmup']} warmup; s/step = data wait + train_step, "
          "timed outside the trainer; fastest: the quickest single step (the least disturbed by other load); "
          "fwd+bwd and optimizer from the rewritten loop's own report (on_log); load avg: the machine's 1-minute "
          "load average as the run started\n")
    print(markdown(["tree", "precision", "batch x (src+tgt)", "s/step incl. data", "fastest s", "data wait s",
                    "train_step s", "fwd+bwd s", "optimizer s", "tok/s", "MFU %", "load avg"], breakdown_rows(runs)))
    for precision in args["precisions"]:
        pair = [r for r in runs if r["precision"] == precision and "error" not in r]
        if len(pair) == 2:
            print(f"\n{precision}: after / before = {pair[1]['seconds_per_step'] / pair[0]['seconds_per_step']:.3f} "
                  f"(mean s/step incl. data), {fastest(pair[1]) / fastest(pair[0]):.3f} (fastest step)")
    reported = [r for r in runs if "loop_report" in r]
    if reported:
        print("\nthe rewritten loop's own report (last step of the timed window; MFU against its own peak)\n")
        keys = ["time/step_s", "time/data_s", "time/forward_backward_s", "time/optimizer_s", "time/checkpoint_s"]
        print(markdown(["precision", *keys, "tokens_per_s", "mfu %", "its peak TFLOP/s"],
                       [[r["precision"], *[r["loop_report"].get(k, 0.0) for k in keys],
                         r["loop_report"]["tokens_per_s"], 100 * r["loop_report"]["mfu"], r["loop_peak"]["tflops"]]
                        for r in reported]))
    print("\nardiff_scale imported from: " + "; ".join(f"{r['label']} {r['precision']}: {r.get('module', '?')}"
                                                        for r in runs))
    for r in runs:
        if "error" in r:
            print(f"\nFAILED {r['label']} {r['precision']}:\n{r['error'][-2000:]}")


# --- zero mode -----------------------------------------------------------------------------------------------
def theory_bytes(stage: int, params: int, world: int) -> dict[str, float]:
    """fp32 AdamW: 4 bytes of weights, 4 of gradients and 8 of moments per parameter, each split across
    ranks from the stage that partitions it on (optimizer state from 1, gradients from 2, weights at 3)."""
    return {"params": 4 * params / (world if stage >= 3 else 1),
            "grads": 4 * params / (world if stage >= 2 else 1),
            "optimizer": 8 * params / (world if stage >= 1 else 1)}


def run_zero(args: argparse.Namespace) -> dict:
    peak = {threads: peak_rates(args, [args.precision], threads)[args.precision]
            for threads in sorted({args.threads // n for n in args.procs})}
    isolate = isolation()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as workdir:
        for procs in args.procs:
            for stage in args.stages:
                checkpointed = (procs, stage) in CHECKPOINTED
                log.info("%d process(es), ZeRO-%d%s", procs, stage, ", with a checkpoint" if checkpointed else "")
                worker = shape_args(args.preset, args.batch, args.src_len, args.tgt_len, args.warmup, args.steps) + [
                    "--stage", str(stage), "--precision", args.precision, "--memory"]
                checkpoint_dir = f"{workdir}/{procs}-{stage}"
                if checkpointed:
                    worker += ["--checkpoint-dir", checkpoint_dir]
                run = run_worker(ROOT, worker, procs, args.threads, isolate, args.timeout)
                run = with_rates(run, args, {args.precision: peak[run["threads"]]})
                run["theory"] = theory_bytes(stage, run["params"], procs)
                runs.append(run)
                if checkpointed:
                    shutil.rmtree(checkpoint_dir)  # a full xsum checkpoint is about 1 GB

    machine = machine_info()
    params = runs[0]["params"]
    print(f"\n{args.preset} ({params / 1e6:.1f}M parameters), {args.precision}: {machine['cpu_model']}, "
          f"torch {torch.__version__}, {args.threads} cores shared by the processes of a run; "
          f"network isolated: {str(bool(isolate)).lower()}")
    print(f"{args.precision} matmul " + ", ".join(f"{t} thread(s) {p['gflops']:.1f} GFLOP/s" for t, p in peak.items())
          + "\n")
    print(f"training step, batch {args.batch} per rank, src {args.src_len}, tgt {args.tgt_len}, "
          f"mean of {args.steps} timed steps after {args.warmup} warmup, one random batch")
    print(table(["procs", "threads/proc", "ZeRO", "s/step", "tok/s src+tgt", "GFLOP/s", "MFU %"],
                [[r["procs"], r["threads"], r["stage"], r["seconds_per_step"], r["tokens_per_s"], r["gflops"],
                  100 * r["mfu"]] for r in runs]))

    print("\nmodel state per rank (MB, largest rank), between backward and step; theory: fp32 AdamW, "
          f"N = {params:,}, W = procs")
    rows = []
    for r in runs:
        held = {part: max(m[part] for m in r["memory"]) for part in (*MEMORY_PARTS, "fp32_master", "peak_rss")}
        measured = sum(held[part] for part in MEMORY_PARTS)
        pairs = [v / MB for part in MEMORY_PARTS for v in (held[part], r["theory"][part])]
        rows.append([r["procs"], r["stage"], *pairs, measured / MB, sum(r["theory"].values()) / MB,
                     held["fp32_master"] / MB, held["peak_rss"] / MB])
    print(table(["procs", "ZeRO", "params", "theory", "grads", "theory", "Adam", "theory", "sum", "theory",
                 "fp32 master", "peak RSS"], rows))

    saved = [r for r in runs if "checkpoint" in r]
    if saved:
        print("\ncheckpoint (page cache warm: loaded right after saving)")
        print(table(["procs", "ZeRO", "save s", "load s", "size MB"],
                    [[r["procs"], r["stage"], r["checkpoint"]["save_s"], r["checkpoint"]["load_s"],
                      r["checkpoint"]["bytes"] / MB] for r in saved]))
    return {"machine": machine, "args": vars(args), "model": preset(args.preset).to_dict(),
            "network_isolated": bool(isolate), "precision": args.precision,
            "matmul_gflops_by_threads": {t: p["gflops"] for t, p in peak.items()}, "runs": runs}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.report:
        print_breakdown(json.loads(Path(args.report).read_text()))
        return
    started = time.perf_counter()
    if args.mode == "breakdown":
        results = run_breakdown(args)
        print_breakdown(results)
    else:
        results = run_zero(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    log.info("wrote %s in %.0f s", out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
