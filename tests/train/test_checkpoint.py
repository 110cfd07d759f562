"""Checkpoints in one real DeepSpeed process: an interrupted write never becomes `latest`."""

import itertools

import pytest
import torch

from ardiff_scale.config import load_config
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.train import checkpoint
from ardiff_scale.train.trainer import Trainer


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("disk full")  # what a crash in the middle of writing looks like to the caller


def make_trainer(**overrides):
    config = load_config("tiny-cpu", ["model.vocab_size=50", "train.max_steps=100", "train.ema_rate=0.9",
                                      *[f"{k}={v}" for k, v in overrides.items()]])
    torch.manual_seed(0)
    return Trainer(config, ARDiffusionModel(config.model))


def batches():
    g = torch.Generator().manual_seed(0)
    src = torch.randint(5, 50, (4, 12), generator=g)
    return itertools.repeat({"src_ids": src, "src_mask": torch.ones_like(src),
                             "tgt_ids": torch.randint(5, 50, (4, 8), generator=g)})


def test_interrupted_write_leaves_the_previous_checkpoint_latest_and_loadable(tmp_path):
    root = tmp_path / "checkpoints"
    trainer = make_trainer()
    data = batches()
    for _ in range(2):
        trainer.train_step([next(data)])
    checkpoint.save(trainer.engine, root, trainer.step, trainer.state_dict(), 1, keep=3)
    saved_weights = {k: v.clone() for k, v in trainer.full_weights().items()}
    for _ in range(2):
        trainer.train_step([next(data)])
    broken = trainer.state_dict() | {"data": Unpicklable()}
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save(trainer.engine, root, trainer.step, broken, 1, keep=3)
    assert (root / "step00000004").is_dir() and not (root / "step00000004" / checkpoint.COMPLETE).exists()
    assert (root / "latest").read_text() == "step00000002"
    assert checkpoint.find_resume(root) == "step00000002"

    fresh = make_trainer()
    states, world, _ = checkpoint.load(fresh.engine, root, "step00000002")
    fresh.load_state_dict(states[0], same_world=True)
    assert world == 1 and fresh.step == 2
    for name, weight in fresh.full_weights().items():
        assert torch.equal(weight, saved_weights[name]), name
    assert torch.equal(fresh.ema.shadow["round_bias"], torch.as_tensor(states[0]["ema"]["round_bias"]))


def test_latest_naming_an_incomplete_checkpoint_falls_back_to_the_newest_complete(tmp_path):
    root = tmp_path / "checkpoints"
    trainer = make_trainer(**{"train.keep_checkpoints": 2})
    data = batches()
    for _ in range(3):
        trainer.train_step([next(data)])
        checkpoint.save(trainer.engine, root, trainer.step, trainer.state_dict(), 1, keep=2)
    assert checkpoint.complete_tags(root) == ["step00000002", "step00000003"]  # the oldest was pruned
    (root / "step00000009").mkdir()
    (root / "latest").write_text("step00000009")
    assert checkpoint.find_resume(root) == "step00000003"
    assert checkpoint.find_resume(tmp_path / "nowhere") is None
