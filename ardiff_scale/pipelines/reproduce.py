"""`ardiff reproduce`: the paper's claims at small scale, end to end, from one command.

1. a sentencepiece tokenizer over the pretraining corpus and the tasks' training pairs;
2. AR-Diffusion pretrained by span denoising (one checkpoint that every system starts from);
3. per task, the same fine-tuning budget for each system: AR-Diffusion, uniform-timestep diffusion (all
   weights from the checkpoint) and the autoregressive baseline (the checkpoint's encoder; its decoder has
   another shape and starts fresh);
4. the decode sweep on the first test sources: quality against decode steps M and candidates k (MBR,
   mean-of-k and oracle scores apart), beside the baseline's greedy and beam search, with wall-clock time;
5. the report (ardiff_scale/pipelines/report.py): results.md, results.json and plots, logged to MLflow.

Trained models are reused when their run directory already holds them and an unfinished training resumes
from its newest checkpoint, so an interrupted run continues where it stopped; `--fresh` starts over.
"""

from __future__ import annotations

import gzip
import itertools
import json
import logging
import os
import platform
import shutil
import statistics
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ardiff_scale.config import load_config, load_task, merge_sections
from ardiff_scale.data.objectives import collate, seq2seq_example
from ardiff_scale.data.shards import build_shards
from ardiff_scale.data.tokenizer import TOKENIZER_FILES, Tokenizer, TokenizerOptions, train_tokenizer
from ardiff_scale.decoding import decode
from ardiff_scale.diffusion import make_schedule
from ardiff_scale.errors import DataError
from ardiff_scale.evaluation.evaluate import primary_key, score_candidates
from ardiff_scale.export import load_model_dir
from ardiff_scale.model import count_parameters
from ardiff_scale.pipelines.finetune import finetune as finetune_task
from ardiff_scale.pipelines.plan import SYSTEM_CHANGES, Plan, load_plan
from ardiff_scale.pipelines.pretrain import run_pretraining
from ardiff_scale.pipelines.report import write_report
from ardiff_scale.tasks.spec import TaskSpec, locate_data
from ardiff_scale.tracking.mlflow_tracker import resolve_tracking_uri
from ardiff_scale.tracking.registry import ReportRun

log = logging.getLogger("ardiff.reproduce")


def pretrain_corpus() -> Path:
    """The shared data's pretraining documents, located as the task files locate theirs."""
    return Path(locate_data("${ARDIFF_DATA:-../shared/data}/pretrain", "jsonl", "ardiff reproduce")) / "train.jsonl.gz"


