"""One training loop: optimizer steps over micro-batches, with callbacks for everything around it.

Steps are optimizer steps (each `train.grad_accum` micro-batches), never micro-batches: the official
counter mixes the two, and its schedules shift whenever accumulation changes.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

from ardiff_scale.config import Config
from ardiff_scale.diffusion import make_schedule, training_loss
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.train.optim import EMA, build_optimizer, build_scheduler

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepMetrics:
    step: int  # optimizer steps completed
    loss: float
    mse: float
    nll: float
    prior: float
    lr: float
    grad_norm: float
    tokens: int  # source + target tokens in this step
    seconds: float

    def as_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.__dict__.items()}


class Callback(Protocol):
    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer", metrics: StepMetrics) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...


@dataclass
class Trainer:
    config: Config
    model: ARDiffusionModel
    callbacks: list = field(default_factory=list)

    def __post_init__(self) -> None:
        train = self.config.train
        self.device = next(self.model.parameters()).device
        self.schedule = make_schedule(self.config.diffusion.schedule, self.config.diffusion.num_steps)
        self.optimizer = build_optimizer(self.model, train)
        self.lr_scheduler = build_scheduler(self.optimizer, train)
        self.ema = EMA(self.model, train.ema_rate)
        self.step = 0
        self.should_stop = False  # a callback may end training early (time budget, divergence)
        self.generator = torch.Generator(self.device).manual_seed(train.seed)
        dtype = PRECISIONS[train.precision]
        self._autocast = (lambda: torch.autocast(self.device.type, dtype=dtype)) if dtype else contextlib.nullcontext
        # fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range and needs none.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=train.precision == "fp16")

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepMetrics:
        started = time.perf_counter()
        self.model.train()
        sums = {"loss": 0.0, "mse": 0.0, "nll": 0.0, "prior": 0.0}
        tokens = 0
        for batch in micro_batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with self._autocast():
                terms = training_loss(self.model, batch["src_ids"], batch["src_mask"], batch["tgt_ids"],
                                      self.schedule, self.config.diffusion.timestep_form, self.generator)
            self.scaler.scale(terms.loss / len(micro_batches)).backward()
            for name, value in terms.detached().items():
                sums[name] += value / len(micro_batches)
            tokens += int(batch["src_mask"].sum()) + batch["tgt_ids"].numel()
        self.scaler.unscale_(self.optimizer)
        clip = self.config.train.grad_clip or float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip).item()
        lr = self.optimizer.param_groups[0]["lr"]
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.lr_scheduler.step()
        self.ema.update(self.model)
        self.step += 1
        return StepMetrics(step=self.step, lr=lr, grad_norm=grad_norm, tokens=tokens,
                           seconds=time.perf_counter() - started, **sums)

    def fit(self, batches: Iterator[dict[str, torch.Tensor]]) -> None:
        train = self.config.train
        for callback in self.callbacks:
            callback.on_train_start(self)
        while self.step < train.max_steps and not self.should_stop:
            micro = [next(batches) for _ in range(train.grad_accum)]
            metrics = self.train_step(micro)
            for callback in self.callbacks:
                callback.on_step_end(self, metrics)
        for callback in self.callbacks:
            callback.on_train_end(self)
