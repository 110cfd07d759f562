"""The GPU checks of the training path, as one short run: what CI (CPU, gloo) cannot see.

1. `deepspeed --num_gpus 1 ardiff pretrain` of the tiny recipe in bf16 (nccl on a GPU), SIGTERM mid-way,
   then the same command again: it must exit with status 75 after a checkpoint and resume from it.
2. The xsum preset's training step in bf16: tokens/s and MFU against the GPU's datasheet peak, with the
   step-time breakdown (data wait, forward+backward, optimizer) from the trainer's own accounting.
3. The skipping sampler on the xsum preset at k = 50 candidates, M = 20 steps, source 512.
4. The data path (`ardiff shards bench`) with the worker count training picks on the host, batches pinned.
5. Ray Train on the GPU: `ardiff pretrain --ray` with one worker holding the GPU, on a local Ray head.

Prints a table and writes JSON. `--cpu` runs every part on the CPU (gloo, fp32, small shapes) so the script
is known to work up to the GPU-specific parts.

    bash benchmarks/gpu_check.sh            # on the GPU machine, under 8 minutes
    bash benchmarks/gpu_check.sh --cpu      # here
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run_dir_losses(run: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()] if (
        run / "metrics.jsonl").exists() else []
    return {int(r["step"]): r["loss"] for r in rows if "loss" in r}


def say(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def prepare_data(work: Path) -> tuple[Path, Path]:
    """A tokenizer and shards from the bundled demo corpus: no network, no ../shared."""
    tok = work / "tok" / "demo.model"
    shards = work / "shards"
    subprocess.run([str(BIN / "ardiff"), "tokenizer", "train", "--input", str(ROOT / "data/demo/train.jsonl.gz"),
                    "--output", str(tok), "--vocab-size", "2000", "--model-type", "bpe", "--field", "text"],
                   check=True, capture_output=True)
    subprocess.run([str(BIN / "ardiff"), "shards", "build", "--kind", "pretrain", "--format", "jsonl", "--field",
                    "text", "--tokenizer", str(tok), "--output", str(shards), "--samples-per-shard", "200",
                    "--max-tokens", "126", "--input", str(ROOT / "data/demo/train.jsonl.gz")],
                   check=True, capture_output=True)
    return tok, shards


def preemption(work: Path, tok: Path, shards: Path, cpu: bool) -> dict:
    run = work / "preempt"
    total = 100 if cpu else 400
    args = ["--recipe", "tiny-cpu", f"data.train={shards}", f"data.tokenizer={tok}", "model.vocab_size=2000",
            f"train.output_dir={run}", f"train.max_steps={total}", "train.log_every=10", "tracking.enabled=false",
            f"train.precision={'fp32' if cpu else 'bf16'}", "data.num_workers=2"]
    cmd = [str(BIN / "deepspeed"), "--num_gpus", "1", "--master_addr", "127.0.0.1", "--master_port", "29561",
           str(BIN / "ardiff"), "pretrain", *args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and max(_run_dir_losses(run), default=0) < 30 and proc.poll() is None:
        time.sleep(0.2)
    # The rank and its data workers, as a scheduler signals a job's tasks. (Signalled itself, the deepspeed
    # launcher forwards SIGTERM, gives the ranks 30 s, and exits 1 whatever they return.)
    import psutil
    for child in psutil.Process(proc.pid).children(recursive=True):
        if "ardiff" in " ".join(child.cmdline()) and "deepspeed.launcher" not in " ".join(child.cmdline()):
            child.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    first_s = time.perf_counter() - started
    latest = run / "checkpoints" / "latest"
    stopped = latest.read_text() if latest.exists() else None
    started = time.perf_counter()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    resumed = f"resumed from {run / 'checkpoints' / (stopped or '?')}" in again.stdout + again.stderr
    steps = _run_dir_losses(run)
    return {"max_steps": total, "exit_status_on_sigterm": proc.returncode, "checkpoint_at_sigterm": stopped, "resumed": resumed,
            "second_run_status": again.returncode, "steps_logged": len(steps), "first_run_s": first_s,
            "second_run_s": time.perf_counter() - started,
            "ok": proc.returncode == 75 and stopped is not None and resumed and again.returncode == 0
            and sorted(steps) == list(range(1, total + 1)),
            "log_tail": (out[-1500:] if proc.returncode != 75 else "") + (again.stderr[-1500:] if again.returncode else "")}


def ray_train(work: Path, tok: Path, shards: Path, cpu: bool) -> dict:
    """`ardiff pretrain --ray` with one Ray Train worker holding the GPU, on a private local Ray head: the
    path the suite's fine-tunes and multi-node pretraining take. The head's log names the device the worker
    trained on (the MFU line's peak source)."""
    from ardiff_scale.jobs.cluster import local_ray_env, start_local_head

    run = work / "ray"
    head = start_local_head(num_cpus=4, object_store_mb=500)
    try:
        started = time.perf_counter()
        done = subprocess.run(
            [str(BIN / "ardiff"), "pretrain", "--ray", head.address, "--workers", "1", "--cpus-per-worker", "2",
             "--gpus-per-worker", "0" if cpu else "1", "--recipe", "tiny-cpu", f"data.train={shards}",
             f"data.tokenizer={tok}", "model.vocab_size=2000", f"train.output_dir={run}", "train.max_steps=60",
             "train.log_every=10", "tracking.enabled=false", f"train.precision={'fp32' if cpu else 'bf16'}"],
            capture_output=True, text=True, timeout=300, env=local_ray_env())
        seconds = time.perf_counter() - started
    finally:
        head.stop()
    log = done.stdout + done.stderr
    # "MFU against a peak of X TFLOP/s per device (SOURCE)": the source names the device.
    peak = next((line.split("per device", 1)[-1].strip()[1:-1] for line in log.splitlines()
                 if "MFU against a peak" in line), "?")
    complete = run / "checkpoints" / "step00000060" / "COMPLETE"
    return {"status": done.returncode, "seconds": seconds, "device": peak,
            "world_size": json.loads(complete.read_text())["world_size"] if complete.exists() else None,
            "steps_logged": len(_run_dir_losses(run)), "ok": done.returncode == 0 and complete.exists(),
            "log_tail": log[-1500:] if done.returncode else ""}


def training_step(cpu: bool) -> dict:
    import torch

    from ardiff_scale.config import load_config
    from ardiff_scale.model import build_model
    from ardiff_scale.train.trainer import Callback, Trainer

    batch, src, tgt = (2, 64, 16) if cpu else (64, 512, 50)
    config = load_config("xsum", [f"data.source_len={src}", f"data.target_len={tgt}", f"train.micro_batch_size={batch}",
                                  "train.grad_accum=1", "train.deepspeed=zero1", "train.log_every=5",
                                  f"train.precision={'fp32' if cpu else 'bf16'}", "tracking.enabled=false",
                                  f"train.max_steps={5 if cpu else 25}", "train.ema_rate=0.9999"])

    class Last(Callback):
        metrics: dict = {}

        def on_log(self, trainer, m):
            if "tokens_per_s" in m:
                Last.metrics = m

    torch.manual_seed(0)
    trainer = Trainer(config, build_model(config.model), callbacks=[Last()])
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, config.model.vocab_size, (batch, src), generator=g).pin_memory() if not cpu else \
        torch.randint(5, config.model.vocab_size, (batch, src), generator=g)
    tgt_ids = torch.randint(5, config.model.vocab_size, (batch, tgt), generator=g)
    data = iter(lambda: {"src_ids": ids, "src_mask": torch.ones_like(ids), "tgt_ids": tgt_ids}, None)
    trainer.fit(data)
    m = Last.metrics
    return {"shape": f"batch {batch}, source {src}, target {tgt}", "precision": config.train.precision,
            "peak_tflops": trainer.peak.tflops, "peak_source": trainer.peak.source,
            **{k: m[k] for k in m if k.startswith("time/") or k in ("tokens_per_s", "tflops", "mfu", "loss")}}


