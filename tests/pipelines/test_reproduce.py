"""`ardiff reproduce`: the plan checks, the three scores of k candidates, and the whole harness at smoke size
(real tokenizer, shards, DeepSpeed training of the three systems, the sampler sweep, MLflow)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ardiff_scale.config import load_task
from ardiff_scale.errors import ConfigError
from ardiff_scale.evaluation.evaluate import primary_key, score_candidates
from ardiff_scale.pipelines.plan import PLANS_DIR, load_plan

BIN = Path(sys.executable).parent


def test_shipped_plans_load_and_cover_the_issue_grid():
    full = load_plan("full")
    assert set(full.systems) == {"ar-diffusion", "uniform-diffusion", "autoregressive"}
    points = full.points()
    for m in (1, 2, 3, 5, 10, 20, 50, 100, 1000):
        assert (m, 1) in points and (m, 10) in points
    assert (20, 50) in points
    assert load_plan("smoke").task_lengths() == {"summ-debian": (64, 16), "deen": (32, 16)}


@pytest.mark.parametrize("patch, message", [
    ({"sytems": ["ar-diffusion"]}, r"unknown field 'sytems' in .*plan\.yaml; did you mean 'systems'"),
    ({"systems": ["ar-difusion"]}, r"unknown system 'ar-difusion'.*valid: ar-diffusion"),
    ({"lengths": ["deen=64"]}, r"lengths: 'deen=64' must be 'TASK=SOURCE,TARGET'"),
    ({"extra_points": ["20"]}, r"extra_points: '20' must be 'M,k'"),
    ({"candidates": []}, r"candidates must be a non-empty list"),
    ({"test_sources": "many"}, r"test_sources must be an int \(got 'many'\)"),
    ({"tasks": ["no-such-task"]}, r"no-such-task"),
])
def test_bad_plans_name_the_field(tmp_path, patch, message):
    tree = yaml.safe_load((PLANS_DIR / "smoke.yaml").read_text()) | patch
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=message):
        load_plan(str(path))


def test_unknown_plan_lists_shipped_ones():
    with pytest.raises(ConfigError, match=r"reproduction plan 'fulll' is neither a file nor a shipped "
                                          r"reproduction plan; did you mean 'full'\? \(shipped: deen-diffusion, full, smoke"):
        load_plan("fulll")


def test_mbr_mean_of_k_and_oracle_are_scored_apart():
    task = load_task("deen")
    assert primary_key(task) == "bleu" and primary_key(load_task("summ-debian")) == "rougeL"
    refs = [["the cat sat on the mat"], ["a dog runs in the park"]]
    candidates = [["the cat sat on the mat", "a cat sat on a mat", "a cat sat on a mat"],
                  ["one bird flies", "a dog runs in a park", "one bird flies"]]
    scored = score_candidates(task, candidates, refs, ["", ""])
    # MBR picks the candidate closest to the others (the repeated one), not the best.
    from ardiff_scale.evaluation.metrics import compute_metrics
    expected_mbr = compute_metrics(["bleu"], ["a cat sat on a mat", "one bird flies"], refs)
    assert scored["mbr"] == expected_mbr
    assert scored["picks"] == [2, 2]  # of equal utilities, the last (the official rule)
    slots = [compute_metrics(["bleu"], [c[j] for c in candidates], refs)["bleu"] for j in range(3)]
    assert scored["mean_of_k"]["bleu"] == pytest.approx(sum(slots) / 3)
    # The oracle looks at the reference: the exact copy and the closest paraphrase.
    assert scored["oracle"] == compute_metrics(["bleu"], ["the cat sat on the mat", "a dog runs in a park"], refs)
    assert scored["oracle"]["bleu"] > scored["mean_of_k"]["bleu"] > scored["mbr"]["bleu"]
    assert "oracle" not in score_candidates(task, [[c[0]] for c in candidates], refs, ["", ""])


@pytest.mark.integration
def test_smoke_reproduction_end_to_end(tmp_path):
    out, work = tmp_path / "report", tmp_path / "work"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "2"}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([str(BIN / "ardiff"), "reproduce", "--smoke", "--output", str(out), "--work", str(work)],
                          capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    results = json.loads((out / "results.json").read_text())
    plan = load_plan("smoke")
    rows = results["rows"]
    for task in plan.tasks:
        for system in ("ar-diffusion", "uniform-diffusion"):
            got = {(r["steps"], r["k"]) for r in rows if r["task"] == task and r["system"] == system}
            assert got == set(plan.points()), (task, system)
        baseline = [r for r in rows if r["task"] == task and r["system"] == "autoregressive"]
        assert [r["decoding"] for r in baseline] == ["greedy", "beam 3"]
        assert set(results["models"][task]) == set(plan.systems)
        latency = results["models"][task]["ar-diffusion"]["latency"]
        assert [(p["steps"], p["k"]) for p in latency] == [(20, 1), (20, 50)]
    for r in rows:
        assert r["seconds_per_source"] > 0 and r["sources"] == plan.test_sources
        assert ("oracle" in r) == (r["k"] > 1 and r["steps"] is not None)
        if "oracle" in r:
            key = results["primary"][r["task"]]
            assert r["oracle"][key] >= r["mean_of_k"][key] - 1e-9  # the oracle is never below the average
    # Every run trained for the plan's budget; the autoregressive baseline started from the pretrained encoder,
    # the uniform baseline from all of the pretrained diffusion model but its time layers.
    assert all(t["steps"] == plan.finetune_steps for name, t in results["training"].items() if name != "pretrain")
    assert "tensors of the encoder;" in done.stderr and "tensors of the diffusion model;" in done.stderr
    md = (out / "results.md").read_text()
    assert "## deen: bleu of the MBR pick against decode steps M" in md and "mean-of-k" in md
    assert "### deen: what the systems wrote" in md and "  - autoregressive: " in md
    assert all(len(r["examples"]) == 3 and "picks" not in r for r in rows)
    for name in ("quality_vs_steps.png", "quality_vs_wallclock.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # MLflow: the report on the parent run, the seven training runs nested under it.
    from mlflow.tracking import MlflowClient
    client = MlflowClient(results["tracking_uri"])
    experiment = client.get_experiment_by_name("ardiff-reproduce")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("ardiff.stage") == "reproduce"]
    assert parent.info.status == "FINISHED"
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {
        "results.json", "results.md", "quality_vs_steps.png", "quality_vs_wallclock.png"}
    assert "deen.ar-diffusion.k3.bleu" in parent.data.metrics
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 7
    # A second call reuses every trained model and only decodes again.
    again = subprocess.run([str(BIN / "ardiff"), "reproduce", "--smoke", "--output", str(out), "--work", str(work)],
                           capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stderr.count("reusing") == 8  # tokenizer, pretraining, six fine-tunings
