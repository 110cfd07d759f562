"""Callbacks: progress and logs on the console, a loss history with its plot."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from ardiff_scale.train.trainer import StepMetrics, Trainer

log = logging.getLogger("ardiff.train")


class ConsoleProgress:
    """A progress bar with the running loss, and a log line every `train.log_every` steps."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.config.train.max_steps, initial=trainer.step, desc="train", unit="step",
                        dynamic_ncols=True)

    def on_step_end(self, trainer: Trainer, m: StepMetrics) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{m.loss:.4f}", lr=f"{m.lr:.2e}")
        every = trainer.config.train.log_every
        if every and (m.step % every == 0 or m.step == trainer.config.train.max_steps):
            log.info("step %d/%d loss %.4f (mse %.4f nll %.4f) lr %.2e grad-norm %.3f %.0f tokens/s",
                     m.step, trainer.config.train.max_steps, m.loss, m.mse, m.nll, m.lr, m.grad_norm,
                     m.tokens / max(m.seconds, 1e-9))

    def on_train_end(self, trainer: Trainer) -> None:
        self.bar.close()


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
