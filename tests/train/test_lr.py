import pytest

from ardiff_scale.config import TrainConfig
from ardiff_scale.train.lr import lr_factor


def test_linear_warmup_then_linear_decay_to_zero():
    train = TrainConfig(max_steps=110, warmup_steps=10)
    assert lr_factor(0, train) == pytest.approx(0.1)
    assert lr_factor(9, train) == pytest.approx(1.0)
    assert lr_factor(10, train) == pytest.approx(1.0)
    assert lr_factor(60, train) == pytest.approx(0.5)
    assert lr_factor(110, train) == 0.0


def test_constant_schedule_after_warmup():
    train = TrainConfig(max_steps=100, warmup_steps=4, lr_schedule="constant")
    assert lr_factor(1, train) == pytest.approx(0.5)
    assert lr_factor(99, train) == 1.0
