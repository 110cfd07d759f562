"""The task suite on a real local Ray head: Ray Train fine-tunes with DeepSpeed, Ray-task evaluation,
MLflow runs and registry, a worker killed mid-job, and `ardiff submit` of an evaluation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from ardiff_scale.jobs.cluster import local_ray_env

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
SHARED_TASKS = Path(__file__).resolve().parents[3] / "shared" / "data" / "tasks"
TINY = ["model.vocab_size=1000", "model.hidden_size=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.embed_dim=16", "model.time_channels=16", "data.source_len=96",
        "data.target_len=32", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
        "tracking.enabled=false", "train.ema_rate=0.9"]


def task_yaml(path: Path, name: str, data: str, steps: int, workers: int, metrics: str, source: int = 32) -> Path:
    path.write_text(f"""name: {name}
data: {{location: {SHARED_TASKS / data}, format: jsonl}}
lengths: {{source: {source}, target: 24}}
finetune:
  max_steps: {steps}
  overrides: [train.micro_batch_size=4, train.warmup_steps=1, train.save_every=4, train.log_every=1]
decode: {{steps: 4, candidates: 3}}
metrics: [{metrics}]
resources: {{workers: {workers}, cpus_per_worker: 1}}
""")
    return path


def ardiff(*args, env=None, timeout=900):
    return subprocess.run([str(BIN / "ardiff"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**(env or os.environ), "OMP_NUM_THREADS": "1"})


@pytest.fixture(scope="module")
def init_model(tmp_path_factory, shard_dir, tokenizer):
    root = tmp_path_factory.mktemp("init")
    tokenizer.save(str(root / "tok.model"))
    out = ardiff("pretrain", f"data.train={shard_dir}", f"data.tokenizer={root / 'tok.model'}",
                 f"train.output_dir={root / 'run'}", "train.max_steps=8", *TINY)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "run" / "model"


@pytest.fixture(scope="module")
def suite_run(tmp_path_factory, init_model, ray_head):
    root = tmp_path_factory.mktemp("suite")
    tasks = [task_yaml(root / "c2t.yaml", "c2t-tiny", "concept2text", 8, 2, "rouge, concept_coverage"),
             task_yaml(root / "summ.yaml", "summ-tiny", "summ-debian", 8, 1, "rouge", source=96)]
    out = ardiff("suite", "run", "--tasks", ",".join(map(str, tasks)), "--init", str(init_model),
                 "--address", ray_head.address, "--output", str(root / "out"), "--limit", "6",
                 env=local_ray_env())
    assert out.returncode == 0, (out.stdout + out.stderr)[-5000:]
    return root / "out", tasks


def test_suite_completes_with_mlflow_runs_and_registered_models(suite_run):
    out, _ = suite_run
    summary = json.loads((out / "results.json").read_text())
    assert [t["task"] for t in summary["tasks"]] == ["c2t-tiny", "summ-tiny"]
    assert all(t["examples"] == 6 and "rouge1" in t["metrics"] for t in summary["tasks"])
    assert "| c2t-tiny |" in (out / "results.md").read_text() and (out / "results.png").stat().st_size > 1000

    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient
    uri = f"sqlite:///{out / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"ardiff-suite-{out.name}")
    runs = client.search_runs([experiment.experiment_id])
    parent = client.get_run(summary["parent_run_id"])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(r.info.run_name for r in children) == ["c2t-tiny-evaluate", "c2t-tiny-finetune",
                                                        "summ-tiny-evaluate", "summ-tiny-finetune"]
    finetune = next(r for r in children if r.info.run_name == "c2t-tiny-finetune")
    assert len(client.get_metric_history(finetune.info.run_id, "loss")) == 8
    evaluate = next(r for r in children if r.info.run_name == "c2t-tiny-evaluate")
    assert "concept_coverage" in evaluate.data.metrics
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"results.json", "results.md", "results.png"}
    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model("models:/ardiff-c2t-tiny/1")
    generated = model.predict(["dog run park", "cook dinner kitchen"])
    assert len(generated) == 2 and all(isinstance(text, str) for text in generated)


def test_evaluation_over_two_workers_equals_one(suite_run):
    from ardiff_scale.evaluation.evaluate import predict
    out, tasks = suite_run
    merged = [json.loads(line) for line in (out / "c2t-tiny" / "eval" / "predictions.jsonl").read_text().splitlines()]
    single = predict(str(tasks[0]), str(out / "c2t-tiny" / "model"), "test", 6, (0, 1))
    assert [r["candidates"] for r in merged] == [r["candidates"] for r in single]
    assert [r["prediction"] for r in merged] == [r["prediction"] for r in single]


def test_a_killed_finetune_worker_is_retried_from_its_checkpoint(tmp_path, init_model, ray_head):
    task = task_yaml(tmp_path / "c2t.yaml", "c2t-kill", "concept2text", 40, 1, "rouge")
    out = tmp_path / "out"
    proc = subprocess.Popen([str(BIN / "ardiff"), "suite", "run", "--tasks", str(task), "--init", str(init_model),
                             "--address", ray_head.address, "--output", str(out), "--limit", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**local_ray_env(), "OMP_NUM_THREADS": "1"})
    metrics = out / "c2t-kill" / "metrics.jsonl"
    deadline = time.time() + 600
    killed = None
    while time.time() < deadline and killed is None:
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 10:
            for p in psutil.process_iter(["pid", "cmdline"]):
                if "RayTrainWorker" in " ".join(p.info["cmdline"] or []):
                    killed = p.info["pid"]
                    os.kill(killed, signal.SIGKILL)
                    break
        time.sleep(0.2)
    assert killed, "no fine-tune worker found to kill"
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-4000:]
    assert "resumed from" in log  # the restarted worker's own log line, forwarded by Ray to the driver
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    steps = [int(r["step"]) for r in rows if "loss" in r]  # training steps, not the validation rows
    # The restarted worker went back to the last checkpoint (every 4 steps) and on to the end: steps done after
    # that checkpoint and before the kill appear twice, the rest once.
    assert sorted(set(steps)) == list(range(1, 41))
    restarts = [steps[i] for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert all(step % 4 == 1 for step in restarts) and len(restarts) <= 1
    assert json.loads((out / "results.json").read_text())["tasks"][0]["examples"] == 2


def test_submit_runs_an_evaluation_through_the_job_api(tmp_path, init_model, ray_head):
    task = task_yaml(tmp_path / "c2t.yaml", "c2t-submit", "concept2text", 8, 1, "rouge")
    ok = ardiff("submit", "--address", ray_head.dashboard_url, "--", "evaluate", "--task", str(task),
                "--checkpoint", str(init_model), "--limit", "2", "--output", str(tmp_path / "eval"),
                env=local_ray_env())
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-3000:]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["examples"] == 2
    bad = ardiff("submit", "--address", ray_head.dashboard_url, "--", "evaluate", "--task", str(tmp_path / "no.yaml"),
                 "--checkpoint", str(init_model), env=local_ray_env())
    assert bad.returncode == 1 and "no.yaml" in bad.stdout + bad.stderr


def test_a_broken_task_is_refused_before_anything_runs(tmp_path, init_model):
    good = task_yaml(tmp_path / "good.yaml", "good", "concept2text", 8, 1, "rouge")
    broken = tmp_path / "broken.yaml"
    broken.write_text(good.read_text().replace("metrics: [rouge]", "metrics: [rouge, bleurt]"))
    missing = tmp_path / "missing.yaml"
    missing.write_text("\n".join(line for line in good.read_text().splitlines() if not line.startswith("lengths")))
    for path, words in ((broken, "bleurt"), (missing, "lengths")):
        out = ardiff("suite", "run", "--tasks", f"{good},{path}", "--init", str(init_model), "--address",
                     "127.0.0.1:1", "--output", str(tmp_path / "never"))
        assert out.returncode == 2 and words in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "never").exists()
