"""Optimizer, learning-rate schedule and the exponential moving average of the weights."""

from __future__ import annotations

import torch
from torch import nn

from ardiff_scale.config import TrainConfig


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    # AdamW with torch defaults, as the official code (betas 0.9/0.999, eps 1e-8); fused where available.
    return torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay,
                             fused=next(model.parameters()).device.type in ("cpu", "cuda"))


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of train.lr at optimizer step `step` (0-based): linear warmup, then linear decay to 0 at
    max_steps ("linear") or flat ("constant")."""
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return 1.0
    remaining = train.max_steps - step
    return max(0.0, remaining / max(1, train.max_steps - train.warmup_steps))


def build_scheduler(optimizer: torch.optim.Optimizer, train: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train))


class EMA:
    """shadow <- rate * shadow + (1 - rate) * weights, once per optimizer step (not per micro-batch: the
    official per-micro-batch update makes the averaging horizon depend on gradient accumulation)."""

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        self.shadow = {name: p.detach().clone().float() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for name, p in model.named_parameters():
            self.shadow[name].lerp_(p.detach().float(), 1.0 - self.rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.shadow = {name: tensor.clone() for name, tensor in state.items()}
