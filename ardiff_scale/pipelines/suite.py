"""`ardiff suite run`: per task, a fine-tune (Ray Train workers with DeepSpeed inside) then its evaluation
(Ray tasks over parts of the test set), tasks concurrently as far as the cluster's CPUs and GPUs allow.

A task's `resources.gpus_per_worker` reserves GPUs for its fine-tune workers and evaluation parts when the
cluster has GPUs (`--gpus auto`); on a CPU-only cluster the same task runs on CPU with gloo. The suite's
`--output` must be on storage every node sees: it is checked before anything runs.

A failed fine-tune worker is restarted by Ray Train (FailureConfig) and the job continues from its last
complete checkpoint (`train.resume=auto` in the task's run directory, on storage every worker sees).
MLflow: a parent run for the suite, a child run per task and stage; results table (markdown + JSON) and a
bar chart on the parent; each task's model registered as a pyfunc whose `predict` generates text.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ardiff_scale.config import load_task, refuse_owned
from ardiff_scale.errors import ConfigError
from ardiff_scale.evaluation.evaluate import predict, score, write_results
from ardiff_scale.export import load_model_dir
from ardiff_scale.jobs.raytrain import (
    check_gpu_policy,
    check_shared_storage,
    cluster_gpus,
    connect,
    enter_worker,
    gpus_to_request,
    scaling_config,
    task_options,
    worker_nodes,
)
from ardiff_scale.logs import setup_logging
from ardiff_scale.pipelines.finetune import finetune, task_shards
from ardiff_scale.tasks.spec import TaskResources
from ardiff_scale.tracking.mlflow_tracker import resolve_tracking_uri
from ardiff_scale.tracking.registry import SuiteRun, log_eval_run

log = logging.getLogger("ardiff.jobs")

# Fine-tune fields the suite sets for every task, which its overrides must therefore leave alone.
SUITE_OWNED = {"train.resume": "the suite sets itself (auto, so that a restarted worker group continues from its "
                               "newest checkpoint); leave it out",
               "train.threads": "the suite sets itself (from the task's resources.cpus_per_worker); leave it out"}


@dataclass
class SuiteOptions:
    """What `ardiff suite run` fine-tunes and evaluates, and on which cluster."""

    tasks: Sequence[str]  # task names or YAML paths
    init: str  # the pretrained model directory every task fine-tunes from
    address: str | None = None  # Ray address; None: RAY_ADDRESS, else a new local Ray
    output: str = "runs/suite"  # the suite directory, on a filesystem every node mounts
    overrides: Sequence[str] = ()  # command-line section.field=value strings for every task's fine-tune
    limit: int | None = None  # evaluate only the first N test examples per task; None: all
    max_failures: int = 2  # fine-tune worker restarts allowed
    tracking_uri: str = ""  # "": MLFLOW_TRACKING_URI, else a SQLite store in the suite directory (one node)
    seed: int = 0  # sampling seed
    # "auto" gives tasks the GPUs they ask for when the cluster has GPUs, "always" even when none is up yet
    # (an autoscaler adds them), "never" runs everything on CPU.
    gpus: str = "auto"


def _finetune_worker(cfg: dict) -> None:
    """Runs in each Ray Train worker: Ray has set up torch.distributed; DeepSpeed joins it."""
    enter_worker(cfg["threads"])
    setup_logging(replace=True)
    finetune(cfg["task"], cfg["init"], cfg["output"], cfg["overrides"], sections=cfg["sections"])


def _eval_part(task: str, model_dir: str, index: int, parts: int, limit: int | None, seed: int) -> list[dict]:
    """One evaluation task: on the GPU Ray gave it when it asked for one (predict picks CUDA when visible)."""
    return predict(task, model_dir, "test", limit, (index, parts), seed=seed)


def finetune_scaling(resources: TaskResources, gpus_per_worker: float):
    """The fine-tune's Ray Train ScalingConfig: the task's workers and CPUs, and its GPUs when requested."""
    return scaling_config(resources.workers, resources.cpus_per_worker, gpus_per_worker)


def eval_options(resources: TaskResources, gpus_per_worker: float) -> dict[str, float]:
    """`ray.remote` options of each evaluation part: the task's CPUs, and its GPUs when requested."""
    return task_options(resources.cpus_per_worker, gpus_per_worker)


