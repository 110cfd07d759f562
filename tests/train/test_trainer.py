import itertools
import math

import pytest
import torch

from ardiff_scale.config import load_config
from ardiff_scale.errors import ConfigError
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.train.trainer import Trainer


def batches(vocab: int):
    g = torch.Generator().manual_seed(0)
    src = torch.randint(5, vocab, (4, 12), generator=g)
    batch = {"src_ids": src, "src_mask": torch.ones_like(src), "tgt_ids": torch.randint(5, vocab, (4, 8), generator=g)}
    return itertools.repeat(batch)


class Recorder:
    def __init__(self, stop_at=None):
        self.steps, self.stop_at, self.events = [], stop_at, []

    def on_train_start(self, trainer):
        self.events.append("start")

    def on_step_end(self, trainer, metrics):
        self.steps.append(metrics)
        if self.stop_at and metrics.step >= self.stop_at:
            trainer.should_stop = True

    def on_train_end(self, trainer):
        self.events.append("end")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_optimizer_steps_with_accumulation_and_precision(precision):
    config = load_config("tiny-cpu", ["model.vocab_size=50", "train.max_steps=4", "train.grad_accum=2",
                                      "train.warmup_steps=2", f"train.precision={precision}"])
    recorder = Recorder()
    trainer = Trainer(config, ARDiffusionModel(config.model), callbacks=[recorder])
    before = trainer.ema.shadow["tgt_embedding.weight"].clone()
    trainer.fit(batches(50))
    assert [m.step for m in recorder.steps] == [1, 2, 3, 4] and recorder.events == ["start", "end"]
    assert all(math.isfinite(m.loss) and m.loss > 0 for m in recorder.steps)
    assert recorder.steps[0].tokens == 2 * 4 * (12 + 8)  # two micro-batches per optimizer step
    assert recorder.steps[0].lr == pytest.approx(config.train.lr * 0.5)  # first warmup step
    assert not torch.equal(before, trainer.ema.shadow["tgt_embedding.weight"])


def test_fp16_on_cpu_is_refused_with_the_alternative():
    config = load_config("tiny-cpu", ["model.vocab_size=50", "train.precision=fp16"])
    with pytest.raises(ConfigError, match="use bf16 on CPU"):
        Trainer(config, ARDiffusionModel(config.model))


def test_a_callback_can_stop_training():
    config = load_config("tiny-cpu", ["model.vocab_size=50", "train.max_steps=100"])
    recorder = Recorder(stop_at=3)
    trainer = Trainer(config, ARDiffusionModel(config.model), callbacks=[recorder])
    trainer.fit(batches(50))
    assert trainer.step == 3 and recorder.events == ["start", "end"]


def test_bf16_loss_falls_like_fp32():
    """The bf16 switch (DeepSpeed's bf16 mode: bf16 weights, fp32 master copy) learns like fp32: both
    memorise a fixed batch, to losses of the same size."""
    finals = {}
    for precision in ("fp32", "bf16"):
        config = load_config("tiny-cpu", ["model.vocab_size=50", "model.dropout=0.0", "model.attention_dropout=0.0",
                                          "train.max_steps=150", "train.lr=2e-3", "train.warmup_steps=5",
                                          f"train.precision={precision}"])
        torch.manual_seed(0)
        recorder = Recorder()
        trainer = Trainer(config, ARDiffusionModel(config.model), callbacks=[recorder])
        trainer.fit(batches(50))
        first = sum(m.loss for m in recorder.steps[:5]) / 5
        finals[precision] = sum(m.loss for m in recorder.steps[-10:]) / 10
        assert finals[precision] < 0.3 * first, (precision, first, finals[precision])
    assert 0.5 < finals["bf16"] / finals["fp32"] < 2.0, finals