def _documents(limit: int) -> list[str]:
    path = pretrain_corpus()
    if not path.exists():
        raise DataError(f"pretraining corpus not found: {path} (set ARDIFF_DATA to the folder holding "
                        "pretrain/train.jsonl.gz)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in itertools.islice(f, limit)]


# --- stages 1-3: tokenizer, pretraining, fine-tuning ------------------------------------------------------

def build_tokenizer(plan: Plan, work: Path) -> Path:
    path = work / "tokenizer" / "tok.model"
    if path.exists():
        log.info("tokenizer: reusing %s", path)
        return path
    texts = _documents(plan.tokenizer_documents)
    for name in plan.tasks:
        pairs = itertools.islice(load_task(name).pairs("train"), plan.tokenizer_pairs)
        texts += [text for pair in pairs for text in (pair.src, *pair.refs)]
    log.info("tokenizer: %d-piece BPE over %d texts", plan.vocab_size, len(texts))
    tokenizer = train_tokenizer(texts, TokenizerOptions(vocab_size=plan.vocab_size, model_type="bpe"))
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return path


def _done(run: Path) -> bool:
    """A finished run: its exported EMA model directory is whole (weights first, tokenizer last)."""
    model_dir = run / "model-ema"
    return (all((model_dir / name).exists() for name in ("model.safetensors", "config.yaml"))
            and any((model_dir / name).exists() for name in TOKENIZER_FILES))


def _run_sections(tracking_uri: str, parent: str, name: str) -> dict[str, dict[str, Any]]:
    """What every training run sets: MLflow nesting under the report run, and resuming."""
    # resume=auto: a training the last call left unfinished continues from its newest checkpoint.
    return {"tracking": {"tracking_uri": tracking_uri, "experiment": "ardiff-reproduce", "run_name": name,
                         "parent_run_id": parent},
            "train": {"resume": "auto"}}


def pretrain(plan: Plan, work: Path, tokenizer_path: Path, run_sections: dict[str, dict[str, Any]]) -> Path:
    run = work / "pretrain"
    if _done(run):
        log.info("pretraining: reusing %s", run)
        return run / "model-ema"
    tokenizer = Tokenizer.load(str(tokenizer_path))
    shards = work / "shards" / "pretrain"
    if not (shards / "manifest.json").exists():
        build_shards(_documents(plan.pretrain_documents), "pretrain", str(shards), tokenizer,
                     samples_per_shard=1000, max_tokens=plan.pretrain_source_len - 2, min_tokens=16)
    # The plan's model.* and train.* lines are the user's overrides, as on a command line: they come last.
    changes = merge_sections({"model": {"vocab_size": plan.vocab_size},
                       "data": {"train": str(shards), "tokenizer": str(tokenizer_path),
                                "source_len": plan.pretrain_source_len, "target_len": plan.pretrain_target_len},
                       "train": {"max_steps": plan.pretrain_steps, "output_dir": str(run), "seed": plan.seed + 101}},
                      run_sections)
    config = load_config("tiny-cpu", [*plan.model, *plan.train], **changes)
    log.info("pretraining AR-Diffusion for %d steps -> %s", plan.pretrain_steps, run)
    run_pretraining(config)
    return run / "model-ema"


def finetune(plan: Plan, work: Path, task: str, system: str, init: Path, run_sections: dict[str, dict[str, Any]]
             ) -> Path:
    run = work / "finetune" / f"{task}-{system}"
    if _done(run):
        log.info("fine-tuning %s on %s: reusing %s", system, task, run)
        return run / "model-ema"
    lengths = plan.task_lengths().get(task)
    changes = merge_sections({"train": {"max_steps": plan.finetune_steps, "seed": plan.seed + 202}},
                      SYSTEM_CHANGES[system], run_sections,
                      {"data": {"source_len": lengths[0], "target_len": lengths[1]}} if lengths else {})
    log.info("fine-tuning %s on %s for %d steps -> %s", system, task, plan.finetune_steps, run)
    finetune_task(task, str(init), str(run), plan.train, shards_root=str(work / "shards" / task), sections=changes)
    return run / "model-ema"


def training_summary(run: Path) -> dict:
    """Steps, wall-clock seconds and the last logged losses of a finished run (from its metrics.jsonl)."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "loss" in r]  # training steps, not validation rows
    tail = rows[-min(20, len(rows)):]
    seconds, window_start = 0.0, rows[0]["step"] - 1
    for r in rows:  # the end of each logging window carries its mean step time
        window_start = min(window_start, r["step"] - 1)  # a resumed run logs steps after its checkpoint again
        if "time/step_s" in r:
            seconds += r["time/step_s"] * (r["step"] - window_start)
            window_start = r["step"]
    return {"steps": int(rows[-1]["step"]), "seconds": round(seconds, 1),
            "final_loss": round(statistics.mean(r["loss"] for r in tail), 4),
            "first_loss": round(rows[0]["loss"], 4)}


# --- stage 4: the decode sweep -----------------------------------------------------------------------------

class Decoder:
    """A trained model with its tokenizer, decoding test sources in batches of about `rows` decoder rows."""

    def __init__(self, model_dir: Path, lengths: tuple[int, int], rows: int):
        self.model, self.config, self.tokenizer = load_model_dir(str(model_dir))
        self.lengths, self.rows = lengths, rows
        self.schedule = make_schedule(self.config.diffusion.schedule, self.config.diffusion.num_steps)
        self.parameters = count_parameters(self.model)

    def batch(self, sources: list[str]) -> dict[str, torch.Tensor]:
        source_len, target_len = self.lengths
        specials = self.tokenizer.specials
        return collate([seq2seq_example(self.tokenizer.encode(s), [], source_len, target_len, specials)
                        for s in sources], target_len, specials=specials)

    def run(self, sources: list[str], steps: int, k: int, seed: int, per_call: int | None = None
            ) -> tuple[list[list[str]], float]:
        """k candidates per source (one, the best beam, for the autoregressive model) and the seconds spent."""
        per_call = per_call or max(1, self.rows // k)
        texts: list[list[str]] = []
        seconds = 0.0
        for call, start in enumerate(range(0, len(sources), per_call)):
            started = time.perf_counter()
            batch = self.batch(sources[start:start + per_call])
            out = decode(self.model, self.config, batch["src_ids"], batch["src_mask"], self.lengths[1], steps, k,
                         generator=torch.Generator().manual_seed(seed * 1_000_003 + call), schedule=self.schedule,
                         specials=self.tokenizer.specials)
            texts += [[" ".join(self.tokenizer.decode(row.tolist()).split()) for row in rows] for rows in out.tokens]
            seconds += time.perf_counter() - started
        return texts, seconds


def sweep(plan: Plan, task: TaskSpec, models: dict[str, Path], lengths: tuple[int, int]) -> tuple[list[dict], dict]:
    pairs = list(itertools.islice(task.pairs("test"), plan.test_sources))
    sources, refs = [p.src for p in pairs], [p.refs for p in pairs]
    rows, info = [], {}
    for system, model_dir in models.items():
        decoder = Decoder(model_dir, lengths, plan.rows_per_batch)
        info[system] = {"parameters": decoder.parameters}
        if system == "autoregressive":
            points = [(None, beam) for beam in plan.beams]
        else:
            # Cheap points first; M beyond the model's N + T (or T for uniform) cannot be visited.
            limit = decoder.config.diffusion.num_steps + (0 if system == "uniform-diffusion" else lengths[1])
            points = sorted(((m, k) for m, k in plan.points() if m <= limit), key=lambda p: p[0] * p[1])
        for steps, k in tqdm(points, desc=f"decode {task.name} {system}", unit="point", dynamic_ncols=True):
            n = plan.costly_sources if (steps or 0) * k > plan.costly_row_steps else len(sources)
            texts, seconds = decoder.run(sources[:n], steps or 0, k, plan.seed)
            row = {"task": task.name, "system": system, "steps": steps, "k": k,
                   "decoding": ("greedy" if k == 1 else f"beam {k}") if steps is None else "sampler",
                   "sources": n, "seconds_per_source": seconds / n,
                   **score_candidates(task, texts, refs[:n], sources[:n])}
            picks = row.pop("picks")
            row["examples"] = [{"source": sources[i][:300], "reference": refs[i][0], "prediction": texts[i][picks[i]]}
                               for i in range(min(3, n))]
            rows.append(row)
            log.info("%s %s M=%s k=%d: %s %.2f (%.3f s/source)", task.name, system, steps, k, primary_key(task),
                     row["mbr"][primary_key(task)], row["seconds_per_source"])
        info[system]["latency"] = latency(plan, decoder, system, sources)
    return rows, info


def latency(plan: Plan, decoder: Decoder, system: str, sources: list[str]) -> list[dict]:
    """Wall-clock of decoding one source at a time (no batching across sources), the figure a user of
    `ardiff generate` sees: at M = 20 with k = 1 and k = 50 for diffusion, greedy and beam for the baseline."""
    points = [(None, b) for b in plan.beams] if system == "autoregressive" else [(20, 1), (20, 50)]
    chosen = sources[:plan.latency_sources]
    out = []
    for steps, k in points:
        decoder.run(chosen[:1], steps or 0, k, plan.seed, per_call=1)  # warm-up: kernel plans, caches
        times = []
        for i, source in enumerate(chosen):
            times.append(decoder.run([source], steps or 0, k, plan.seed + i, per_call=1)[1])
        out.append({"steps": steps, "k": k, "sources": len(chosen), "mean_seconds": statistics.mean(times),
                    "median_seconds": statistics.median(times)})
    return out


# --- the whole thing ---------------------------------------------------------------------------------------

def reproduce(plan_name: str, output: str, work: str, tracking_uri: str = "", fresh: bool = False,
              command: str = "") -> dict:
    plan = load_plan(plan_name)
    work_dir, out = Path(work), Path(output)
    if fresh and work_dir.exists():
        shutil.rmtree(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(tracking_uri, work_dir)
    started = time.time()
    report_run = ReportRun(tracking_uri, Path(plan.path).stem, asdict(plan))
    tokenizer_path = build_tokenizer(plan, work_dir)
    pretrained = pretrain(plan, work_dir, tokenizer_path, _run_sections(tracking_uri, report_run.run_id, "pretrain"))
    training = {"pretrain": training_summary(pretrained.parent)}
    rows, models_info = [], {}
    for name in plan.tasks:
        task = load_task(name)
        models = {}
        for system in plan.systems:
            models[system] = finetune(plan, work_dir, name, system, pretrained,
                                      _run_sections(tracking_uri, report_run.run_id, f"{name}-{system}"))
            training[f"{name}/{system}"] = training_summary(models[system].parent)
        lengths = plan.task_lengths().get(name, (task.lengths.source, task.lengths.target))
        task_rows, info = sweep(plan, task, models, lengths)
        rows += task_rows
        models_info[name] = info
    results = {"plan": asdict(plan), "command": command, "tracking_uri": tracking_uri,
               "primary": {name: primary_key(load_task(name)) for name in plan.tasks},
               "training": training, "models": models_info, "rows": rows,
               "minutes": round((time.time() - started) / 60, 1), "machine": _machine()}
    write_report(results, out, report_run)
    return results


def _machine() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads()}
