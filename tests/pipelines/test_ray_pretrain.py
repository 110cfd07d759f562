"""`ardiff pretrain --ray` on a real local Ray head, submitted as a Ray job: two Ray Train workers train with
DeepSpeed (gloo), checkpoint, lose a worker, resume from the last checkpoint, and track to MLflow what a
`deepspeed`-launched run of the same config tracks."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ardiff_scale.config import load_config
from ardiff_scale.jobs.cluster import local_ray_env
from ardiff_scale.pipelines.pretrain_ray import absolute_paths

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from launching import launch  # noqa: E402  (the deepspeed launch the Ray run is compared with)

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TINY = ["model.vocab_size=1000", "model.hidden_size=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.embed_dim=16", "model.time_channels=16", "data.source_len=64",
        "data.target_len=16", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
        "train.ema_rate=0.99", "train.log_every=2", "train.save_every=4", "train.max_steps=32"]


def _ray_train_workers() -> list[int]:
    """Pids of Ray Train workers on this machine (their process title names the actor class); the job tests
    run one Ray job at a time."""
    return [p.info["pid"] for p in psutil.process_iter(["pid", "cmdline"])
            if "RayTrainWorker" in " ".join(p.info["cmdline"] or [])]


def _run(client, experiment: str):
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1, [(r.info.run_name, r.info.status) for r in runs]
    return runs[0]


def test_ray_pretraining_survives_a_killed_worker_and_tracks_like_deepspeed(ray_head, shard_dir, tokenizer,
                                                                             tmp_path):
    tok = tmp_path / "tok.model"
    tokenizer.save(str(tok))
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [f"data.train={shard_dir}", f"data.tokenizer={tok}", *TINY, f"tracking.tracking_uri={db}"]
    out = tmp_path / "ray-run"
    submit = subprocess.Popen(
        [str(BIN / "ardiff"), "submit", "--address", ray_head.dashboard_url, "--", "pretrain", "--ray", "auto",
         "--workers", "2", "--cpus-per-worker", "1", "--max-failures", "2", *common, f"train.output_dir={out}",
         "tracking.experiment=ray"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**local_ray_env(), "OMP_NUM_THREADS": "1"})
    metrics = out / "metrics.jsonl"
    killed, deadline = None, time.time() + 600
    while killed is None and time.time() < deadline:
        assert submit.poll() is None, submit.stdout.read()[-5000:]
        rows = metrics.read_text().splitlines() if metrics.exists() else []
        if len(rows) >= 10 and (out / "checkpoints" / "step00000008" / "COMPLETE").exists():
            workers = _ray_train_workers()
            if workers:
                killed = workers[-1]
                os.kill(killed, signal.SIGKILL)
        time.sleep(0.2)
    assert killed, "no Ray Train worker found to kill"
    log, _ = submit.communicate(timeout=900)
    assert submit.returncode == 0, log[-5000:]  # the job's status: SUCCEEDED
    assert "pretraining on Ray: 2 worker(s)" in log and "resumed from" in log

    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [int(r["step"]) for r in rows if "loss" in r]
    assert sorted(set(steps)) == list(range(1, 33))
    restarts = [steps[i] for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    # Back to the step after the last checkpoint (every 4 steps): steps logged after it appear twice. A kill
    # right after a checkpoint and before the next window's row repeats nothing.
    assert len(restarts) <= 1 and all(step % 4 == 1 for step in restarts)
    resumed = re.search(r"resumed from \S+/step(\d+) at step (\d+)", log)
    assert resumed and int(resumed[1]) == int(resumed[2]) and int(resumed[2]) % 4 == 0
    curve = {int(r["step"]): r["loss"] for r in rows if "loss" in r}
    first, last = sum(curve[s] for s in range(1, 5)) / 4, sum(curve[s] for s in range(25, 33)) / 8
    assert last < 0.9 * first, f"loss {first:.3f} -> {last:.3f}"
    info = json.loads((out / "checkpoints" / "step00000032" / "COMPLETE").read_text())
    assert info["world_size"] == 2
    assert (out / "model" / "model.safetensors").exists()

    # The same config launched by deepspeed (2 ranks), tracked to the same store.
    reference = tmp_path / "ds-run"
    launch(2, [*common, f"train.output_dir={reference}", "tracking.experiment=deepspeed", "train.max_steps=8"])
    from mlflow.tracking import MlflowClient
    client = MlflowClient(db)
    ray_run, ds_run = _run(client, "ray"), _run(client, "deepspeed")
    assert ray_run.info.status == "FINISHED"
    assert ray_run.data.params.keys() == ds_run.data.params.keys()
    assert ray_run.data.params["ray.workers"] == "2" and ray_run.data.params["ray.address"] == "auto"
    assert ray_run.data.metrics.keys() == ds_run.data.metrics.keys()
    # One row per window of 2 steps. Rows that rank 0 had queued but not yet sent when its worker group was
    # killed are lost (a hard kill leaves no time to deliver); every window from the resume on is there.
    logged = {int(m.step) for m in client.get_metric_history(ray_run.info.run_id, "loss")}
    assert all(step % 2 == 0 for step in logged) and set(range(int(resumed[2]) + 2, 33, 2)) <= logged

    def artifacts(run_id, path=None):
        """Artifact paths, the step numbers in sample file names left out (the two runs differ in length)."""
        found = []
        for item in client.list_artifacts(run_id, path):
            found += artifacts(run_id, item.path) if item.is_dir else [re.sub(r"step\d+", "stepN", item.path)]
        return sorted(found)

    assert artifacts(ray_run.info.run_id) == artifacts(ds_run.info.run_id)


def test_relative_paths_become_absolute_and_urls_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config("tiny-cpu", ["data.train=shards/train", "data.valid=s3://bucket/valid",
                                      "data.tokenizer=tok/t.model", "train.output_dir=runs/x", "train.resume=auto"])
    fixed = absolute_paths(config)
    assert fixed.data.train == str(tmp_path / "shards/train") and fixed.data.tokenizer == str(tmp_path / "tok/t.model")
    assert fixed.train.output_dir == str(tmp_path / "runs/x")
    assert fixed.data.valid == "s3://bucket/valid" and fixed.train.resume == "auto"
    assert fixed.model == config.model and fixed.ray == config.ray
