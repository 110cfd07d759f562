"""The learning-rate schedule."""

from __future__ import annotations

from ardiff_scale.config import TrainConfig


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of train.lr at optimizer step `step` (0-based): linear warmup, then linear decay to 0 at
    max_steps ("linear") or flat ("constant")."""
    if train.warmup_steps and step < train.warmup_steps:
        return (step + 1) / train.warmup_steps
    if train.lr_schedule == "constant":
        return 1.0
    remaining = train.max_steps - step
    return max(0.0, remaining / max(1, train.max_steps - train.warmup_steps))
