"""The training callback that reports a run to MLflow, from rank 0 only."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from ardiff_scale.config import config_to_yaml, flatten
from ardiff_scale.tracking.mlflow_tracker import MLflowTracker
from ardiff_scale.train.callbacks import LossHistory
from ardiff_scale.train.trainer import TERMS, Callback, Trainer

MEANS = (*TERMS, "grad_norm")  # averaged over a logging window's steps


def window_row(rows: list[dict[str, float]]) -> dict[str, float]:
    """One logging window's per-step rows (the last one carrying throughput and times) as one row: loss
    terms and grad norm averaged over the steps, tokens summed, lr and everything else of the last step."""
    row = {k: float(v) for k, v in rows[-1].items() if k != "step"}
    row.update({k: sum(r[k] for r in rows) / len(rows) for k in MEANS if k in row})
    row["tokens"] = float(sum(r["tokens"] for r in rows))
    return row


class MLflowLogging(Callback):
    """Params, tags and config at the start; one row per logging window (loss terms, lr, grad norm,
    throughput, MFU, the step-time breakdown) at its last step, and whatever other producers publish
    (validation, system metrics) as it comes; sample texts, artifacts and the loss curve.

    One row per window, not per step: a 100k-step run logging every step would put ~1M rows per key in
    the store, and every chart reads all of them. metrics.jsonl keeps the per-step rows."""

    def __init__(self, tracker: MLflowTracker, artifacts: list[str | Path], tags: dict[str, Any] | None = None):
        self.tracker, self.artifacts, self.tags = tracker, artifacts, tags or {}
        self.history = LossHistory()  # its own, for the plot: callbacks never read each other
        self.dir = Path(tempfile.mkdtemp(prefix="ardiff-mlflow-"))
        self.window: list[dict[str, float]] = []  # the current logging window's per-step rows

    def on_train_start(self, trainer: Trainer) -> None:
        if not trainer.is_main:
            return
        config = trainer.config
        self.tracker.log_params(flatten(config.to_dict()))
        self.tracker.set_tags({"recipe": config.recipe or "defaults", "world_size": trainer.world,
                               "zero_stage": trainer.ds_config["zero_optimization"]["stage"],
                               "resumed_from_step": trainer.step, "peak_tflops_source": trainer.peak.source,
                               **self.tags})
        (self.dir / "config.yaml").write_text(config_to_yaml(config))
        (self.dir / "deepspeed.json").write_text(json.dumps(trainer.ds_config, indent=2))
        for path in [self.dir / "config.yaml", self.dir / "deepspeed.json", *self.artifacts]:
            self.tracker.log_artifact(path, "config")

    def on_log(self, trainer: Trainer, metrics: dict[str, float]) -> None:
        if not trainer.is_main:
            return
        self.history.on_log(trainer, metrics)
        step = int(metrics["step"])
        if "tokens" not in metrics or "loss" not in metrics:  # published by another producer
            self.tracker.log_metrics({k: float(v) for k, v in metrics.items() if k != "step"}, step)
            return
        self.window.append(metrics)
        if "tokens_per_s" in metrics:  # the window's last step
            self.tracker.log_metrics(window_row(self.window), step)
            self.window = []

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
