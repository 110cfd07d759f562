import itertools
import math

import pytest
import torch

from ardiff_scale.config import load_config
from ardiff_scale.errors import ConfigError
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.train.trainer import Callback, Trainer


def batches(vocab: int):
    g = torch.Generator().manual_seed(0)
    src = torch.randint(5, vocab, (4, 12), generator=g)
    batch = {"src_ids": src, "src_mask": torch.ones_like(src), "tgt_ids": torch.randint(5, vocab, (4, 8), generator=g)}
    return itertools.repeat(batch)


class Recorder(Callback):
    def __init__(self, stop_at=None):
        self.steps, self.stop_at, self.events = [], stop_at, []

    def on_train_start(self, trainer):
        self.events.append("start")

    def on_step_end(self, trainer):
        if self.stop_at and trainer.step >= self.stop_at:
            trainer.should_stop = True

    def on_log(self, trainer, metrics):
        self.steps.append(metrics)

    def on_train_end(self, trainer):
        self.events.append("end")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_optimizer_steps_with_accumulation_and_precision(precision):
    config = load_config("tiny-cpu", ["model.vocab_size=50", "train.max_steps=4", "train.grad_accum=2",
                                      "train.warmup_steps=2", f"train.precision={precision}",
                                      "train.force_precision=true"])  # bf16 is emulated on some CI CPUs
    recorder = Recorder()
    trainer = Trainer(config, ARDiffusionModel(config.model), callbacks=[recorder])
    before = trainer.ema.shadow["tgt_embedding.weight"].clone()
    trainer.fit(batches(50))
    assert [m["step"] for m in recorder.steps] == [1, 2, 3, 4] and recorder.events == ["start", "end"]
    assert all(math.isfinite(m["loss"]) and m["loss"] > 0 for m in recorder.steps)
    assert recorder.steps[0]["tokens"] == 2 * 4 * (12 + 8)  # two micro-batches per optimizer step
    assert recorder.steps[0]["lr"] == pytest.approx(config.train.lr * 0.5)  # first warmup step
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
                                          f"train.precision={precision}", "train.force_precision=true"])
        torch.manual_seed(0)
        recorder = Recorder()
        trainer = Trainer(config, ARDiffusionModel(config.model), callbacks=[recorder])
        trainer.fit(batches(50))
        first = sum(m["loss"] for m in recorder.steps[:5]) / 5
        finals[precision] = sum(m["loss"] for m in recorder.steps[-10:]) / 10
        assert finals[precision] < 0.3 * first, (precision, first, finals[precision])
    assert 0.5 < finals["bf16"] / finals["fp32"] < 2.0, finals


def test_metrics_arrive_per_step_with_throughput_at_the_end_of_each_window():
    config = load_config("tiny-cpu", ["model.vocab_size=50", "train.max_steps=7", "train.log_every=3"])
    recorder = Recorder()
    trainer = Trainer(config, ARDiffusionModel(config.model), callbacks=[recorder])
    trainer.fit(batches(50))
    assert [m["step"] for m in recorder.steps] == list(range(1, 8))
    windows = [m["step"] for m in recorder.steps if "tokens_per_s" in m]
    assert windows == [3, 6, 7]  # every log_every steps, and the final flush
    last = recorder.steps[-1]
    for key in ("tflops", "mfu", "time/step_s", "time/data_s", "time/forward_backward_s", "time/optimizer_s"):
        assert last[key] > 0, key
    assert 0 < last["mfu"] < 1.5  # against the matmul rate measured at start-up
    parts = sum(v for k, v in last.items() if k.startswith("time/") and k != "time/step_s")
    assert parts <= last["time/step_s"] * 1.01  # the breakdown is part of the wall-clock step
    assert last["tokens_per_s"] == pytest.approx(last["tokens"] / last["time/step_s"], rel=1e-6)


def test_emulated_bf16_on_a_cpu_is_refused_with_both_rates(monkeypatch):
    from ardiff_scale.train import hardware
    rates = {torch.float32: 0.132, torch.bfloat16: 0.0003}  # TFLOP/s, as measured on one CPU type
    monkeypatch.setattr(hardware, "matmul_tflops", lambda dtype, device, **kw: rates[dtype])
    with pytest.raises(ConfigError, match=r"440x slower.*fp32 132.0 GFLOP/s, bf16 0.30 GFLOP/s.*train.precision=fp32"):
        hardware.check_precision(torch.device("cpu"), "bf16", forced=False)
    assert hardware.check_precision(torch.device("cpu"), "bf16", forced=True) == (0.132, 0.0003)
    assert hardware.check_precision(torch.device("cpu"), "fp32", forced=False) is None
    rates[torch.bfloat16] = 0.5  # a CPU with bf16 matrix units: accepted
    assert hardware.check_precision(torch.device("cpu"), "bf16", forced=False) == (0.132, 0.5)


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H200", "bf16", 989.4), ("NVIDIA H100 80GB HBM3", "bf16", 989.4), ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA A100-SXM4-80GB", "fp32", 19.5), ("NVIDIA L4", "bf16", 121.0), ("NVIDIA L40S", "bf16", 362.1),
    ("Tesla T4", "bf16", None)])
def test_datasheet_peaks_by_device_name(name, precision, peak):
    from ardiff_scale.train.hardware import datasheet_peak
    assert datasheet_peak(name, precision) == peak


def test_the_peak_can_be_given():
    from ardiff_scale.train.hardware import peak_for
    peak = peak_for(torch.device("cpu"), "fp32", override=2.5)
    assert (peak.tflops, peak.source) == (2.5, "train.peak_tflops")
