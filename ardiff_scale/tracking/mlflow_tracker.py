"""MLflow tracking that never stalls or stops training. The only module that imports mlflow.

Everything a run logs (the run's creation, params, metrics, artifacts, its end) goes through one bounded
queue to a background thread that delivers it in order, batching metrics with log_batch. While the server
is unreachable the thread keeps what it has and retries with backoff; training goes on. Nothing is lost
unless more than `buffer` items wait at once: then the oldest metrics are dropped, and counted.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

log = logging.getLogger("ardiff.tracking")

_TAKE = 200  # metric batches sent in one delivery


def resolve_tracking_uri(configured: str, run_dir: Path) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI, else a SQLite store in the run directory."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"


class MLflowTracker:
    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifact_root: Path | None = None,
                 buffer: int = 200_000, max_backoff: float = 30.0, parent_run_id: str = ""):
        # Fail fast inside the client; the thread does the retrying, without blocking training.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.artifact_root = artifact_root
        self.parent_run_id = parent_run_id
        self.buffer, self.max_backoff = buffer, max_backoff
        self.queue: deque[tuple[str, Any]] = deque()
        self.lock = threading.Condition()
        self.dropped = 0
        self.failures = 0
        self.in_flight = 0  # items at the head of the queue being sent
        self.run_id: str | None = None
        self.closed = False
        self.abandoned = False  # close() gave up: the thread stops instead of retrying forever
        self.thread = threading.Thread(target=self._deliver, name="mlflow-delivery", daemon=True)
        self.thread.start()

    # --- what training calls: all of it returns at once -----------------------------------------------
    def _put(self, kind: str, payload: Any) -> None:
        with self.lock:
            if len(self.queue) >= self.buffer:
                # Drop the oldest metrics that the delivery thread is not sending right now.
                for i in range(self.in_flight, len(self.queue)):
                    if self.queue[i][0] == "metrics":
                        del self.queue[i]
                        self.dropped += 1
                        break
            self.queue.append((kind, payload))
            self.lock.notify()

    def log_params(self, params: dict[str, Any]) -> None:
        self._put("params", {k: str(v)[:6000] for k, v in params.items()})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._put("tags", {k: str(v) for k, v in tags.items()})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self._put("metrics", [(k, float(v), now, step) for k, v in metrics.items()])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._put("artifact", (str(path), artifact_path))

    def close(self, status: str = "FINISHED", timeout: float = 60.0) -> bool:
        """End the run; waits up to `timeout` s for delivery. Returns whether everything was delivered."""
        self._put("end", status)
        with self.lock:
            self.closed = True
            self.lock.notify()
        self.thread.join(timeout)
        delivered = not self.thread.is_alive()
        if not delivered:
            with self.lock:
                self.abandoned = True
                self.lock.notify()
            log.warning("MLflow at %s unreachable: %d items not delivered", self.tracking_uri, len(self.queue))
        if self.dropped:
            log.warning("MLflow buffer overflowed: %d metric batches dropped", self.dropped)
        return delivered

    # --- the delivery thread ----------------------------------------------------------------------------
    def _start_run(self) -> None:
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is None:
            location = self.artifact_root.resolve().as_uri() if self.artifact_root else None
            experiment_id = self.client.create_experiment(self.experiment, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
        tags = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else None
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name, tags=tags).info.run_id
        log.info("MLflow run %s in experiment %r at %s", self.run_id, self.experiment, self.tracking_uri)

    def _send(self, items: list[tuple[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        if self.run_id is None:
            self._start_run()
        kind = items[0][0]
        if kind == "metrics":
            metrics = [Metric(k, v, ts, step) for _, batch in items for k, v, ts, step in batch]
            for start in range(0, len(metrics), 1000):  # the REST API takes at most 1000 per call
                self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000], synchronous=True)
        elif kind == "params":
            params = [Param(k, v) for k, v in items[0][1].items()]
            for start in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[start:start + 100], synchronous=True)
        elif kind == "tags":
            self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in items[0][1].items()], synchronous=True)
        elif kind == "artifact":
            path, artifact_path = items[0][1]
            if Path(path).exists():
                self.client.log_artifact(self.run_id, path, artifact_path)
        elif kind == "end":
            self.client.set_terminated(self.run_id, items[0][1])

    def _take(self) -> list[tuple[str, Any]]:
        """The next delivery: consecutive metric batches together, anything else alone."""
        first = self.queue[0]
        if first[0] != "metrics":
            return [first]
        items = []
        for item in self.queue:
            if item[0] != "metrics" or len(items) >= _TAKE:
                break
            items.append(item)
        return items

    def _deliver(self) -> None:
        backoff = 0.5
        while True:
            with self.lock:
                while not self.queue and not self.closed:
                    self.lock.wait()
                if not self.queue or self.abandoned:
                    return
                items = self._take()
                self.in_flight = len(items)
            try:
                self._send(items)
            except Exception as err:  # any failure of the server or the network: keep the items, retry
                with self.lock:
                    self.in_flight = 0
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    log.warning("MLflow delivery failed (%s); %d items kept, retrying", type(err).__name__,
                                len(self.queue))
                with self.lock:
                    # An abandoned run's thread wakes at once (close() notifies) and exits.
                    if not self.abandoned:
                        self.lock.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            backoff = 0.5
            with self.lock:
                for _ in items:
                    self.queue.popleft()
                self.in_flight = 0
                if items[-1][0] == "end":
                    return

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until everything logged so far is delivered (or `timeout` s pass)."""
        deadline = time.time() + timeout
        while self.pending() and time.time() < deadline:
            time.sleep(0.05)
        return not self.pending()

    def pending(self) -> int:
        with self.lock:
            return len(self.queue)
