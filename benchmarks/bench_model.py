"""CPU throughput of the AR-Diffusion model: training steps and sampling, with MFU against this machine's
own measured matmul rate.

    .venv/bin/python benchmarks/bench_model.py            # xsum preset, ~5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_model.py --quick    # tiny preset, a smoke check in seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ardiff_scale.diffusion.objective import training_loss
from ardiff_scale.diffusion.sampler import sample
from ardiff_scale.diffusion.schedule import sqrt_schedule
from ardiff_scale.model import ARDiffusionModel, preset
from ardiff_scale.model.flops import forward_flops, sampling_flops, training_step_flops

log = logging.getLogger("bench_model")

QUICK = dict(preset="tiny", batch=2, src_len=32, tgt_len=16, steps=2, sample_src_len=64, decode_steps=4,
             candidates="1,8", matmul_size=512, out="benchmarks/results/model-quick.json")
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
# The uncached reference is timed over this many decode steps and scaled to --decode-steps.
UNCACHED_STEPS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="xsum", help="model preset (default: xsum)")
    parser.add_argument("--batch", type=int, default=8, help="training batch size (default: 8)")
    parser.add_argument("--src-len", type=int, default=256, help="training source length (default: 256)")
    parser.add_argument("--tgt-len", type=int, default=50, help="target length, training and sampling (default: 50)")
    parser.add_argument("--steps", type=int, default=6, help="timed training steps after 2 warmup steps (default: 6)")
    parser.add_argument("--sample-src-len", type=int, default=512, help="source length for sampling (default: 512)")
    parser.add_argument("--decode-steps", type=int, default=20, help="sampler steps M (default: 20)")
    parser.add_argument("--candidates", default="1,50",
                        help="comma-separated candidates k per source; the largest also gets the uncached and "
                             "bf16 runs (default: 1,50)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default: 2)")
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square matmuls (default: 2048)")
    parser.add_argument("--out", default="benchmarks/results/model.json",
                        help="JSON results (default: benchmarks/results/model.json; model-quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny preset and short lengths: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        # As defaults, so that flags given explicitly still win.
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    args.candidates = sorted({int(k) for k in args.candidates.split(",")})
    return args


def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu_model": cpu,
            "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def median_seconds(fn, reps: int, warmup: int = 0) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_gflops(size: int, dtype: torch.dtype, reps: int = 12) -> float:
    """The machine's peak: the fastest of several products after a warm-up, as MFU denominators are. A
    median here let one slow repetition (a busy neighbour, a clock ramp) push MFU above 100%."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        torch.mm(a, b)
    fastest = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b)
        fastest = min(fastest, time.perf_counter() - start)
    return 2 * size ** 3 / fastest / 1e9


