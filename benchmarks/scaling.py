"""The tables of docs/SCALING.md: checkpoint bytes and save/load seconds per rank and per job, and the data
readers needed to keep the GPUs fed, for 8, 64 and 512 GPUs, the xsum, genie-base and 1b presets, ZeRO 0-3.

Nothing is trained: parameter counts come from the presets the way `ardiff model-info` counts them (the model
built on the meta device), FLOPs from `ardiff_scale.model.flops.training_step_flops`. Measured inputs are read
from benchmarks/results/: checkpoint.json (bench_checkpoint.py: the 2-rank xsum checkpoint the byte formulas
are checked against, and the size of the per-rank state file) and data.json (bench_data.py: reader samples/s
per DataLoader worker, bytes per sample). Bandwidths, GPU peak and MFU are stated assumptions (flags).

    .venv/bin/python benchmarks/scaling.py            # prints markdown tables, writes results/scaling.json
    .venv/bin/python benchmarks/scaling.py --help     # the assumptions as flags
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import torch

from ardiff_scale.config import load_config
from ardiff_scale.model import build_model, parameter_breakdown
from ardiff_scale.model.flops import training_step_flops

GB = 1e9
MB = 1e6
STAGES = (0, 1, 2, 3)
KINDS = ("model_states", "optimizer", "rank_state", "ema")
WEIGHT_BYTES = {"bf16": 2, "fp32": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="xsum,genie-base,1b", help="model presets (default: xsum,genie-base,1b)")
    parser.add_argument("--gpus", default="8,64,512", help="job sizes in GPUs = ranks (default: 8,64,512)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="ranks per node (default: 8)")
    parser.add_argument("--precision", default="bf16", choices=sorted(WEIGHT_BYTES),
                        help="train.precision: the dtype of the module weights DeepSpeed saves (default: bf16, the "
                             "xsum recipe's)")
    parser.add_argument("--fs-node-gbs", type=float, default=2.0,
                        help="parallel filesystem: write (and read) GB/s per node (default: 2.0)")
    parser.add_argument("--fs-aggregate-gbs", type=float, default=50.0,
                        help="parallel filesystem: GB/s cap for the whole job (default: 50)")
    parser.add_argument("--object-node-gbs", type=float, default=1.0,
                        help="object store: GB/s per node, no job-wide cap (default: 1.0)")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak per GPU, TFLOP/s (default: 989, H100/H200 SXM)")
    parser.add_argument("--mfu", default="0.3,0.5", help="model FLOP utilisations assumed (default: 0.3,0.5)")
    parser.add_argument("--source-len", type=int, default=512, help="data.source_len (default: 512, xsum recipe)")
    parser.add_argument("--target-len", type=int, default=50, help="data.target_len (default: 50, xsum recipe)")
    parser.add_argument("--open-shards", type=int, default=4, help="data.open_shards (default: 4)")
    parser.add_argument("--headroom", type=float, default=2.0,
                        help="reader capacity over demand when sizing workers (default: 2)")
    parser.add_argument("--samples-per-shard", type=int, default=2000,
                        help="shard size for the corpus-size column (default: 2000, `ardiff shards build`'s)")
    parser.add_argument("--rank-state-bytes", type=float, default=None,
                        help="per-rank state file without EMA (default: measured in checkpoint.json, else 1e6)")
    parser.add_argument("--checkpoint-json", default="benchmarks/results/checkpoint.json",
                        help="bench_checkpoint.py results (default: benchmarks/results/checkpoint.json)")
    parser.add_argument("--data-json", default="benchmarks/results/data.json",
                        help="bench_data.py results (default: benchmarks/results/data.json)")
    parser.add_argument("--out", default="benchmarks/results/scaling.json",
                        help="JSON results (default: benchmarks/results/scaling.json)")
    args = parser.parse_args(argv)
    args.presets = [p.strip() for p in args.presets.split(",")]
    args.gpus = [int(n) for n in args.gpus.split(",")]
    args.mfu = [float(m) for m in args.mfu.split(",")]
    return args


def parameter_count(name: str) -> tuple[int, object]:
    """Total parameters as `ardiff model-info --preset NAME` prints them, and the model config."""
    config = load_config(None, [f"model.preset={name}"])
    with torch.device("meta"):
        model = build_model(config.model)
    return sum(parameter_breakdown(model).values()), config.model


# --- checkpoint bytes -------------------------------------------------------------------------------------

def checkpoint_files(params: int, stage: int, world: int, weight_bytes: int, rank_state: float,
                     zero3_model_states: float, ema_on_every_rank: bool = False) -> dict[str, dict[str, float]]:
    """Bytes each rank writes, by file kind: {"rank0": {...}, "other": {...}} (every rank but 0 writes the same).

    DeepSpeed 0.19 (engine.save_checkpoint): ZeRO-0 has no ZeRO optimizer, so rank 0 alone writes
    mp_rank_00_model_states.pt holding the module weights and the whole optimizer state (bf16: the FP16_Optimizer
    wrapper's fp32 master copy + AdamW m and v = 12 B/param; fp32: AdamW m and v = 8 B/param, the weights are
    their own master). ZeRO-1/2: rank 0 writes the module weights (weight_bytes/param); every rank writes its
    optimizer partition, fp32 master + m + v = 12/N B/param. ZeRO-3: every rank writes a small
    zero_pp_rank_R model-states file (`zero3_model_states` bytes: shapes and metadata, no weights: those are in
    the optimizer partition) and 12/N B/param.
    ardiff: one per-rank state file (RNG, data reader) on every rank; the fp32 EMA once per job on rank 0 under
    ZeRO 0-2 (the layout being built) or on every rank (`ema_on_every_rank`, the baseline 2c96d3d), and 1/N per
    rank under ZeRO-3 (both layouts).
    """
    p, n = float(params), world
    rank0 = {k: 0.0 for k in KINDS}
    other = {k: 0.0 for k in KINDS}
    if stage == 0:
        master = 4 if weight_bytes < 4 else 0
        rank0["model_states"] = p * (weight_bytes + master + 8)
    elif stage in (1, 2):
        rank0["model_states"] = p * weight_bytes
        rank0["optimizer"] = other["optimizer"] = 12 * p / n
    else:
        rank0["model_states"] = other["model_states"] = zero3_model_states
        rank0["optimizer"] = other["optimizer"] = 12 * p / n
    for part in (rank0, other):
        part["rank_state"] = rank_state
    if stage == 3:
        rank0["ema"] = other["ema"] = 4 * p / n
    else:
        rank0["ema"] = 4 * p
        other["ema"] = 4 * p if ema_on_every_rank else 0.0
    return {"rank0": rank0, "other": other}


def job_total(files: dict[str, dict[str, float]], world: int) -> float:
    return sum(files["rank0"].values()) + (world - 1) * sum(files["other"].values())


def node_bytes(files: dict[str, dict[str, float]], world: int, per_node: int) -> float:
    """Bytes the busiest node writes: node 0 (rank 0 plus per_node - 1 others)."""
    return sum(files["rank0"].values()) + (min(world, per_node) - 1) * sum(files["other"].values())


def read_bytes(files: dict[str, dict[str, float]], stage: int, world: int, per_node: int,
               ema_in_rank_files: bool = False) -> dict[str, float]:
    """Bytes read to resume: per node and per job.

    DeepSpeed 0.19 (engine.load_checkpoint) has every rank load the model-states file it would write (ZeRO 0-2:
    rank 0's mp_rank_00 file, whole) and its own optimizer partition. Every rank needs the whole EMA under
    ZeRO 0-2. ardiff (train/checkpoint.py:load at 2c96d3d) reads every rank's state file on every rank. Files
    all ranks of a node read are counted once per node (the page cache serves the others). `ema_in_rank_files`:
    the baseline, whose EMA sits in the per-rank state files, so reading every rank's file reads every EMA."""
    rank0, other = files["rank0"], files["other"]
    if ema_in_rank_files:
        shared = (0.0 if stage == 3 else rank0["model_states"]) + rank0["rank_state"] + rank0["ema"]
        shared += (world - 1) * (other["rank_state"] + other["ema"])
        own = other["optimizer"] + (other["model_states"] if stage == 3 else 0)
    else:
        shared = (0.0 if stage == 3 else rank0["model_states"] + rank0["ema"]) + world * other["rank_state"]
        own = other["optimizer"] + (other["model_states"] + other["ema"] if stage == 3 else 0)
    nodes = math.ceil(world / per_node)
    return {"node": shared + min(world, per_node) * own, "job": nodes * shared + world * own,
            "rank": shared + own}


def save_seconds(files: dict, world: int, per_node: int, node_gbs: float, aggregate_gbs: float | None) -> float:
    """Ranks write in parallel; the busiest node (rank 0's) sets the time, unless the job-wide cap is lower."""
    seconds = node_bytes(files, world, per_node) / (node_gbs * GB)
    if aggregate_gbs:
        seconds = max(seconds, job_total(files, world) / (aggregate_gbs * GB))
    return seconds


def load_seconds(files: dict, stage: int, world: int, per_node: int, node_gbs: float,
                 aggregate_gbs: float | None) -> float:
    """Reads at the same rates as writes: the busiest node's bytes, or the job's over the cap."""
    read = read_bytes(files, stage, world, per_node)
    seconds = read["node"] / (node_gbs * GB)
    if aggregate_gbs:
        seconds = max(seconds, read["job"] / (aggregate_gbs * GB))
    return seconds


def calibration(args: argparse.Namespace, rank_state: float, zero3_model_states: float) -> list[dict]:
    """Formula (baseline layout: EMA on every rank under ZeRO 0-2) against each measured baseline case."""
    path = Path(args.checkpoint_json)
    if not path.exists():
        return []
    results = json.loads(path.read_text())
    rows = []
    for case in results["cases"]:
        params = results["trees"].get(case["tree"], {}).get("params")
        if case["tree"] != "baseline" or not case.get("checkpoint") or not params:
            continue
        files = checkpoint_files(params, case["stage"], 2, WEIGHT_BYTES[case["precision"]], rank_state,
                                 zero3_model_states, ema_on_every_rank=True)
        formula = {k: files["rank0"][k] + files["other"][k] for k in KINDS}
        measured = {k: case["checkpoint"]["by_kind"].get(k, 0) for k in KINDS}
        rows.append({"stage": case["stage"], "precision": case["precision"], "params": params,
                     "formula": formula, "measured": measured, "formula_total": sum(formula.values()),
                     "measured_total": case["checkpoint"]["bytes"],
                     "measured_largest_writer": max(case["checkpoint"]["by_writer_rank"].values()),
                     "formula_largest_writer": max(sum(files["rank0"].values()), sum(files["other"].values())),
                     "save_seconds": case.get("save_seconds"), "load_seconds": case.get("load_seconds"),
                     "largest_writer_mb_per_s": (max(case["checkpoint"]["by_writer_rank"].values()) / MB
                                                 / statistics.median(case["save_seconds"].values())
                                                 if case.get("save_seconds") else None)})
    return rows


def measured_small_files(args: argparse.Namespace) -> tuple[float, float, str]:
    """(per-rank state bytes, ZeRO-3 per-rank model-states bytes, where they came from): the largest measured."""
    path = Path(args.checkpoint_json)
    cases = [c for c in json.loads(path.read_text())["cases"] if c.get("checkpoint")] if path.exists() else []
    rank_state = max((c["checkpoint"]["max_per_rank_by_kind"].get("rank_state", 0) for c in cases), default=0)
    zero3 = max((c["checkpoint"]["max_per_rank_by_kind"].get("model_states", 0) for c in cases if c["stage"] == 3),
                default=0)
    source = f"largest measured in {path}" if rank_state else "assumed (no checkpoint.json)"
    if args.rank_state_bytes is not None:
        rank_state, source = args.rank_state_bytes, "--rank-state-bytes"
    return float(rank_state or 1e6), float(zero3 or 1e5), source


# --- data path --------------------------------------------------------------------------------------------

def reader_rates(path: Path) -> dict:
    """Per-worker samples/s of bench_data.py's "after" rows (the batched reader training uses, with workers:
    total / workers), and shard bytes and token ids per sample from the shard manifest it records."""
    results = json.loads(path.read_text())
    if "rows" not in results:
        raise SystemExit(f"{path} has the layout of bench_data.py before the before/after rewrite: run "
                         "benchmarks/bench_data.py again")
    rows = [r for r in results["rows"] if r["impl"] == "new" and r["workers"] > 0 and not r["shards_failed"]]
    per_worker = {f"{r['source']} {r['workers']}w": r["samples_per_s"] / r["workers"] for r in rows}
    batch = max((r for r in rows if r["source"] == "local"), key=lambda r: r["workers"], default=None)
    shards = results["shards"]
    return {"per_worker": per_worker, "conservative": min(per_worker.values()),
            "conservative_row": min(per_worker, key=per_worker.get),
            "bytes_per_sample": shards["bytes"] / shards["samples"],
            "tokens_per_sample": shards["tokens"] / shards["samples"],
            "batch_path_samples_per_s": batch["samples_per_s"] if batch else None,
            "batch_path": f"batches of {batch['batch']}, {batch['workers']} workers" if batch else None,
            "machine": results["machine"], "source": str(path)}


# --- printing ---------------------------------------------------------------------------------------------

def fmt(value: float, digits: int = 3) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def markdown(headers: list[str], rows: list[list]) -> str:
    rule = "|" + "|".join("---:" if i else "---" for i in range(len(headers))) + "|"
    lines = ["| " + " | ".join(headers) + " |", rule]
    lines += ["| " + " | ".join(v if isinstance(v, str) else fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    weight_bytes = WEIGHT_BYTES[args.precision]
    rank_state, zero3_model_states, rank_state_source = measured_small_files(args)
    models = {name: parameter_count(name) for name in args.presets}

    print(f"## Parameters and FLOPs (source {args.source_len}, target {args.target_len})\n")
    print(markdown(["preset", "parameters", "GFLOP per sample (train step)"],
                   [[name, f"{p:,}", training_step_flops(cfg, 1, args.source_len, args.target_len) / 1e9]
                    for name, (p, cfg) in models.items()]))

    calib = calibration(args, rank_state, zero3_model_states)
    if calib:
        print(f"\n## Calibration: 2 ranks, xsum, baseline layout, MB (formula / measured), from "
              f"{args.checkpoint_json}\n")
        print(markdown(["ZeRO", "precision", *KINDS, "total", "largest writer", "save s", "load s",
                        "largest writer MB/s"],
                       [[str(r["stage"]), r["precision"],
                         *[f"{r['formula'][k] / MB:,.1f} / {r['measured'][k] / MB:,.1f}" for k in KINDS],
                         f"{r['formula_total'] / MB:,.1f} / {r['measured_total'] / MB:,.1f}",
                         f"{r['formula_largest_writer'] / MB:,.1f} / {r['measured_largest_writer'] / MB:,.1f}",
                         "/".join(f"{s:.1f}" for s in (r["save_seconds"] or {}).values()) or "-",
                         "-" if r["load_seconds"] is None else f"{r['load_seconds']:.1f}",
                         r["largest_writer_mb_per_s"] or "-"] for r in calib]))
    else:
        print(f"\n(no calibration: {args.checkpoint_json} not found; run benchmarks/bench_checkpoint.py)")

    checkpoints = []
    for name, (params, _) in models.items():
        for world in args.gpus:
            for stage in STAGES:
                files = checkpoint_files(params, stage, world, weight_bytes, rank_state, zero3_model_states)
                checkpoints.append({
                    "preset": name, "params": params, "gpus": world, "stage": stage, "files": files,
                    "rank0_bytes": sum(files["rank0"].values()), "other_rank_bytes": sum(files["other"].values()),
                    "job_bytes": job_total(files, world),
                    "busiest_node_bytes": node_bytes(files, world, args.gpus_per_node),
                    "read_bytes": read_bytes(files, stage, world, args.gpus_per_node),
                    "save_s_fs": save_seconds(files, world, args.gpus_per_node, args.fs_node_gbs,
                                              args.fs_aggregate_gbs),
                    "save_s_object": save_seconds(files, world, args.gpus_per_node, args.object_node_gbs, None),
                    "load_s_fs": load_seconds(files, stage, world, args.gpus_per_node, args.fs_node_gbs,
                                              args.fs_aggregate_gbs)})
    by_key = {(c["preset"], c["stage"], c["gpus"]): c for c in checkpoints}
    keys = [(name, stage) for name in models for stage in STAGES]
    print(f"\n## Checkpoint bytes per rank and per job ({args.precision} weights, layout being built)\n")
    print(f"GB = 1e9 bytes, MB = 1e6; rank 0 / any other rank; per-rank state {rank_state / MB:.3f} MB, ZeRO-3 "
          f"model-states file {zero3_model_states / MB:.3f} MB per rank ({rank_state_source})\n")
    print(markdown(["preset", "ZeRO", *[f"job GB @{g}" for g in args.gpus],
                    *[f"rank 0 / other MB @{g}" for g in args.gpus]],
                   [[name, str(stage), *[by_key[name, stage, g]["job_bytes"] / GB for g in args.gpus],
                     *[f"{fmt(by_key[name, stage, g]['rank0_bytes'] / MB)} / "
                       f"{fmt(by_key[name, stage, g]['other_rank_bytes'] / MB)}" for g in args.gpus]]
                    for name, stage in keys]))
    print("\n## Baseline layout (2c96d3d: whole EMA in every rank's state file under ZeRO 0-2, every rank reads "
          "every rank's file on resume) vs the layout being built, GB\n")
    baseline_rows = []
    for name, (params, _) in models.items():
        for stage in (2, 3):
            row = [name, str(stage)]
            for g in args.gpus:
                old = checkpoint_files(params, stage, g, weight_bytes, rank_state, zero3_model_states, True)
                new = by_key[name, stage, g]
                row += [f"{fmt(job_total(old, g) / GB)} / {fmt(new['job_bytes'] / GB)}",
                        f"{fmt(read_bytes(old, stage, g, args.gpus_per_node, True)['node'] / GB)} / "
                        f"{fmt(new['read_bytes']['node'] / GB)}"]
                new.setdefault("baseline_layout", {"job_bytes": job_total(old, g),
                                                   "read_bytes": read_bytes(old, stage, g, args.gpus_per_node, True)})
            baseline_rows.append(row)
    print(markdown(["preset", "ZeRO", *[h for g in args.gpus for h in (f"job @{g}", f"read per node @{g}")]],
                   baseline_rows))
    print(f"\n## Save and load seconds: parallel FS {args.fs_node_gbs:g} GB/s per node and {args.fs_aggregate_gbs:g} "
          f"GB/s per job, object store {args.object_node_gbs:g} GB/s per node; {args.gpus_per_node} GPUs per node\n")
    print(markdown(["preset", "ZeRO", *[f"save FS @{g}" for g in args.gpus], *[f"save object @{g}" for g in args.gpus],
                    *[f"load FS @{g}" for g in args.gpus]],
                   [[name, str(stage), *[by_key[name, stage, g]["save_s_fs"] for g in args.gpus],
                     *[by_key[name, stage, g]["save_s_object"] for g in args.gpus],
                     *[by_key[name, stage, g]["load_s_fs"] for g in args.gpus]] for name, stage in keys]))

    data_path = Path(args.data_json)
    readers = reader_rates(data_path) if data_path.exists() else None
    demand = []
    for name, (params, cfg) in models.items():
        flops = training_step_flops(cfg, 1, args.source_len, args.target_len)
        for mfu in args.mfu:
            samples = args.peak_tflops * 1e12 * mfu / flops
            row = {"preset": name, "mfu": mfu, "flops_per_sample": flops, "samples_per_s_per_gpu": samples,
                   "positions_per_s_per_gpu": samples * (args.source_len + args.target_len)}
            if readers:
                row |= {"window_tokens_per_s_per_gpu": samples * readers["tokens_per_sample"],
                        "shard_mb_per_s_per_gpu": samples * readers["bytes_per_sample"] / MB,
                        "workers_per_gpu": max(1, math.ceil(args.headroom * samples / readers["conservative"])),
                        "batch_path_ratio": (readers["batch_path_samples_per_s"] / samples
                                             if readers["batch_path_samples_per_s"] else None)}
                row["shards_min"] = {str(g): g * row["workers_per_gpu"] * args.open_shards for g in args.gpus}
            demand.append(row)
    print(f"\n## Data path: demand per GPU at {args.peak_tflops:g} TFLOP/s x MFU\n")
    if readers:
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in readers["per_worker"].items())
        print(f"measured per-worker samples/s ({readers['machine']['cpu_model']}, {readers['machine']['threads']} "
              f"threads, {data_path}): {rates}; sized with the slowest, {readers['conservative_row']} "
              f"{readers['conservative']:,.0f}, x{args.headroom:g} headroom; {readers['bytes_per_sample']:,.0f} shard "
              f"bytes and {readers['tokens_per_sample']:.0f} tokens per sample; batch path "
              f"({readers['batch_path']}) {readers['batch_path_samples_per_s']:,.0f} samples/s per rank\n")
        print(markdown(["preset", "MFU", "GFLOP/sample", "samples/s/GPU", "src+tgt positions/s/GPU",
                        "shard MB/s per node", "workers/GPU", "batch path / demand"],
                       [[r["preset"], f"{r['mfu']:.0%}", r["flops_per_sample"] / 1e9, r["samples_per_s_per_gpu"],
                         r["positions_per_s_per_gpu"], r["shard_mb_per_s_per_gpu"] * args.gpus_per_node,
                         str(r["workers_per_gpu"]), r["batch_path_ratio"]] for r in demand]))
        print(f"\n## Shards per epoch: at least GPUs x workers x open_shards ({args.open_shards}); samples that "
              f"fills at {args.samples_per_shard} per shard\n")
        print(markdown(["preset", "MFU", "workers/GPU", *[f"shards @{g}" for g in args.gpus],
                        *[f"M samples @{g}" for g in args.gpus]],
                       [[r["preset"], f"{r['mfu']:.0%}", str(r["workers_per_gpu"]),
                         *[f"{r['shards_min'][str(g)]:,}" for g in args.gpus],
                         *[r["shards_min"][str(g)] * args.samples_per_shard / 1e6 for g in args.gpus]]
                        for r in demand]))
    else:
        print(f"(no reader rates: {data_path} not found; run benchmarks/bench_data.py)")
        print(markdown(["preset", "MFU", "GFLOP/sample", "samples/s/GPU", "src+tgt positions/s/GPU"],
                       [[r["preset"], f"{r['mfu']:.0%}", r["flops_per_sample"] / 1e9, r["samples_per_s_per_gpu"],
                         r["positions_per_s_per_gpu"]] for r in demand]))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rank_state_bytes": rank_state,
                               "rank_state_source": rank_state_source,
                               "zero3_model_states_bytes": zero3_model_states,
                               "params": {n: p for n, (p, _) in models.items()}, "calibration": calib,
                               "checkpoints": checkpoints, "readers": readers, "data_demand": demand}, indent=2) + "\n")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
