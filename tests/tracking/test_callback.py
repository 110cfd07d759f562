"""MLflowLogging with a real Trainer and a real local MLflow store (SQLite in tmp_path)."""

import itertools

import pytest
import torch
from mlflow.tracking import MlflowClient

from ardiff_scale.config import load_config
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.tracking.callback import MLflowLogging
from ardiff_scale.tracking.mlflow_tracker import MLflowTracker
from ardiff_scale.train.trainer import Callback, Trainer


class Recorder(Callback):
    def __init__(self):
        self.rows = []

    def on_log(self, trainer, metrics):
        self.rows.append(metrics)


class Validator(Callback):
    """Publishes a validation-like metric after every 5th step, as Validation does."""

    def on_step_end(self, trainer):
        if trainer.step % 5 == 0:
            trainer.publish({"valid_loss": 10.0 + trainer.step})


def test_one_row_per_logging_window_with_the_window_means(tmp_path):
    steps, every = 12, 4
    config = load_config("tiny-cpu", ["model.vocab_size=50", f"train.max_steps={steps}", f"train.log_every={every}",
                                      "train.warmup_steps=2"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(uri, "windows", "run", artifact_root=tmp_path / "artifacts")
    recorder = Recorder()
    trainer = Trainer(config, ARDiffusionModel(config.model),
                      callbacks=[recorder, MLflowLogging(tracker, []), Validator()])
    g = torch.Generator().manual_seed(0)
    src = torch.randint(5, 50, (4, 12), generator=g)
    trainer.fit(itertools.repeat({"src_ids": src, "src_mask": torch.ones_like(src),
                                  "tgt_ids": torch.randint(5, 50, (4, 8), generator=g)}))
    assert tracker.close() is True

    client = MlflowClient(uri)
    history = {name: {m.step: m.value for m in client.get_metric_history(tracker.run_id, name)}
               for name in ("loss", "nll", "grad_norm", "lr", "tokens", "tokens_per_s", "valid_loss")}
    per_step = {r["step"]: r for r in recorder.rows if "loss" in r}
    assert sorted(per_step) == list(range(1, steps + 1))  # the callbacks still see every step
    ends = list(range(every, steps + 1, every))
    for name in ("loss", "nll", "grad_norm"):
        assert sorted(history[name]) == ends
        for end in ends:
            mean = sum(per_step[s][name] for s in range(end - every + 1, end + 1)) / every
            assert history[name][end] == pytest.approx(mean, rel=1e-12)
    for end in ends:
        assert history["lr"][end] == pytest.approx(per_step[end]["lr"])
        assert history["tokens"][end] == sum(per_step[s]["tokens"] for s in range(end - every + 1, end + 1))
        assert history["tokens_per_s"][end] == pytest.approx(per_step[end]["tokens_per_s"])
    assert history["valid_loss"] == {5: 15.0, 10: 20.0}  # other producers' metrics as they come
