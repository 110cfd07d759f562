"""Callbacks of the training loop, one concern each. Only rank 0 prints or writes files, but every rank
enters the collective ones (checkpoints, validation, samples) together."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from ardiff_scale.model.flops import training_step_flops
from ardiff_scale.train import checkpoint
from ardiff_scale.train.trainer import StepMetrics, Trainer

log = logging.getLogger("ardiff.train")


def _due(every: int, trainer: Trainer, step: int) -> bool:
    return bool(every) and step % every == 0 and step < trainer.config.train.max_steps


class ConsoleProgress:
    """A progress bar with the running loss, and a log line every `train.log_every` steps (rank 0)."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.config.train.max_steps, initial=trainer.step, desc="train", unit="step",
                        dynamic_ncols=True, disable=not trainer.is_main)

    def on_step_end(self, trainer: Trainer, m: StepMetrics) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{m.loss:.4f}", lr=f"{m.lr:.2e}")
        every = trainer.config.train.log_every
        if trainer.is_main and (m.step % every == 0 or m.step == trainer.config.train.max_steps):
            log.info("step %d/%d loss %.4f (mse %.4f nll %.4f) lr %.2e grad-norm %.3f %.0f tokens/s",
                     m.step, trainer.config.train.max_steps, m.loss, m.mse, m.nll, m.lr, m.grad_norm,
                     m.tokens / max(m.seconds, 1e-9))

    def on_train_end(self, trainer: Trainer) -> None:
        self.bar.close()


class Throughput:
    """Adds tokens/s and an MFU estimate (analytic FLOPs over a given peak rate) to every step's metrics."""

    def __init__(self, peak_flops_per_rank: float | None = None):
        self.peak = peak_flops_per_rank
        self.extra: dict[str, float] = {}

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer, m: StepMetrics) -> None:
        train, data = trainer.config.train, trainer.config.data
        flops = training_step_flops(trainer.config.model, train.micro_batch_size * train.grad_accum * trainer.world,
                                    data.source_len, data.target_len)
        self.extra = {"tokens_per_s": m.tokens / max(m.seconds, 1e-9), "tflops": flops / max(m.seconds, 1e-9) / 1e12}
        if self.peak:
            self.extra["mfu"] = self.extra["tflops"] * 1e12 / (self.peak * trainer.world)

    def on_train_end(self, trainer: Trainer) -> None:
        pass


class MetricsLog:
    """Every step's metrics as one JSON line in `<output_dir>/metrics.jsonl` (rank 0), appended across
    resumes: a plain record beside MLflow that needs no server."""

    def __init__(self, path: Path):
        self.path = path

    def on_train_start(self, trainer: Trainer) -> None:
        self.file = open(self.path, "a", encoding="utf-8") if trainer.is_main else None

    def on_step_end(self, trainer: Trainer, m: StepMetrics) -> None:
        if self.file:
            self.file.write(json.dumps(m.as_dict()) + "\n")
            self.file.flush()

    def on_train_end(self, trainer: Trainer) -> None:
        if self.file:
            self.file.close()


class LossHistory:
    """Keeps every step's metrics; `plot` draws the loss terms against the step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer, m: StepMetrics) -> None:
        self.rows.append(m.as_dict())

    def on_train_end(self, trainer: Trainer) -> None:
        pass

    def plot(self, path: str | Path, title: str = "training loss") -> None:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [r["step"] for r in self.rows]
        fig, ax = plt.subplots(figsize=(7, 4))
        for name in ("loss", "mse", "nll"):
            ax.plot(steps, [r[name] for r in self.rows], label=name, linewidth=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


class TimeBudget:
    """Stops training once `seconds` have passed (the demo's few minutes). Ranks agree through rank 0."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def on_train_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, trainer: Trainer, metrics: StepMetrics) -> None:
        if self.seconds is None:
            return
        over = torch.tensor([float(time.perf_counter() - self.started > self.seconds)])
        if trainer.world > 1:
            torch.distributed.broadcast(over, 0)
        if over.item():
            if trainer.is_main:
                log.info("time budget of %.0f s reached at step %d", self.seconds, trainer.step)
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer) -> None:
        pass


class Checkpointing:
    """Saves every `train.save_every` steps and at the end; see train/checkpoint.py for the layout."""

    def __init__(self, root: Path):
        self.root = root
        self.last_saved = -1
        self.seconds: list[float] = []

    def save(self, trainer: Trainer) -> None:
        if trainer.step == self.last_saved:
            return
        seconds = checkpoint.save(trainer.engine, self.root, trainer.step, trainer.state_dict(), trainer.world,
                                  trainer.config.train.keep_checkpoints)
        self.seconds.append(seconds)
        self.last_saved = trainer.step
        if trainer.is_main:
            log.info("checkpoint %s saved in %.1f s", self.root / checkpoint.tag_for(trainer.step), seconds)

    def on_train_start(self, trainer: Trainer) -> None:
        self.last_saved = trainer.step

    def on_step_end(self, trainer: Trainer, m: StepMetrics) -> None:
        if _due(trainer.config.train.save_every, trainer, m.step):
            self.save(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        self.save(trainer)


class Periodic:
    """Runs `action(trainer)` on every rank every `every` steps and at the end (validation, samples)."""

    def __init__(self, every: int, action: Callable[[Trainer], None]):
        self.every, self.action = every, action

    def on_train_start(self, trainer: Trainer) -> None:
        pass

    def on_step_end(self, trainer: Trainer, m: StepMetrics) -> None:
        if _due(self.every, trainer, m.step):
            self.action(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        self.action(trainer)
