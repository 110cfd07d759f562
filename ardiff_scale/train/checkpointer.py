"""When to checkpoint, and what: the trainer's checkpoint component (train/checkpoint.py has the layout).

Saves every `train.save_every` steps, every `train.save_every_minutes` minutes (a time-based save is asked
for by any rank's clock and agreed on by all), on a preemption signal and at the end.
"""

from __future__ import annotations

import logging
import time

from ardiff_scale.train import checkpoint
from ardiff_scale.train.checkpoint import CheckpointStore
from ardiff_scale.train.trainer import Callback, Trainer

log = logging.getLogger("ardiff.train")


class Checkpointer(Callback):
    def __init__(self, store: CheckpointStore):
        self.store = store
        self.last_saved = -1
        self.last_saved_at = time.monotonic()
        self.seconds: list[float] = []

    def on_train_start(self, trainer: Trainer) -> None:
        self.last_saved = trainer.step  # a resumed run does not save the step it loaded again
        self.last_saved_at = time.monotonic()

    def on_step_end(self, trainer: Trainer) -> None:
        minutes = trainer.config.train.save_every_minutes
        if minutes and time.monotonic() - self.last_saved_at >= 60 * minutes:
            trainer.save_requested = True

    def due(self, trainer: Trainer) -> bool:
        train = trainer.config.train
        return bool(train.save_every) and trainer.step % train.save_every == 0 and trainer.step < train.max_steps

    def save(self, trainer: Trainer) -> bool:
        """Every rank calls it; False when this step is saved already."""
        if trainer.step == self.last_saved:
            return False
        ema = trainer.ema.state_dict() if trainer.ema.keep else None
        seconds = checkpoint.save(trainer.engine, self.store, trainer.step, trainer.state_dict(), ema,
                                  trainer.ema.partitioned, trainer.world, trainer.config.train.keep_checkpoints)
        self.seconds.append(seconds)
        self.last_saved, self.last_saved_at = trainer.step, time.monotonic()
        if trainer.is_main:
            log.info("checkpoint %s/%s saved in %.1f s", self.store.root, checkpoint.tag_for(trainer.step), seconds)
        return True
