"""`ardiff pretrain`: span-denoising pretraining on streamed shards in a DeepSpeed engine.

The same entry runs as one bare process, under `deepspeed --num_gpus N` (a hostfile for several nodes),
under `torchrun`, and inside a Ray Train worker: each sets RANK/WORLD_SIZE and the rest follows.

Rerunning the same command continues the run (`train.resume=auto`): that is what a requeued or preempted
job does, so nothing here may depend on being the first attempt.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from ardiff_scale.config import Config, config_to_yaml, flatten, load_config
from ardiff_scale.data.infill import InfillScores
from ardiff_scale.data.pipeline import open_shards
from ardiff_scale.data.shards import ShardSet
from ardiff_scale.data.tokenizer import Tokenizer
from ardiff_scale.errors import ConfigError, DataError, Preempted
from ardiff_scale.export import save_model_dir
from ardiff_scale.model import ARDiffusionModel, build_model, encoder_weights
from ardiff_scale.tracking.callback import MLflowLogging
from ardiff_scale.tracking.mlflow_tracker import RUN_ID_FILE, MLflowTracker, resolve_tracking_uri
from ardiff_scale.tracking.system_metrics import SystemMetrics
from ardiff_scale.train import checkpoint
from ardiff_scale.train.callbacks import ConsoleProgress, LossHistory, MetricsLog, TimeBudget
from ardiff_scale.train.checkpoint import CheckpointStore
from ardiff_scale.train.checkpointer import Checkpointer
from ardiff_scale.train.distributed import (
    broadcast_from_main,
    check_shared_directory,
    control_group,
    node_names,
    raise_together,
)
from ardiff_scale.train.engine import init_distributed
from ardiff_scale.train.loader import open_loader
from ardiff_scale.train.rundir import RunDir
from ardiff_scale.train.trainer import Callback, Trainer
from ardiff_scale.train.validation import SampleGeneration, Validation

log = logging.getLogger("ardiff.train")


@dataclass
class PretrainResult:
    trainer: Trainer
    tokenizer: Tokenizer
    history: LossHistory
    samples: list[tuple[str, str, str]]  # (source, reference, generated) of the last sample generation
    resumed_from: str | None
    run: RunDir
    tracking_uri: str | None
    infill: InfillScores | None = None  # token scores of the last sample generation's masked spans


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


# A resumed run may change how long it trains, how often it logs or saves, where it reports; not what it trains.
RESUME_FIXED = ("model.", "diffusion.num_steps", "diffusion.schedule", "diffusion.timestep_form", "train.seed")
# Differences that never matter when a run directory is reused.
IGNORED = ("train.resume", "train.threads", "train.staging_dir", "train.output_dir", "tracking.", "ray.")


def config_differences(saved: Config, current: Config) -> dict[str, tuple]:
    """{dotted key: (saved value, current value)} for every field that differs, ignored ones left out."""
    old, new = flatten(saved.to_dict()), flatten(current.to_dict())
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys())
            if old.get(k) != new.get(k) and not k.startswith(IGNORED)}


def _describe(diff: dict[str, tuple]) -> str:
    return "; ".join(f"{k}: {a!r} there, {b!r} now" for k, a, b in ((k, *v) for k, v in diff.items()))


def _plan_resume(config: Config, run: RunDir) -> tuple[str | None, CheckpointStore]:
    """Rank 0 alone: the checkpoint to continue from (None: start fresh) and the store holding it. Refuses a
    fresh start that would overwrite another run's checkpoints or mix two configs in one directory."""
    resume, store = config.train.resume, run.checkpoints
    saved_text = run.read_text("config.yaml")
    saved = load_config(run.saved_config_path(saved_text)) if saved_text else None
    if resume not in ("auto", "never"):  # a checkpoints directory, or one stepNNNNNNNN directory in it
        parent, _, name = resume.rstrip("/").rpartition("/")
        explicit = CheckpointStore(parent if checkpoint.TAG.match(name) else resume, store.local)
        tag = name if checkpoint.TAG.match(name) else explicit.find_resume()
        if tag is None or explicit.read_text(tag, checkpoint.COMPLETE) is None:
            raise ConfigError(f"train.resume: no complete checkpoint at {resume} (give 'auto', 'never', a checkpoints "
                              "directory or one of its stepNNNNNNNN directories)")
        return tag, explicit
    tag = store.find_resume() if resume == "auto" else None
    if resume == "never" and store.complete_tags():
        raise ConfigError(f"train.output_dir {run.url} already holds checkpoints (newest {store.complete_tags()[-1]}) "
                          "and train.resume=never would overwrite them: continue with train.resume=auto, or choose "
                          "a new train.output_dir")
    if saved is not None:
        diff = config_differences(saved, config)
        if tag is not None:
            fixed = {k: v for k, v in diff.items() if k.startswith(RESUME_FIXED)}
            if fixed:
                raise ConfigError(f"cannot resume {run.url}/checkpoints/{tag} with another model or diffusion: "
                                  f"{_describe(fixed)}. Resume with the run's own config.yaml, or choose a new "
                                  "train.output_dir")
            if diff:
                log.info("resuming with changed settings: %s", _describe(diff))
        elif diff:
            raise ConfigError(f"train.output_dir {run.url} holds another run (its config.yaml differs: "
                              f"{_describe(diff)}) and no checkpoint to continue: choose a new train.output_dir, "
                              "or delete that directory to start over there")
    return tag, store


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


