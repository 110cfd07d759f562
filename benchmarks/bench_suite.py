"""Wall-clock of `ardiff suite run` (two tiny tasks on a local 2-CPU Ray head), split into scheduling overhead,
fine-tuning and evaluation; then evaluation throughput (sources/s) with 1 and 2 workers.

Setup (not part of the figures): a bpe tokenizer and pretraining shards from the first documents of the demo
corpus, and a tiny init model pretrained with `ardiff pretrain`, all in a fresh temporary folder.

    .venv/bin/python benchmarks/bench_suite.py            # 30 fine-tune steps, 20 test examples
    .venv/bin/python benchmarks/bench_suite.py --quick    # 10 steps, 6 examples -> results/suite-quick.json
    .venv/bin/python benchmarks/bench_suite.py --before b362671 --out benchmarks/results/suite-gpu-issue.json
                                                          # that commit's code first, then this tree's
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from itertools import islice
from pathlib import Path

from bench_model import machine_info, table

from ardiff_scale.data.corpus import read_documents
from ardiff_scale.data.shards import build_shards
from ardiff_scale.data.tokenizer import TokenizerOptions, train_tokenizer
from ardiff_scale.jobs.cluster import local_ray_env, start_local_head

log = logging.getLogger("bench_suite")

REPO = Path(__file__).resolve().parents[1]
ARDIFF = Path(sys.executable).parent / "ardiff"
QUICK = {"finetune_steps": 10, "limit": 6, "out": "benchmarks/results/suite-quick.json"}
# The tiny model of tests/jobs/test_suite.py.
TINY = ["model.vocab_size=1000", "model.hidden_size=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.embed_dim=16", "model.time_channels=16", "data.source_len=96",
        "data.target_len=32", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
        "tracking.enabled=false", "train.ema_rate=0.9"]
# (name, data folder under --tasks-dir, source length, metrics); the first is the one timed for throughput.
TASKS = [("c2t-bench", "concept2text", 32, "rouge, concept_coverage"), ("summ-bench", "summ-debian", 96, "rouge")]
OVERHEAD = ("scheduling overhead = suite wall-clock - max over tasks of (fine-tune + eval): the part of the "
            "command not covered by the two concurrent task pipelines (interpreter start and imports, MLflow "
            "setup, Ray connect, task shard building, model registration, results writing, and any waiting)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", default=str(REPO / "data" / "demo" / "train.jsonl.gz"),
                        help="pretraining documents (default: data/demo/train.jsonl.gz)")
    parser.add_argument("--documents", type=int, default=60, help="first N documents for setup (default: 60)")
    parser.add_argument("--tasks-dir", default="/work/shared/data/tasks",
                        help="task data folders (default: /work/shared/data/tasks)")
    parser.add_argument("--pretrain-steps", type=int, default=20, help="init model pretraining steps (default: 20)")
    parser.add_argument("--finetune-steps", type=int, default=30, help="fine-tune steps per task (default: 30)")
    parser.add_argument("--limit", type=int, default=20, help="test examples evaluated per task (default: 20)")
    parser.add_argument("--decode-steps", type=int, default=20, help="sampler steps M (default: 20)")
    parser.add_argument("--candidates", type=int, default=3, help="candidates k per source (default: 3)")
    parser.add_argument("--workers", type=int, default=1,
                        help="Ray workers per task in the suite (default: 1, so that the two tasks fit side by "
                             "side on the head's 2 CPUs and neither waits for the other)")
    parser.add_argument("--workdir", default=None,
                        help="where a fresh folder for the setup and runs is made (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep that folder instead of removing it")
    parser.add_argument("--out", default="benchmarks/results/suite.json",
                        help="JSON results (default: benchmarks/results/suite.json; suite-quick.json with --quick)")
    parser.add_argument("--before", metavar="GIT_REF",
                        help="also run the suite with the code of GIT_REF (a temporary git worktree), first, with "
                             "the same init model and tasks, and print both side by side")
    parser.add_argument("--quick", action="store_true", help="10 fine-tune steps, 6 examples: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        # As defaults, so that flags given explicitly still win.
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    return args


def ardiff(*args: str, env: dict | None = None, log_to: Path | None = None, cwd: Path | None = None):
    """`ardiff ARGS` with one thread per process, as the tests run it. With `log_to`: started, not waited for,
    its output going to that file (a full pipe nobody reads cannot stall it). cwd: where it runs (a Ray driver's
    directory is put on its workers' sys.path, ahead of PYTHONPATH)."""
    command = [str(ARDIFF), *args]
    env = {**(env or os.environ), "OMP_NUM_THREADS": "1"}
    if log_to:
        with open(log_to, "wb") as f:
            return subprocess.Popen(command, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    out = subprocess.run(command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                         cwd=cwd)
    if out.returncode:
        sys.exit(f"`ardiff {' '.join(args[:2])}` failed ({out.returncode}):\n{out.stdout[-4000:]}")
    return out


def task_yaml(path: Path, name: str, data: Path, source: int, metrics: str, args: argparse.Namespace) -> Path:
    path.write_text(f"""name: {name}
data: {{location: {data}, format: jsonl}}
lengths: {{source: {source}, target: 24}}
finetune:
  max_steps: {args.finetune_steps}
  overrides: [train.micro_batch_size=4, train.warmup_steps=1, train.save_every=10, train.log_every=1]
decode: {{steps: {args.decode_steps}, candidates: {args.candidates}}}
metrics: [{metrics}]
resources: {{workers: {args.workers}, cpus_per_worker: 1}}
""")
    return path


def setup(args: argparse.Namespace, workdir: Path, code: Path | None = None) -> tuple[Path, dict]:
    """Tokenizer, shards and a pretrained tiny model; returns its model folder and the seconds of each step.
    code: the package that pretrains it (the older one of a comparison: newer code reads older model folders,
    not always the reverse)."""
    seconds, start = {}, time.perf_counter()
    documents = list(islice(read_documents(args.corpus), args.documents))
    tokenizer = train_tokenizer(documents, TokenizerOptions(vocab_size=1000, model_type="bpe"))
    tokenizer.save(str(workdir / "tok.model"))
    seconds["tokenizer"], start = time.perf_counter() - start, time.perf_counter()
    build_shards(documents, "pretrain", str(workdir / "shards"), tokenizer, samples_per_shard=50, max_tokens=128,
                 min_tokens=16, processes=2)
    seconds["shards"], start = time.perf_counter() - start, time.perf_counter()
    log.info("pretraining the init model, %d steps", args.pretrain_steps)
    ardiff("pretrain", f"data.train={workdir / 'shards'}", f"data.tokenizer={workdir / 'tok.model'}",
           f"train.output_dir={workdir / 'pretrain'}", f"train.max_steps={args.pretrain_steps}", *TINY,
           env={**os.environ, **code_env(code)}, cwd=code)
    seconds["pretrain"] = time.perf_counter() - start
    return workdir / "pretrain" / "model", seconds


def code_env(code: Path | None) -> dict[str, str]:
    """The environment that makes `ardiff` (and the Ray workers of a head started with it) run the package in
    `code` instead of the installed one: PYTHONPATH comes before the editable install's finder."""
    return {"PYTHONPATH": str(code)} if code else {}


def bench_suite(tasks: list[Path], init: Path, args: argparse.Namespace, out: Path, code: Path | None = None) -> dict:
    log.info("starting a local Ray head (2 CPUs)%s", f" running {code}" if code else "")
    start = time.perf_counter()
    head = start_local_head(num_cpus=2, env=code_env(code))
    head_seconds = time.perf_counter() - start
    try:
        log.info("ardiff suite run: %s", ", ".join(t.stem for t in tasks))
        start = time.perf_counter()
        ardiff("suite", "run", "--tasks", ",".join(map(str, tasks)), "--init", str(init), "--address",
               head.address, "--output", str(out), "--limit", str(args.limit),
               env={**local_ray_env(), **code_env(code)}, cwd=code)
        wall = time.perf_counter() - start
    finally:
        head.stop()
    summary = json.loads((out / "results.json").read_text())
    rows = [{key: t[key] for key in ("task", "examples", "parts", "finetune_seconds", "eval_seconds",
                                     "sources_per_second")} for t in summary["tasks"]]
    # Scheduling overhead (see OVERHEAD): the tasks run side by side, each fine-tune then eval, so the longer
    # pipeline is the time they cover and the rest of the wall-clock is overhead. With --workers above 1 the
    # tasks no longer fit on 2 CPUs at once; the waiting one's wait then lands in its fine-tune seconds.
    pipelines = max(r["finetune_seconds"] + r["eval_seconds"] for r in rows)
    return {"head_start_seconds": head_seconds, "wall_seconds": wall, "driver_seconds": summary["seconds"],
            "connect_seconds": summary["connect_seconds"], "pipelines_seconds": pipelines,
            "scheduling_overhead_seconds": wall - pipelines, "overhead_definition": OVERHEAD, "tasks": rows}


def bench_eval(task: Path, model: Path, args: argparse.Namespace, workdir: Path, code: Path | None = None
               ) -> list[dict]:
    """The same examples as 1 process (`--part 0/1`) and as 2 concurrent processes (`--part 0/2`, `1/2`),
    each `ardiff evaluate` with one thread. Wall is process start to the last exit; predict is the slowest
    part's own `seconds` (model load and sampling, without interpreter start, imports and scoring)."""
    rows = []
    for workers in (1, 2):
        log.info("evaluate %s with %d worker(s)", task.stem, workers)
        outs = [workdir / f"eval-{workers}{'-' + code.name if code else ''}" / f"part{i}" for i in range(workers)]
        outs[0].parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        procs = [ardiff("evaluate", "--task", str(task), "--checkpoint", str(model), "--limit", str(args.limit),
                        "--part", f"{i}/{workers}", "--output", str(o), log_to=o.with_suffix(".log"),
                        env={**os.environ, **code_env(code)}, cwd=code)
                 for i, o in enumerate(outs)]
        statuses = [p.wait() for p in procs]
        wall = time.perf_counter() - start
        for status, o in zip(statuses, outs):
            if status:
                sys.exit(f"`ardiff evaluate` failed ({status}):\n{o.with_suffix('.log').read_text()[-4000:]}")
        parts = [json.loads((o / "metrics.json").read_text()) for o in outs]
        examples, predict = sum(p["examples"] for p in parts), max(p["seconds"] for p in parts)
        rows.append({"workers": workers, "examples": examples, "wall_seconds": wall, "predict_seconds": predict,
                     "sources_per_second": examples / predict, "sources_per_second_wall": examples / wall})
    return rows


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_suite-", dir=args.workdir))
    runs: dict[str, dict] = {}
    try:
        versions: list[tuple[str, Path | None]] = [("this tree", None)]
        if args.before:
            before = workdir / "before"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before],
                           check=True, capture_output=True)
            versions = [(f"before ({args.before})", before), ("after (this tree)", None)]
        try:
            init, setup_seconds = setup(args, workdir, versions[0][1])
            tasks = [task_yaml(workdir / f"{name}.yaml", name, Path(args.tasks_dir) / data, source, metrics, args)
                     for name, data, source, metrics in TASKS]
            for name, code in versions:
                out = workdir / f"suite-{code.name if code else 'tree'}"
                suite = bench_suite(tasks, init, args, out, code)
                evaluation = bench_eval(tasks[0], out / TASKS[0][0] / "model", args, workdir, code)
                runs[name] = {"suite": suite, "eval_throughput": evaluation}
        finally:
            if args.before:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(workdir / "before")],
                               check=False, capture_output=True)
    finally:
        if args.keep:
            log.info("kept the setup and runs in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    machine = machine_info()
    print(f"\nsuite: {len(TASKS)} tasks, {args.finetune_steps} fine-tune steps, {args.limit} examples, "
          f"M={args.decode_steps}, k={args.candidates}, {args.workers} worker(s) per task; local head, 2 CPUs; "
          f"{machine['cpu_model']}")
    for name, run in runs.items():
        suite, evaluation = run["suite"], run["eval_throughput"]
        print(f"\n== {name}")
        print(table(["task", "fine-tune s", "eval s", "fine-tune + eval s", "eval sources/s"],
                    [[r["task"], r["finetune_seconds"], r["eval_seconds"], r["finetune_seconds"] + r["eval_seconds"],
                      r["sources_per_second"]] for r in suite["tasks"]]))
        print()
        print(table(["suite", "s"], [["wall-clock of `ardiff suite run`", suite["wall_seconds"]],
                                     ["  task pipelines (max fine-tune + eval)", suite["pipelines_seconds"]],
                                     ["  scheduling overhead (the rest)", suite["scheduling_overhead_seconds"]],
                                     ["  of which Ray connect", suite["connect_seconds"]],
                                     ["driver seconds (results.json)", suite["driver_seconds"]],
                                     ["head start (not in the wall-clock)", suite["head_start_seconds"]]]))
        print(f"\nevaluation throughput, {TASKS[0][0]}'s fine-tuned model, {args.limit} examples: `ardiff evaluate` "
              f"processes run side by side (no Ray), one thread each; predict s: the slowest part's own seconds")
        print(table(["workers", "examples", "wall s", "predict s", "sources/s", "sources/s wall"],
                    [[r["workers"], r["examples"], r["wall_seconds"], r["predict_seconds"], r["sources_per_second"],
                      r["sources_per_second_wall"]] for r in evaluation]))
    if len(runs) == 2:
        (old_name, old), (new_name, new) = runs.items()
        print("\nside by side")
        rows = [["suite wall-clock s", old["suite"]["wall_seconds"], new["suite"]["wall_seconds"]]]
        for a, b in zip(old["suite"]["tasks"], new["suite"]["tasks"]):
            rows += [[f"{a['task']} eval s (in the suite)", a["eval_seconds"], b["eval_seconds"]],
                     [f"{a['task']} fine-tune s", a["finetune_seconds"], b["finetune_seconds"]]]
        rows += [[f"evaluate sources/s, {a['workers']} process(es)", a["sources_per_second"], b["sources_per_second"]]
                 for a, b in zip(old["eval_throughput"], new["eval_throughput"])]
        print(table(["figure", old_name, new_name], rows))
    print(f"{OVERHEAD}\n")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    only = next(iter(runs.values()))
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "setup_seconds": setup_seconds,
                               **(only if len(runs) == 1 else {"runs": runs}),
                               "eval_method": "concurrent `ardiff evaluate --part I/N` subprocesses, "
                                              "OMP_NUM_THREADS=1"}, indent=2) + "\n")
    log.info("wrote %s", out)


if __name__ == "__main__":
    main()
