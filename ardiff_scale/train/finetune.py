"""`ardiff finetune`: a task's pairs as seq2seq shards, then training from a pretrained model directory."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

from ardiff_scale.data.shards import MANIFEST, build_shards
from ardiff_scale.data.tokenizer import tokenizer_file_in
from ardiff_scale.evaluation.tasks import load_task
from ardiff_scale.export import load_model_dir
from ardiff_scale.train.pretrain import PretrainResult, run_pretraining

log = logging.getLogger("ardiff.train")


def task_shards(task, split: str, tokenizer, directory: Path, samples_per_shard: int, processes: int = 2) -> Path:
    """Build the split's shards once; rebuilt only if they were made with another tokenizer."""
    manifest = directory / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text())["tokenizer"]["sha256"] == tokenizer.sha256:
        return directory
    build_shards(task.pairs(split), "seq2seq", str(directory), tokenizer, samples_per_shard=samples_per_shard,
                 processes=processes, inputs=[f"{task.data.location} ({task.data.format}, {task.split_name(split)})"])
    return directory


def finetune(task_name: str, init: str, output: str | None, overrides: Sequence[str] = (),
             samples_per_shard: int = 1000, time_budget: float | None = None,
             shards_root: str | None = None) -> PretrainResult:
    """shards_root: where the task's shards are built (default OUTPUT/shards); runs that share a tokenizer
    may share it, and shards already built there with the same tokenizer are reused."""
    task = load_task(task_name)
    model, init_config, tokenizer = load_model_dir(init)
    out = Path(output or f"runs/finetune-{task.name}")
    root = Path(shards_root) if shards_root else out / "shards"
    shards = {split: task_shards(task, split, tokenizer, root / split, samples_per_shard)
              for split in ("train", "valid")}
    # The model is the init's, field by field; the task then sets lengths, steps and decoding.
    model_fields = [f"model.{k}={v}" for k, v in init_config.model.to_dict().items()]
    config = task.run_config([*model_fields, f"data.train={shards['train']}", f"data.valid={shards['valid']}",
                              f"data.tokenizer={tokenizer_file_in(init)}", f"train.output_dir={out}",
                              f"tracking.experiment=ardiff-finetune-{task.name}", *overrides])
    log.info("fine-tuning %s on task %s from %s for %d steps", init_config.model_preset or "model", task.name, init,
             config.train.max_steps)
    return run_pretraining(config, time_budget=time_budget, init_weights=model.state_dict())
