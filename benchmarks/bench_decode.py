"""Decode wall-clock per source, one source at a time: AR-Diffusion (and uniform diffusion) at M = 20 with
k = 1 and k = 50 beside the autoregressive baseline's greedy and beam search, on the models a reproduction
trained (`ardiff reproduce`), so the baseline stops where a trained model emits </s>.

    .venv/bin/python benchmarks/bench_decode.py                         # models of runs/reproduce-full
    .venv/bin/python benchmarks/bench_decode.py --work runs/reproduce-smoke --plan smoke --sources 3
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from pathlib import Path

import torch
from bench_model import machine_info, table

from ardiff_scale.config import load_task
from ardiff_scale.pipelines.plan import load_plan
from ardiff_scale.pipelines.reproduce import Decoder, latency


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="runs/reproduce-full", help="the reproduction's work directory "
                        "(default: runs/reproduce-full)")
    parser.add_argument("--plan", default="full", help="the plan it ran (default: full)")
    parser.add_argument("--sources", type=int, default=10, help="test sources timed per point (default: 10)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--out", default="benchmarks/results/decode.json", help="JSON results")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    plan = load_plan(args.plan)
    plan.latency_sources = args.sources
    rows, results = [], []
    for name in plan.tasks:
        task = load_task(name)
        lengths = plan.task_lengths().get(name, (task.lengths.source, task.lengths.target))
        sources = [p.src for p in itertools.islice(task.pairs("test"), args.sources)]
        for system in plan.systems:
            model_dir = Path(args.work) / "finetune" / f"{name}-{system}" / "model-ema"
            if not (model_dir / "model.safetensors").exists():
                raise SystemExit(f"no trained model at {model_dir}: run `ardiff reproduce --plan {args.plan}` first")
            for point in latency(plan, Decoder(model_dir, lengths, plan.rows_per_batch), system, sources):
                label = (("greedy" if point["k"] == 1 else f"beam {point['k']}") if point["steps"] is None
                         else f"M={point['steps']}, k={point['k']}")
                rows.append([name, system, label, point["mean_seconds"], point["median_seconds"]])
                results.append({"task": name, "system": system, **point})
    print(table(["task", "system", "decoding", "mean s/source", "median s/source"], rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine_info(), "plan": args.plan, "work": args.work,
                                          "target_lengths": {t: plan.task_lengths().get(t) for t in plan.tasks},
                                          "results": results}, indent=2))
    print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
