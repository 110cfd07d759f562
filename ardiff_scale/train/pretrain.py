"""`ardiff pretrain`: span-denoising pretraining on streamed shards in a DeepSpeed engine.

The same entry runs as one bare process, under `deepspeed --num_gpus N` (a hostfile for several nodes),
under `torchrun`, and inside a Ray Train worker: each sets RANK/WORLD_SIZE and the rest follows.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist

from ardiff_scale.config import Config, config_to_yaml
from ardiff_scale.data.objectives import collate
from ardiff_scale.data.pipeline import batch_iterator, open_stream
from ardiff_scale.data.tokenizer import Tokenizer
from ardiff_scale.decoding import decode
from ardiff_scale.errors import ConfigError
from ardiff_scale.export import save_model_dir
from ardiff_scale.model import build_model, encoder_weights
from ardiff_scale.train import checkpoint
from ardiff_scale.train.callbacks import (Checkpointing, ConsoleProgress, LossHistory, MetricsLog, Periodic,
                                         Throughput, TimeBudget)
from ardiff_scale.train.engine import gathered, init_distributed
from ardiff_scale.train.trainer import Trainer

log = logging.getLogger("ardiff.train")


@dataclass
class PretrainResult:
    trainer: Trainer
    tokenizer: Tokenizer
    history: LossHistory
    samples: list[tuple[str, str, str]]  # (source, reference, generated) of the last sample generation
    resumed_from: str | None
    tracking_uri: str | None


def _check_inputs(config: Config) -> Tokenizer:
    data = config.data
    for name in ("train", "tokenizer"):
        if not getattr(data, name):
            raise ConfigError(f"data.{name} is empty: give data.{name}=PATH_OR_URL")
    tokenizer = Tokenizer.load(data.tokenizer)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise ConfigError(f"model.vocab_size is {config.model.vocab_size} but tokenizer {data.tokenizer} has "
                          f"{tokenizer.vocab_size} pieces: set model.vocab_size={tokenizer.vocab_size}")
    return tokenizer


def _resume_point(config: Config, root: Path) -> tuple[str | None, Path]:
    """(tag, checkpoint root) to continue from, or (None, root) to start fresh."""
    resume = config.train.resume
    if not resume:
        return None, root
    if resume == "auto":
        return checkpoint.find_resume(root), root
    path = Path(resume)
    if (path / checkpoint.COMPLETE).exists():
        return path.name, path.parent
    tag = checkpoint.find_resume(path)
    if tag is None:
        raise ConfigError(f"train.resume: no complete checkpoint at {resume} (give 'auto', a checkpoints "
                          "directory or one of its stepNNNNNNNN directories)")
    return tag, path


def _universal(root: Path, tag: str, rank: int) -> str:
    """DeepSpeed's universal form of a checkpoint, which loads at any world size; converted once by rank 0."""
    target = root / f"{tag}_universal"
    if rank == 0 and not (target / "zero").exists():
        log.info("converting %s to a universal checkpoint for the new world size", root / tag)
        subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                        str(root / tag), "--output_folder", str(target), "--num_extract_workers", "1",
                        "--num_merge_workers", "1"], check=True, capture_output=True)
    dist.barrier()
    return target.name


def _sample_texts(trainer: Trainer, tokenizer: Tokenizer, config: Config, count: int = 4) -> list[tuple[str, str, str]]:
    """Fill the masks of the first validation (or training) windows; every rank runs it (ZeRO-3 gathers)."""
    loader, maker = open_stream(config.data.valid or config.data.train, config, rank=0, world=1, epochs=1,
                                tokenizer=tokenizer)
    examples = [maker.example(s) for s in islice(loader, count)]
    batch = collate(examples, config.data.target_len)
    trainer.model.eval()
    with gathered(trainer.model, trainer.zero3):
        out = decode(trainer.model, config, batch["src_ids"].to(trainer.device),
                     batch["src_mask"].to(trainer.device), config.data.target_len, config.diffusion.decode_steps,
                     1, generator=torch.Generator(trainer.device).manual_seed(0), schedule=trainer.schedule)
    trainer.model.train()
    rows = []
    for example, tokens in zip(examples, out.tokens[:, 0].cpu()):
        source = tokenizer.processor.decode(example.source).replace("<mask>", " [____] ")
        rows.append((" ".join(source.split()), " ".join(tokenizer.decode(example.target).split()),
                     " ".join(tokenizer.decode(tokens.tolist()).split())))
    return rows


@torch.no_grad()
def _validation_loss(trainer: Trainer, config: Config, tokenizer: Tokenizer, max_batches: int = 8) -> float:
    """Mean loss over the first batches of data.valid with fixed noise: comparable across a run."""
    loader, maker = open_stream(config.data.valid, config, rank=0, world=1, epochs=1, tokenizer=tokenizer)
    generator = torch.Generator(trainer.device).manual_seed(0)
    trainer.engine.eval()
    losses = []
    for batch in islice(batch_iterator(loader, maker, config.train.micro_batch_size), max_batches):
        batch = {k: v.to(trainer.device) for k, v in batch.items()}
        losses.append(trainer.engine(batch["src_ids"], batch["src_mask"], batch["tgt_ids"], generator).loss.item())
    trainer.engine.train()
    return sum(losses) / len(losses)


