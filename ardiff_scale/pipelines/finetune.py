"""`ardiff finetune`: a task's pairs as seq2seq shards, then training from a pretrained model directory."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from ardiff_scale.config import load_task, merge_sections, task_config
from ardiff_scale.data.shards import MANIFEST, build_shards
from ardiff_scale.data.tokenizer import tokenizer_file_in
from ardiff_scale.export import load_model_dir
from ardiff_scale.pipelines.pretrain import PretrainResult, run_pretraining

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
             shards_root: str | None = None, sections: dict[str, dict[str, Any]] | None = None) -> PretrainResult:
    """Fine-tune `init` on a task. `sections`: run-config fields the caller sets (as `task_config` takes them), over
    the task's; `overrides`: command-line strings, applied last. shards_root: where the task's shards are built
    (default OUTPUT/shards); runs that share a tokenizer may share it, and shards already built there with the
    same tokenizer are reused."""
    task = load_task(task_name)
    model, init_config, tokenizer = load_model_dir(init)
    out = Path(output or f"runs/finetune-{task.name}")
    root = Path(shards_root) if shards_root else out / "shards"
    shards = {split: task_shards(task, split, tokenizer, root / split, samples_per_shard)
              for split in ("train", "valid")}
    # The model is the init's, field by field; the task sets lengths, steps and decoding; the command line last.
    ours = {"model": asdict(init_config.model),
            "data": {"train": str(shards["train"]), "valid": str(shards["valid"]),
                     "tokenizer": tokenizer_file_in(init)},
            "train": {"output_dir": str(out)}, "tracking": {"experiment": f"ardiff-finetune-{task.name}"}}
    config = task_config(task, overrides, **merge_sections(ours, sections or {}))
    log.info("fine-tuning %s on task %s from %s for %d steps", init_config.model_preset or "model", task.name, init,
             config.train.max_steps)
    return run_pretraining(config, time_budget=time_budget, init_weights=model.state_dict())
