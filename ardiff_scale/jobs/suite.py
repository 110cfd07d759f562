"""`ardiff suite run`: per task, a fine-tune (Ray Train workers with DeepSpeed inside) then its evaluation
(Ray tasks over parts of the test set), tasks concurrently as far as the cluster's CPUs allow.

A failed fine-tune worker is restarted by Ray Train (FailureConfig) and the job continues from its last
complete checkpoint (`train.resume=auto` in the task's run directory, on storage every worker sees).
MLflow: a parent run for the suite, a child run per task and stage; results table (markdown + JSON) and a
bar chart on the parent; each task's model registered as a pyfunc whose `predict` generates text.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from collections.abc import Sequence

log = logging.getLogger("ardiff.jobs")


def _finetune_worker(cfg: dict) -> None:
    """Runs in each Ray Train worker: Ray has set up torch.distributed; DeepSpeed joins it."""
    import ray.train

    from ardiff_scale.cli import setup_logging
    from ardiff_scale.train.finetune import finetune

    context = ray.train.get_context()
    os.environ.update(RANK=str(context.get_world_rank()), LOCAL_RANK=str(context.get_local_rank()),
                      WORLD_SIZE=str(context.get_world_size()), OMP_NUM_THREADS=str(cfg["threads"]))
    setup_logging()
    finetune(cfg["task"], cfg["init"], cfg["output"], [*cfg["overrides"], "train.resume=auto",
                                                      f"train.threads={cfg['threads']}"])


def _eval_part(task: str, model_dir: str, index: int, parts: int, limit: int | None, seed: int) -> list[dict]:
    from ardiff_scale.evaluation.evaluate import predict
    return predict(task, model_dir, "test", limit, (index, parts), seed=seed)


def _run_task(task_name: str, init: str, root: str, overrides: list[str], limit: int | None, max_failures: int,
              tracking_uri: str, experiment: str, parent_run_id: str, seed: int) -> dict:
    """One task's pipeline, as a Ray task of its own so that tasks run side by side."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from ardiff_scale.evaluation.evaluate import score, write_results
    from ardiff_scale.evaluation.tasks import load_task
    from ardiff_scale.export import load_model_dir
    from ardiff_scale.tracking.registry import log_eval_run
    from ardiff_scale.train.finetune import task_shards

    task = load_task(task_name)
    out = Path(root) / task.name
    _, _, tokenizer = load_model_dir(init)
    for split in ("train", "valid"):  # once, here, not by every worker at the same time
        task_shards(task, split, tokenizer, out / "shards" / split, samples_per_shard=1000)
    tracking = [f"tracking.tracking_uri={tracking_uri}", f"tracking.experiment={experiment}",
                f"tracking.parent_run_id={parent_run_id}", f"tracking.run_name={task.name}-finetune"]
    cfg = {"task": task_name, "init": init, "output": str(out), "overrides": [*tracking, *overrides],
           "threads": task.resources.cpus_per_worker}
    started = time.perf_counter()
    trainer = TorchTrainer(
        _finetune_worker, train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=task.resources.workers,
                                     resources_per_worker={"CPU": task.resources.cpus_per_worker}),
        run_config=RunConfig(name=f"finetune-{task.name}", storage_path=str(Path(root).resolve() / "ray"),
                             failure_config=FailureConfig(max_failures=max_failures)))
    trainer.fit()
    finetune_seconds = time.perf_counter() - started
    model_dir = str(out / "model")
    started = time.perf_counter()
    parts = task.resources.workers
    eval_remote = ray.remote(num_cpus=task.resources.cpus_per_worker)(_eval_part)
    records = [r for part in ray.get([eval_remote.remote(task_name, model_dir, i, parts, limit, seed)
                                      for i in range(parts)]) for r in part]
    metrics = score(task_name, records)
    eval_seconds = time.perf_counter() - started
    info = {"task": task.name, "model": model_dir, "examples": len(records), "parts": parts,
            "finetune_seconds": round(finetune_seconds, 2), "eval_seconds": round(eval_seconds, 2),
            "sources_per_second": round(len(records) / max(eval_seconds, 1e-9), 3)}
    write_results(out / "eval", records, metrics, info)
    info["registered"] = log_eval_run(tracking_uri, experiment, parent_run_id, task.name, metrics, info,
                                      out / "eval", model_dir)
    return {"metrics": metrics, **info}


def run_suite(tasks: Sequence[str], init: str, address: str | None, output: str, overrides: Sequence[str] = (),
              limit: int | None = None, max_failures: int = 2, tracking_uri: str = "", seed: int = 0) -> dict:
    import ray

    from ardiff_scale.evaluation.tasks import load_task
    from ardiff_scale.tracking.registry import SuiteRun

    specs = [load_task(t) for t in tasks]  # every task validated before anything runs
    root = Path(output).resolve()
    root.mkdir(parents=True, exist_ok=True)
    from ardiff_scale.tracking.mlflow_tracker import resolve_tracking_uri
    tracking_uri = resolve_tracking_uri(tracking_uri, root)
    experiment = f"ardiff-suite-{root.name}"
    suite_run = SuiteRun(tracking_uri, experiment, [s.name for s in specs], init)
    started = time.perf_counter()
    loopback = address is None or address.split("://")[-1].startswith(("127.", "localhost"))
    # A loopback head: this driver must register on 127.0.0.1 too, or Ray picks the machine's public address.
    ray.init(address=address, log_to_driver=True, _node_ip_address="127.0.0.1" if loopback else None,
             runtime_env={"env_vars": {"DS_ACCELERATOR": os.environ.get("DS_ACCELERATOR", "cpu"),
                                       "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2"}})
    connected = time.perf_counter() - started
    run_task = ray.remote(num_cpus=0, max_retries=0)(_run_task)
    try:
        futures = [run_task.remote(s.name if not s.path else s.path, init, str(root), list(overrides), limit,
                                   max_failures, tracking_uri, experiment, suite_run.run_id, seed) for s in specs]
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
