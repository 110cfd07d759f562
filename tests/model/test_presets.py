import pytest
import torch

from ardiff_scale.errors import ConfigError
from ardiff_scale.model import PAPER_PARAMS, PRESETS, ARDiffusionModel, count_parameters, parameter_breakdown, preset


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_paper_presets_within_two_percent_of_spec(name):
    model = ARDiffusionModel(PRESETS[name])
    assert count_parameters(model) == pytest.approx(PAPER_PARAMS[name], rel=0.02)


def test_breakdown_sums_to_total_and_rounding_head_is_tied():
    model = ARDiffusionModel(PRESETS["tiny"])
    breakdown = parameter_breakdown(model)
    assert sum(breakdown.values()) == count_parameters(model)
    assert set(breakdown) >= {"encoder", "decoder", "tgt_embedding", "round_bias"}
    assert breakdown["round_bias"] == PRESETS["tiny"].vocab_size


def test_large_presets_are_their_advertised_size():
    with torch.device("meta"):  # sizes without allocating a billion parameters
        assert count_parameters(ARDiffusionModel(PRESETS["1b"])) == pytest.approx(1.0e9, rel=0.1)
        assert 130e6 < count_parameters(ARDiffusionModel(PRESETS["genie-base"])) < 160e6


def test_preset_overrides_and_errors():
    assert preset("xsum", dropout=0.0).dropout == 0.0
    with pytest.raises(ConfigError, match="unknown preset 'xl'.*valid: tiny"):
        preset("xl")
    with pytest.raises(ConfigError, match="model.hidden_size must be divisible by model.num_heads"):
        ARDiffusionModel(preset("tiny", num_heads=3))
