"""The training callback that reports a run to MLflow, from rank 0 only."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import psutil

from ardiff_scale.config import config_to_yaml, flatten
from ardiff_scale.tracking.mlflow_tracker import MLflowTracker
from ardiff_scale.train.callbacks import LossHistory
from ardiff_scale.train.trainer import Callback, Trainer


def system_metrics() -> dict[str, float]:
    memory = psutil.virtual_memory()
    return {"system/cpu_utilization_percentage": psutil.cpu_percent(),
            "system/system_memory_usage_megabytes": (memory.total - memory.available) / 2**20,
            "system/system_memory_usage_percentage": memory.percent,
            "system/process_rss_megabytes": psutil.Process(os.getpid()).memory_info().rss / 2**20}


class MLflowLogging(Callback):
    """Params and config at the start; the metrics of every logged step (loss terms, lr, grad norm,
    throughput, MFU, the step-time breakdown, validation); system metrics once per logging window; sample
    texts, artifacts and the loss curve."""

    def __init__(self, tracker: MLflowTracker, artifacts: list[str | Path]):
        self.tracker, self.artifacts = tracker, artifacts
        self.history = LossHistory()  # its own, for the plot: callbacks never read each other
        self.dir = Path(tempfile.mkdtemp(prefix="ardiff-mlflow-"))

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        config = trainer.config
        self.tracker.log_params(flatten(config.to_dict()))
        self.tracker.set_tags({"recipe": config.recipe or "defaults", "world_size": trainer.world,
                               "zero_stage": trainer.ds_config["zero_optimization"]["stage"],
                               "resumed_from_step": trainer.step, "peak_tflops_source": trainer.peak.source})
        (self.dir / "config.yaml").write_text(config_to_yaml(config))
        (self.dir / "deepspeed.json").write_text(json.dumps(trainer.ds_config, indent=2))
        for path in [self.dir / "config.yaml", self.dir / "deepspeed.json", *self.artifacts]:
            self.tracker.log_artifact(path, "config")

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not trainer.is_main:
            return
        self.history.on_log(trainer, metrics)
        values = {k: float(v) for k, v in metrics.items() if k != "step"}
        if "tokens_per_s" in metrics:  # the end of a logging window
            values.update(system_metrics())
        self.tracker.log_metrics(values, int(metrics["step"]))

    def on_text(self, trainer: Trainer, name: str, text: str) -> None:
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