def bench_training(args: argparse.Namespace, precision: str, peak_gflops: float) -> dict:
    torch.manual_seed(0)
    model = ARDiffusionModel(preset(args.preset)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    vocab, schedule = model.config.vocab_size, sqrt_schedule(2000)
    src_ids = torch.randint(0, vocab, (args.batch, args.src_len))
    tgt_ids = torch.randint(0, vocab, (args.batch, args.tgt_len))
    dtype = PRECISIONS[precision]

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
            loss = training_loss(model, src_ids, torch.ones_like(src_ids), tgt_ids, schedule).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = median_seconds(step, args.steps, warmup=2)
    flops = training_step_flops(model.config, args.batch, args.src_len, args.tgt_len)
    gflops = flops / seconds / 1e9
    return {"precision": precision, "seconds_per_step": seconds,
            "tokens_per_s_src_plus_tgt": args.batch * (args.src_len + args.tgt_len) / seconds,
            "tgt_tokens_per_s": args.batch * args.tgt_len / seconds,
            "gflop_per_step": flops / 1e9, "gflops": gflops, "mfu": gflops / peak_gflops}


class FixedCostTimer:
    """Passes every call through to the model and adds up the seconds spent outside the decode loop
    (`encode`, and `round_logits`, which the sampler calls only for the final tokens)."""

    def __init__(self, model: ARDiffusionModel):
        self.model = model
        self.seconds = 0.0

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def _timed(self, fn, *args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        return result

    def encode(self, *args, **kwargs):
        return self._timed(self.model.encode, *args, **kwargs)

    def round_logits(self, *args, **kwargs):
        return self._timed(self.model.round_logits, *args, **kwargs)


def sampling_seconds(model: ARDiffusionModel, src_ids: torch.Tensor, args: argparse.Namespace, k: int,
                     cached: bool, dtype: torch.dtype | None, run_steps: int) -> float:
    """Seconds to sample k candidates of one source in M = --decode-steps steps. With run_steps < M the decode
    loop runs run_steps steps (every step costs the same: fixed shapes) and its time is scaled by M / run_steps;
    encoding and final rounding are counted once."""
    timer = FixedCostTimer(model)
    start = time.perf_counter()
    sample(timer, src_ids, torch.ones_like(src_ids), args.tgt_len, sqrt_schedule(2000), decode_steps=run_steps,
           num_candidates=k, cache_memory=cached, autocast_dtype=dtype, generator=torch.Generator().manual_seed(0))
    loop = time.perf_counter() - start - timer.seconds
    return timer.seconds + loop * args.decode_steps / run_steps


def cached_matches_uncached(model: ARDiffusionModel, args: argparse.Namespace) -> bool:
    """Same generator seed, short run: do the cached and the reference path give the same tokens?"""
    src_ids = torch.randint(0, model.config.vocab_size, (2, min(64, args.sample_src_len)))
    tokens = [sample(model, src_ids, torch.ones_like(src_ids), args.tgt_len, sqrt_schedule(2000), decode_steps=3,
                     num_candidates=3, cache_memory=cached, generator=torch.Generator().manual_seed(0)).tokens
              for cached in (True, False)]
    return torch.equal(*tokens)


def bench_sampling(args: argparse.Namespace, peak: dict[str, float]) -> tuple[list[dict], bool]:
    torch.manual_seed(0)
    model = ARDiffusionModel(preset(args.preset)).eval()
    identical = cached_matches_uncached(model, args)  # also warms up both paths
    src_ids = torch.randint(0, model.config.vocab_size, (1, args.sample_src_len))
    k_max = args.candidates[-1]
    runs = [("fp32", k, True) for k in args.candidates] + [("fp32", k_max, False), ("bf16", k_max, True)]
    results = []
    for precision, k, cached in runs:
        log.info("sampling %s k=%d %s", precision, k, "cached" if cached else "uncached")
        run_steps = args.decode_steps if cached else min(UNCACHED_STEPS, args.decode_steps)
        seconds = sampling_seconds(model, src_ids, args, k, cached, PRECISIONS[precision], run_steps)
        flops = sampling_flops(model.config, 1, k, args.sample_src_len, args.tgt_len, args.decode_steps, cached)
        gflops = flops / seconds / 1e9
        results.append({"precision": precision, "candidates": k, "memory": "cached" if cached else "uncached",
                        "decode_steps": args.decode_steps, "seconds_per_source": seconds,
                        "gflop_per_source": flops / 1e9, "gflops": gflops, "mfu": gflops / peak[precision],
                        "note": "" if run_steps == args.decode_steps else f"extrapolated from {run_steps} steps"})
    return results, identical


def fmt(value: str | int | float) -> str:
    """Numbers to three significant digits, never in exponent form."""
    if isinstance(value, str):
        return value
    if isinstance(value, int) or value == 0:
        return f"{value:,}"
    return f"{value:,.{max(0, 2 - math.floor(math.log10(abs(value))))}f}"


def table(headers: list[str], rows: list[list]) -> str:
    """Plain-text table: number columns right-aligned, text columns left-aligned."""
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]
    cells = [headers] + [[fmt(value) for value in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(cell.rjust(w) if right else cell.ljust(w)
                               for cell, w, right in zip(row, widths, numeric)).rstrip() for row in cells)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = preset(args.preset)

    log.info("matmul rates (%d^3)", args.matmul_size)
    peak = {name: matmul_gflops(args.matmul_size, dtype or torch.float32) for name, dtype in PRECISIONS.items()}
    training = []
    for precision in PRECISIONS:
        log.info("training %s", precision)
        training.append(bench_training(args, precision, peak[precision]))
    sampling, identical = bench_sampling(args, peak)

    machine = machine_info()
    print(f"\n{args.preset}: {machine['cpu_model']}, {args.threads} threads, torch {torch.__version__}")
    print(f"matmul {args.matmul_size}^3: fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s\n")
    print(f"training step (fwd + bwd + AdamW), batch {args.batch}, src {args.src_len}, tgt {args.tgt_len}, "
          f"median of {args.steps}")
    print(table(["precision", "s/step", "tok/s src+tgt", "tok/s tgt", "GFLOP/step", "GFLOP/s", "MFU %"],
                [[r["precision"], r["seconds_per_step"], r["tokens_per_s_src_plus_tgt"], r["tgt_tokens_per_s"],
                  r["gflop_per_step"], r["gflops"], 100 * r["mfu"]] for r in training]))
    print(f"\nsampling, one source of {args.sample_src_len} tokens, tgt {args.tgt_len}, M={args.decode_steps}")
    print(table(["precision", "k", "memory", "s/source", "GFLOP/source", "GFLOP/s", "MFU %", "note"],
                [[r["precision"], r["candidates"], r["memory"], r["seconds_per_source"], r["gflop_per_source"],
                  r["gflops"], 100 * r["mfu"], r["note"]] for r in sampling]))
    seconds = {(r["precision"], r["candidates"], r["memory"]): r["seconds_per_source"] for r in sampling}
    k_max = args.candidates[-1]
    speedup = seconds["fp32", k_max, "uncached"] / seconds["fp32", k_max, "cached"]
    print(f"\nuncached / cached seconds, fp32 k={k_max}: {speedup:.2f}x; "
          f"same tokens for the same seed (short run): identical: {str(identical).lower()}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine, "args": vars(args), "model": cfg.to_dict(),
        "forward_flops_by_part": forward_flops(cfg, args.batch, args.src_len, args.tgt_len),
        "matmul_gflops": peak, "training": training, "sampling": sampling,
        "cached_vs_uncached_speedup": speedup, "cached_uncached_identical": identical}, indent=2) + "\n")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
