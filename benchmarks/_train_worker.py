"""One run of bench_train.py: a Trainer on random token batches under one ZeRO stage, timed, with the
model-state bytes each rank holds and, if asked, one checkpoint save and load.

bench_train.py starts it as a plain process (one rank) or under `deepspeed --num_gpus N`; rank 0 prints
one line, `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

from ardiff_scale.config import load_config
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.train import checkpoint
from ardiff_scale.train.trainer import Trainer

RESULT = "RESULT "
FIRST_WORD_ID = 5  # ids below are the tokenizer's specials (pad, unk, bos, eos, mask)


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
    parser.add_argument("--checkpoint-dir", default=None, help="save and load one checkpoint here (shared by ranks)")
    parser.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    return parser.parse_args()


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
    save_s = checkpoint.save(trainer.engine, root, trainer.step, trainer.state_dict(), trainer.world, keep=1)
    tag = checkpoint.tag_for(trainer.step)
    size = sum(f.stat().st_size for f in (root / tag).rglob("*") if f.is_file())  # every rank has written
    _, _, load_s = checkpoint.load(trainer.engine, root, tag)
    return {"save_s": save_s, "load_s": load_s, "bytes": size}


def main() -> None:
    args = parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # ZeRO-3's all_gather_into_tensor notices
    config = load_config(None, [f"model.preset={args.preset}", f"data.source_len={args.src_len}",
                                f"data.target_len={args.tgt_len}", f"train.micro_batch_size={args.batch}",
                                f"train.deepspeed=zero{args.stage}", "train.grad_accum=1", "tracking.enabled=false",
                                f"train.precision={args.precision}"])
    torch.manual_seed(0)
    model = ARDiffusionModel(config.model)
    num_params = sum(p.numel() for p in model.parameters())
    trainer = Trainer(config, model)

    generator = torch.Generator().manual_seed(trainer.rank)
    vocab = config.model.vocab_size
    src_ids = torch.randint(FIRST_WORD_ID, vocab, (args.batch, args.src_len), generator=generator)
    tgt_ids = torch.randint(FIRST_WORD_ID, vocab, (args.batch, args.tgt_len), generator=generator)
    batch = {"src_ids": src_ids, "src_mask": torch.ones_like(src_ids), "tgt_ids": tgt_ids}
    for _ in range(args.warmup):
        trainer.train_step([batch])
    timed = [trainer.train_step([batch]) for _ in range(args.steps)]

    engine = trainer.engine
    engine.backward(engine(src_ids, batch["src_mask"], tgt_ids, trainer.generator).loss)
    rank_result = model_state_bytes(engine)
    engine.step()
    if args.checkpoint_dir:
        rank_result |= checkpoint_round_trip(trainer, Path(args.checkpoint_dir))

    per_rank = [None] * trainer.world
    dist.all_gather_object(per_rank, rank_result)
    if trainer.is_main:
        result = {"procs": trainer.world, "stage": args.stage, "threads": torch.get_num_threads(),
                  "params": num_params, "tokens_per_step": timed[0].tokens,
                  "step_seconds": [m.seconds for m in timed],
                  "seconds_per_step": statistics.median(m.seconds for m in timed),
                  "memory": [{k: r[k] for k in ("params", "grads", "fp32_master", "optimizer", "peak_rss")}
                             for r in per_rank]}
        if args.checkpoint_dir:
            # Each rank times its own part; the slowest is what a job waits for.
            result["checkpoint"] = {"save_s": max(r["save_s"] for r in per_rank),
                                    "load_s": max(r["load_s"] for r in per_rank), "bytes": per_rank[0]["bytes"]}
        print(RESULT + json.dumps(result), flush=True)
    # Left to interpreter exit, gloo's threads abort the process ("terminate called without an active exception").
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
