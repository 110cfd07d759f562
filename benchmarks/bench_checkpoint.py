"""Checkpoint size and save/load seconds of `ardiff pretrain` at 2 ranks, a baseline git ref beside the working
tree, in one run.

Each tree is a checkout of the package: the baseline is `git worktree add --detach /tmp/ardiff-baseline-REF REF`
(removed at the end), the working tree is this repository as it is now. For each tree and each ZeRO stage,
two launches of

    deepspeed --num_gpus 2 --master_addr 127.0.0.1 --master_port P --module ardiff_scale.cli pretrain \\
        --recipe xsum model.preset=xsum model.vocab_size=V train.micro_batch_size=1 data.source_len=64 \\
        data.target_len=16 train.deepspeed=zeroS tracking.enabled=false ...

run with the tree as working directory and first on PYTHONPATH (the tree's own `ardiff_scale`, checked once by
printing `ardiff_scale.__file__`), DS_ACCELERATOR=cpu, OMP_NUM_THREADS=1, inside `unshare -n` with only
loopback up where the machine allows it:

  1. train.max_steps=2 train.save_every=1: saves steps 1 and 2; step 2's directory is the one measured;
  2. train.resume=auto train.max_steps=3: loads step 2 (from the page cache: it was just written), trains one
     step, saves step 3.

Measured: bytes of the step-2 directory, total and by file kind (DeepSpeed model states, optimizer partitions,
ardiff per-rank state, EMA; an EMA kept inside the per-rank state files is counted as EMA, by loading them),
bytes per writing rank, the save and load seconds the run logs (`checkpoint DIR saved in X s`, `resumed from
DIR at step N ... in X s`; when a tree logs neither, save seconds come from watching the directory appear and
its COMPLETE marker follow, and the output says so), and each rank's peak RSS (VmHWM).

Tokenizer (bpe, the preset's vocabulary size, so the model has the preset's parameter count) and shards are
built once in a temporary folder from the shared pretraining corpus, by the first tree's package.

    .venv/bin/python benchmarks/bench_checkpoint.py                             # baseline vs working tree, ZeRO-2
    .venv/bin/python benchmarks/bench_checkpoint.py --trees baseline --stages 0,1,2,3
    .venv/bin/python benchmarks/bench_checkpoint.py --quick                     # tiny preset, a smoke check
    .venv/bin/python benchmarks/bench_checkpoint.py --precisions fp32           # what this CPU trains fast
    .venv/bin/python benchmarks/bench_checkpoint.py --work-overrides train.force_precision=true   # bf16 in the rewrite
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

from bench_model import machine_info, table
from bench_train import free_port, isolation

log = logging.getLogger("bench_checkpoint")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUICK = dict(preset="tiny", vocab_size=1000, documents=60, shard_documents=60,
             out="benchmarks/results/checkpoint-quick.json")
TREES = ("baseline", "work")
MB = 1e6

SAVED = re.compile(r"checkpoint\s+(?P<dir>\S+)\s+saved\s+in\s+(?P<seconds>[0-9.]+)\s*s\b")
RESUMED = re.compile(r"resumed\s+from\s+(?P<dir>\S+)\s+at\s+step\s+(?P<step>\d+).*?\bin\s+(?P<seconds>[0-9.]+)\s*s\b")
STEP_DIR = re.compile(r"step0*(\d+)$")
# File kinds, first match wins: an EMA file may be named anything that says ema.
KINDS = (("ema", re.compile(r"ema", re.I)), ("optimizer", re.compile(r"optim_states")),
         ("model_states", re.compile(r"model_states")), ("rank_state", re.compile(r"^ardiff-rank\d+")))
KIND_NAMES = ("model_states", "optimizer", "rank_state", "ema", "other")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", default="2c96d3d",
                        help="git ref of the baseline tree (default: 2c96d3d, the commit before the training rewrite)")
    parser.add_argument("--trees", default="baseline,work",
                        help="comma-separated trees to run: baseline (the --baseline ref), work (this working tree "
                             "as it is); e.g. --trees baseline while the working tree is mid-rewrite "
                             "(default: baseline,work)")
    parser.add_argument("--stages", default="2", help="comma-separated ZeRO stages, ds_configs/zeroS (default: 2)")
    parser.add_argument("--precisions", default="bf16",
                        help="comma-separated train.precision values, fp32 and/or bf16 (default: bf16, the xsum "
                             "recipe's)")
    parser.add_argument("--baseline-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra section.field=value overrides for the baseline tree's launches only")
    parser.add_argument("--work-overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra overrides for the working tree's launches only, for keys the baseline does not "
                             "know (e.g. train.force_precision=true: the rewrite refuses bf16 on a CPU without bf16 "
                             "matrix units unless told)")
    parser.add_argument("--recipe", default="xsum", help="recipe both launches start from (default: xsum)")
    parser.add_argument("--preset", default="xsum", help="model.preset (default: xsum)")
    parser.add_argument("--vocab-size", type=int, default=30522,
                        help="bpe tokenizer vocabulary, passed as model.vocab_size (default: 30522, the xsum "
                             "preset's, so the model keeps its 73.8M parameters)")
    parser.add_argument("--documents", type=int, default=1500,
                        help="first N corpus documents the tokenizer trains on (default: 1500)")
    parser.add_argument("--shard-documents", type=int, default=200,
                        help="first N corpus documents cut into shards (default: 200)")
    parser.add_argument("--input", default="/work/shared/data/pretrain/train.jsonl.gz",
                        help="pretraining corpus, jsonl(.gz) with a text field (default: the shared train file)")
    parser.add_argument("--micro-batch", type=int, default=1, help="train.micro_batch_size (default: 1)")
    parser.add_argument("--source-len", type=int, default=64, help="data.source_len (default: 64)")
    parser.add_argument("--target-len", type=int, default=16, help="data.target_len (default: 16)")
    parser.add_argument("--timeout", type=int, default=900, help="seconds one launch may take (default: 900)")
    parser.add_argument("--poll", type=float, default=0.1,
                        help="seconds between looks at the ranks' RSS and the checkpoint directory (default: 0.1)")
    parser.add_argument("--workdir", default=None,
                        help="where a fresh folder for data and run directories is made (default: system temp dir)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the data and run directories (checkpoints included: ~4 GB per xsum run) and "
                             "print where they are")
    parser.add_argument("--out", default="benchmarks/results/checkpoint.json",
                        help="JSON results (default: benchmarks/results/checkpoint.json; checkpoint-quick.json "
                             "with --quick)")
    parser.add_argument("--quick", action="store_true", help="tiny preset, vocab 1000, 60 documents: a smoke check")
    args = parser.parse_args(argv)
    if args.quick:
        # As defaults, so that flags given explicitly still win.
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    args.trees = [t.strip() for t in args.trees.split(",") if t.strip()]
    unknown = [t for t in args.trees if t not in TREES]
    if unknown or not args.trees:
        parser.error(f"--trees: unknown {', '.join(unknown) or '(none given)'} (valid: {', '.join(TREES)})")
    args.stages = [int(s) for s in args.stages.split(",")]
    args.precisions = [p.strip() for p in args.precisions.split(",")]
    if any(p not in ("fp32", "bf16") for p in args.precisions):
        parser.error(f"--precisions: fp32 and/or bf16 (got {','.join(args.precisions)})")
    return args


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout.strip()


def add_worktree(ref: str) -> Path:
    commit = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = Path(tempfile.gettempdir()) / f"ardiff-baseline-{re.sub(r'[^A-Za-z0-9._-]', '_', ref)}"
    if path.exists():  # left by an interrupted run
        remove_worktree(path)
    git("worktree", "add", "--detach", str(path), commit)
    return path


def remove_worktree(path: Path) -> None:
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)


def tree_env(root: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


PROBE = """
import json, sys
import ardiff_scale
info = {"package": ardiff_scale.__file__}
try:
    import torch
    from ardiff_scale.model import build_model, preset
    with torch.device("meta"):
        model = build_model(preset(sys.argv[1], vocab_size=int(sys.argv[2])))
    info["params"] = sum(p.numel() for p in model.parameters())
