"""The training objective as a module, so that DeepSpeed can wrap it: forward(batch) -> loss terms."""

from __future__ import annotations

import torch
from torch import nn

from ardiff_scale.diffusion import LossTerms, NoiseSchedule, training_loss
from ardiff_scale.model import ARDiffusionModel


class DiffusionObjective(nn.Module):
    def __init__(self, model: ARDiffusionModel, schedule: NoiseSchedule, form: str):
        super().__init__()
        self.model = model
        # Plain attributes, not buffers: DeepSpeed's bf16/fp16 modes would cast the float64 tables.
        self.schedule, self.form = schedule, form

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_ids: torch.Tensor,
                generator: torch.Generator | None = None) -> LossTerms:
        return training_loss(self.model, src_ids, src_mask, tgt_ids, self.schedule, self.form, generator)

    def external_parameters(self) -> list[nn.Parameter]:
        """Parameters read outside their own module's forward (the tied rounding head)."""
        return [self.model.tgt_embedding.weight, self.model.round_bias]
