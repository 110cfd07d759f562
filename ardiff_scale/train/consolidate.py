"""`ardiff export`: a DeepSpeed checkpoint, whatever its ZeRO stage and world size, as one model directory.

Runs offline (no process group): ZeRO 1-3 weights are rebuilt in fp32 by DeepSpeed's own zero_to_fp32
reader; ZeRO-0 keeps them whole in the model-states file. The EMA comes from our per-rank files: whole on
every rank under ZeRO 0-2, and under ZeRO-3 each rank's slice of each flattened parameter, in rank order.
"""

from __future__ import annotations

import logging
import math
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
        state = torch.load(root / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    else:
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(root), tag)
    return {k[len(PREFIX):]: v.float() for k, v in state.items() if k.startswith(PREFIX)}


def _ema(states: list[dict], shapes: dict[str, torch.Size], stage: int) -> dict[str, torch.Tensor]:
    if stage < 3:
        return {k: v.float() for k, v in states[0]["ema"].items()}
    full = {}
    for name, shape in shapes.items():
        flat = torch.cat([s["ema"][name].flatten() for s in states])
        full[name] = flat[:math.prod(shape)].reshape(shape).float()
    return full


def export_checkpoint(run_dir: str, output: str, tag: str | None = None, ema: bool = False,
                      tokenizer_path: str | None = None) -> Path:
    run = Path(run_dir)
    root = run / "checkpoints"
    tag = tag or checkpoint.find_resume(root)
    if tag is None or not (root / tag / checkpoint.COMPLETE).exists():
        raise DataError(f"no complete checkpoint {tag or ''} under {root}")
    config = load_config(run / "config.yaml")
    tokenizer = Tokenizer.load(tokenizer_path or config.data.tokenizer)
    world = checkpoint.saved_world_size(root / tag)
    states = [torch.load(checkpoint.rank_file(root / tag, r), map_location="cpu", weights_only=False)
              for r in range(world)]
    stage = states[0]["zero_stage"]
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_model(config.model).state_dict().items()}
    weights = _ema(states, shapes, stage) if ema else _weights(root, tag, stage)
    model = build_model(config.model)
    model.load_state_dict(weights)  # checks names and shapes before anything is written
    save_model_dir(output, model, config, tokenizer, weights=weights)
    log.info("exported %s of %s (ZeRO-%d, %d rank(s)) to %s", "EMA" if ema else "weights", root / tag, stage,
             world, output)
    return Path(output)
