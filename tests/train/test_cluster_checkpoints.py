"""What a cluster does to a run, with the real engines: preemption signals, node-local disks, object storage,
and a checkpoint layout whose size and reads do not grow with the rank count."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from ardiff_scale.errors import PREEMPTED_EXIT
from ardiff_scale.jobs.cluster import free_port
from launching import INSTRUMENTED, kill_tree, launch, losses, records, single, wait_for_port, wait_for_step

pytestmark = pytest.mark.integration

TINY = ["model.vocab_size=1000", "model.hidden_size=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.embed_dim=16", "model.time_channels=16", "data.source_len=64",
        "data.target_len=16", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
        "tracking.enabled=false", "train.ema_rate=0.99"]


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    tokenizer.save(str(path))
    return path


def run_args(shards, tokenizer, out, *extra: str) -> list[str]:
    return [f"data.train={shards}", f"data.tokenizer={tokenizer}", f"train.output_dir={out}", *TINY, *extra]


def _ranks(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The rank processes under a launcher, with their DataLoader workers (forked: same command line)."""
    found = []
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            command = " ".join(child.cmdline())
            if "instrumented.py" in command and "deepspeed.launcher" not in command:
                found.append(child)
        except psutil.Error:
            continue
    return found


def test_sigterm_checkpoints_the_step_reached_and_the_same_command_continues(shard_dir, tok_path, tmp_path):
    """SIGTERM to every rank of a 2-process ZeRO-2 run with no periodic checkpoint due: each rank finishes
    its step, they write a checkpoint of it together and exit with PREEMPTED_EXIT; the same command (no
    resume flag) continues with the losses of an uninterrupted run. Along the way: the checkpoint holds one
    EMA, and on resume each rank reads only its own state file."""
    common = ["train.deepspeed=zero2", "train.max_steps=150", "train.log_every=5", "data.num_workers=1"]
    reference = tmp_path / "reference"
    launch(2, run_args(shard_dir, tok_path, reference, *common))

    run = tmp_path / "run"
    args = run_args(shard_dir, tok_path, run, *common)
    proc = launch(2, args, wait=False, program=INSTRUMENTED, env={"ARDIFF_RECORD": str(tmp_path / "first")})
    try:
        wait_for_step(run, 10, proc)
        processes = _ranks(proc)  # the two ranks and their DataLoader workers
        pids = {p.pid for p in processes}
        assert sum(p.ppid() not in pids for p in processes) == 2, processes  # ranks: not forked from a rank
        for process in processes:  # as a scheduler does: the workers are signalled too
            process.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        kill_tree(proc)
    assert proc.returncode == PREEMPTED_EXIT, out[-3000:]
    assert "received SIGTERM" in out and "preempted" in out
    stopped = int((run / "checkpoints" / "latest").read_text()[len("step"):])
    assert 10 <= stopped < 150 and (run / "checkpoints" / f"step{stopped:08d}" / "COMPLETE").exists()
    assert max(losses(run)) == stopped  # the last window was flushed before exiting
    directory = run / "checkpoints" / f"step{stopped:08d}"
    # One EMA per job (rank 0's, ZeRO-2) and small per-rank states without weights.
    assert (directory / "ema.pt").exists() and not list(directory.glob("ema-rank*"))
    for rank in (0, 1):
        state = torch.load(directory / f"ardiff-rank{rank:05d}.pt", weights_only=True)
        assert "ema" not in state and state["step"] == stopped
    assert (directory / "ardiff-rank00001.pt").stat().st_size < 100_000

    log = launch(2, args, program=INSTRUMENTED, env={"ARDIFF_RECORD": str(tmp_path / "resumed")})
    assert f"at step {stopped} " in log
    want, got = losses(reference), losses(run)
    assert sorted(got) == list(range(1, 151))
    for step in range(stopped + 1, 151):
        assert got[step] == pytest.approx(want[step], rel=1e-5, abs=1e-6), f"step {step}"
    for rank, record in records(tmp_path / "resumed").items():
        ours = sorted(Path(p).name for p in record["loads"] if "ardiff-rank" in p or "ema" in Path(p).name)
        assert ours == ([f"ardiff-rank{rank:05d}.pt", "ema.pt"] if rank == 0 else [f"ardiff-rank{rank:05d}.pt"])
        theirs = [p for p in record["loads"] if f"pp_rank_{1 - rank}_" in p]
        assert not theirs, (rank, theirs)  # DeepSpeed too reads only this rank's partition