except Exception as err:  # the count is a convenience; the package path is the check
    info["params_error"] = repr(err)
print(json.dumps(info))
"""


def probe_tree(root: Path, args: argparse.Namespace) -> dict:
    """Which `ardiff_scale` a launch from `root` imports, and the model's parameter count there."""
    done = subprocess.run([sys.executable, "-c", PROBE, args.preset, str(args.vocab_size)], cwd=root,
                          env=tree_env(root), capture_output=True, text=True, timeout=300)
    if done.returncode:
        raise RuntimeError(f"importing ardiff_scale from {root} failed:\n{done.stderr[-3000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    if not Path(info["package"]).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"a launch from {root} imports {info['package']}, not that tree's package")
    return info


DATA = """
import gzip, json, sys, time
from itertools import islice
from pathlib import Path
from ardiff_scale.data.shards import build_shards
from ardiff_scale.data.tokenizer import TokenizerOptions, train_tokenizer

a = json.loads(sys.argv[1])
opener = gzip.open if a["input"].endswith(".gz") else open
with opener(a["input"], "rt", encoding="utf-8") as f:
    documents = [json.loads(line)["text"] for line in islice(f, a["documents"])]
started = time.perf_counter()
tokenizer = train_tokenizer(documents, TokenizerOptions(vocab_size=a["vocab_size"], model_type="bpe"))
Path(a["tokenizer"]).parent.mkdir(parents=True, exist_ok=True)
tokenizer.save(a["tokenizer"])
manifest = build_shards(documents[:a["shard_documents"]], "pretrain", a["shards"], tokenizer, samples_per_shard=50,
                        max_tokens=a["max_tokens"], min_tokens=16, processes=1)
print(json.dumps({"documents_tokenizer": len(documents), "documents_shards": len(documents[:a["shard_documents"]]),
                  "vocab_size": tokenizer.vocab_size, "shard_max_tokens": a["max_tokens"],
                  "totals": manifest["totals"], "seconds": time.perf_counter() - started}))
"""


def build_data(root: Path, args: argparse.Namespace, workdir: Path) -> dict:
    """Tokenizer and shards, built by the package of `root` in a subprocess (the same bytes for every tree)."""
    spec = {"input": args.input, "documents": args.documents, "shard_documents": args.shard_documents,
            "vocab_size": args.vocab_size, "tokenizer": str(workdir / "tokenizer" / "bench.model"),
            "shards": str(workdir / "shards"), "max_tokens": args.source_len + args.target_len + 48}
    done = subprocess.run([sys.executable, "-c", DATA, json.dumps(spec)], cwd=root, env=tree_env(root),
                          capture_output=True, text=True, timeout=1800)
    if done.returncode:
        raise RuntimeError(f"building the tokenizer and shards with {root} failed:\n{done.stderr[-3000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1]) | {"built_by": str(root)}
    return {"tokenizer": spec["tokenizer"], "shards": spec["shards"], "vocab_size": info["vocab_size"], "info": info}


class Watcher(threading.Thread):
    """Polls a launch: each rank's peak RSS (VmHWM of the processes started with --local_rank=N) and when each
    checkpoint directory first appeared and when its COMPLETE marker did (the save time when no log says it)."""

    def __init__(self, pid: int, checkpoints: Path, interval: float):
        super().__init__(daemon=True)
        self.root, self.checkpoints, self.interval = psutil.Process(pid), checkpoints, interval
        self.peak_rss: dict[int, int] = {}
        self.appeared: dict[str, float] = {}
        self.completed: dict[str, float] = {}
        self.preexisting: set[str] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self._look_at_ranks()
            self._look_at_checkpoints()
            self.stop.wait(self.interval)

    def _look_at_ranks(self) -> None:
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return
        for proc in children:
            try:
                cmdline = proc.cmdline()
                rank = next((int(a.split("=", 1)[1]) for a in cmdline if a.startswith("--local_rank=")), None)
                if rank is None or "deepspeed.launcher.launch" in cmdline:
                    continue
                status = Path(f"/proc/{proc.pid}/status").read_text()
            except (psutil.Error, OSError, ValueError):
                continue
            hwm = re.search(r"VmHWM:\s+(\d+)\s+kB", status)
            if hwm:
                self.peak_rss[rank] = max(self.peak_rss.get(rank, 0), int(hwm.group(1)) * 1024)

    def _look_at_checkpoints(self) -> None:
        now = time.time()
        try:
            entries = [d for d in self.checkpoints.iterdir() if d.is_dir()]
        except OSError:
            return
        for directory in entries:
            name = directory.name
            if name in self.preexisting:
                continue
            complete = (directory / "COMPLETE").exists()
            if name not in self.appeared and complete:
                self.preexisting.add(name)  # saved before this launch (or faster than one poll: not timed)
                continue
            self.appeared.setdefault(name, now)
            if name not in self.completed and complete:
                self.completed[name] = now

    def watched_saves(self) -> dict[str, float]:
        return {name: self.completed[name] - self.appeared[name] for name in self.completed}


def launch(root: Path, overrides: list[str], run_dir: Path, log_name: str, isolate: list[str],
           args: argparse.Namespace) -> dict:
    """One `deepspeed --num_gpus 2 --module ardiff_scale.cli pretrain` from `root`; returns its output and polls."""
    command = [*isolate, str(BIN / "deepspeed"), "--num_gpus", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "--module", "ardiff_scale.cli", "pretrain", "--recipe",
               args.recipe, *overrides]
    log_path = run_dir / log_name
    started = time.perf_counter()
    with open(log_path, "w") as out:
        # Its own session, so that a launch past --timeout is ended with its ranks (by this group id only).
        proc = subprocess.Popen(command, cwd=root, env=tree_env(root), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        watcher = Watcher(proc.pid, run_dir / "checkpoints", args.poll)
        watcher.start()
        try:
            code = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = proc.wait()
        finally:
            watcher.stop.set()
            watcher.join()
    text = log_path.read_text(errors="replace")
    return {"command": command, "returncode": code, "seconds": time.perf_counter() - started, "log": str(log_path),
            "output": text, "peak_rss": {str(k): v for k, v in sorted(watcher.peak_rss.items())},
            "watched_saves": watcher.watched_saves()}


def file_kind(name: str) -> str:
    return next((kind for kind, pattern in KINDS if pattern.search(name)), "other")


def writer_rank(name: str) -> int:
    """The rank that writes a file: zero_pp_rank_R_..., ardiff-rankNNNNN..., else rank 0 (mp_rank_00_model_states,
    COMPLETE)."""
    found = re.search(r"pp_rank_(\d+)", name) or re.search(r"rank(\d+)", name)
    return int(found.group(1)) if found else 0


def embedded_ema_bytes(path: Path) -> int:
    """Bytes of the tensors under an "ema" key of a per-rank state file (the baseline keeps its EMA there)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a file we cannot read simply has no embedded EMA to report
        return 0
    ema = state.get("ema") if isinstance(state, dict) else None
    if not isinstance(ema, dict):
        return 0
    return sum(t.numel() * t.element_size() for t in ema.values() if isinstance(t, torch.Tensor))


def measure_directory(directory: Path) -> dict:
    """Bytes by kind (total, and the largest single rank's share), bytes by writing rank, and the files."""
    files, by_kind, by_rank, per_rank_kind = [], {k: 0 for k in KIND_NAMES}, {}, {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name, size = path.name, path.stat().st_size
        kind, rank = file_kind(name), writer_rank(name)
        parts = {kind: size}
        if kind == "rank_state":
            ema = embedded_ema_bytes(path)
            if ema:
                parts = {"rank_state": size - ema, "ema": ema}
        files.append({"name": str(path.relative_to(directory)), "bytes": size, "kind": kind, "rank": rank,
                      "parts": parts})
        for part, nbytes in parts.items():
            by_kind[part] += nbytes
            per_rank_kind.setdefault(part, {}).setdefault(rank, 0)
            per_rank_kind[part][rank] += nbytes
        by_rank[rank] = by_rank.get(rank, 0) + size
    max_per_rank = {kind: max(ranks.values()) for kind, ranks in per_rank_kind.items()}
    return {"directory": str(directory), "bytes": sum(f["bytes"] for f in files), "by_kind": by_kind,
            "max_per_rank_by_kind": max_per_rank, "by_rank_and_kind": {k: {str(r): b for r, b in v.items()}
                                                                        for k, v in per_rank_kind.items()},
            "by_writer_rank": {str(r): b for r, b in sorted(by_rank.items())}, "files": files}


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Step directories under the run, oldest step first (tolerant of a layout that moved them)."""
    found = [d for d in run_dir.rglob("*") if d.is_dir() and STEP_DIR.search(d.name)]
    return sorted(found, key=lambda d: int(STEP_DIR.search(d.name).group(1)))


def save_seconds(first: dict, second: dict, poll: float) -> tuple[dict[str, float], str]:
    """Seconds per saved step, from the log lines, else from watching the directories (method says which)."""
    logged = {Path(m["dir"]).name: float(m["seconds"]) for run in (first, second)
              for m in SAVED.finditer(run["output"])}
    if logged:
        return logged, "log"
    watched = {**first["watched_saves"], **second["watched_saves"]}
    return watched, f"watched (directory appeared -> COMPLETE appeared, polled every {poll} s)"


def run_case(tree: str, root: Path, stage: int, precision: str, data: dict, workdir: Path, isolate: list[str],
             args: argparse.Namespace) -> dict:
    run_dir = workdir / f"{tree}-zero{stage}-{precision}"
    run_dir.mkdir(parents=True)
    common = [f"model.preset={args.preset}", f"model.vocab_size={data['vocab_size']}", f"data.train={data['shards']}",
              f"data.tokenizer={data['tokenizer']}", f"data.source_len={args.source_len}",
              f"data.target_len={args.target_len}", "data.num_workers=0", f"train.micro_batch_size={args.micro_batch}",
              "train.grad_accum=1", f"train.deepspeed=zero{stage}", f"train.precision={precision}",
              f"train.output_dir={run_dir}", "train.save_every=1", "train.log_every=1", "train.keep_checkpoints=3",
              "tracking.enabled=false", *(args.work_overrides if tree == "work" else args.baseline_overrides)]
    case = {"tree": tree, "root": str(root), "stage": stage, "precision": precision, "run_dir": str(run_dir)}
    log.info("%s, ZeRO-%d, %s: train 2 steps, saving each", tree, stage, precision)
    first = launch(root, [*common, "train.max_steps=2"], run_dir, "launch-1.log", isolate, args)
    case["launch_1"] = {k: v for k, v in first.items() if k != "output"}
    if first["returncode"]:
        case["error"] = f"launch 1 exited {first['returncode']}:\n{first['output'][-3000:]}"
        return case
    saved = checkpoint_dirs(run_dir)
    if not saved:
        case["error"] = f"launch 1 left no step directory under {run_dir}"
        return case
    case["checkpoint"] = measure_directory(saved[-1])
    log.info("%s, ZeRO-%d, %s: resume, 1 more step", tree, stage, precision)
    second = launch(root, [*common, "train.max_steps=3", "train.resume=auto"], run_dir, "launch-2.log", isolate, args)
    case["launch_2"] = {k: v for k, v in second.items() if k != "output"}
    if second["returncode"]:
        case["error"] = f"launch 2 (resume) exited {second['returncode']}:\n{second['output'][-3000:]}"
    case["save_seconds"], case["save_method"] = save_seconds(first, second, args.poll)
    resumed = list(RESUMED.finditer(second["output"]))
    if resumed:
        case["load_seconds"] = float(resumed[-1]["seconds"])
        case["resumed_step"] = int(resumed[-1]["step"])
        case["load_method"] = "log"
    else:
        case["load_seconds"] = None
        case["load_method"] = "no 'resumed from ... in X s' line in the log: not measured"
    case["peak_rss"] = {"first": first["peak_rss"], "second": second["peak_rss"]}
    return case


def fmt_saves(case: dict) -> str:
    seconds = case.get("save_seconds") or {}
    ordered = sorted(seconds.items(), key=lambda kv: int(STEP_DIR.search(kv[0]).group(1)) if STEP_DIR.search(kv[0])
                     else 0)
    return "/".join(f"{s:.1f}" for _, s in ordered) or "-"


def report(cases: list[dict], trees: dict, data: dict, isolate: list[str]) -> None:
    params = {t: info.get("params") for t, info in trees.items()}
    print(f"\n{len(cases)} case(s), 2 ranks, network isolated: {str(bool(isolate)).lower()}; data: "
          f"{data['info']['totals']['samples']} windows of <= {data['info']['shard_max_tokens']} tokens, vocab "
          f"{data['vocab_size']}")
    for tree, info in trees.items():
        count = f"{info['params']:,} parameters" if info.get("params") else info.get("params_error", "?")
        print(f"  {tree}: {info['package']} ({count})")
    rows = []
    for c in cases:
        ck = c.get("checkpoint")
        if not ck:
            rows.append([c["tree"], c["stage"], c["precision"], "FAILED", "", "", "", "", "", "", "", ""])
            continue
        per = ck["max_per_rank_by_kind"]
        rss = {r: max(c["peak_rss"]["first"].get(r, 0), c["peak_rss"]["second"].get(r, 0))
               for r in sorted({*c["peak_rss"]["first"], *c["peak_rss"]["second"]})}
        rows.append([c["tree"], c["stage"], c["precision"], ck["bytes"] / MB, ck["by_kind"]["model_states"] / MB,
                     per.get("optimizer", 0) / MB, per.get("rank_state", 0) / MB, per.get("ema", 0) / MB,
                     max(ck["by_writer_rank"].values()) / MB, fmt_saves(c),
                     "-" if c.get("load_seconds") is None else c["load_seconds"],
                     "/".join(f"{v / MB:,.0f}" for v in rss.values()) or "-"])
    print("\ncheckpoint of step 2 (MB = 1e6 bytes); per-rank columns are the largest rank's share; save s for "
          "steps 1/2/3 (step 3 by the resumed launch); load of step 2 from the page cache")
    print(table(["tree", "ZeRO", "precision", "ckpt MB", "model states MB", "optim MB/rank", "rank state MB/rank",
                 "EMA MB/rank", "largest writer MB", "save s", "load s", "peak RSS MB r0/r1"], rows))
    for c in cases:
        notes = []
        if c.get("save_method", "log") != "log":
            notes.append(f"save seconds {c['save_method']}: the tree logs no 'checkpoint ... saved in X s'")
        if c.get("load_method", "log") != "log":
            notes.append(f"load seconds: {c['load_method']}")
        if c.get("error"):
            notes.append("ERROR " + c["error"].splitlines()[0] + f" (log in {c['run_dir']})")
        for note in notes:
            print(f"  {c['tree']} ZeRO-{c['stage']} {c['precision']}: {note}")
    if any(params.values()):
        print("\nbytes per parameter by kind (job total / parameters)")
        print(table(["tree", "ZeRO", "precision", *KIND_NAMES, "total"],
                    [[c["tree"], c["stage"], c["precision"],
                      *[c["checkpoint"]["by_kind"][k] / params[c["tree"]] for k in KIND_NAMES],
                      c["checkpoint"]["bytes"] / params[c["tree"]]]
                     for c in cases if c.get("checkpoint") and params.get(c["tree"])]))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    started = time.perf_counter()
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench_checkpoint-", dir=args.workdir))
    roots: dict[str, Path] = {}
    worktree = None
    cases: list[dict] = []
    try:
        for tree in args.trees:
            if tree == "baseline":
                worktree = add_worktree(args.baseline)
                roots[tree] = worktree
                log.info("baseline %s checked out at %s", args.baseline, worktree)
            else:
                roots[tree] = REPO
        trees = {}
        for tree, root in roots.items():
            trees[tree] = probe_tree(root, args)
            log.info("%s imports %s", tree, trees[tree]["package"])
        first_root = roots[args.trees[0]]
        log.info("tokenizer (bpe, vocab %d) and shards, built by %s", args.vocab_size, first_root)
        data = build_data(first_root, args, workdir)
        isolate = isolation()
        for stage in args.stages:
            for precision in args.precisions:
                for tree, root in roots.items():
                    case = run_case(tree, root, stage, precision, data, workdir, isolate, args)
                    cases.append(case)
                    if not args.keep:
                        shutil.rmtree(case["run_dir"], ignore_errors=True)  # an xsum run holds ~4 GB
    finally:
        if worktree:
            remove_worktree(worktree)
        if args.keep:
            log.info("kept data and run directories in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    report(cases, trees, data, isolate)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": machine_info(), "args": vars(args), "baseline_commit": git("rev-parse", args.baseline),
        "work_head": git("rev-parse", "HEAD"), "work_dirty": bool(git("status", "--porcelain", "--", "ardiff_scale")),
        "trees": trees, "data": {k: v for k, v in data.items() if k in ("vocab_size", "info")},
        "network_isolated": bool(isolate), "cases": cases,
        "notes": "checkpoint = step 2 directory after launch 1; bytes by kind are job totals, max_per_rank_by_kind "
                 "the largest rank's share; an EMA inside ardiff-rank files is counted as ema (by loading them); "
                 "load follows the save in a new process, so it reads from the page cache"}, indent=2) + "\n")
    log.info("wrote %s in %.0f s", out, time.perf_counter() - started)


if __name__ == "__main__":
    main()
