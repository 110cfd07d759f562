"""Checkpoints in one real DeepSpeed process: an interrupted write never becomes `latest`; the layout holds
one EMA and small per-rank states; which files a rank needs."""

import itertools

import pytest
import torch

from ardiff_scale.config import load_config
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.train import checkpoint
from ardiff_scale.train.checkpoint import CheckpointStore
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


def save(trainer, store, state=None, keep=3):
    return checkpoint.save(trainer.engine, store, trainer.step, state or trainer.state_dict(),
                           trainer.ema.state_dict(), trainer.ema.partitioned, 1, keep=keep)


def test_interrupted_write_leaves_the_previous_checkpoint_latest_and_loadable(tmp_path):
    root = tmp_path / "checkpoints"
    store = CheckpointStore(str(root))
    trainer = make_trainer()
    data = batches()
    for _ in range(2):
        trainer.train_step([next(data)])
    save(trainer, store)
    saved_weights = {k: v.clone() for k, v in trainer.full_weights().items()}
    for _ in range(2):
        trainer.train_step([next(data)])
    broken = trainer.state_dict() | {"data": Unpicklable()}
    with pytest.raises(RuntimeError, match="disk full"):
        save(trainer, store, state=broken)
    assert (root / "step00000004").is_dir() and not (root / "step00000004" / checkpoint.COMPLETE).exists()
    assert (root / "latest").read_text() == "step00000002"
    assert store.find_resume() == "step00000002"

    fresh = make_trainer()
    loaded = checkpoint.load(fresh.engine, store, "step00000002", rank=0, keeps_ema=True, ema_partitioned=False)
    fresh.load_state_dict(loaded.rank_state, same_world=True)
    fresh.ema.load_state_dict(loaded.ema)
    assert fresh.step == 2
    for name, weight in fresh.full_weights().items():
        assert torch.equal(weight, saved_weights[name]), name
    ema = torch.load(root / "step00000002" / checkpoint.EMA_FILE, weights_only=True)
    assert torch.equal(fresh.ema.shadow["round_bias"], ema["round_bias"])
    # One small state file and the one EMA file were read; the per-rank state holds no weights.
    assert sorted(loaded.files_read) == ["ardiff-rank00000.pt", "ema.pt"]
    assert "ema" not in loaded.rank_state


def test_latest_naming_an_incomplete_checkpoint_falls_back_to_the_newest_complete(tmp_path):
    root = tmp_path / "checkpoints"
    store = CheckpointStore(str(root))
    trainer = make_trainer(**{"train.keep_checkpoints": 2})
    data = batches()
    for _ in range(3):
        trainer.train_step([next(data)])
        save(trainer, store, keep=2)
    assert store.complete_tags() == ["step00000002", "step00000003"]  # the oldest was pruned
    (root / "step00000009").mkdir()
    (root / "latest").write_text("step00000009")
    assert store.find_resume() == "step00000003"
    assert CheckpointStore(str(tmp_path / "nowhere")).find_resume() is None


@pytest.mark.parametrize("name, rank, same_world, needed", [
    ("mp_rank_00_model_states.pt", 3, True, True),  # the module's state: every rank
    ("zero_pp_rank_3_mp_rank_00_optim_states.pt", 3, True, True),
    ("zero_pp_rank_12_mp_rank_00_optim_states.pt", 3, True, False),
    ("bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt", 1, False, True),
    ("bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt", 1, False, False),
    ("ardiff-rank00003.pt", 3, True, True),
    ("ardiff-rank00004.pt", 3, True, False),
    ("ardiff-rank00004.pt", 3, False, True),  # another world size: every rank's reader position
    ("ema.pt", 0, True, True),
    ("ema.pt", 2, True, False),
    ("ema-rank00002.pt", 2, True, True),
    ("ema-rank00001.pt", 2, True, False),
    ("COMPLETE", 5, True, True),
])
def test_a_rank_needs_only_its_own_files(name, rank, same_world, needed):
    assert checkpoint.needed_by(name, rank, same_world) is needed
