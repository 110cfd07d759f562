"""Pretraining with the real engines: `deepspeed`-launched CPU processes (gloo), real checkpoints."""

import json
import os
import signal
import subprocess
from pathlib import Path

import psutil
import pytest

from launching import BIN, kill_tree, launch, losses, wait_for_step

pytestmark = pytest.mark.integration

TINY = ["model.vocab_size=1000", "model.hidden_size=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.embed_dim=16", "model.time_channels=16", "data.source_len=64",
        "data.target_len=16", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
        "train.log_every=1", "tracking.enabled=false", "train.ema_rate=0.99"]


def run_args(shards, tokenizer, out: Path, *extra: str) -> list[str]:
    return [f"data.train={shards}", f"data.tokenizer={tokenizer}", f"train.output_dir={out}", *TINY, *extra]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    tokenizer.save(str(path))
    return path


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_two_processes_lower_the_loss_under_each_zero_stage(stage, shard_dir, tok_path, tmp_path):
    out = tmp_path / f"zero{stage}"
    log = launch(2, run_args(shard_dir, tok_path, out, f"train.deepspeed=zero{stage}", "train.max_steps=60"))
    assert "[rank 0] ardiff.train: step 60/60" in log and "[rank 1] ardiff.train: step" not in log  # rank 0 logs
    curve = losses(out)
    assert sorted(curve) == list(range(1, 61))
    # Per-step losses are noisy (random timesteps per sample): compare window means, not single steps.
    first, last = sum(curve[s] for s in range(1, 6)) / 5, sum(curve[s] for s in range(51, 61)) / 10
    assert last < 0.85 * first, f"ZeRO-{stage}: loss {first:.3f} -> {last:.3f}"
    assert (out / "model" / "model.safetensors").exists() and (out / "model-ema" / "model.safetensors").exists()
    info = json.loads((out / "checkpoints" / "step00000060" / "COMPLETE").read_text())
    assert info["world_size"] == 2
    # Offline export of the last checkpoint gives the weights (and EMA) that training exported at its end.
    from safetensors.torch import load_file
    for flag, name in (([], "model"), (["--ema"], "model-ema")):
        done = subprocess.run([str(BIN / "ardiff"), "export", "--run", str(out), "--output", str(tmp_path / name),
                               *flag], capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
        assert done.returncode == 0, done.stderr[-3000:]
        exported, trained = (load_file(p / name / "model.safetensors") for p in (tmp_path, out))
        assert exported.keys() == trained.keys()
        for key in trained:
            assert (exported[key] - trained[key]).abs().max() < 1e-6, (name, key)


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The rank itself, not one of its DataLoader workers (forked: same environment and command line)."""
    def is_rank(process: psutil.Process) -> bool:
        return process.environ().get("RANK") == str(rank) and "pretrain" in " ".join(process.cmdline())

    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if is_rank(child) and not is_rank(child.parent()):
                return child.pid
        except psutil.Error:
            continue
    raise LookupError(f"no rank {rank} process under {launcher.pid}")


def test_kill_a_rank_then_resume_auto_reproduces_the_uninterrupted_losses(shard_dir, tok_path, tmp_path):
    common = ["train.deepspeed=zero2", "train.max_steps=30", "train.save_every=5", "data.num_workers=1"]
    reference = tmp_path / "reference"
    launch(2, run_args(shard_dir, tok_path, reference, *common))
    crashed = tmp_path / "crashed"
    proc = launch(2, run_args(shard_dir, tok_path, crashed, *common), wait=False)
    try:
        wait_for_step(crashed, 8, proc)
        os.kill(_rank_pid(proc, 1), signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        kill_tree(proc)
    assert proc.returncode != 0
    resumed_at = int((crashed / "checkpoints" / "latest").read_text()[len("step"):])
    assert 5 <= resumed_at < 30 and resumed_at % 5 == 0
    log = launch(2, run_args(shard_dir, tok_path, crashed, *common, "train.resume=auto"))
    assert f"at step {resumed_at} " in log
    want, got = losses(reference), losses(crashed)
    for step in range(resumed_at + 1, 31):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), f"step {step}"
    # The reader's state at the end: 30 steps x 4 samples read by rank 0 (its one worker's cursor counts what
    # it consumed per shard), whatever happened in between.
    state = __import__("torch").load(crashed / "checkpoints" / "step00000030" / "ardiff-rank00000.pt",
                                     weights_only=True)["data"]
    (cursor,) = state["cursors"]
    assert cursor["epoch"] == 0 and sum(n for _, _, n in cursor["offsets"]) == 30 * 4


@pytest.mark.parametrize("before, after", [(2, 1), (1, 2)])
def test_zero2_checkpoint_resumes_on_another_world_size(before, after, shard_dir, tok_path, tmp_path):
    out = tmp_path / "run"
    launch(before, run_args(shard_dir, tok_path, out, "train.deepspeed=zero2", "train.max_steps=6"))
    log = launch(after, run_args(shard_dir, tok_path, out, "train.deepspeed=zero2", "train.max_steps=12",
                                 "train.resume=auto"))
    assert f"saved by {before} rank(s), now {after}" in log
    curve = losses(out)
    assert sorted(curve) == list(range(1, 13))
    assert sum(curve[s] for s in range(7, 13)) / 6 < sum(curve[s] for s in (1, 2, 3)) / 3  # it went on learning
    # The LR schedule went on from step 6 (warmup 2, linear decay to 0 at 12), not from the start.
    rows = {int(r["step"]): r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}
    assert rows[7]["lr"] == pytest.approx(3e-3 * (12 - 6) / (12 - 2))
    assert json.loads((out / "checkpoints" / "step00000012" / "COMPLETE").read_text())["world_size"] == after