def run_pretraining(config: Config, time_budget: float | None = None,
                    init_weights: dict[str, torch.Tensor] | None = None) -> PretrainResult:
    """Train on `config.data.train` shards: span denoising for pretraining shards, seq2seq for task shards
    (fine-tuning, from `init_weights` when given). A resumed run ignores `init_weights`."""
    tokenizer = _check_inputs(config)
    train = config.train
    if train.threads:
        torch.set_num_threads(train.threads)
    rank, world = init_distributed()
    out = Path(train.output_dir)
    root = out / "checkpoints"
    tag, root = _resume_point(config, root)
    saved_world = checkpoint.saved_world_size(root / tag) if tag else world
    # Fails before any training if a shard is missing or the tokenizer is not the shards' one.
    loader, maker = open_stream(config.data.train, config, rank, world, epochs=0, tokenizer=tokenizer)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(config))

    history, throughput = LossHistory(), Throughput()
    checkpoints = Checkpointing(root if tag else out / "checkpoints")
    callbacks: list = [ConsoleProgress(), history, throughput, MetricsLog(out / "metrics.jsonl"),
                       TimeBudget(time_budget), checkpoints]
    tracker = tracking = None
    if config.tracking.enabled and rank == 0:
        from ardiff_scale.tracking.callback import MLflowLogging
        from ardiff_scale.tracking.mlflow_tracker import MLflowTracker, resolve_tracking_uri
        tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri, out)
        experiment = config.tracking.experiment or f"ardiff-{Path(config.recipe).stem if config.recipe else 'pretrain'}"
        tracker = MLflowTracker(tracking_uri, experiment, config.tracking.run_name or out.name,
                                artifact_root=out / "mlartifacts", parent_run_id=config.tracking.parent_run_id)
        manifest = Path(config.data.train) / "manifest.json"
        artifacts = [p for p in (Path(config.data.tokenizer + ".json"), manifest) if p.exists()]
        tracking = MLflowLogging(tracker, history, throughput, artifacts)
        callbacks.append(tracking)
    samples: list[tuple[str, str, str]] = []

    def generate_samples(trainer: Trainer) -> None:
        samples[:] = _sample_texts(trainer, tokenizer, config)
        if trainer.is_main:
            text = "\n\n".join(f"source   : {s[:300]}\nreference: {r}\ngenerated: {g}" for s, r, g in samples)
            log.info("samples at step %d:\n%s", trainer.step, text)
            if tracking:
                tracking.log_text(trainer, f"samples-step{trainer.step:08d}.txt", text)

    def validate(trainer: Trainer) -> None:
        loss = _validation_loss(trainer, config, tokenizer)
        if trainer.is_main:
            log.info("validation loss at step %d: %.4f", trainer.step, loss)
            if tracker:
                tracker.log_metrics({"valid_loss": loss}, trainer.step)

    if config.data.valid:
        callbacks.append(Periodic(train.eval_every, validate))
    callbacks.append(Periodic(train.sample_every, generate_samples))

    torch.manual_seed(train.seed)  # the same initial weights on every rank and in every run
    model = build_model(config.model)
    if init_weights is not None:
        _load_init_weights(model, init_weights, rank)
    trainer = Trainer(config, model, callbacks, load_universal=bool(tag) and saved_world != world)
    trainer.data_state = loader.state_dict
    if tag:
        same = saved_world == world
        ds_tag = tag if same else _universal(root, tag, rank)
        states, _, seconds = checkpoint.load(trainer.engine, root, tag, ds_tag=ds_tag)
        trainer.load_state_dict(states[rank] if same else states[0], same_world=same)
        loader.load_state_dict(states[rank]["data"] if same else [s["data"] for s in states])
        if rank == 0:
            log.info("resumed from %s at step %d (saved by %d rank(s), now %d) in %.1f s", root / tag,
                     trainer.step, saved_world, world, seconds)
    status = "FAILED"
    try:
        trainer.fit(batch_iterator(loader, maker, train.micro_batch_size))
        status = "FINISHED"
    finally:
        if tracker:
            tracker.close(status)
    if rank == 0:
        log.info("data: %s %s", loader.stats.as_dict(), maker.counts)
    _export(trainer, tokenizer, out)
    if rank == 0:
        history.plot(out / "loss.png", title=f"{config.model_preset or 'model'} pretraining")
        log.info("model written to %s (loss curve: %s)", out / "model", out / "loss.png")
    return PretrainResult(trainer, tokenizer, history, samples, tag, tracker.tracking_uri if tracker else None)


def _load_init_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], rank: int) -> None:
    """All of `weights` when they are this architecture's; only the shared encoder when the decoders differ
    (the autoregressive baseline starting from a pretrained AR-Diffusion model)."""
    own = model.state_dict()
    if weights.keys() == own.keys():
        model.load_state_dict(weights)
        return
    shared = encoder_weights(weights)
    if not shared or shared.keys() != encoder_weights(own).keys():
        raise ConfigError("the initial weights fit neither this model nor its encoder: check that model.* sizes "
                          "match the pretrained model's")
    model.load_state_dict(shared, strict=False)
    if rank == 0:
        log.info("initial weights: the encoder's %d tensors (the decoder differs and starts fresh)", len(shared))


def _export(trainer: Trainer, tokenizer: Tokenizer, out: Path) -> None:
    """The final weights (and their EMA) as model directories: a collective, rank 0 writes."""
    exports = {"model": trainer.full_weights(ema=False)}
    if trainer.config.train.ema_rate > 0:
        exports["model-ema"] = trainer.full_weights(ema=True)
    if trainer.is_main:
        for name, weights in exports.items():
            save_model_dir(str(out / name), trainer.model, trainer.config, tokenizer, weights=weights)
    if trainer.world > 1:
        dist.barrier()
