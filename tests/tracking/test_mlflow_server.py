"""Tracking against a real `mlflow server` on 127.0.0.1, including an outage in the middle of a run."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ardiff_scale.jobs.cluster import free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
TINY = ["model.vocab_size=1000", "model.hidden_size=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.embed_dim=16", "model.time_channels=16", "data.source_len=64",
        "data.target_len=16", "train.micro_batch_size=4", "train.log_every=20", "train.warmup_steps=5"]



def wait_for_port(port: int, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"mlflow server not up on 127.0.0.1:{port}")


def start_server(port: int, root: Path) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                             "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
                             "--serve-artifacts", "--artifacts-destination", str(root / "artifacts")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    wait_for_port(port)
    return proc


def stop_server(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, 15)  # the server and its workers, started in their own session
    proc.wait(timeout=30)


def steps_done(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_run_is_tracked_and_survives_a_server_outage(shard_dir, tokenizer, tmp_path):
    tok = tmp_path / "tok.model"
    tokenizer.save(str(tok))
    port = free_port()
    server = start_server(port, tmp_path)
    run = tmp_path / "run"
    uri = f"http://127.0.0.1:{port}"
    train = subprocess.Popen([str(BIN / "ardiff"), "pretrain", f"data.train={shard_dir}", f"data.valid={shard_dir}",
                              f"data.tokenizer={tok}", f"train.output_dir={run}", "train.max_steps=300",
                              "train.eval_every=100", f"tracking.tracking_uri={uri}", "tracking.experiment=outage",
                              *TINY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "2"})
    try:
        while steps_done(run) < 40:
            assert train.poll() is None, train.stdout.read()[-3000:]
            time.sleep(0.1)
        stop_server(server)
        down_at = steps_done(run)
        while steps_done(run) < down_at + 60 and train.poll() is None:
            time.sleep(0.1)
        server = start_server(port, tmp_path)
        out, _ = train.communicate(timeout=300)
        assert train.returncode == 0, out[-3000:]
    finally:
        if train.poll() is None:
            train.kill()
        stop_server(server)
        server = start_server(port, tmp_path)
    try:
        from mlflow.tracking import MlflowClient
        client = MlflowClient(uri)
        experiment = client.get_experiment_by_name("outage")
        (found,) = client.search_runs([experiment.experiment_id])
        assert found.info.status == "FINISHED"
        history = client.get_metric_history(found.info.run_id, "loss")
        # One row per logging window (log_every 20), the mean of its steps, outage or not.
        assert sorted(m.step for m in history) == list(range(20, 301, 20))
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        local = {int(r["step"]): r["loss"] for r in rows if "loss" in r}
        assert all(abs(m.value - sum(local[s] for s in range(m.step - 19, m.step + 1)) / 20) < 1e-9 for m in history)
        assert len(client.get_metric_history(found.info.run_id, "valid_loss")) == 3
        # Each logging window's throughput, MFU and step-time breakdown: 300 steps, log_every 20.
        windows = client.get_metric_history(found.info.run_id, "mfu")
        assert len(windows) == 15 and all(m.value > 0 for m in windows)
        assert {"time/forward_backward_s", "time/data_s", "tokens_per_s"} <= set(found.data.metrics)
        assert f"system/{socket.gethostname()}/cpu_utilization_percentage" in found.data.metrics
        assert found.data.tags["nodes"] == socket.gethostname()
        # Artifacts went through the server's proxy, not to a path on the training machine.
        assert experiment.artifact_location.startswith("mlflow-artifacts:") and not (run / "mlartifacts").exists()
        downloaded = client.download_artifacts(found.info.run_id, "config/config.yaml", str(tmp_path / "down"))
        assert "max_steps: 300" in Path(downloaded).read_text()
        assert (run / "mlflow-run-id").read_text() == found.info.run_id  # what a resumed job continues
        assert found.data.params["train.max_steps"] == "300" and found.data.params["model.hidden_size"] == "32"
        artifacts = {a.path for folder in ("config", "plots", "samples")
                     for a in client.list_artifacts(found.info.run_id, folder)}
        assert {"config/config.yaml", "config/deepspeed.json", "config/tok.model.json", "config/manifest.json",
                "plots/loss.png"} <= artifacts
        assert any(path.startswith("samples/samples-step") for path in artifacts)
        # The masked spans scored in tokens beside the samples, against the unigram baseline.
        assert {"infill_accuracy", "infill_unigram_accuracy", "infill_distinct", "infill_top5_share"} <= set(
            found.data.metrics)
        assert 0 < found.data.metrics["infill_unigram_accuracy"] < 1 and "masked spans at step 300" in out
        assert "mlflow delivery failed" in out.lower()
    finally:
        stop_server(server)


def test_experiments_on_a_server_use_its_artifact_store(tmp_path):
    """Created over http, an experiment gets the server's artifact location (its proxy), not the local
    directory given for stores without a server: every node can reach the server, not rank 0's disk."""
    from mlflow.tracking import MlflowClient

    from ardiff_scale.tracking.mlflow_tracker import MLflowTracker

    (tmp_path / "server").mkdir()
    port = free_port()
    server = start_server(port, tmp_path / "server")
    try:
        uri = f"http://127.0.0.1:{port}"
        local = tmp_path / "run" / "mlartifacts"
        tracker = MLflowTracker(uri, "proxied", "run", artifact_root=local)
        (tmp_path / "note.txt").write_text("through the proxy")
        tracker.log_artifact(tmp_path / "note.txt", "notes")
        assert tracker.close() is True
        client = MlflowClient(uri)
        assert client.get_experiment_by_name("proxied").artifact_location.startswith("mlflow-artifacts:")
        assert not local.exists()
        assert list((tmp_path / "server" / "artifacts").rglob("note.txt"))  # stored by the server
        downloaded = client.download_artifacts(tracker.run_id, "notes/note.txt", str(tmp_path / "down"))
        assert Path(downloaded).read_text() == "through the proxy"
    finally:
        stop_server(server)
