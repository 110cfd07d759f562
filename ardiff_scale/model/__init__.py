"""The network: a BERT-style encoder and AR-Diffusion's time-aware decoder, in plain torch."""

from ardiff_scale.model.ardiffusion import ARDiffusionModel, Memory, count_parameters, parameter_breakdown
from ardiff_scale.model.config import PAPER_PARAMS, PRESETS, ModelConfig, preset

__all__ = ["ARDiffusionModel", "Memory", "ModelConfig", "PAPER_PARAMS", "PRESETS", "count_parameters",
           "parameter_breakdown", "preset"]
