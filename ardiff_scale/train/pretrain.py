"""Pretraining on streamed shards with the span-denoising objective (single process for now)."""

from __future__ import annotations

import logging
import os
import time
from itertools import islice
from pathlib import Path

import torch

from ardiff_scale.config import Config
from ardiff_scale.data.pipeline import batch_iterator, open_stream
from ardiff_scale.data.tokenizer import Tokenizer
from ardiff_scale.diffusion import make_schedule, training_loss
from ardiff_scale.errors import ConfigError
from ardiff_scale.export import save_model_dir
from ardiff_scale.model import ARDiffusionModel
from ardiff_scale.train.callbacks import ConsoleProgress, LossHistory
from ardiff_scale.train.trainer import Trainer

log = logging.getLogger("ardiff.train")


class TimeBudget:
    """Stops training once `seconds` have passed (the demo's few minutes)."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds

    def on_train_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def on_step_end(self, trainer: Trainer, metrics) -> None:
        if self.seconds is not None and time.perf_counter() - self.started > self.seconds:
            log.info("time budget of %.0f s reached at step %d", self.seconds, trainer.step)
            trainer.should_stop = True

    def on_train_end(self, trainer: Trainer) -> None:
        pass


@torch.no_grad()
def validation_loss(model: ARDiffusionModel, config: Config, tokenizer: Tokenizer, max_batches: int = 8) -> float:
    """Mean loss over the first batches of data.valid with fixed noise, comparable across a run."""
    loader, maker = open_stream(config.data.valid, config, rank=0, world=1, epochs=1, tokenizer=tokenizer)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    generator = torch.Generator().manual_seed(0)
    was_training = model.training
    model.eval()
    losses = []
    for batch in islice(batch_iterator(loader, maker, config.train.micro_batch_size), max_batches):
        terms = training_loss(model, batch["src_ids"], batch["src_mask"], batch["tgt_ids"], schedule,
                              config.diffusion.timestep_form, generator)
        losses.append(terms.loss.item())
    model.train(was_training)
    return sum(losses) / len(losses)


def run_pretraining(config: Config, time_budget: float | None = None) -> tuple[ARDiffusionModel, Tokenizer, LossHistory]:
    data, train = config.data, config.train
    for name in ("train", "tokenizer"):
        if not getattr(data, name):
            raise ConfigError(f"data.{name} is empty: give data.{name}=PATH_OR_URL")
    tokenizer = Tokenizer.load(data.tokenizer)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ConfigError(f"model.vocab_size is {config.model.vocab_size} but tokenizer {data.tokenizer} has "
                          f"{tokenizer.vocab_size} pieces: set model.vocab_size={tokenizer.vocab_size}")
    torch.manual_seed(train.seed)
    if train.threads:
        torch.set_num_threads(train.threads)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    # Endless: training length is set by steps, the stream goes round the shards as often as needed.
    loader, maker = open_stream(data.train, config, rank, world, epochs=0, tokenizer=tokenizer)
    model = ARDiffusionModel(config.model)
    history = LossHistory()
    trainer = Trainer(config, model, callbacks=[ConsoleProgress(), history, TimeBudget(time_budget)])
    log.info("pretraining %s (%.1f M parameters) for up to %d steps, precision %s, on %s",
             config.model_preset or "model", sum(p.numel() for p in model.parameters()) / 1e6,
             train.max_steps, train.precision, data.train)
    trainer.fit(batch_iterator(loader, maker, train.micro_batch_size))
    log.info("data: %s %s", loader.stats.as_dict(), maker.counts)
    if data.valid:
        log.info("validation loss: %.4f", validation_loss(model, config, tokenizer))
    out = Path(train.output_dir)
    save_model_dir(str(out), model, config, tokenizer)
    history.plot(out / "loss.png", title=f"{config.model_preset or 'model'} pretraining")
    log.info("model written to %s (loss curve: %s)", out, out / "loss.png")
    return model, tokenizer, history
