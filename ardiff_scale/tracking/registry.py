"""Parent runs and registered models: a suite's parent run with its results, an evaluation child run per task,
each task's model in the Model Registry as a pyfunc whose `predict` generates text (so `mlflow models serve`
can serve it), and a reproduction's parent run (`ReportRun`) that its training runs nest under."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import mlflow.pyfunc
from mlflow.tracking import MlflowClient

from ardiff_scale.evaluation.evaluate import generate_batch, resolve_device
from ardiff_scale.evaluation.mbr import mbr_select
from ardiff_scale.export import load_model_dir
from ardiff_scale.tracking.mlflow_tracker import experiment_id


class ARDiffusionPyfunc(mlflow.pyfunc.PythonModel):
    """predict(DataFrame with a "source" column, or a list of strings) -> generated texts, one per source,
    with the skipping sampler (M and k from the model's config; k > 1 picks by MBR). On the GPU when the
    serving host has one; BATCH sources per sampler call, each with its own noise seeded by its position in
    the input, so the outputs are those of one source at a time."""

    BATCH = 16

    def load_context(self, context) -> None:
        self.model, self.config, self.tokenizer = load_model_dir(context.artifacts["model_dir"],
                                                                 device=resolve_device(None))

    def predict(self, context, model_input, params=None):
        sources = [str(s) for s in (model_input["source"] if hasattr(model_input, "columns") else model_input)]
        diffusion = self.config.diffusion
        candidates = []
        for start in range(0, len(sources), self.BATCH):
            part = sources[start:start + self.BATCH]
            candidates += generate_batch(self.model, self.config, self.tokenizer, part, diffusion.decode_steps,
                                         diffusion.num_candidates, seeds=range(start, start + len(part)))
        return [texts[choice] for texts, choice in zip(candidates, mbr_select(candidates))]


class SuiteRun:
    """The suite's parent run."""

    def __init__(self, tracking_uri: str, experiment: str, tasks: list[str], init: str):
        self.client = MlflowClient(tracking_uri)
        self.tracking_uri = tracking_uri
        self.experiment_id = experiment_id(self.client, experiment, tracking_uri)
        run = self.client.create_run(self.experiment_id, run_name="suite", tags={"ardiff.stage": "suite"})
        self.run_id = run.info.run_id
        self.client.log_param(self.run_id, "tasks", ",".join(tasks))
        self.client.log_param(self.run_id, "init", init)

    def finish(self, results: list[dict], seconds: float, connect_seconds: float, out: Path,
               status: str = "FINISHED") -> dict:
        """Writes results.json, results.md and results.png to `out` and logs them on the parent run."""
        summary = {"tasks": results, "seconds": round(seconds, 2), "connect_seconds": round(connect_seconds, 2),
                   "parent_run_id": self.run_id}
        if results:
            (out / "results.json").write_text(json.dumps(summary, indent=2))
            (out / "results.md").write_text(results_table(results))
            bar_chart(results, out / "results.png")
            for name in ("results.json", "results.md", "results.png"):
                self.client.log_artifact(self.run_id, str(out / name))
            self.client.log_metric(self.run_id, "suite_seconds", seconds)
        self.client.set_terminated(self.run_id, status)
        return summary


def results_table(results: list[dict]) -> str:
    keys = sorted({k for r in results for k in r["metrics"]})
    head = ["task", *keys, "examples", "fine-tune s", "eval s", "sources/s"]
    rows = [[r["task"], *[f"{r['metrics'].get(k, float('nan')):.2f}" for k in keys], str(r["examples"]),
             f"{r['finetune_seconds']:.1f}", f"{r['eval_seconds']:.1f}", f"{r['sources_per_second']:.2f}"]
            for r in results]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def bar_chart(results: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({k for r in results for k in r["metrics"]})
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(keys) * len(results)), 4))
    width = 0.8 / max(1, len(results))
    for i, result in enumerate(results):
        ax.bar([k + i * width for k in range(len(keys))], [result["metrics"].get(k, 0.0) for k in keys], width,
               label=result["task"])
    ax.set_xticks([k + width * (len(results) - 1) / 2 for k in range(len(keys))], keys)
    ax.set_ylabel("score (%)")
    ax.set_title("suite results")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_eval_run(tracking_uri: str, experiment: str, parent_run_id: str, task: str, metrics: dict, info: dict,
                 results_dir: Path, model_dir: str) -> str:
    """The task's evaluation child run: metrics, predictions and the registered pyfunc model. Returns the
    registered model's name."""
    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri)
    run = client.create_run(experiment_id(client, experiment, tracking_uri), run_name=f"{task}-evaluate",
                            tags={"mlflow.parentRunId": parent_run_id, "ardiff.stage": "evaluate", "ardiff.task": task})
    run_id = run.info.run_id
    for key, value in {**metrics, "examples": info["examples"], "sources_per_second": info["sources_per_second"],
                       "finetune_seconds": info["finetune_seconds"], "eval_seconds": info["eval_seconds"]}.items():
        client.log_metric(run_id, key, float(value))
    for name in ("predictions.jsonl", "metrics.json"):
        client.log_artifact(run_id, str(results_dir / name), "eval")
    name = f"ardiff-{task}"
    with mlflow.start_run(run_id=run_id):
        mlflow.pyfunc.log_model(name="model", python_model=ARDiffusionPyfunc(), artifacts={"model_dir": model_dir},
                                registered_model_name=name)
    client.set_terminated(run_id, "FINISHED")
    return name


class ReportRun:
    """The MLflow parent run of one reproduction: training runs nest under it, the report lands on it."""

    def __init__(self, tracking_uri: str, plan_name: str, plan: dict):
        self.client = MlflowClient(tracking_uri)
        run = self.client.create_run(experiment_id(self.client, "ardiff-reproduce", tracking_uri),
                                     run_name=f"reproduce-{plan_name}",
                                     tags={"ardiff.stage": "reproduce"})
        self.run_id = run.info.run_id
        for key, value in plan.items():
            self.client.log_param(self.run_id, key, ",".join(map(str, value)) if isinstance(value, list) else value)

    def finish(self, results: dict, files: list[Path]) -> None:
        for row in results["rows"]:
            tag = row["decoding"].replace(" ", "") if row["steps"] is None else f"k{row['k']}"
            for key, value in row["mbr"].items():
                self.client.log_metric(self.run_id, f"{row['task']}.{row['system']}.{tag}.{key}", value,
                                       step=row["steps"] or 0)
            self.client.log_metric(self.run_id, f"{row['task']}.{row['system']}.{tag}.seconds_per_source",
                                   row["seconds_per_source"], step=row["steps"] or 0)
        for path in files:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")