def test_ranks_that_see_different_output_dirs_fail_fast(shard_dir, tok_path, tmp_path):
    """Node-local disks: each rank's output_dir is its own (simulated by a suffix per rank)."""
    started = time.time()
    out = launch(2, run_args(shard_dir, tok_path, tmp_path / "local", "train.max_steps=5"), program=INSTRUMENTED,
                 env={"ARDIFF_RECORD": str(tmp_path / "record"), "ARDIFF_RANK_OUTPUT": "1"}, expect=2)
    assert "is not the same directory on rank 1 as on rank 0" in out and "shared filesystem" in out
    assert not (tmp_path / "local-rank0" / "metrics.jsonl").exists()  # nothing trained
    assert time.time() - started < 120


@pytest.fixture
def s3(monkeypatch):
    """moto's S3 server on 127.0.0.1, and the environment that points s3fs (in this process and in the
    launched ones) at it."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "test",
               "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        import s3fs
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir("runs")
        yield fs
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_s3_output_dir_keeps_checkpoints_in_the_bucket_and_resumes_from_it(s3, shard_dir, tok_path, tmp_path):
    url = "s3://runs/pretrain"
    common = [*run_args(shard_dir, tok_path, url), "train.save_every=3", "train.log_every=1",
              f"train.staging_dir={tmp_path / 'staging'}"]
    single([*common, "train.max_steps=6"])
    s3.invalidate_cache()
    assert s3.cat_file("runs/pretrain/checkpoints/latest").decode() == "step00000006"
    names = {p.rsplit("/", 1)[-1] for p in s3.find("runs/pretrain/checkpoints/step00000006")}
    assert {"COMPLETE", "ema.pt", "ardiff-rank00000.pt", "mp_rank_00_model_states.pt"} <= names
    assert s3.exists("runs/pretrain/config.yaml") and s3.exists("runs/pretrain/model/model.safetensors")
    assert not Path("s3:").exists() and not Path("s3:/runs").exists()  # never a local look-alike path
    staged = tmp_path / "staging"
    assert not any(p.name.startswith("step") for p in staged.rglob("*") if p.is_dir())  # staging emptied

    log = single([*common, "train.max_steps=9"])
    assert "resumed from s3://runs/pretrain/checkpoints/step00000006 at step 6" in log
    s3.invalidate_cache()
    assert s3.cat_file("runs/pretrain/checkpoints/latest").decode() == "step00000009"
    rows = [json.loads(line) for line in s3.cat_file("runs/pretrain/metrics.jsonl").decode().splitlines()]
    assert sorted({r["step"] for r in rows if "loss" in r}) == list(range(1, 10))


def test_a_fresh_run_refuses_a_directory_holding_another_run(shard_dir, tok_path, tmp_path):
    out = tmp_path / "run"
    single([*run_args(shard_dir, tok_path, out), "train.max_steps=2"])
    # Resuming may change how long it trains ...
    log = single([*run_args(shard_dir, tok_path, out), "train.max_steps=3"])
    assert "resumed from" in log and "train.max_steps: 2 there, 3 now" in log
    # ... not what it trains.
    log = single([*run_args(shard_dir, tok_path, out), "train.max_steps=4", "model.hidden_size=64"], expect=2)
    assert "cannot resume" in log and "model.hidden_size: 32 there, 64 now" in log
    log = single([*run_args(shard_dir, tok_path, out), "train.resume=never"], expect=2)
    assert "already holds checkpoints" in log and "train.resume=auto" in log
    # No checkpoint yet (a run that died before its first save) but another config: refused, naming it.
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text((out / "config.yaml").read_text().replace("lr: 0.003", "lr: 0.001"))
    log = single([*run_args(shard_dir, tok_path, other), "train.max_steps=2"], expect=2)
    assert "holds another run" in log and "train.lr: 0.001 there, 0.003 now" in log
