import logging
import time

import pytest
from mlflow.tracking import MlflowClient

from ardiff_scale.errors import ConfigError
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
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.data.params["train.lr"] == "0.001"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == [float(s) for s in range(1, 51)]
    assert [a.path for a in client.list_artifacts(tracker.run_id, "notes")] == ["notes/note.txt"]
    # No server to proxy artifacts: they go to the directory given (the run directory's mlartifacts).
    assert client.get_experiment_by_name("local").artifact_location == (tmp_path / "artifacts").as_uri()


def test_several_nodes_need_a_tracking_server_unless_one_is_given(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"on 2 nodes.*cluster/start-local\.sh.*tracking\.tracking_uri=http://HOST"
                                          r":5000.*MLFLOW_TRACKING_URI"):
        resolve_tracking_uri("", tmp_path, nodes=2)
    assert resolve_tracking_uri("http://mlflow:5000", tmp_path, nodes=2) == "http://mlflow:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example")
    assert resolve_tracking_uri("", tmp_path, nodes=2) == "https://mlflow.example"
    assert not caplog.records
    # A store of its own on several nodes is allowed (rank 0 alone writes it), with a warning.
    with caplog.at_level(logging.WARNING, "ardiff.tracking"):
        assert resolve_tracking_uri("sqlite:////shared/mlflow.db", tmp_path, nodes=2) == "sqlite:////shared/mlflow.db"
        resolve_tracking_uri("sqlite:////shared/mlflow.db", tmp_path, nodes=2, warn=False)  # other ranks
    (record,) = caplog.records
    assert "2 nodes" in record.getMessage() and "only rank 0 writes it" in record.getMessage()


def test_a_resumed_job_continues_its_run_and_keeps_its_first_params(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    started: list[str] = []
    first = MLflowTracker(uri, "resume", "run", on_start=started.append)
    first.log_params({"train.max_steps": 4, "train.lr": 0.1})
    first.log_metrics({"loss": 2.0}, 4)
    first.close("KILLED")
    assert started == [first.run_id]

    second = MLflowTracker(uri, "resume", "run", run_id=first.run_id, on_start=started.append)
    second.log_params({"train.max_steps": 8, "train.lr": 0.1, "train.new": "x"})  # longer, as resumes may be
    second.log_metrics({"loss": 1.0}, 8)
    with caplog.at_level(logging.WARNING, "ardiff.tracking"):
        assert second.close() is True  # a refused param change would have been retried for ever
    assert second.run_id == first.run_id and started == [first.run_id] * 2
    assert "keeps its first values of train.max_steps" in caplog.text
    client = MlflowClient(uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.params == {"train.max_steps": "4", "train.lr": "0.1", "train.new": "x"}
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [(4, 2.0), (8, 1.0)]

    # An id this store does not know (the job now reports elsewhere): a new run.
    third = MLflowTracker(uri, "resume", "run", run_id="0" * 32)
    third.log_metrics({"loss": 0.5}, 9)
    assert third.close() is True and third.run_id != first.run_id
