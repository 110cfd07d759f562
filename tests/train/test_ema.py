import torch

from ardiff_scale.train.ema import EMA


def test_ema_moves_towards_the_weights_once_per_update():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, rate=0.9)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update()
    ema.update()
    assert torch.allclose(ema.shadow["weight"], torch.full((1, 2), 1 - 0.9 ** 2))
    assert torch.equal(ema.full_state_dict()["weight"], ema.shadow["weight"])
    restored = EMA(model, rate=0.9)
    restored.load_state_dict(ema.state_dict())
    assert torch.equal(restored.shadow["weight"], ema.shadow["weight"])
