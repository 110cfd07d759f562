import pytest
import torch

from ardiff_scale.config import TrainConfig
from ardiff_scale.train.optim import EMA, lr_factor


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


def test_ema_moves_towards_the_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, rate=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    ema.update(model)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1 - 0.9 ** 2))
