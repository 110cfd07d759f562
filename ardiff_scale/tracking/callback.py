"""The training callback that reports a run to MLflow, from rank 0 only."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import psutil

from ardiff_scale.config import config_to_yaml, flatten
from ardiff_scale.tracking.mlflow_tracker import MLflowTracker
from ardiff_scale.train.callbacks import LossHistory, Throughput
from ardiff_scale.train.trainer import StepMetrics, Trainer


def system_metrics() -> dict[str, float]:
    memory = psutil.virtual_memory()
    return {"system/cpu_utilization_percentage": psutil.cpu_percent(),
            "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
            "system/system_memory_usage_percentage": memory.percent,
            "system/process_rss_megabytes": psutil.Process(os.getpid()).memory_info().rss / 2**20}


class MLflowLogging:
    """Params and config at the start; every step's metrics; system metrics, artifacts and the loss curve."""

    def __init__(self, tracker: MLflowTracker, history: LossHistory, throughput: Throughput,
                 artifacts: list[str | Path]):
        self.tracker, self.history, self.throughput = tracker, history, throughput
        self.artifacts = artifacts
        self.dir = Path(tempfile.mkdtemp(prefix="ardiff-mlflow-"))

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        config = trainer.config
        self.tracker.log_params(flatten(config.to_dict()))
        self.tracker.set_tags({"recipe": config.recipe or "defaults", "world_size": trainer.world,
                               "zero_stage": trainer.ds_config["zero_optimization"]["stage"],
                               "resumed_from_step": trainer.step})
        (self.dir / "config.yaml").write_text(config_to_yaml(config))
        (self.dir / "deepspeed.json").write_text(json.dumps(trainer.ds_config, indent=2))
        for path in [self.dir / "config.yaml", self.dir / "deepspeed.json", *self.artifacts]:
            self.tracker.log_artifact(path, "config")

    def on_step_end(self, trainer: Trainer, m: StepMetrics) -> None:
        if not trainer.is_main:
            return
        metrics = {"loss": m.loss, "mse": m.mse, "nll": m.nll, "prior": m.prior, "lr": m.lr,
                   "grad_norm": m.grad_norm, **self.throughput.extra}
        if m.step % trainer.config.train.log_every == 0:
            metrics.update(system_metrics())
        self.tracker.log_metrics(metrics, m.step)

    def log_text(self, trainer: Trainer, name: str, text: str) -> None:
        if trainer.is_main:
            path = self.dir / name
            path.write_text(text)
            self.tracker.log_artifact(path, "samples")

    def on_train_end(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        if self.history.rows:
            self.history.plot(self.dir / "loss.png")
            self.tracker.log_artifact(self.dir / "loss.png", "plots")