def _open_data(config: Config, tokenizer: Tokenizer, rank: int) -> tuple[ShardSet, ShardSet | None]:
    """Collective: the training and validation shard sets, listed and validated once, by rank 0, and handed to
    every rank; no rank or worker asks the store about a shard again (64 ranks x 10k shards would be 640k
    requests before the first step)."""
    sets, error = None, None
    if rank == 0:
        try:
            sets = (open_shards(config.data.train, tokenizer),
                    open_shards(config.data.valid, tokenizer) if config.data.valid else None)
        except (ConfigError, DataError) as err:
            error = err
    raise_together(error)
    return broadcast_from_main(sets)


def _start(config: Config, rank: int) -> tuple[RunDir, str | None, CheckpointStore, int]:
    """Collective: the run directory, proven shared; the checkpoint every rank resumes from, chosen by rank 0."""
    run = RunDir(config.train.output_dir, rank, config.train.staging_dir)
    check_shared_directory(lambda text: run.write_text(text, ".ardiff-shared-check"),
                           lambda: run.read_text(".ardiff-shared-check"), run.url)
    plan, error = None, None
    if rank == 0:
        try:
            tag, store = _plan_resume(config, run)
            plan = (tag, store.root, store.info(tag)["world_size"] if tag else None)
        except ConfigError as err:
            error = err
    raise_together(error)
    tag, root, saved_world = broadcast_from_main(plan)
    store = run.checkpoints if root == run.checkpoints.root else CheckpointStore(root, run.checkpoints.local)
    return run, tag, store, saved_world


def run_pretraining(config: Config, time_budget: float | None = None,
                    init_weights: dict[str, torch.Tensor] | None = None,
                    extra_callbacks: list[Callback] = ()) -> PretrainResult:
    """Train on `config.data.train` shards: span denoising for pretraining shards, seq2seq for task shards
    (fine-tuning, from `init_weights` when given). A resumed run ignores `init_weights`."""
    tokenizer = _check_inputs(config)
    train = config.train
    if train.threads:
        torch.set_num_threads(train.threads)
    rank, world = init_distributed()
    control_group()
    run, tag, store, saved_world = _start(config, rank)
    saved_world = saved_world or world
    if tag and saved_world != world and store.remote:
        raise ConfigError(f"{store.root}/{tag} was saved by {saved_world} ranks and this job has {world}: a "
                          "world-size change needs the checkpoint on a shared filesystem (copy it there and give "
                          "train.resume=PATH), or run with the same number of ranks")
    # Fails before any training if a shard is missing or the tokenizer is not the shards' one.
    train_set, valid_set = _open_data(config, tokenizer, rank)
    loader = open_loader(train_set, config, rank, world, epochs=0)
    if rank == 0:
        log.info("data: %d training shards, %d workers per rank make micro-batches of %d", len(train_set.urls),
                 loader.num_workers, train.micro_batch_size)
    if rank == 0:
        run.write_text(config_to_yaml(config), "config.yaml")

    history = LossHistory()
    samples = SampleGeneration(config, tokenizer, valid_set or train_set)
    callbacks: list[Callback] = [ConsoleProgress(), history, MetricsLog(run.local / "metrics.jsonl"),
                                 TimeBudget(time_budget)]
    if valid_set is not None:
        callbacks.append(Validation(config, valid_set))
    callbacks += [samples, *extra_callbacks]
    checkpointer = Checkpointer(run.checkpoints)
    callbacks.append(checkpointer)
    tracker = None
    if config.tracking.enabled:  # on every rank: system metrics and the node count are collective
        tracker, tracking = _mlflow(config, run, rank, resuming=bool(tag))
        callbacks += tracking

    torch.manual_seed(train.seed)  # the same initial weights on every rank and in every run
    model = build_model(config.model)
    if init_weights is not None:
        _load_init_weights(model, init_weights, rank)
    trainer = Trainer(config, model, callbacks, checkpointer=checkpointer,
                      load_universal=bool(tag) and saved_world != world, data_state=loader.state_dict,
                      specials=tokenizer.specials)
    if tag:
        same = saved_world == world
        ds_tag = tag if same else _universal(Path(store.local), tag, rank)
        loaded = checkpoint.load(trainer.engine, store, tag, rank, trainer.ema.keep, trainer.ema.partitioned,
                                 ds_tag=ds_tag)
        trainer.load_state_dict(loaded.rank_state, same_world=same)
        loader.load_state_dict(loaded.data_states)
        if loaded.ema is not None:
            trainer.ema.load_state_dict(loaded.ema)
        elif trainer.ema.keep:
            log.warning("the EMA of %s does not fit world size %d (saved with %d): it restarts from the loaded "
                        "weights", tag, world, saved_world)
        log.debug("rank %d read %s", rank, loaded.files_read)
        if rank == 0:
            log.info("resumed from %s/%s at step %d (saved by %d rank(s), now %d) in %.1f s", store.root, tag,
                     trainer.step, saved_world, world, loaded.seconds)
    status = "FAILED"
    try:
        trainer.fit(loader.tensors())
        status = "FINISHED"
    except Preempted:
        status = "KILLED"
        raise
    finally:
        if tracker:
            tracker.close(status)
        if rank == 0:
            run.publish(["metrics.jsonl"])
    if rank == 0:
        log.info("data: %s", loader.stats.as_dict())
    _export(trainer, tokenizer, run.local)
    if rank == 0:
        history.plot(run.local / "loss.png", title=f"{config.model_preset or 'model'} pretraining")
        run.publish(["model", "model-ema", "loss.png"])
        log.info("model written to %s (loss curve: %s)", run.url_of("model"), run.url_of("loss.png"))
    return PretrainResult(trainer, tokenizer, history, samples.samples, tag, run,
                          tracker.tracking_uri if tracker else None, infill=samples.scores)


