import pytest
import torch

from ardiff_scale.train.ema import EMA, warmed_up_decay


def shadow_at_zero_weights_at_one(width: int, rate: float) -> tuple[torch.nn.Linear, EMA]:
    """An EMA whose shadow starts at weights 0 (the "initialisation") and whose model then holds weights 1."""
    model = torch.nn.Linear(width, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, rate=rate)
    with torch.no_grad():
        model.weight.fill_(1.0)
    return model, ema


def test_ema_moves_towards_the_weights_once_per_update():
    model, ema = shadow_at_zero_weights_at_one(2, 0.9)
    ema.update(100)  # past the warm-up: the decay is the rate
    ema.update(101)
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1 - 0.9 ** 2))
    assert torch.equal(ema.full_state_dict()["weight"], ema.shadow["weight"])
    restored = EMA(model, rate=0.9)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow["weight"], ema.shadow["weight"])


def test_decay_warms_up_from_zero_to_the_rate():
    assert warmed_up_decay(0.9999, 1) == pytest.approx(2 / 11)
    assert warmed_up_decay(0.9999, 90) == pytest.approx(91 / 100)
    assert warmed_up_decay(0.9999, 10**6) == 0.9999
    assert warmed_up_decay(0.5, 3) == pytest.approx(4 / 13) and warmed_up_decay(0.5, 30) == 0.5
    steps = [warmed_up_decay(0.9999, n) for n in range(1, 2000)]
    assert steps == sorted(steps)


def test_the_random_initialisation_does_not_survive_in_the_ema():
    """A shadow that started at the random init (0 here) and then saw constant weights (1) for 600 updates at
    rate 0.9999: without a warm-up it would still be 94% init (0.9999**600); with it, under 2%."""
    _, ema = shadow_at_zero_weights_at_one(4, 0.9999)
    for step in range(1, 601):
        ema.update(step)
    assert ema.shadow["weight"].min().item() > 0.98
