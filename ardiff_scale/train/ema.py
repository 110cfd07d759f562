"""Exponential moving average of the weights, ZeRO-aware, one copy per job.

Under ZeRO stages 0-2 every rank holds whole parameters, but only rank 0 keeps a (whole, fp32) shadow: the
others would hold and save identical copies, which at 64 ranks is 64 copies to write and read. Under ZeRO-3 a
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


def warmed_up_decay(rate: float, step: int) -> float:
    """The decay used at optimizer step `step` (1 = the first): min(rate, (1 + step) / (10 + step)).

    Without a warm-up the shadow starts as the random initialisation and keeps rate**n of it after n updates:
    at 0.9999 and the xsum recipe's 26.7k steps that is ~7% of random weights in the model that generates.
    The ramp forgets the initialisation within the first steps and reaches `rate` after ~1/(1 - rate) steps."""
    return min(rate, (1.0 + step) / (10.0 + step))


class EMA:
    """shadow <- decay * shadow + (1 - decay) * weights, once per optimizer step (not per micro-batch as in
    the official code, where the averaging horizon then depends on gradient accumulation), with the decay
    warmed up from 0 towards `rate` (`warmed_up_decay`)."""

    def __init__(self, module: nn.Module, rate: float, keep: bool = True):
        """keep=False: this rank holds no shadow (ZeRO 0-2 ranks other than 0); every method is then a no-op."""
        self.module, self.rate, self.keep = module, rate, keep
        self.partitioned = any(hasattr(p, "ds_tensor") for p in module.parameters())
        self.shadow = ({name: _local(p).detach().float().clone() for name, p in module.named_parameters()}
                       if keep else {})

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Average in the weights after optimizer step `step` (1-based: the step count a resumed run restores)."""
        if not self.keep:
            return
        weight = 1.0 - warmed_up_decay(self.rate, step)
        for name, param in self.module.named_parameters():
            self.shadow[name].lerp_(_local(param).detach().float(), weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.cpu() for name, t in self.shadow.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if not self.keep:
            return
        for name, tensor in state.items():
            if self.shadow[name].shape != tensor.shape:
                raise ValueError(f"EMA state for {name} has shape {tuple(tensor.shape)}, expected "
                                 f"{tuple(self.shadow[name].shape)} (saved with another ZeRO-3 world size?)")
            self.shadow[name].copy_(tensor)

    @torch.no_grad()
    def full_state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights, whole: on every rank under ZeRO-3 (a collective: call it on all ranks), on
        the keeping rank otherwise (empty elsewhere)."""
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
