"""`ardiff evaluate`: k candidates per source with the skipping sampler, MBR selection, metrics.

Sources are decoded `batch_sources` at a time on the model's device, but each source's noise is drawn from its
own generator, seeded by (seed, example index), so predictions do not depend on batching or on how the test set
is split over workers: worker i of n (`part=(i, n)`) takes examples i, i+n, i+2n, ... and the merged predictions
equal one worker's.
"""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ardiff_scale.config import Config, load_task
from ardiff_scale.data.objectives import collate, seq2seq_example
from ardiff_scale.data.tokenizer import Tokenizer
from ardiff_scale.decoding import decode
from ardiff_scale.diffusion import NoiseSchedule, SamplerNoise, make_schedule, sample
from ardiff_scale.errors import ConfigError
from ardiff_scale.evaluation.mbr import mbr_select
from ardiff_scale.evaluation.metrics import (
    compute_metrics,
    metric_keys,
    sentence_scores,
)
from ardiff_scale.export import load_model_dir
from ardiff_scale.io import write_bytes
from ardiff_scale.model import AutoregressiveModel
from ardiff_scale.tasks.spec import TaskSpec

log = logging.getLogger("ardiff.evaluation")


def example_seed(seed: int, index: int) -> int:
    """The noise seed of example `index`: the same whichever batch or worker decodes it."""
    return seed * 1_000_003 + index


# Sampler rows (sources x candidates) per call when batch_sources is left to `auto_batch_sources`. Measured
# (benchmarks/bench_eval.py, one CPU thread): 16 sources of k = 1 per call decode 2.4x faster than one at a time,
# but 16 sources of k = 10 are 7% slower than one source's 10 rows: a CPU is busy with about 16 rows. A GPU
# wants hundreds of rows to fill its cores.
ROWS_PER_CALL = {"cpu": 16, "cuda": 1024}
MAX_BATCH_SOURCES = 64


