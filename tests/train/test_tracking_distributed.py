"""MLflow from a 2-process `deepspeed` job (gloo on CPU): one run reported by rank 0, system metrics gathered
from every node (here: one host), and a resumed job continuing the same run."""

import json
import socket

import pytest
from mlflow.tracking import MlflowClient

from launching import launch
from test_pretrain_distributed import TINY

pytestmark = pytest.mark.integration


def test_two_ranks_report_one_run_with_node_metrics_and_a_resume_continues_it(shard_dir, tokenizer, tmp_path):
    tok = tmp_path / "tok.model"
    tokenizer.save(str(tok))
    out, uri = tmp_path / "run", f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [f"data.train={shard_dir}", f"data.tokenizer={tok}", f"train.output_dir={out}", *TINY,
            "tracking.enabled=true", f"tracking.tracking_uri={uri}", "tracking.experiment=two-ranks",
            "train.log_every=2", "train.deepspeed=zero1"]
    launch(2, [*args, "train.max_steps=4"])
    launch(2, [*args, "train.max_steps=6", "train.resume=auto"])

    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("two-ranks").experiment_id])
    assert run.info.status == "FINISHED" and (out / "mlflow-run-id").read_text() == run.info.run_id
    host = socket.gethostname()
    assert run.data.tags["nodes"] == host and run.data.tags["world_size"] == "2"
    cpu = client.get_metric_history(run.info.run_id, f"system/{host}/cpu_utilization_percentage")
    assert sorted(m.step for m in cpu) == [2, 4, 6] and all(0 <= m.value <= 100 for m in cpu)
    # One loss row per window of 2 steps: the mean of metrics.jsonl's per-step rows, across the resume.
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    per_step = {int(r["step"]): r["loss"] for r in rows if "loss" in r}
    loss = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "loss")}
    assert sorted(loss) == [2, 4, 6]
    assert all(loss[s] == pytest.approx((per_step[s - 1] + per_step[s]) / 2, rel=1e-9) for s in loss)