def _mlflow(config: Config, run: RunDir, rank: int, resuming: bool):
    """Collective: this rank's tracking callbacks, and rank 0's MLflow tracker (None elsewhere). Every rank
    samples its node's system metrics for rank 0. A resumed job continues the MLflow run whose id rank 0
    saved in the run directory."""
    hosts = node_names()
    nodes = sorted(set(hosts))
    error, tracking_uri = None, ""
    try:
        tracking_uri = resolve_tracking_uri(config.tracking.tracking_uri, run.local, len(nodes), warn=rank == 0)
    except ConfigError as err:
        error = err
    raise_together(error)  # each rank decides alike; this keeps them together even if their environments differ
    system = SystemMetrics(samples_node=hosts.index(hosts[rank]) == rank)  # one rank per node
    if rank != 0:
        return None, [system]
    experiment = config.tracking.experiment or f"ardiff-{Path(config.recipe).stem if config.recipe else 'pretrain'}"
    tracker = MLflowTracker(tracking_uri, experiment, config.tracking.run_name or Path(run.url).name,
                            artifact_root=run.local / "mlartifacts", parent_run_id=config.tracking.parent_run_id,
                            run_id=run.read_text(RUN_ID_FILE) if resuming else None,
                            on_start=lambda run_id: run.write_text(run_id, RUN_ID_FILE))
    manifest = Path(config.data.train) / "manifest.json"
    artifacts = [p for p in (Path(config.data.tokenizer + ".json"), manifest) if p.exists()]
    # MLflowLogging before SystemMetrics: a window's training row is logged before the node metrics of it.
    return tracker, [MLflowLogging(tracker, artifacts, tags={"nodes": ",".join(nodes)}), system]


def _load_init_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor], rank: int) -> None:
    """All of `weights` when they are this architecture's. Between diffusion models whose time conditioning
    differs (the uniform baseline starting from a pretrained AR-Diffusion model), every tensor with the same
    name and shape, the time layers that differ starting fresh. Only the shared encoder when the decoders
    differ (the autoregressive baseline starting from a pretrained AR-Diffusion model)."""
    own = model.state_dict()
    if weights.keys() == own.keys():
        model.load_state_dict(weights)
        return
    shared = encoder_weights(weights)
    if not shared or shared.keys() != encoder_weights(own).keys():
        raise ConfigError("the initial weights fit neither this model nor its encoder: check that model.* sizes "
                          "match the pretrained model's")
    kept = "encoder"
    if isinstance(model, ARDiffusionModel) and "round_bias" in weights:
        shared = {k: v for k, v in weights.items() if k in own and own[k].shape == v.shape}
        kept = "diffusion model"
    model.load_state_dict(shared, strict=False)
    if rank == 0:
        fresh = [k for k in own if k not in shared]
        log.info("initial weights: %d tensors of the %s; %d start fresh (%s%s)", len(shared), kept, len(fresh),
                 ", ".join(fresh[:4]), ", ..." if len(fresh) > 4 else "")


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
