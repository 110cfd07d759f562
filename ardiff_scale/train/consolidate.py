"""`ardiff export`: a DeepSpeed checkpoint, whatever its ZeRO stage and world size, as one model directory.

Runs offline (no process group): ZeRO 1-3 weights are rebuilt in fp32 by DeepSpeed's own zero_to_fp32
reader; ZeRO-0 keeps them whole in the model-states file. The EMA comes from our files: `ema.pt` (rank 0's
whole copy) under ZeRO 0-2, and under ZeRO-3 `ema-rankNNNNN.pt`, each rank's slice of each flattened
parameter, in rank order. Checkpoints written before the EMA was stored once keep it in the rank files.
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import torch

from ardiff_scale.config import load_config
from ardiff_scale.data.tokenizer import Tokenizer
from ardiff_scale.errors import DataError
from ardiff_scale.export import save_model_dir
from ardiff_scale.model import build_model
from ardiff_scale.train import checkpoint

log = logging.getLogger("ardiff.train")
PREFIX = "model."  # the DeepSpeed engine wraps the objective, which holds the model as .model


def _weights(root: Path, tag: str, stage: int) -> dict[str, torch.Tensor]:
    if stage == 0:
        state = torch.load(root / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]
    elif list((root / tag).glob("bf16_zero_pp_rank_*")):
        state = _from_universal(root, tag)
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag)
    return {k[len(PREFIX):]: v.float() for k, v in state.items() if k.startswith(PREFIX)}


def _from_universal(root: Path, tag: str) -> dict[str, torch.Tensor]:
    """fp32 master weights of a checkpoint by DeepSpeed's BF16_Optimizer (bf16 under ZeRO-1 with fp32
    gradient accumulation), whose files zero_to_fp32 cannot read: through the universal form, which holds
    each parameter whole (`zero/<name>/fp32.pt`). Converted once, beside the checkpoint."""
    target = root / f"{tag}_universal"
    if not (target / "zero").exists():
        subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                        str(root / tag), "--output_folder", str(target), "--num_extract_workers", "1",
                        "--num_merge_workers", "1"], check=True, capture_output=True)
    return {d.name: torch.load(d / "fp32.pt", map_location="cpu", weights_only=True)["param"]
            for d in sorted((target / "zero").iterdir()) if (d / "fp32.pt").exists()}


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _ema(directory: Path, world: int, shapes: dict[str, torch.Size], stage: int) -> dict[str, torch.Tensor]:
    def part(rank: int) -> dict[str, torch.Tensor]:
        path = checkpoint.ema_file(directory, rank, partitioned=stage == 3)
        if path.exists():
            return _load(path)
        legacy = _load(checkpoint.rank_file(directory, rank)).get("ema")
        if legacy is None:
            raise DataError(f"{directory} holds no EMA (trained with train.ema_rate=0?): export without --ema")
        return legacy

    if stage < 3:
        return {k: v.float() for k, v in part(0).items()}
    parts = [part(r) for r in range(world)]
    full = {}
    for name, shape in shapes.items():
        flat = torch.cat([p[name].flatten() for p in parts])
        full[name] = flat[:math.prod(shape)].reshape(shape).float()
    return full


def export_checkpoint(run_dir: str, output: str, tag: str | None = None, ema: bool = False,
                      tokenizer_path: str | None = None) -> Path:
    run = Path(run_dir)
    root = run / "checkpoints"
    store = checkpoint.CheckpointStore(str(root))
    tag = tag or store.find_resume()
    if tag is None or not (root / tag / checkpoint.COMPLETE).exists():
        raise DataError(f"no complete checkpoint {tag or ''} under {root}")
    config = load_config(run / "config.yaml")
    tokenizer = Tokenizer.load(tokenizer_path or config.data.tokenizer)
    world = store.info(tag)["world_size"]
    stage = _load(checkpoint.rank_file(root / tag, 0))["zero_stage"]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(config.model).state_dict().items()}
    weights = _ema(root / tag, world, shapes, stage) if ema else _weights(root, tag, stage)
    model = build_model(config.model)
    model.load_state_dict(weights)  # checks names and shapes before anything is written
    save_model_dir(output, model, config, tokenizer, weights=weights)
    log.info("exported %s of %s (ZeRO-%d, %d rank(s)) to %s", "EMA" if ema else "weights", root / tag, stage,
             world, output)
    return Path(output)
