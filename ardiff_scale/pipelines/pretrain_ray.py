"""`ardiff pretrain --ray`: the same `run_pretraining` as a `deepspeed` launch, in Ray Train workers.

Ray Train's `TorchTrainer` places `ray.workers` processes anywhere on the cluster, sets up torch.distributed
among them (nccl with GPUs, gloo without) and restarts them all when one fails (`FailureConfig`). DeepSpeed
joins the process group Ray made, checkpoints go to `train.output_dir` and a restarted worker group resumes
from the newest complete one (`train.resume=auto`). So a Ray run and a `deepspeed` run of one config write
the same run directory and the same MLflow run contents.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ardiff_scale.config import Config
from ardiff_scale.errors import ArdiffError, ConfigError
from ardiff_scale.jobs.raytrain import (
    check_shared_storage,
    cluster_gpus,
    connect,
    enter_worker,
    scaling_config,
    worker_nodes,
)
from ardiff_scale.logs import setup_logging
from ardiff_scale.pipelines.pretrain import run_pretraining

log = logging.getLogger("ardiff.jobs")


def _pretrain_worker(cfg: dict[str, Any]) -> None:
    enter_worker(cfg["threads"])
    setup_logging(replace=True)
    run_pretraining(cfg["config"])


@dataclass
class RayRun:
    """What `pretrain_on_ray` returns: where the run went and how long it took."""

    output_dir: str
    workers: int
    gpus_per_worker: float
    seconds: float


_PATH_FIELDS = (("data", "train"), ("data", "valid"), ("data", "tokenizer"), ("train", "output_dir"),
                ("train", "staging_dir"), ("train", "resume"), ("ray", "storage_path"))


def absolute_paths(config: Config) -> Config:
    """The config with its local relative paths made absolute: workers start in directories of Ray's
    choosing, on other machines; a path means what it meant where the command was typed."""
    sections = {}
    for section, name in _PATH_FIELDS:
        value = getattr(getattr(config, section), name)
        if value and "://" not in value and value not in ("auto", "never") and not Path(value).is_absolute():
            sections.setdefault(section, {})[name] = str(Path(value).resolve())
    return replace(config, **{s: replace(getattr(config, s), **fields) for s, fields in sections.items()})


def pretrain_on_ray(config: Config) -> RayRun:
    """Run `run_pretraining(config)` in `config.ray.workers` Ray Train workers and wait for the end.

    A failure of any worker restarts the whole group (up to `ray.max_failures` times), which resumes from the
    newest complete checkpoint. Raises ArdiffError when the run fails for good.
    """
    import ray
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    config = absolute_paths(config)
    rc = config.ray
    if config.train.resume == "never":
        raise ConfigError("train.resume=never cannot run on Ray: a restarted worker group must resume from the "
                          "last checkpoint. Use train.resume=auto (the default) with a new train.output_dir")
    connect(rc.address)
    try:
        # Asked for explicitly, so asked for even when no GPU is up now: an autoscaler may add GPU nodes.
        gpus = float(rc.gpus_per_worker)
        if gpus > 0 and cluster_gpus() == 0:
            log.warning("ray.gpus_per_worker=%g but the cluster has no GPU now: the workers wait until an "
                        "autoscaler adds GPU nodes (ray.gpus_per_worker=0 trains on CPU)", gpus)
        nodes = worker_nodes()
        if len(nodes) > 1:
            check_shared_storage(config.train.output_dir, "train.output_dir")
        storage = rc.storage_path or _join(config.train.output_dir, "ray")
        threads = config.train.threads or max(1, int(rc.cpus_per_worker))
        trainer = TorchTrainer(
            _pretrain_worker, train_loop_config={"config": config, "threads": threads},
            scaling_config=scaling_config(rc.workers, rc.cpus_per_worker, gpus),
            run_config=RunConfig(name=f"pretrain-{Path(config.train.output_dir).name}", storage_path=storage,
                                 failure_config=FailureConfig(max_failures=rc.max_failures)))
        log.info("pretraining on Ray: %d worker(s) x (%g CPU, %g GPU) on %d node(s); run directory %s",
                 rc.workers, rc.cpus_per_worker, gpus, len(nodes), config.train.output_dir)
        started = time.perf_counter()
        try:
            trainer.fit()
        except Exception as err:  # Ray wraps the workers' errors; the first line names the cause
            raise ArdiffError(f"pretraining on Ray failed after {rc.max_failures} restart(s) at most: "
                              f"{str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__}. "
                              f"The workers' logs are above; the run directory is {config.train.output_dir}"
                              ) from err
        seconds = time.perf_counter() - started
    finally:
        ray.shutdown()
    log.info("pretraining on Ray finished in %.1f s: %s", seconds, config.train.output_dir)
    return RayRun(config.train.output_dir, rc.workers, gpus, seconds)


def _join(location: str, name: str) -> str:
    return f"{location.rstrip('/')}/{name}" if "://" in location else str(Path(location).resolve() / name)