def auto_batch_sources(candidates: int, device: str) -> int:
    """Sources per sampler call for k = `candidates` on `device`: about ROWS_PER_CALL rows, 1 to 64 sources."""
    rows = ROWS_PER_CALL.get(device.split(":")[0], ROWS_PER_CALL["cpu"])
    return max(1, min(MAX_BATCH_SOURCES, rows // max(candidates, 1)))


def resolve_device(device: str | None) -> str:
    """`device`, or when None the GPU if there is one, else the CPU."""
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def sampler_noise(seeds: Sequence[int], candidates: int, steps: int, length: int, dim: int) -> SamplerNoise:
    """The noise the sampler would draw for each source alone from `torch.Generator().manual_seed(seed)`.

    Per source, in the sampler's order: x at the top of the schedule (k, length, dim), then one (k, length, dim)
    draw per step. Stacked candidate-minor as `SamplerNoise` wants them: start (sources * k, length, dim) and
    steps (M, sources * k, length, dim), float32 on the CPU, sources * k * (M + 1) * length * dim floats in all
    (16 sources, k = 50, M = 20, length 54, dim 64: 0.23 GB). The sampler moves one step at a time to its device.
    """
    rows = len(seeds) * candidates
    start = torch.empty(rows, length, dim)
    per_step = torch.empty(steps, rows, length, dim)
    for b, seed in enumerate(seeds):
        generator = torch.Generator().manual_seed(seed)
        mine = slice(b * candidates, (b + 1) * candidates)
        start[mine] = torch.randn(candidates, length, dim, generator=generator)
        for m in range(steps):
            per_step[m, mine] = torch.randn(candidates, length, dim, generator=generator)
    return SamplerNoise(start=start, steps=per_step)


def generate_batch(model, config: Config, tokenizer: Tokenizer, sources: Sequence[str], steps: int, candidates: int,
                   seeds: Sequence[int], lengths: tuple[int, int] | None = None,
                   schedule: NoiseSchedule | None = None, autocast_dtype: torch.dtype | None = None
                   ) -> list[list[str]]:
    """`candidates` texts for each of `sources`, in one sampler call on the model's device.

    Source b's noise comes from `seeds[b]` alone (`sampler_noise`), so its texts are those it gets decoded on its
    own, whatever the other sources of the call. Sources are padded to the source length, so every call of a task
    has one shape. lengths: (source, target) tokens; default the model's data.source_len and data.target_len.
    Memory: the noise is len(sources) * k * (M + 1) * length * embed_dim float32 on the CPU.
    An autoregressive model takes no noise and gives one text per source, its best beam of width `candidates`.
    """
    if len(seeds) != len(sources):
        raise ValueError(f"one seed per source (got {len(seeds)} seeds for {len(sources)} sources)")
    source_len, target_len = lengths or (config.data.source_len, config.data.target_len)
    specials = tokenizer.specials
    batch = collate([seq2seq_example(tokenizer.encode(s), [], source_len, target_len, specials) for s in sources],
                    target_len, source_len=source_len, specials=specials)
    device = next(model.parameters()).device
    src_ids, src_mask = batch["src_ids"].to(device), batch["src_mask"].to(device)
    if isinstance(model, AutoregressiveModel):
        tokens = decode(model, config, src_ids, src_mask, target_len, steps, candidates,
                        autocast_dtype=autocast_dtype, specials=specials).tokens
    else:
        noise = sampler_noise(seeds, candidates, steps, target_len, model.embedding_weight().shape[1])
        tokens = sample(model, src_ids, src_mask, target_len,
                        schedule or make_schedule(config.diffusion.schedule, config.diffusion.num_steps),
                        decode_steps=steps, num_candidates=candidates, form=config.diffusion.timestep_form,
                        clamp=config.diffusion.clamp, autocast_dtype=autocast_dtype, noise=noise).tokens
    return [[" ".join(tokenizer.decode(row.tolist()).split()) for row in rows] for rows in tokens.cpu()]


def generate_candidates(model, config: Config, tokenizer: Tokenizer, source: str, steps: int, candidates: int,
                        seed: int, lengths: tuple[int, int] | None = None, schedule: NoiseSchedule | None = None,
                        autocast_dtype: torch.dtype | None = None) -> list[str]:
    """`candidates` texts for one source, with noise seeded by `seed` alone: `generate_batch` of one source."""
    return generate_batch(model, config, tokenizer, [source], steps, candidates, [seed], lengths, schedule,
                          autocast_dtype)[0]


def predict(task_name: str, model_dir: str, split: str = "test", limit: int | None = None,
            part: tuple[int, int] = (0, 1), steps: int | None = None, candidates: int | None = None,
            seed: int = 0, batch_sources: int | None = None, device: str | None = None) -> list[dict]:
    """Predictions for this worker's part of the split: one record per source, in example order.

    batch_sources: sources per sampler call (1: one at a time; None: `auto_batch_sources` for k and the device);
    the candidates do not depend on it. The noise of one call takes batch_sources * k * (M + 1) * target_len *
    embed_dim float32 of CPU memory.
    device: where the model runs; None: "cuda" if there is a GPU, else "cpu".
    """
    if batch_sources is not None and batch_sources < 1:
        raise ConfigError(f"batch_sources (--batch-sources) must be >= 1 (got {batch_sources})")
    task = load_task(task_name)
    index, parts = part
    if not 0 <= index < parts:
        raise ConfigError(f"part must be i/n with 0 <= i < n (got {index}/{parts})")
    device = resolve_device(device)
    model, config, tokenizer = load_model_dir(model_dir, device=device)
    if task.lengths.source > config.model.max_source_len or task.lengths.target > config.model.max_target_len:
        raise ConfigError(f"task {task.name} lengths {task.lengths.source}/{task.lengths.target} exceed the model's "
                          f"{config.model.max_source_len}/{config.model.max_target_len}")
    steps, k = steps or task.decode.steps, candidates or task.decode.candidates
    batch_sources = batch_sources or auto_batch_sources(k, device)
    schedule = make_schedule(config.diffusion.schedule, config.diffusion.num_steps)
    pairs = [p for i, p in enumerate(task.pairs(split)) if limit is None or i < limit]
    mine = [(i, p) for i, p in enumerate(pairs) if i % parts == index]
    records = []
    with tqdm(total=len(mine), desc=f"evaluate {task.name}", unit="source", dynamic_ncols=True) as progress:
        for start in range(0, len(mine), batch_sources):
            chunk = mine[start:start + batch_sources]
            texts = generate_batch(model, config, tokenizer, [pair.src for _, pair in chunk], steps, k,
                                   [example_seed(seed, i) for i, _ in chunk],
                                   lengths=(task.lengths.source, task.lengths.target), schedule=schedule)
            records += [{"index": i, "id": pair.id, "src": pair.src, "refs": pair.refs, "candidates": found}
                        for (i, pair), found in zip(chunk, texts)]
            progress.update(len(chunk))
    for record, choice in zip(records, mbr_select([r["candidates"] for r in records])):
        record["prediction"] = record["candidates"][choice]
    return records


def primary_key(task: TaskSpec) -> str:
    """The one number a task is compared on: ROUGE-L for summaries, else its first metric's first key."""
    keys = metric_keys(task.metrics[0])
    return "rougeL" if "rougeL" in keys else keys[0]


def score_candidates(task: TaskSpec, candidates: list[list[str]], refs: list[list[str]], sources: list[str]
                     ) -> dict:
    """Three scores of k candidates per source, kept apart (k = 1: the first only):

    - mbr: the MBR pick of each source (`picks`: their indices), what a user gets (no reference is looked at);
    - mean_of_k: the metric of candidate slot j over all sources, averaged over j (a random candidate);
    - oracle: each source's best candidate by the sentence-level primary metric against the reference, the
      best-of-k GENIE reported, which looks at the answer.
    """
    started = time.perf_counter()
    picks = mbr_select(candidates)
    mbr_seconds = time.perf_counter() - started
    out = {"mbr": compute_metrics(task.metrics, [c[i] for c, i in zip(candidates, picks)], refs, sources),
           "mbr_seconds_per_source": mbr_seconds / len(candidates), "picks": picks}
    k = min(len(c) for c in candidates)
    if k > 1:
        slots = [compute_metrics(task.metrics, [c[j] for c in candidates], refs, sources) for j in range(k)]
        out["mean_of_k"] = {key: statistics.mean(s[key] for s in slots) for key in slots[0]}
        key = primary_key(task)
        # One scoring call over every candidate of every source (one scorer, not one per source).
        flat = sentence_scores(key, [t for c in candidates for t in c], [r for c, r in zip(candidates, refs)
                                                                        for _ in c])
        best, start = [], 0
        for texts in candidates:
            scores = flat[start:start + len(texts)]
            best.append(texts[max(range(len(texts)), key=scores.__getitem__)])
            start += len(texts)
        out["oracle"] = compute_metrics(task.metrics, best, refs, sources)
    return out


def score(task_name: str, records: list[dict]) -> dict[str, float]:
    task = load_task(task_name)
    records = sorted(records, key=lambda r: r["index"])
    return compute_metrics(task.metrics, [r["prediction"] for r in records], [r["refs"] for r in records],
                           [r["src"] for r in records])


def write_results(output: Path, records: list[dict], metrics: dict, info: dict) -> None:
    records = sorted(records, key=lambda r: r["index"])
    write_bytes(str(output / "predictions.jsonl"),
                "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode())
    write_bytes(str(output / "metrics.json"), json.dumps({"metrics": metrics, **info}, indent=2).encode())


@dataclass
class EvaluateOptions:
    """What `ardiff evaluate` decodes and scores, and how."""

    task: str  # a task name from eval/tasks or a YAML path
    model_dir: str  # the model directory to evaluate
    output: str | None = None  # results directory; None: runs/eval-TASK
    split: str = "test"
    limit: int | None = None  # only the first N examples; None: all
    part: tuple[int, int] = (0, 1)  # (i, n): this worker takes examples i, i+n, i+2n, ...
    steps: int | None = None  # decoding steps M; None: the task's
    candidates: int | None = None  # candidates k; None: the task's
    seed: int = 0
    batch_sources: int | None = None  # sources per sampler call; None: `auto_batch_sources` for k and the device
    device: str | None = None  # None: "cuda" if there is a GPU, else "cpu"


def evaluate(options: EvaluateOptions) -> dict:
    """`predict`, then metrics, written to `options.output`; seconds and sources/s cover `predict` (model load,
    sampling and MBR)."""
    task = load_task(options.task)
    device = resolve_device(options.device)
    steps, candidates, part = options.steps, options.candidates, options.part
    batch_sources = options.batch_sources
    if batch_sources is None:  # resolved here too, for the record
        batch_sources = auto_batch_sources(candidates or task.decode.candidates, device)
    started = time.perf_counter()
    records = predict(options.task, options.model_dir, options.split, options.limit, part, steps, candidates,
                      options.seed, batch_sources, device)
    seconds = time.perf_counter() - started
    out = Path(options.output or f"runs/eval-{task.name}")
    info = {"task": task.name, "model": str(options.model_dir), "split": options.split, "examples": len(records),
            "part": list(part), "seconds": round(seconds, 3),
            "sources_per_second": round(len(records) / seconds, 3) if seconds > 0 else None,
            "steps": steps or task.decode.steps, "candidates": candidates or task.decode.candidates,
            "batch_sources": batch_sources, "device": device}
    metrics = score(options.task, records) if part[1] == 1 else {}
    if part[1] == 1 and len(records[0]["candidates"]) > 1:
        ordered = sorted(records, key=lambda r: r["index"])
        scored = score_candidates(task, [r["candidates"] for r in ordered], [r["refs"] for r in ordered],
                                  [r["src"] for r in ordered])
        info |= {"mean_of_k": scored["mean_of_k"], "oracle": scored["oracle"]}
    write_results(out, records, metrics, info)
    log.info("%s: %d sources in %.1f s, %.2f sources/s (%d per call on %s); %s -> %s", task.name, len(records),
             seconds, len(records) / max(seconds, 1e-9), batch_sources, device,
             ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) or "metrics after merging the parts", out)
    return {"metrics": metrics, **info}