def _run_task(task_name: str, root: str, options: SuiteOptions, tracking: dict[str, Any], cluster_gpus: float
              ) -> dict:
    """One task's pipeline, as a Ray task of its own so that tasks run side by side. tracking: the suite's
    `tracking_uri`, `experiment` and `parent_run_id`."""
    import ray
    from ray.train import FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer


    task = load_task(task_name)
    gpus = gpus_to_request(task.resources.gpus_per_worker, cluster_gpus, options.gpus)
    out = Path(root) / task.name
    _, _, tokenizer = load_model_dir(options.init)
    for split in ("train", "valid"):  # once, here, not by every worker at the same time
        task_shards(task, split, tokenizer, out / "shards" / split, samples_per_shard=1000)
    threads = task.resources.cpus_per_worker
    sections = {"tracking": {**tracking, "run_name": f"{task.name}-finetune"},
                "train": {"resume": "auto", "threads": threads}}
    cfg = {"task": task_name, "init": options.init, "output": str(out), "overrides": list(options.overrides),
           "sections": sections, "threads": threads}
    started = time.perf_counter()
    trainer = TorchTrainer(
        _finetune_worker, train_loop_config=cfg,
        scaling_config=finetune_scaling(task.resources, gpus),
        run_config=RunConfig(name=f"finetune-{task.name}", storage_path=str(Path(root).resolve() / "ray"),
                             failure_config=FailureConfig(max_failures=options.max_failures)))
    trainer.fit()
    finetune_seconds = time.perf_counter() - started
    model_dir = str(out / "model")
    started = time.perf_counter()
    parts = task.resources.workers
    eval_remote = ray.remote(**eval_options(task.resources, gpus))(_eval_part)
    records = [r for part in ray.get([eval_remote.remote(task_name, model_dir, i, parts, options.limit, options.seed)
                                      for i in range(parts)]) for r in part]
    metrics = score(task_name, records)
    eval_seconds = time.perf_counter() - started
    info = {"task": task.name, "model": model_dir, "examples": len(records), "parts": parts,
            "gpus_per_worker": gpus,
            "finetune_seconds": round(finetune_seconds, 2), "eval_seconds": round(eval_seconds, 2),
            "sources_per_second": round(len(records) / max(eval_seconds, 1e-9), 3)}
    write_results(out / "eval", records, metrics, info)
    info["registered"] = log_eval_run(tracking["tracking_uri"], tracking["experiment"], tracking["parent_run_id"],
                                      task.name, metrics, info, out / "eval", model_dir)
    return {"metrics": metrics, **info}


def run_suite(options: SuiteOptions) -> dict:
    """Every task's fine-tune and evaluation on the Ray cluster at `options.address`; the summary of results."""
    import ray

    specs = [load_task(t) for t in options.tasks]  # every task validated before anything runs
    refuse_owned(options.overrides, SUITE_OWNED, "an override of the suite")
    check_gpu_policy(options.gpus)
    output = options.output
    if "://" in output:
        # Task shards, fine-tuned models and evaluation read their files by path.
        raise ConfigError(f"--output {output}: a suite writes to a filesystem path every node mounts (NFS, "
                          "Lustre, EFS); object storage is for pretraining's train.output_dir")
    root = Path(output).resolve()
    started = time.perf_counter()
    connect(options.address)
    try:
        nodes = worker_nodes()
        # Shards, checkpoints, models and results go under `root` from whichever node a task lands on.
        check_shared_storage(str(root), "the suite's --output")
        tracking_uri = resolve_tracking_uri(options.tracking_uri, root, nodes=len(nodes))
        available_gpus = cluster_gpus()
        if options.gpus == "auto" and not available_gpus and any(s.resources.gpus_per_worker for s in specs):
            log.info("the cluster has no GPU: tasks run on CPU (--gpus always waits for GPU nodes instead)")
        experiment = f"ardiff-suite-{root.name}"
        suite_run = SuiteRun(tracking_uri, experiment, [s.name for s in specs], options.init)
        tracking = {"tracking_uri": tracking_uri, "experiment": experiment, "parent_run_id": suite_run.run_id}
        connected = time.perf_counter() - started
        run_task = ray.remote(num_cpus=0, max_retries=0)(_run_task)
        try:
            futures = [run_task.remote(s.name if not s.path else s.path, str(root), options, tracking, available_gpus)
                       for s in specs]
            results = ray.get(futures)
        except Exception:
            suite_run.finish([], time.perf_counter() - started, connected, root, status="FAILED")
            raise
    finally:
        ray.shutdown()
    total = time.perf_counter() - started
    summary = suite_run.finish(results, total, connected, root)
    log.info("suite finished in %.1f s: %s", total, root / "results.md")
    return summary
