import time

from ardiff_scale.tracking.mlflow_tracker import MLflowTracker, resolve_tracking_uri


def test_unreachable_server_never_blocks_and_overflow_is_counted(tmp_path):
    tracker = MLflowTracker("http://127.0.0.1:9", "x", "r", buffer=5, max_backoff=0.2)  # nothing listens on 9
    started = time.perf_counter()
    for step in range(20):
        tracker.log_metrics({"loss": 1.0 / (step + 1)}, step)
    assert time.perf_counter() - started < 0.5  # logging returns at once
    assert tracker.pending() <= 5 and tracker.dropped >= 14
    assert tracker.close(timeout=1.0) is False
    tracker.thread.join(2.0)  # an abandoned run stops retrying: nothing keeps a dead server's thread alive
    assert not tracker.thread.is_alive()


def test_local_store_delivers_everything_in_order(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri elsewhere sets it
    uri = resolve_tracking_uri("", tmp_path)
    assert uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MLflowTracker(uri, "local", "run", artifact_root=tmp_path / "artifacts")
    tracker.log_params({"train.lr": 0.001})
    for step in range(1, 51):
        tracker.log_metrics({"loss": float(step)}, step)
    (tmp_path / "note.txt").write_text("hi")
    tracker.log_artifact(tmp_path / "note.txt", "notes")
    assert tracker.close() is True
    from mlflow.tracking import MlflowClient
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.001"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == [float(s) for s in range(1, 51)]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "notes")] == ["notes/note.txt"]
