"""One training loop: optimizer steps of a DeepSpeed engine, with callbacks for everything around it.

Steps are optimizer steps (each `train.grad_accum` micro-batches), never micro-batches: the official
counter mixes the two, and its schedules shift whenever accumulation changes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch
import torch.distributed as dist
from torch import nn

from ardiff_scale.config import Config
from ardiff_scale.diffusion import make_schedule
from ardiff_scale.train.ema import EMA
from ardiff_scale.train.engine import build_engine, device, gathered, init_distributed, resolve_ds_config, zero_stage
from ardiff_scale.train.lr import lr_factor
from ardiff_scale.train.objective import build_objective

log = logging.getLogger("ardiff.train")


@dataclass
class StepMetrics:
    step: int  # optimizer steps completed
    loss: float  # each term averaged over ranks and micro-batches
    mse: float
    nll: float
    prior: float
    lr: float
    grad_norm: float
    tokens: int  # source + target tokens of this step, all ranks
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
    model: nn.Module  # ARDiffusionModel or the AutoregressiveModel baseline
    callbacks: list = field(default_factory=list)
    load_universal: bool = False  # resuming a checkpoint saved at another world size

    def __post_init__(self) -> None:
        train = self.config.train
        self.rank, self.world = init_distributed()
        self.device = device()
        self.model.to(self.device)
        self.schedule = make_schedule(self.config.diffusion.schedule, self.config.diffusion.num_steps)
        self.objective = build_objective(self.model, self.config, self.schedule)
        self.ds_config = resolve_ds_config(self.config, self.world)
        if self.load_universal:
            self.ds_config["checkpoint"] = {"load_universal": True}
        self.engine = build_engine(self.objective, self.config, self.ds_config, lambda s: lr_factor(s, train))
        self.zero3 = zero_stage(self.ds_config) == 3
        self.ema = EMA(self.model, train.ema_rate)
        self.step = 0
        self.should_stop = False  # a callback may end training early (time budget, divergence)
        # Noise differs per rank (seed + rank) and is part of the checkpoint, so a resumed run draws the
        # same noise as an uninterrupted one.
        self.generator = torch.Generator(self.device).manual_seed(train.seed + self.rank)
        torch.manual_seed(train.seed + self.rank)
        self.data_state = lambda: {}  # set by whoever owns the data reader

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def train_step(self, micro_batches: list[dict[str, torch.Tensor]]) -> StepMetrics:
        started = time.perf_counter()
        self.engine.train()
        sums = torch.zeros(5, dtype=torch.float64)  # loss, mse, nll, prior, tokens
        lr = self.engine.get_lr()[0]
        for batch in micro_batches:
            batch = {k: v.to(self.device) for k, v in batch.items()}
            terms = self.engine(batch["src_ids"], batch["src_mask"], batch["tgt_ids"], self.generator)
            self.engine.backward(terms.loss)  # DeepSpeed divides by grad_accum
            self.engine.step()  # steps the optimizer and LR schedule on the accumulation boundary only
            values = [terms.loss, terms.mse, terms.nll, terms.prior]
            sums[:4] += torch.tensor([v.detach().float().item() for v in values], dtype=torch.float64)
            sums[4] += int(batch["src_mask"].sum()) + batch["tgt_ids"].numel()
        self.ema.update()
        self.step += 1
        if self.world > 1:
            dist.all_reduce(sums)
        means = sums[:4] / (len(micro_batches) * self.world)
        grad_norm = self.engine.get_global_grad_norm()
        return StepMetrics(step=self.step, loss=means[0].item(), mse=means[1].item(), nll=means[2].item(),
                           prior=means[3].item(), lr=lr, grad_norm=float(grad_norm or 0.0), tokens=int(sums[4]),
                           seconds=time.perf_counter() - started)

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

    # --- what a checkpoint holds beyond DeepSpeed's own state -----------------------------------------
    def state_dict(self) -> dict:
        return {"step": self.step, "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
                "ema": self.ema.state_dict(), "data": self.data_state(), "world_size": self.world,
                "zero_stage": zero_stage(self.ds_config)}

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
        if same_world or not self.zero3:
            self.ema.load_state_dict(state["ema"])
        else:
            log.warning("ZeRO-3 EMA partitions do not fit world size %d (saved with %d): the EMA restarts from the "
                        "loaded weights", self.world, state["world_size"])

    def full_weights(self, ema: bool = False) -> dict[str, torch.Tensor]:
        """Whole weights (raw or EMA) on every rank; a collective under ZeRO-3."""
        if ema:
            return self.ema.full_state_dict()
        with gathered(self.model, self.zero3):
            return {name: p.detach().float().cpu().clone() for name, p in self.model.named_parameters()}