def sampler(cpu: bool) -> dict:
    import torch

    from ardiff_scale.config import load_config
    from ardiff_scale.decoding import decode
    from ardiff_scale.diffusion import make_schedule
    from ardiff_scale.model import build_model

    k, src = (4, 64) if cpu else (50, 512)
    config = load_config("xsum", [f"data.source_len={src}"])
    device = torch.device("cpu" if cpu else "cuda")
    model = build_model(config.model).to(device).eval()
    ids = torch.randint(5, config.model.vocab_size, (1, src), device=device)
    schedule = make_schedule("sqrt", config.diffusion.num_steps).to(device)
    dtype = None if cpu else torch.bfloat16
    times = []
    for _ in range(3):
        started = time.perf_counter()
        with torch.no_grad():
            decode(model, config, ids, torch.ones_like(ids), config.data.target_len, 20, k,
                   generator=torch.Generator(device).manual_seed(0), schedule=schedule, autocast_dtype=dtype)
        if not cpu:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {"candidates": k, "decode_steps": 20, "source_len": src, "target_len": config.data.target_len,
            "seconds_per_source": min(times[1:]), "first_call_s": times[0]}


def data_path(shards: Path) -> dict:
    """`ardiff shards bench` with the worker count training would pick on this host (data.num_workers=-1); on
    a GPU host the batches are pinned, the path the trainer's non-blocking copies rely on."""
    done = subprocess.run([str(BIN / "ardiff"), "shards", "bench", str(shards), "--batch", "8", "--source-len", "512",
                           "--target-len", "50", "--seconds", "8", "--json"], capture_output=True, text=True,
                          timeout=180)
    return json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-2000:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run everything on the CPU (gloo, fp32, small shapes)")
    parser.add_argument("--out", default="benchmarks/results/gpu_check.json", help="JSON results")
    parser.add_argument("--part", choices=["all", "step", "sampler"], default="all",
                        help="step and sampler run in their own process (the driver runs them)")
    args = parser.parse_args()
    if args.part != "all":  # a child: one measurement, JSON on the last line
        print(json.dumps(training_step(args.cpu) if args.part == "step" else sampler(args.cpu)))
        return 0
    import torch

    env = {**os.environ, **({"DS_ACCELERATOR": "cpu"} if args.cpu else {})}
    os.environ.update(env)
    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    results = {"device": device, "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="ardiff-gpu-check-") as tmp:
        work = Path(tmp)
        say("1/6 tokenizer and shards from the bundled demo corpus")
        tok, shards = prepare_data(work)
        say("2/6 tiny-recipe pretraining under deepspeed: SIGTERM at step 30, then the same command again")
        results["preemption"] = preemption(work, tok, shards, args.cpu)
        say(f"    {results['preemption']['exit_status_on_sigterm']=} {results['preemption']['checkpoint_at_sigterm']=}")
        for number, part in ((3, "step"), (4, "sampler")):
            say(f"{number}/6 {'xsum training step' if part == 'step' else 'sampler k=50 M=20 on the xsum preset'}")
            # Its own process: a single-process job joins a world of one, which the first part's engine left.
            done = subprocess.run([sys.executable, __file__, "--part", part, *(["--cpu"] if args.cpu else [])],
                                  capture_output=True, text=True, env=env, timeout=300)
            results[part] = json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else {
                "error": done.stderr[-2000:]}
        say("5/6 the data path: ardiff shards bench, workers as training picks them")
        results["data"] = data_path(shards)
        say("6/6 Ray Train: ardiff pretrain --ray with one GPU worker on a local Ray head")
        results["ray"] = ray_train(work, tok, shards, args.cpu)
    p, s, d, r = results["preemption"], results["step"], results["sampler"], results["data"]
    rows = [("device", device),
            ("preemption: exit status on SIGTERM (want 75)", p["exit_status_on_sigterm"]),
            ("preemption: checkpoint written at SIGTERM", p["checkpoint_at_sigterm"]),
            ("preemption: same command resumed and finished", f"{p['resumed']} (exit {p['second_run_status']})"),
            (f"preemption: every one of {p['max_steps']} steps logged", p["steps_logged"] == p["max_steps"])]
    if "error" not in s:
        rows += [(f"xsum step ({s['precision']}, {s['shape']})", f"{s['time/step_s'] * 1e3:.1f} ms"),
                 ("  tokens/s", f"{s['tokens_per_s']:,.0f}"),
                 (f"  MFU (peak {s['peak_tflops']:.4g} TFLOP/s, {s['peak_source']})", f"{100 * s['mfu']:.1f}%"),
                 ("  data / forward+backward / optimizer ms",
                  f"{s.get('time/data_s', 0) * 1e3:.1f} / {s['time/forward_backward_s'] * 1e3:.1f} / "
                  f"{s['time/optimizer_s'] * 1e3:.1f}")]
    else:
        rows.append(("xsum step", "FAILED: " + s["error"][-300:]))
    if "error" not in d:
        rows.append((f"sampler k={d['candidates']} M=20 source {d['source_len']}", f"{d['seconds_per_source']:.3f} s/source"))
    else:
        rows.append(("sampler", "FAILED: " + d["error"][-300:]))
    if "error" not in r:
        rows += [(f"data path: {r['workers']} workers, batches of 8 x (512 + 50)",
                  f"{r['samples_per_s']:,.0f} samples/s, first batch {r['first_batch_s']:.2f} s"),
                 ("  training-process CPU per batch", f"{r['main_cpu_ms_per_batch']:.3f} ms")]
    else:
        rows.append(("data path", "FAILED: " + r["error"][-300:]))
    y = results["ray"]
    rows += [("Ray Train: one worker, 60 tiny steps", f"exit {y['status']}, {y['seconds']:.0f} s, world size "
              f"{y['world_size']}, {y['steps_logged']} steps logged"), ("  device the worker trained on", y["device"])]
    print("| check | result |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nJSON: {args.out}")
    return 0 if p["ok"] and y["ok"] and all("error" not in part for part in (s, d, r)) else 1


if __name__ == "__main__":
    sys.exit(main())
