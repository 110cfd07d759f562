"""One run of bench_train.py: a Trainer under one ZeRO stage, timed step by step from outside, with the
data wait; if asked, the model-state bytes each rank holds and one checkpoint save and load.

It runs against either version of the training loop, whichever `ardiff_scale` is first on PYTHONPATH:
- the current one: `train_step` returns nothing, `flush()` hands each step's metrics (for the window's last
  step, the time breakdown) to the callbacks' `on_log`, and checkpoints go through a `CheckpointStore`;
- the one before (commit 2c96d3d): `train_step` returns a `StepMetrics`, checkpoints take a root path.
Both are timed the same way here: the data wait is the wall time of `next(batches)`, the step the wall time of
`train_step`. The current loop's own breakdown is read as well, by a callback.

Batches come from shards through the real data path (`--shards`, `--tokenizer`) or are one fixed random batch.
bench_train.py starts it as a plain process (one rank) or under `deepspeed --num_gpus N`; rank 0 prints one
line, `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import resource
import statistics
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

import ardiff_scale
from ardiff_scale.config import TrainConfig, load_config
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.train import checkpoint
from ardiff_scale.train.trainer import Callback, Trainer

RESULT = "RESULT "
FIRST_WORD_ID = 5  # ids below are the tokenizer's specials (pad, unk, bos, eos, mask)
BREAKDOWN_KEYS = ("tokens_per_s", "tflops", "mfu")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True)
    parser.add_argument("--batch", type=int, required=True, help="micro-batch per rank")
    parser.add_argument("--src-len", type=int, required=True)
    parser.add_argument("--tgt-len", type=int, required=True)
    parser.add_argument("--stage", type=int, required=True, help="ZeRO stage, 0 to 3")
    parser.add_argument("--warmup", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True, help="timed steps")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="train.precision")
    parser.add_argument("--vocab-size", type=int, default=0, help="model.vocab_size (default: the preset's)")
    parser.add_argument("--shards", default=None, help="read batches from these shards (else one random batch)")
    parser.add_argument("--tokenizer", default=None, help="the shards' tokenizer model (with --shards)")
    parser.add_argument("--workers", type=int, default=0, help="data.num_workers (with --shards)")
    parser.add_argument("--memory", action="store_true", help="measure the model-state bytes after the timed steps")
    parser.add_argument("--checkpoint-dir", default=None, help="save and load one checkpoint here (shared by ranks)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    args = parser.parse_args()
    if bool(args.shards) != bool(args.tokenizer):
        parser.error("--shards and --tokenizer go together")
    return args


class LastBreakdown(Callback):
    """Keeps the last metrics that carry the time breakdown (a logging window's last step)."""

    def __init__(self) -> None:
        self.metrics: dict[str, float] | None = None

    def on_log(self, trainer, metrics: dict[str, float]) -> None:
        if "time/step_s" in metrics:
            self.metrics = dict(metrics)


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors`: views into one flat ZeRO buffer count once."""
    return sum({t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors if t is not None}.values())


def model_state_bytes(engine) -> dict[str, int]:
    """Bytes this rank holds, taken between backward and the optimizer step, while gradients exist.

    params: the module's tensors (under ZeRO-3 the local partition plus the small parameters it keeps whole);
    grads: `.grad`s plus the reduced partitions ZeRO keeps for the step (lists of tensors under ZeRO-1/2, a flat
    buffer under ZeRO-2 with contiguous gradients and under ZeRO-3); fp32_master: the optimizer's
    own copy of its partition where it is not the module's storage (ZeRO-1/2 clone it even in fp32);
    optimizer: AdamW's moments.
    """
    module_params = list(engine.module.parameters())
    held = [p.data for p in module_params] + [p.ds_tensor for p in module_params if hasattr(p, "ds_tensor")]
    held_ptrs = {t.untyped_storage().data_ptr() for t in held}
    zero = engine.optimizer
    reduced = [getattr(zero, name, None) for name in ("grads_in_partition", "grad_partitions_flat_buffer")]
    reduced += [t for tensors in getattr(zero, "averaged_gradients", {}).values() if tensors for t in tensors]
    base = getattr(zero, "optimizer", zero)  # ZeRO 1-3 wrap torch's AdamW; ZeRO-0 uses it as is
    master = [p for group in base.param_groups for p in group["params"]]
    return {"params": storage_bytes(held),
            "grads": storage_bytes([p.grad for p in module_params] + reduced),
            "fp32_master": storage_bytes([p for p in master if p.untyped_storage().data_ptr() not in held_ptrs]),
            "optimizer": storage_bytes([v for state in base.state.values() for v in state.values()
                                        if torch.is_tensor(v)]),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def checkpoint_round_trip(trainer: Trainer, root: Path) -> dict[str, float]:
    tag = checkpoint.tag_for(trainer.step)
    if hasattr(checkpoint, "CheckpointStore"):
        store = checkpoint.CheckpointStore(str(root))
        ema = trainer.ema.state_dict() if trainer.ema.keep else None
        save_s = checkpoint.save(trainer.engine, store, trainer.step, trainer.state_dict(), ema,
                                 trainer.ema.partitioned, trainer.world, keep=1)
        load_s = checkpoint.load(trainer.engine, store, tag, trainer.rank, trainer.ema.keep,
                                 trainer.ema.partitioned).seconds
    else:  # before the rewrite: a root path, the EMA inside each rank's state
        save_s = checkpoint.save(trainer.engine, root, trainer.step, trainer.state_dict(), trainer.world, keep=1)
        _, _, load_s = checkpoint.load(trainer.engine, root, tag)
    size = sum(f.stat().st_size for f in (root / tag).rglob("*") if f.is_file())  # every rank has written
    return {"save_s": save_s, "load_s": load_s, "bytes": size}


def overrides(args: argparse.Namespace) -> list[str]:
    values = [f"model.preset={args.preset}", f"data.source_len={args.src_len}", f"data.target_len={args.tgt_len}",
              f"train.micro_batch_size={args.batch}", f"train.deepspeed=zero{args.stage}", "train.grad_accum=1",
              "tracking.enabled=false", f"train.precision={args.precision}",
              # One logging window holds the warmup or the timed steps, so that no flush happens inside them.
              f"train.log_every={max(args.warmup, args.steps, 1)}"]
    if args.vocab_size:
        values.append(f"model.vocab_size={args.vocab_size}")
    if args.shards:
        values.append(f"data.num_workers={args.workers}")
    # The current tree refuses emulated bf16 on a CPU unless forced; the old one has no such key.
    if args.precision != "fp32" and "force_precision" in {f.name for f in dataclasses.fields(TrainConfig)}:
        values.append("train.force_precision=true")
    return values


def random_batches(args: argparse.Namespace, vocab: int, rank: int):
    generator = torch.Generator().manual_seed(rank)
    src_ids = torch.randint(FIRST_WORD_ID, vocab, (args.batch, args.src_len), generator=generator)
    tgt_ids = torch.randint(FIRST_WORD_ID, vocab, (args.batch, args.tgt_len), generator=generator)
    return itertools.repeat({"src_ids": src_ids, "src_mask": torch.ones_like(src_ids), "tgt_ids": tgt_ids})


def shard_batches(args: argparse.Namespace, config, rank: int, world: int):
    from ardiff_scale.data.pipeline import open_shards
    from ardiff_scale.data.tokenizer import Tokenizer
    from ardiff_scale.train.loader import open_loader

    shard_set = open_shards(args.shards, Tokenizer.load(args.tokenizer))
    return open_loader(shard_set, config, rank, world, epochs=0, batch_size=args.batch).tensors()


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # ZeRO-3's all_gather_into_tensor notices
    config = load_config(None, overrides(args))
    torch.manual_seed(0)
    model = ARDiffusionModel(config.model)
    num_params = sum(p.numel() for p in model.parameters())
    recorder = LastBreakdown()
    trainer = Trainer(config, model, callbacks=[recorder])
    windowed = hasattr(trainer, "flush")  # the rewritten loop
    if args.shards:
        batches = shard_batches(args, config, trainer.rank, trainer.world)
    else:
        batches = random_batches(args, config.model.vocab_size, trainer.rank)

    def timed_step() -> tuple[float, float, dict]:
        started = time.perf_counter()
        batch = next(batches)
        fetched = time.perf_counter()
        if windowed:
            trainer.add_time("data", fetched - started)  # as `fit` does, so the loop's own report has it too
        trainer.train_step([batch])
        return fetched - started, time.perf_counter() - fetched, batch

    for _ in range(args.warmup):
        timed_step()
    if windowed:
        trainer.flush()  # starts a fresh window: the loop's breakdown then covers the timed steps only
        recorder.metrics = None
    data_s, step_s = [], []
    for _ in range(args.steps):
        waited, stepped, batch = timed_step()
        data_s.append(waited)
        step_s.append(stepped)
    if windowed:
        trainer.flush()

    rank_result: dict = {}
    engine = trainer.engine
    if args.memory:
        engine.backward(engine(batch["src_ids"], batch["src_mask"], batch["tgt_ids"], trainer.generator).loss)
        rank_result |= model_state_bytes(engine)
        engine.step()
    if args.checkpoint_dir:
        rank_result |= checkpoint_round_trip(trainer, Path(args.checkpoint_dir))

    per_rank = [None] * trainer.world
    dist.all_gather_object(per_rank, rank_result)
    if trainer.is_main:
        total_s = [d + s for d, s in zip(data_s, step_s)]
        result = {"tree": "windowed" if windowed else "step_metrics", "module": ardiff_scale.__file__,
                  "procs": trainer.world, "stage": args.stage, "threads": torch.get_num_threads(),
                  "precision": args.precision, "forced_precision": "train.force_precision=true" in overrides(args),
                  "batch": args.batch, "src_len": args.src_len, "tgt_len": args.tgt_len,
                  "vocab_size": config.model.vocab_size, "params": num_params,
                  "data": {"shards": args.shards, "workers": args.workers} if args.shards else "random",
                  # Every computed position, padding included, summed over ranks.
                  "tokens_per_step": args.batch * (args.src_len + args.tgt_len) * trainer.world,
                  "data_seconds": data_s, "step_seconds": step_s,
                  "seconds_per_step": statistics.fmean(total_s),
                  "median_seconds_per_step": statistics.median(total_s),
                  "data_seconds_per_step": statistics.fmean(data_s),
                  "train_step_seconds_per_step": statistics.fmean(step_s)}
        if windowed and recorder.metrics:
            result["loop_report"] = {k: v for k, v in recorder.metrics.items()
                                     if k.startswith("time/") or k in BREAKDOWN_KEYS}
            result["loop_peak"] = {"tflops": trainer.peak.tflops, "source": trainer.peak.source}
        if args.memory:
            result["memory"] = [{k: r[k] for k in ("params", "grads", "fp32_master", "optimizer", "peak_rss")}
                                for r in per_rank]
        if args.checkpoint_dir:
            # Each rank times its own part; the slowest is what a job waits for.
            result["checkpoint"] = {"save_s": max(r["save_s"] for r in per_rank),
                                    "load_s": max(r["load_s"] for r in per_rank), "bytes": per_rank[0]["bytes"]}
        print(RESULT + json.dumps(result), flush=True)
    # Left to interpreter exit, gloo's threads abort the process ("terminate called without an active exception").
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
