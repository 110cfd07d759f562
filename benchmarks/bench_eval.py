"""Evaluation throughput (sources/s) before and after batching sources into one sampler call, side by side.

`ardiff_scale.evaluation.evaluate.predict` on the first `--sources` test sources of a task (default
concept2text: source 32, target 40 tokens) at M = `--steps`, for each k in `--candidates` and each
`--batch-sources` (1 = before, one source per sampler call), with an untrained model of `--preset` (default
commongen, its vocabulary cut to a bpe tokenizer of `--vocab-size` pieces trained on the task's training
texts). The figure is predict's wall-clock (model load, sampling, MBR), after one small warm-up call per k;
every batched row is checked to give the same candidates as one source at a time.

    .venv/bin/python benchmarks/bench_eval.py            # about 4 minutes on one core -> results/eval.json
    .venv/bin/python benchmarks/bench_eval.py --quick    # tiny preset, seconds -> results/eval-quick.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from bench_model import machine_info, table

from ardiff_scale.config import load_config, load_task
from ardiff_scale.data.tokenizer import TokenizerOptions, train_tokenizer
from ardiff_scale.evaluation.evaluate import predict, resolve_device
from ardiff_scale.export import save_model_dir
from ardiff_scale.model import build_model, count_parameters

log = logging.getLogger("bench_eval")

QUICK = dict(preset="tiny", vocab_size=1000, sources=8, steps=4, candidates="1,3", batch_sources="1,4",
             out="benchmarks/results/eval-quick.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="concept2text", help="task name or YAML (default: concept2text)")
    parser.add_argument("--preset", default="commongen", help="model preset (default: commongen)")
    parser.add_argument("--vocab-size", type=int, default=8000, help="tokenizer and model vocabulary (default: 8000)")
    parser.add_argument("--sources", type=int, default=32, help="test sources per row (default: 32)")
    parser.add_argument("--steps", type=int, default=20, help="sampler steps M (default: 20)")
    parser.add_argument("--candidates", default="1,10", help="comma-separated k (default: 1,10)")
    parser.add_argument("--batch-sources", default="1,16,32",
                        help="comma-separated sources per sampler call; 1 is the baseline (default: 1,16,32)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default: 1; on 2 shared cores a second thread mostly spins "
                             "against the other processes and made batch 1 ten times slower)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--out", default="benchmarks/results/eval.json",
                        help="JSON results (default: benchmarks/results/eval.json; eval-quick.json with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, 8 sources, M = 4: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        # As defaults, so that flags given explicitly still win.
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    args.candidates = [int(k) for k in args.candidates.split(",")]
    args.batch_sources = sorted({int(b) for b in args.batch_sources.split(",")} | {1})
    return args


def untrained_model_dir(root: Path, task_name: str, preset: str, vocab_size: int) -> tuple[Path, int]:
    """A `preset` model with random weights and a bpe tokenizer trained on the task's training texts."""
    task = load_task(task_name)
    texts = [text for pair in task.pairs("train") for text in (pair.src, *pair.refs)]
    tokenizer = train_tokenizer(texts, TokenizerOptions(vocab_size=vocab_size, model_type="bpe"))
    config = load_config(None, [f"model.preset={preset}", f"model.vocab_size={tokenizer.vocab_size}",
                                f"data.source_len={task.lengths.source}", f"data.target_len={task.lengths.target}"])
    torch.manual_seed(0)
    model = build_model(config.model)
    save_model_dir(str(root), model, config, tokenizer)
    return root, count_parameters(model)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    task = load_task(args.task)
    with tempfile.TemporaryDirectory(prefix="bench_eval-") as tmp:
        log.info("tokenizer (%d pieces) and an untrained %s model", args.vocab_size, args.preset)
        model_dir, parameters = untrained_model_dir(Path(tmp) / "model", args.task, args.preset, args.vocab_size)
        sources = sum(1 for _ in itertools.islice(task.pairs("test"), args.sources))
        results = []
        for k in args.candidates:
            predict(args.task, str(model_dir), limit=2, steps=args.steps, candidates=k, batch_sources=1,
                    device=device)  # warm-up: kernel plans, the task's files in the page cache
            baseline = None
            for batch_sources in args.batch_sources:
                log.info("k = %d, batch_sources = %d", k, batch_sources)
                started = time.perf_counter()
                records = predict(args.task, str(model_dir), limit=sources, steps=args.steps, candidates=k,
                                  batch_sources=batch_sources, device=device)
                seconds = time.perf_counter() - started
                candidates = [r["candidates"] for r in records]
                baseline = baseline or {"seconds": seconds, "candidates": candidates}
                results.append({"k": k, "steps": args.steps, "batch_sources": batch_sources, "sources": sources,
                                "seconds": round(seconds, 3), "sources_per_second": round(sources / seconds, 3),
                                "speedup": round(baseline["seconds"] / seconds, 2),
                                "same_candidates": candidates == baseline["candidates"]})
    rows = [[f"M={r['steps']}, k={r['k']}", r["batch_sources"], r["seconds"], r["sources_per_second"], r["speedup"],
             "yes" if r["same_candidates"] else "NO"] for r in results]
    machine = machine_info()
    print(f"\n{task.name} ({task.lengths.source}/{task.lengths.target} tokens), {args.preset} untrained, "
          f"vocab {args.vocab_size}, {parameters / 1e6:.1f}M parameters; {device}, {machine['cpu_model']}, "
          f"threads={args.threads}, torch {torch.__version__}\n")
    print(table(["decoding", "sources/call", "seconds", "sources/s", "speed-up", "same candidates"], rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"machine": machine, "device": device, "task": task.name,
                                          "lengths": [task.lengths.source, task.lengths.target],
                                          "preset": args.preset, "vocab_size": args.vocab_size,
                                          "parameters": parameters, "results": results}, indent=2))
    print(f"results -> {args.out}")


if __name__ == "__main__":
    main()
