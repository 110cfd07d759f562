"""One training loop: optimizer steps of a DeepSpeed engine, with callbacks for everything around it.

Steps are optimizer steps (each `train.grad_accum` micro-batches), never micro-batches: the official
counter mixes the two, and its schedules shift whenever accumulation changes.

Written so the host can run ahead of an accelerator: per step the loss terms are added into a tensor that
stays on the device, and nothing is read back until the end of a logging window (`train.log_every` steps),
when one all-reduce sums the window over ranks and one copy brings it to the host. Stop and save requests
(signals, time budgets) are agreed on over a small CPU group once per step, never on the device.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from ardiff_scale.config import Config
from ardiff_scale.diffusion import make_schedule
from ardiff_scale.errors import Preempted
from ardiff_scale.model.flops import training_step_flops
from ardiff_scale.train.distributed import agree_any, control_group
from ardiff_scale.train.ema import EMA
from ardiff_scale.train.engine import build_engine, device, gathered, init_distributed, resolve_ds_config, zero_stage
from ardiff_scale.train.hardware import Peak, check_precision, peak_for
from ardiff_scale.train.lr import lr_factor
from ardiff_scale.train.objective import build_objective
from ardiff_scale.train.signals import StopSignals
from ardiff_scale.train.timing import SpanClock
from ardiff_scale.vocab import SENTENCEPIECE_SPECIALS, SpecialIds

log = logging.getLogger("ardiff.train")

TERMS = ("loss", "mse", "nll", "prior")
# Columns of the per-step window kept on the device: the four loss terms summed over micro-batches, the
# global grad norm and the tokens computed, then summed over ranks at the end of the window.
_COLUMNS = (*TERMS, "grad_norm", "tokens")


class Callback:
    """Hooks of the training loop, all optional. Every rank calls every hook, in the same order, so a
    callback may run collectives (validation, sample generation); only rank 0 should print or write.

    - `on_step_end` runs after every optimizer step with host-side state only (`trainer.step`): reading a
      device value there would cost a sync per step.
    - `on_log` receives the metrics of one optimizer step, already averaged over ranks and micro-batches:
      step, loss, mse, nll, prior, lr, grad_norm, tokens. It is called for every step of a logging window
      at the window's end; the window's last step also carries the throughput (tokens_per_s, tflops, mfu)
      and the time breakdown per step (time/step_s, time/data_s, time/forward_backward_s,
      time/optimizer_s, time/checkpoint_s, and time/<name>_s for other timed work). Other producers
      (validation) report through `trainer.publish`, which calls `on_log` with their own keys.
    - `on_text` receives named texts worth keeping (sample generations).
    """

    def on_train_start(self, trainer: "Trainer") -> None:
        pass

    def on_step_end(self, trainer: "Trainer") -> None:
        pass

    def on_log(self, trainer: "Trainer", metrics: dict[str, float]) -> None:
        pass

    def on_text(self, trainer: "Trainer", name: str, text: str) -> None:
        pass

    def on_train_end(self, trainer: "Trainer") -> None:
        pass


@dataclass
class Trainer:
    config: Config
    model: nn.Module  # ARDiffusionModel or the AutoregressiveModel baseline
    callbacks: list[Callback] = field(default_factory=list)
    # Saves on schedule, on request and at the end; None trains without checkpoints (unit tests).
    checkpointer: object | None = None
    load_universal: bool = False  # resuming a checkpoint saved at another world size
    data_state: Callable[[], dict] = dict  # the data reader's resumable state, saved with each checkpoint
    specials: SpecialIds = SENTENCEPIECE_SPECIALS  # the tokenizer's pad/bos/eos, for the autoregressive loss

    def __post_init__(self) -> None:
        train = self.config.train
        self.rank, self.world = init_distributed()
        control_group()  # created now, by every rank in the same order
        self.device = device()
        check_precision(self.device, train.precision, train.force_precision)
        self.model.to(self.device)
        self.schedule = make_schedule(self.config.diffusion.schedule, self.config.diffusion.num_steps).to(self.device)
        self.objective = build_objective(self.model, self.config, self.schedule, self.specials)
        self.ds_config = resolve_ds_config(self.config, self.world)
        if self.load_universal:
            self.ds_config["checkpoint"] = {"load_universal": True}
        self.engine = build_engine(self.objective, self.config, self.ds_config, lambda s: lr_factor(s, train))
        self.zero3 = zero_stage(self.ds_config) == 3
        # One EMA per job: partitioned like the weights under ZeRO-3, else kept whole by rank 0 alone.
        self.ema = EMA(self.model, train.ema_rate, keep=self.zero3 or self.rank == 0)
        self.step = 0
        self.should_stop = False  # a callback may end training early (divergence, a finished evaluation)
        self.stop_requested = False  # local, agreed on by all ranks after the step (time budget)
        self.save_requested = False  # local, agreed on likewise (time-based checkpoints)
        self.signals = StopSignals()
        # Noise differs per rank (seed + rank) and is part of the checkpoint, so a resumed run draws the
        # same noise as an uninterrupted one.
        self.generator = torch.Generator(self.device).manual_seed(train.seed + self.rank)
        torch.manual_seed(train.seed + self.rank)
        self.peak: Peak = peak_for(self.device, train.precision, train.peak_tflops)
        self.clock = SpanClock(self.device)
        self._window = torch.zeros(train.log_every, len(_COLUMNS), dtype=torch.float64, device=self.device)
        self._window_steps: list[tuple[int, float, int]] = []  # (step, lr, micro-batches) not yet logged
        self._window_flops = 0.0
        self._window_started = time.perf_counter()
        self._times: dict[str, float] = {}

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- one optimizer step ------------------------------------------------------------------------------
    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> None:
        """One optimizer step. Adds the step's loss terms into the device-side window, reads nothing back."""
        self.engine.train()
        row = len(self._window_steps)
        if row == len(self._window):  # a caller stepping without `fit` flushes by itself
            self.flush()
            row = 0
        lr = self.engine.get_lr()[0]
        sums = self._window[row]
        sums.zero_()
        tokens = flops = 0
        for batch in micro_batches:
            # Counted on the host before the copy, as the FLOPs are: every computed position, padding included.
            rows, src_len = batch["src_ids"].shape
            tgt_len = batch["tgt_ids"].shape[1]
            tokens += rows * (src_len + tgt_len)
            flops += training_step_flops(self.config.model, rows, src_len, tgt_len)
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            started = self.clock.mark()
            terms = self.engine(batch["src_ids"], batch["src_mask"], batch["tgt_ids"], self.generator)
            self.engine.backward(terms.loss)  # DeepSpeed divides by grad_accum
            middle = self.clock.mark()
            self.engine.step()  # steps the optimizer and LR schedule on the accumulation boundary only
            self.clock.span("forward_backward", started, middle)
            self.clock.span("optimizer", middle, self.clock.mark())
            sums[:4] += torch.stack([getattr(terms, name).detach() for name in TERMS]).to(torch.float64)
        self.ema.update(self.step + 1)  # self.step counts this step just below
        grad_norm = self.engine.get_global_grad_norm()
        if isinstance(grad_norm, torch.Tensor):
            sums[4] = grad_norm.detach().to(device=self.device, dtype=torch.float64)
        else:
            sums[4] = float(grad_norm or 0.0)
        sums[5] = tokens
        self.step += 1
        self._window_steps.append((self.step, lr, len(micro_batches)))
        self._window_flops += flops

    def flush(self) -> None:
        """End the logging window: one all-reduce and one device-to-host copy for all its steps, then
        `on_log` for each of them. Every rank calls it at the same steps."""
        if not self._window_steps:
            return
        count = len(self._window_steps)
        window = self._window[:count]
        if self.world > 1:
            dist.all_reduce(window)
        values = window.tolist()
        seconds = time.perf_counter() - self._window_started
        device_times = self.clock.collect()
        for (step, lr, micro), row in zip(self._window_steps, values):
            metrics = {"step": step, **{name: row[i] / (micro * self.world) for i, name in enumerate(TERMS)},
                       "lr": lr, "grad_norm": row[4] / self.world, "tokens": int(row[5])}
            if step == self._window_steps[-1][0]:
                metrics.update(self._throughput(count, seconds, sum(r[5] for r in values), device_times))
            for callback in self.callbacks:
                callback.on_log(self, metrics)
        self._window_steps.clear()
        self._window_flops = 0.0
        self._times.clear()
        self._window_started = time.perf_counter()

    def _throughput(self, steps: int, seconds: float, tokens: float, device_times: dict[str, float]) -> dict:
        flops = self._window_flops * self.world  # every rank computes the same shapes
        out = {"tokens_per_s": tokens / seconds, "tflops": flops / seconds / 1e12,
               "mfu": flops / seconds / (self.peak.tflops * 1e12 * self.world), "time/step_s": seconds / steps}
        for name, total in {**device_times, **self._times}.items():
            out[f"time/{name}_s"] = total / steps
        return out

    def add_time(self, name: str, seconds: float) -> None:
        """Host time spent on `name` (checkpoint, validation, samples) in this window, reported per step."""
        self._times[name] = self._times.get(name, 0.0) + seconds

    def publish(self, metrics: dict[str, float]) -> None:
        """Metrics computed outside the step (validation loss), handed to every callback's `on_log`."""
        for callback in self.callbacks:
            callback.on_log(self, {"step": self.step, **metrics})

    def publish_text(self, name: str, text: str) -> None:
        for callback in self.callbacks:
            callback.on_text(self, name, text)

    # --- the loop ----------------------------------------------------------------------------------------
    def fit(self, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        """Train to `train.max_steps` or until stopped. A stop signal (SIGTERM, SIGUSR1) on any rank ends
        the current step on every rank, writes a checkpoint and raises `Preempted`."""
        train = self.config.train
        for callback in self.callbacks:
            callback.on_train_start(self)
        self.signals.install()
        try:
            self._window_started = time.perf_counter()
            while self.step < train.max_steps and not self.should_stop:
                started = time.perf_counter()
                micro = [next(batches) for _ in range(train.grad_accum)]
                self.add_time("data", time.perf_counter() - started)
                self.train_step(micro)
                for callback in self.callbacks:
                    callback.on_step_end(self)
                preempted, stop, save = agree_any([self.signals.received is not None, self.stop_requested,
                                                   self.save_requested])
                self.save_requested = False
                if preempted:
                    self._preempt()
                if stop:
                    self.should_stop = True
                if self.checkpointer and (save or self.checkpointer.due(self)):
                    self.save_checkpoint()
                if self.step % train.log_every == 0:
                    self.flush()
            self.flush()
            if self.checkpointer:
                self.save_checkpoint()
        finally:
            self.signals.uninstall()
        for callback in self.callbacks:
            callback.on_train_end(self)

    def _preempt(self) -> None:
        signal_name = self.signals.received or "a stop signal on another rank"
        if self.is_main:
            log.warning("received %s at step %d: saving a checkpoint, then exiting", signal_name, self.step)
        self.flush()
        if self.checkpointer:
            self.save_checkpoint()
        raise Preempted(f"stopped by {signal_name} at step {self.step}; the checkpoint of step {self.step} is "
                        "saved and the same command continues from it (train.resume=auto)")

    def save_checkpoint(self) -> None:
        started = time.perf_counter()
        if self.checkpointer.save(self):
            self.add_time("checkpoint", time.perf_counter() - started)

    # --- what a checkpoint holds beyond DeepSpeed's own state -----------------------------------------
    def state_dict(self) -> dict:
        """This rank's small state (no weights): step, RNGs, data reader."""
        return {"step": self.step, "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "data": self.data_state(), "world_size": self.world, "zero_stage": zero_stage(self.ds_config)}

    def load_state_dict(self, state: dict, same_world: bool) -> None:
        self.step = state["step"]
        # The optimizer comes back with the learning rate of the saved run's schedule; a resumed run may have
        # changed it (a longer train.max_steps), and its own schedule must hold from the first step on.
        for group in self.engine.optimizer.param_groups:
            group["lr"] = self.config.train.lr * lr_factor(self.step, self.config.train)
        if same_world:
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if state["cuda_rng"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(state["cuda_rng"])

    def full_weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """Whole weights on every rank (a collective under ZeRO-3); the EMA only where it is kept whole or
        gathered (rank 0, or every rank under ZeRO-3), empty elsewhere."""
        if ema:
            return self.ema.full_state_dict()
        with gathered(self.model, self.zero3):
            return {name: p.detach().float().cpu().clone() for name, p in self.model.named_parameters()}
