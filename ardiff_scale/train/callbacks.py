"""Callbacks of the training loop, one concern each. Each reads only the metrics dict the trainer hands it
(see `Callback` in train/trainer.py), never another callback. Only rank 0 prints or writes files."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from tqdm.auto import tqdm

from ardiff_scale.train.trainer import Callback, Trainer

log = logging.getLogger("ardiff.train")


def _fmt_time(metrics: dict[str, float]) -> str:
    parts = [f"{key[len('time/'):-2]} {value * 1e3:.0f}" for key, value in metrics.items()
             if key.startswith("time/") and key != "time/step_s"]
    return f"step {metrics['time/step_s'] * 1e3:.0f} ms = " + " + ".join(parts) if parts else ""


class ConsoleProgress(Callback):
    """A progress bar with the running loss, and one log line per logging window (rank 0)."""

    def on_train_start(self, trainer: Trainer) -> None:
        self.bar = tqdm(total=trainer.config.train.max_steps, initial=trainer.step, desc="train", unit="step",
                        dynamic_ncols=True, disable=not trainer.is_main)
        if trainer.is_main:
            log.info("MFU against a peak of %.4g TFLOP/s per device (%s)", trainer.peak.tflops, trainer.peak.source)

    def on_step_end(self, trainer: Trainer) -> None:
        self.bar.update(1)

    def on_log(self, trainer: Trainer, m: dict[str, float]) -> None:
        if "tokens_per_s" not in m:  # only the end of a logging window
            return
        self.bar.set_postfix(loss=f"{m['loss']:.4f}", lr=f"{m['lr']:.2e}")
        if trainer.is_main:
            log.info("step %d/%d loss %.4f (mse %.4f nll %.4f) lr %.2e grad-norm %.3f | %.0f tokens/s, MFU %.1f%% "
                     "| %s ms", m["step"], trainer.config.train.max_steps, m["loss"], m["mse"], m["nll"], m["lr"],
                     m["grad_norm"], m["tokens_per_s"], 100 * m["mfu"], _fmt_time(m))

    def on_train_end(self, trainer: Trainer) -> None:
        self.bar.close()


class MetricsLog(Callback):
    """Every step's metrics as one JSON line in `<run dir>/metrics.jsonl` (rank 0), appended across
    resumes: a plain record beside MLflow that needs no server. Validation rows carry their own keys.
    Opened per write: rows may arrive from other callbacks' end-of-training work, after this one's."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, trainer: Trainer, m: dict[str, float]) -> None:
        if trainer.is_main:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(m) + "\n")


class LossHistory(Callback):
    """Keeps every step's loss terms; `plot` draws them against the step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def on_log(self, trainer: Trainer, m: dict[str, float]) -> None:
        if "loss" in m:
            self.rows.append({k: m[k] for k in ("step", "loss", "mse", "nll", "prior", "lr")})

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


class TimeBudget(Callback):
    """Asks to stop once `seconds` have passed (the demo's few minutes); the trainer has every rank agree."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.announced = False

    def on_train_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, trainer: Trainer) -> None:
        if self.seconds is not None and time.perf_counter() - self.started > self.seconds:
            trainer.stop_requested = True
            if trainer.is_main and not self.announced:
                log.info("time budget of %.0f s reached at step %d", self.seconds, trainer.step)
                self.announced = True
