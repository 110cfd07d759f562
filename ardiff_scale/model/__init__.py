"""The networks: a BERT-style encoder with AR-Diffusion's time-aware decoder, or (the baseline) a causal
decoder of the same size; plain torch."""

from torch import nn

from ardiff_scale.model.ardiffusion import (
    ARDiffusionModel,
    count_parameters,
    parameter_breakdown,
)
from ardiff_scale.model.autoregressive import AutoregressiveModel
from ardiff_scale.model.config import (
    DECODERS,
    PAPER_PARAMS,
    PRESETS,
    ModelConfig,
    preset,
)
from ardiff_scale.model.encoder import Memory, encoder_weights


def build_model(config: ModelConfig) -> nn.Module:
    """The network that `config.decoder` names."""
    return AutoregressiveModel(config) if config.decoder == "autoregressive" else ARDiffusionModel(config)


__all__ = ["ARDiffusionModel", "AutoregressiveModel", "DECODERS", "Memory", "ModelConfig", "PAPER_PARAMS", "PRESETS",
           "build_model", "count_parameters", "encoder_weights", "parameter_breakdown", "preset"]
