"""CPU throughput, model-state memory and checkpoint times of DeepSpeed training under ZeRO stages 0-3, with
one process and with two, on random token batches.

Each (processes, stage) pair is a fresh run of `_train_worker.py`: a plain process for one rank, `deepspeed
--num_gpus N` for more, inside a network namespace with only loopback where `unshare -n` works. MFU is set
against this machine's fp32 matmul rate at each process's thread count, times the number of processes.

    .venv/bin/python benchmarks/bench_train.py            # xsum preset, ~12 minutes on 2 cores
    .venv/bin/python benchmarks/bench_train.py --quick    # tiny preset, stages 0 and 3, a smoke check
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
import tempfile
import time
from pathlib import Path

import torch

from _train_worker import RESULT
from bench_model import machine_info, matmul_gflops, table

from ardiff_scale.model import preset
from ardiff_scale.model.flops import training_step_flops

log = logging.getLogger("bench_train")

QUICK = dict(preset="tiny", batch=4, src_len=64, tgt_len=16, warmup=1, steps=2, stages="0,3",
             out="benchmarks/results/train-quick.json")
WORKER = Path(__file__).resolve().parent / "_train_worker.py"
BIN = Path(sys.executable).parent
CHECKPOINTED = {(1, 0), (2, 2), (2, 3)}  # (processes, stage) runs that also save and load a checkpoint
MEMORY_PARTS = ("params", "grads", "optimizer")
MB = 1e6


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="xsum", help="model preset (default: xsum)")
    parser.add_argument("--batch", type=int, default=8, help="micro-batch per rank (default: 8)")
    parser.add_argument("--src-len", type=int, default=256, help="source length (default: 256)")
    parser.add_argument("--tgt-len", type=int, default=50, help="target length (default: 50)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: 2)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps, median reported (default: 3)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="train.precision of every run; bf16 is DeepSpeed's bf16 mode (default: fp32)")
    parser.add_argument("--stages", default="0,1,2,3", help="comma-separated ZeRO stages (default: 0,1,2,3)")
    parser.add_argument("--procs", default="1,2", help="comma-separated process counts (default: 1,2)")
    parser.add_argument("--threads", type=int, default=2,
                        help="cores to share: each of N processes gets threads / N (default: 2)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square matmuls (default: 2048)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds one run may take (default: 600)")
    parser.add_argument("--out", default="benchmarks/results/train.json",
                        help="JSON results (default: benchmarks/results/train.json; train-quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, short lengths, stages 0 and 3")
    args = parser.parse_args(argv)
    if args.quick:
        # As defaults, so that flags given explicitly still win.
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    args.stages = [int(s) for s in args.stages.split(",")]
    args.procs = [int(n) for n in args.procs.split(",")]
    return args


def isolation() -> list[str]:
    """A command prefix that runs inside a fresh network namespace with only loopback up, or [] where this
    machine does not allow it: torch's rendezvous store listens on every interface."""
    if not (shutil.which("unshare") and shutil.which("ip")):
        return []
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_worker(args: argparse.Namespace, procs: int, stage: int, isolate: list[str],
               checkpoint_dir: str | None) -> dict:
    worker = [str(WORKER), "--preset", args.preset, "--batch", str(args.batch), "--src-len", str(args.src_len),
              "--tgt-len", str(args.tgt_len), "--stage", str(stage), "--warmup", str(args.warmup),
              "--steps", str(args.steps), "--precision", args.precision]
    if checkpoint_dir:
        worker += ["--checkpoint-dir", checkpoint_dir]
    if procs == 1:
        command = [sys.executable, *worker]
    else:
        command = [str(BIN / "deepspeed"), "--num_gpus", str(procs), "--master_addr", "127.0.0.1",
                   "--master_port", str(free_port()), *worker]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": str(args.threads // procs)}
    done = subprocess.run([*isolate, *command], capture_output=True, text=True, env=env, timeout=args.timeout)
    results = [line.partition(RESULT)[2] for line in done.stdout.splitlines() if RESULT in line]
    if done.returncode or not results:
        raise RuntimeError(f"{procs} process(es), ZeRO-{stage}: exit {done.returncode}\n"
                           f"{(done.stdout + done.stderr)[-4000:]}")
    return json.loads(results[-1])


def theory_bytes(stage: int, params: int, world: int) -> dict[str, float]:
    """fp32 AdamW: 4 bytes of weights, 4 of gradients and 8 of moments per parameter, each split across
    ranks from the stage that partitions it on (optimizer state from 1, gradients from 2, weights at 3)."""
    return {"params": 4 * params / (world if stage >= 3 else 1),
            "grads": 4 * params / (world if stage >= 2 else 1),
            "optimizer": 8 * params / (world if stage >= 1 else 1)}


def throughput(run: dict, args: argparse.Namespace, peak: dict[int, float]) -> dict:
    flops = training_step_flops(preset(args.preset), args.batch * run["procs"], args.src_len, args.tgt_len)
    gflops = flops / run["seconds_per_step"] / 1e9
    return {"tokens_per_s": run["tokens_per_step"] / run["seconds_per_step"], "gflop_per_step": flops / 1e9,
            "gflops": gflops, "mfu": gflops / (run["procs"] * peak[run["threads"]])}


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    started = time.perf_counter()
    thread_counts = sorted({args.threads // n for n in args.procs})
    peak = {}
    for threads in thread_counts:
        log.info("fp32 matmul rate, %d^3, %d thread(s)", args.matmul_size, threads)
        torch.set_num_threads(threads)
        # MFU is against the matmul rate of the precision trained in.
        peak[threads] = matmul_gflops(args.matmul_size, torch.bfloat16 if args.precision == "bf16" else torch.float32)
    torch.set_num_threads(args.threads)

    isolate = isolation()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as workdir:
        for procs in args.procs:
            for stage in args.stages:
                log.info("%d process(es), ZeRO-%d%s", procs, stage,
                         ", with a checkpoint" if (procs, stage) in CHECKPOINTED else "")
                checkpoint_dir = f"{workdir}/{procs}-{stage}" if (procs, stage) in CHECKPOINTED else None
                run = run_worker(args, procs, stage, isolate, checkpoint_dir)
                run |= throughput(run, args, peak)
                run["theory"] = theory_bytes(stage, run["params"], procs)
                runs.append(run)
                if checkpoint_dir:
                    shutil.rmtree(checkpoint_dir)  # a full xsum checkpoint is about 1 GB

    machine = machine_info()
    params = runs[0]["params"]
    print(f"\n{args.preset} ({params / 1e6:.1f}M parameters), {args.precision}: {machine['cpu_model']}, "
          f"torch {torch.__version__}, {args.threads} cores shared by the processes of a run; "
          f"network isolated: {str(bool(isolate)).lower()}")
    print(f"{args.precision} matmul " + ", ".join(f"{t} thread(s) {g:.1f} GFLOP/s" for t, g in peak.items()) + "\n")
    print(f"training step, batch {args.batch} per rank, src {args.src_len}, tgt {args.tgt_len}, "
          f"median of {args.steps} timed steps after {args.warmup} warmup")
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

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "model": preset(args.preset).to_dict(),
                               "network_isolated": bool(isolate), "precision": args.precision, "matmul_gflops_by_threads": peak,
                               "runs": runs}, indent=2) + "\n")
    log.info("wrote %s in %.0f s", out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
