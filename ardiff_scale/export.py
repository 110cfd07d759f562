"""A trained model as a directory: weights (safetensors), the run's config and its tokenizer.

    model.safetensors   weights (the EMA or the raw weights, as chosen at export)
    config.yaml         the full resolved run config
    tokenizer.model     sentencepiece model, with tokenizer.model.json (its card), or
    tokenizer.json      a Hugging Face tokenizer (WordPiece, byte-level BPE), with tokenizer.json.json
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ardiff_scale.config import Config, config_to_yaml, load_config
from ardiff_scale.data.tokenizer import TOKENIZER_FILES, Tokenizer, tokenizer_file_in, tokenizer_file_name
from ardiff_scale.errors import DataError
from ardiff_scale.io import write_bytes
from ardiff_scale.model import build_model


def save_model_dir(directory: str, model: nn.Module, config: Config, tokenizer: Tokenizer,
                   weights: dict[str, torch.Tensor] | None = None) -> None:
    os.makedirs(directory, exist_ok=True)
    state = weights if weights is not None else model.state_dict()
    tmp = os.path.join(directory, ".model.safetensors.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, tmp)
    os.replace(tmp, os.path.join(directory, "model.safetensors"))
    write_bytes(os.path.join(directory, "config.yaml"), config_to_yaml(config).encode())
    name = tokenizer_file_name(tokenizer)
    # A tokenizer of the other kind left by an earlier export would be the one `tokenizer_file_in` finds.
    for stale in (os.path.join(directory, other) for other in TOKENIZER_FILES if other != name):
        for path in (stale, stale + ".json"):
            if os.path.exists(path):
                os.remove(path)
    tokenizer.save(os.path.join(directory, name))


def load_model_dir(directory: str, device: str = "cpu") -> tuple[nn.Module, Config, Tokenizer]:
    missing = [name for name in ("model.safetensors", "config.yaml")
               if not os.path.exists(os.path.join(directory, name))]
    if not any(os.path.exists(os.path.join(directory, name)) for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES))
    if missing:
        raise DataError(f"{directory} is not a model directory: missing {', '.join(missing)} "
                        "(write one with `ardiff pretrain` or `ardiff export`)")
    config = load_config(os.path.join(directory, "config.yaml"))
    tokenizer = Tokenizer.load(tokenizer_file_in(directory))
    if tokenizer.vocab_size != config.model.vocab_size:
        raise DataError(f"{directory}: tokenizer has {tokenizer.vocab_size} pieces but model.vocab_size is "
                        f"{config.model.vocab_size}")
    model = build_model(config.model)
    model.load_state_dict(load_file(os.path.join(directory, "model.safetensors"), device=device))
    return model.to(device).eval(), config, tokenizer
