"""The training objectives as modules, so that DeepSpeed can wrap them: forward(batch) -> loss terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ardiff_scale.config import Config
from ardiff_scale.diffusion import LossTerms, NoiseSchedule, training_loss
from ardiff_scale.model import ARDiffusionModel, AutoregressiveModel
from ardiff_scale.vocab import SENTENCEPIECE_SPECIALS, SpecialIds


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


class TeacherForcingObjective(nn.Module):
    """Cross-entropy of each next target token given the ones before it (the autoregressive baseline).

    Targets are `<s> ... </s> <pad> ...`: the loss covers every token up to and including </s>, none of the
    padding after it (the decoder stops at </s>, unlike the diffusion model that emits the padding).
    pad_id: the tokenizer's `specials.pad` (default: sentencepiece's).
    """

    def __init__(self, model: AutoregressiveModel, pad_id: int = SENTENCEPIECE_SPECIALS.pad):
        super().__init__()
        self.model, self.pad_id = model, pad_id

    def forward(self, src_ids: torch.Tensor, src_mask: torch.Tensor, tgt_ids: torch.Tensor,
                generator: torch.Generator | None = None) -> LossTerms:
        logits = self.model(src_ids, src_mask, tgt_ids[:, :-1])
        # Padding only ever follows </s>, so dropping padded labels keeps exactly the tokens up to </s>.
        labels = tgt_ids[:, 1:].masked_fill(tgt_ids[:, 1:] == self.pad_id, -100)
        nll = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        zero = nll.new_zeros(())
        return LossTerms(loss=nll, mse=zero, nll=nll, prior=zero)

    def external_parameters(self) -> list[nn.Parameter]:
        """The tied output head reads the embedding outside the embedding's forward."""
        return [self.model.tgt_embedding.weight, self.model.out_bias]


def build_objective(model: nn.Module, config: Config, schedule: NoiseSchedule,
                    specials: SpecialIds = SENTENCEPIECE_SPECIALS) -> nn.Module:
    if isinstance(model, AutoregressiveModel):
        return TeacherForcingObjective(model, specials.pad)
    return DiffusionObjective(model, schedule, config.diffusion.timestep_form)
