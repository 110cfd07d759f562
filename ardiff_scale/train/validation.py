"""Validation loss and sample generations as callbacks: every `every` steps and at the end, on every rank
(under ZeRO-3 they gather the weights, a collective); rank 0 reports through the trainer."""

from __future__ import annotations

import logging
import time
from itertools import islice

import torch

from ardiff_scale.config import Config
from ardiff_scale.data.infill import InfillScores, infill_scores
from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.tokenizer import Tokenizer
from ardiff_scale.decoding import decode
from ardiff_scale.train.engine import gathered
from ardiff_scale.train.loader import open_loader
from ardiff_scale.train.trainer import Callback, Trainer

log = logging.getLogger("ardiff.train")


def masked_source_text(tokenizer: Tokenizer, ids: list[int]) -> str:
    """The source's text with its mask shown as [____]: `decode` drops special tokens, the mask among them, so
    the text on either side of each mask is decoded apart."""
    parts: list[list[int]] = [[]]
    for token in ids:
        if token == tokenizer.specials.mask:
            parts.append([])
        else:
            parts[-1].append(token)
    return " [____] ".join(tokenizer.decode(part) for part in parts)


class _Periodic(Callback):
    """Runs `run(trainer)` every `every` steps (0: only at the end) and once at the end, timed."""

    name = "periodic"

    def __init__(self, every: int):
        self.every = every
        self.last = -1

    def run(self, trainer: Trainer) -> None:
        raise NotImplementedError

    def _run_timed(self, trainer: Trainer) -> None:
        if trainer.step == self.last:
            return
        started = time.perf_counter()
        self.run(trainer)
        self.last = trainer.step
        trainer.add_time(self.name, time.perf_counter() - started)

    def on_step_end(self, trainer: Trainer) -> None:
        if self.every and trainer.step % self.every == 0 and trainer.step < trainer.config.train.max_steps:
            self._run_timed(trainer)

    def on_train_end(self, trainer: Trainer) -> None:
        self._run_timed(trainer)


class Validation(_Periodic):
    """Mean loss over the first `max_batches` batches of data.valid with fixed noise: comparable across a run."""

    name = "validation"

    def __init__(self, config: Config, shard_set: ShardSet, max_batches: int = 8):
        super().__init__(config.train.eval_every)
        self.config, self.shard_set, self.max_batches = config, shard_set, max_batches

    @torch.no_grad()
    def run(self, trainer: Trainer) -> None:
        # A few batches, read in this process: worker start-up would cost more than the reading.
        loader = open_loader(self.shard_set, self.config, rank=0, world=1, epochs=1, num_workers=0)
        generator = torch.Generator(trainer.device).manual_seed(0)
        trainer.engine.eval()
        losses = []
        for batch in islice(loader.tensors(), self.max_batches):
            batch = {k: v.to(trainer.device, non_blocking=True) for k, v in batch.items()}
            losses.append(trainer.engine(batch["src_ids"], batch["src_mask"], batch["tgt_ids"], generator).loss)
        trainer.engine.train()
        loss = torch.stack(losses).float().mean().item()
        if trainer.is_main:
            log.info("validation loss at step %d: %.4f", trainer.step, loss)
        trainer.publish({"valid_loss": loss})


class SampleGeneration(_Periodic):
    """Fills the masks of the first `scored` validation (or training) windows with the skipping sampler and
    scores them in tokens (span accuracy against the unigram baseline, and how varied the output is: see
    data/infill.py); the first `count` go to the log as text, the scores to the metrics."""

    name = "samples"

    def __init__(self, config: Config, tokenizer: Tokenizer, shard_set: ShardSet, count: int = 4,
                 scored: int = 32):
        super().__init__(config.train.sample_every)
        self.config, self.tokenizer, self.shard_set, self.count = config, tokenizer, shard_set, count
        self.scored = max(scored, count)
        self.samples: list[tuple[str, str, str]] = []  # (source, reference, generated) of the last run
        self.scores: InfillScores | None = None  # of the last run; None when the targets are not spans

    def run(self, trainer: Trainer) -> None:
        config, tokenizer = self.config, self.tokenizer
        loader = open_loader(self.shard_set, config, rank=0, world=1, epochs=1, batch_size=self.scored,
                             num_workers=0)
        batch = next(loader.tensors())
        trainer.model.eval()
        with gathered(trainer.model, trainer.zero3):
            out = decode(trainer.model, config, batch["src_ids"].to(trainer.device),
                         batch["src_mask"].to(trainer.device), config.data.target_len, config.diffusion.decode_steps,
                         1, generator=torch.Generator(trainer.device).manual_seed(0), schedule=trainer.schedule,
                         specials=tokenizer.specials)
        trainer.model.train()
        generated = out.tokens[:, 0].cpu()
        if self.shard_set.kind != "seq2seq":
            self.scores = infill_scores(generated, batch["tgt_ids"], tokenizer.specials)
        rows = []
        for src_ids, tgt_ids, tokens in islice(zip(batch["src_ids"], batch["tgt_ids"], generated), self.count):
            source = masked_source_text(tokenizer, src_ids.tolist())
            rows.append((" ".join(source.split()), " ".join(tokenizer.decode(tgt_ids.tolist()).split()),
                         " ".join(tokenizer.decode(tokens.tolist()).split())))
        self.samples = rows
        if trainer.is_main:
            text = "\n\n".join(f"source   : {s[:300]}\nreference: {r}\ngenerated: {g}" for s, r, g in rows)
            log.info("samples at step %d:\n%s", trainer.step, text)
            trainer.publish_text(f"samples-step{trainer.step:08d}.txt", text)
            if self.scores is not None:
                log.info("masked spans at step %d: %s", trainer.step,
                         self.scores.summary(tokenizer.decode([self.scores.unigram_token])))
        if self.scores is not None:
            trainer.publish(self.scores.metrics())
