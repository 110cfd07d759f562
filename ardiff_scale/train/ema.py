"""Exponential moving average of the weights, ZeRO-aware.

Under ZeRO stages 0-2 every rank holds whole parameters, and keeps a whole fp32 shadow. Under ZeRO-3 a
rank holds only its partition of each parameter (`param.ds_tensor`), so it averages just that partition:
the shadow is partitioned exactly like the weights, costs each rank 1/world of the memory, and is saved per
rank with the checkpoint. `full_state_dict` gathers it for export by swapping the shadow into the
partitions for the length of one gather.
"""

from __future__ import annotations

import torch
from torch import nn

from ardiff_scale.train.engine import gathered


def _local(param: nn.Parameter) -> torch.Tensor:
    return param.ds_tensor if hasattr(param, "ds_tensor") else param


class EMA:
    """shadow <- rate * shadow + (1 - rate) * weights, once per optimizer step (not per micro-batch as in
    the official code, where the averaging horizon then depends on gradient accumulation)."""

    def __init__(self, module: nn.Module, rate: float):
        self.module, self.rate = module, rate
        self.partitioned = any(hasattr(p, "ds_tensor") for p in module.parameters())
        self.shadow = {name: _local(p).detach().float().clone() for name, p in module.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        for name, param in self.module.named_parameters():
            self.shadow[name].lerp_(_local(param).detach().float(), 1.0 - self.rate)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.cpu() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, tensor in state.items():
            if self.shadow[name].shape != tensor.shape:
                raise ValueError(f"EMA state for {name} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(self.shadow[name].shape)} (saved with another ZeRO-3 world size?)")
            self.shadow[name].copy_(tensor)

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, whole, on every rank (a collective under ZeRO-3: call it on all ranks)."""
        if not self.partitioned:
            return {name: t.clone() for name, t in self.shadow.items()}
        params = dict(self.module.named_parameters())
        saved = {name: _local(p).detach().clone() for name, p in params.items()}
        for name, param in params.items():
            _local(param).copy_(self.shadow[name])
        try:
            with gathered(self.module, True):
                return {name: p.detach().float().clone() for name, p in params.items()}
        finally:
            for name, param in params.items():
                _local(param).copy_(saved[name])
