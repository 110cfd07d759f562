"""MLflow tracking that never stalls or stops training.

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
from typing import Any, Callable
from urllib.parse import urlparse

from ardiff_scale.errors import ConfigError

log = logging.getLogger("ardiff.tracking")

_TAKE = 200  # metric batches sent in one delivery
RUN_ID_FILE = "mlflow-run-id"  # in a run directory: the MLflow run that a resumed job continues


def served(tracking_uri: str) -> bool:
    """Whether the store is a tracking server, which owns where artifacts go (its `--serve-artifacts` proxy
    or its configured root), rather than a database or directory this process writes itself."""
    return urlparse(tracking_uri).scheme in ("http", "https", "databricks")


def resolve_tracking_uri(configured: str, run_dir: Path, nodes: int = 1, warn: bool = True) -> str:
    """The config's URI, else MLFLOW_TRACKING_URI, else a SQLite store in the run directory: that default
    only for a job on one node. `warn`: log the multi-node local-store warning (rank 0 only, not once per
    rank). Raises ConfigError for a job on several nodes without a URI."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        if nodes > 1:
            # Jobs on several nodes (and several such jobs) must not share one SQLite file: its locking
            # does not hold over NFS and the like, and a run directory on one node's disk is not shared.
            raise ConfigError(
                f"this job runs on {nodes} nodes and no MLflow tracking server is given: start one "
                "(cluster/start-local.sh starts one on port 5000) and give tracking.tracking_uri=http://HOST:5000 "
                "or set MLFLOW_TRACKING_URI=http://HOST:5000; tracking.enabled=false trains without tracking")
        return f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
    if nodes > 1 and not served(uri) and warn:
        log.warning("MLflow store %s with %d nodes: only rank 0 writes it, but it must be on storage that "
                    "outlives this node (a tracking server is the safer choice)", uri, nodes)
    return uri


def experiment_id(client: Any, name: str, tracking_uri: str, artifact_root: Path | None = None) -> str:
    """The id of experiment `name`, created when missing: the one place experiments are made. `artifact_root`:
    where a store without a server keeps the new experiment's artifacts (a server decides that itself)."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if served(tracking_uri) and experiment.artifact_location.startswith(("file:", "/")):
            log.warning("experiment %r keeps artifacts at %s, a path on whichever machine logs them, not in the "
                        "server's artifact store: use a new experiment name", name, experiment.artifact_location)
        return experiment.experiment_id
    # A server's artifact proxy (mlflow-artifacts:/...) is reachable from every node; a local directory given
    # to it would send each artifact to the disk of the process that logs it.
    local = artifact_root and not served(tracking_uri)
    return client.create_experiment(name, artifact_location=artifact_root.resolve().as_uri() if local else None)


class MLflowTracker:
    """`artifact_root`: where a store without a server keeps the artifacts of a new experiment (an http(s)
    server's own artifact store decides instead). `run_id`: an earlier run to continue (a resumed job),
    when it exists in this store; `on_start(run_id)` is told the run's id once it is created or continued,
    from the delivery thread."""

    def __init__(self, tracking_uri: str, experiment: str, run_name: str, artifact_root: Path | None = None,
                 buffer: int = 200_000, max_backoff: float = 30.0, parent_run_id: str = "",
                 run_id: str | None = None, on_start: Callable[[str], None] | None = None):
        # Fail fast inside the client; the thread does the retrying, without blocking training.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri)
        self.tracking_uri, self.experiment, self.run_name = tracking_uri, experiment, run_name
        self.artifact_root = artifact_root
        self.parent_run_id = parent_run_id
        self.resume_run_id, self.on_start = run_id, on_start
        self.continued = False  # logging to an earlier run
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
        self.continued = bool(self.resume_run_id) and self._continue_run(self.resume_run_id)
        if self.continued:
            run_id = self.resume_run_id
            log.info("MLflow run %s continued at %s", run_id, self.tracking_uri)
        else:
            experiment = experiment_id(self.client, self.experiment, self.tracking_uri, self.artifact_root)
            tags = {"mlflow.parentRunId": self.parent_run_id} if self.parent_run_id else None
            run_id = self.client.create_run(experiment, run_name=self.run_name, tags=tags).info.run_id
            log.info("MLflow run %s in experiment %r at %s", run_id, self.experiment, self.tracking_uri)
        self.run_id = run_id
        if self.on_start:
            try:
                self.on_start(run_id)
            except Exception as err:  # not a delivery failure: retrying would start another run
                log.warning("could not record the MLflow run id %s: %s", run_id, err)

    def _continue_run(self, run_id: str) -> bool:
        """Mark an earlier run RUNNING again; False when this store has no such (live) run."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException as err:
            if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise  # the store is unreachable: retried, never answered with a second run
            log.warning("MLflow run %s is not in %s: starting a new run", run_id, self.tracking_uri)
            return False
        if run.info.lifecycle_stage != "active":
            return False
        self.client.update_run(run_id, status="RUNNING")
        return True

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
            logged = self.client.get_run(self.run_id).data.params if self.continued else {}
            params = [Param(k, v) for k, v in self._new_params(items[0][1], logged).items()]
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

    @staticmethod
    def _new_params(params: dict[str, str], logged: dict[str, str]) -> dict[str, str]:
        """The params not logged yet. MLflow refuses to change a logged param, and a refused batch would be
        retried forever; a resumed job may change some (train.max_steps), and its config artifact has them."""
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            log.warning("the continued MLflow run keeps its first values of %s (changed on resume: see the "
                        "config/config.yaml artifact)", ", ".join(changed))
        return {k: v for k, v in params.items() if k not in logged}

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
