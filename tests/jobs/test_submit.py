"""`ardiff submit` against a real local Ray head: output streams back and the exit status is the job's."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ardiff_scale.errors import ArdiffError
from ardiff_scale.jobs.cluster import free_port
from ardiff_scale.jobs.submit import build_runtime_env, job_entrypoint, resolve_address

BIN = Path(sys.executable).parent
JOB_ID = re.compile(r"submitted job (raysubmit_\w+)")


def run_ardiff(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`ardiff ARGS` as a user runs it, with RAY_ADDRESS unset so only --address counts."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run([str(BIN / "ardiff"), *args], capture_output=True, text=True, timeout=timeout, env=env,
                          check=False)


def test_entrypoint_runs_the_cli_module_with_arguments_quoted():
    assert job_entrypoint(["generate", "--source", "a <mask> b"]) == \
        "python -m ardiff_scale.cli generate --source 'a <mask> b'"


def test_address_comes_from_the_flag_then_the_environment(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert resolve_address(None) == "http://10.0.0.5:8265"
    assert resolve_address("https://ray.example.org") == "https://ray.example.org"
    monkeypatch.delenv("RAY_ADDRESS")
    assert resolve_address(None) == "http://127.0.0.1:8265"


def test_runtime_env_merges_json_and_working_dir(tmp_path):
    env = build_runtime_env(str(tmp_path), json.dumps({"env_vars": {"OMP_NUM_THREADS": "4"}}))
    assert env == {"env_vars": {"OMP_NUM_THREADS": "4"}, "working_dir": str(tmp_path)}
    assert build_runtime_env(None, None) is None
    with pytest.raises(ArdiffError, match="not valid JSON"):
        build_runtime_env(None, "{env_vars")
    with pytest.raises(ArdiffError, match="no such directory"):
        build_runtime_env(str(tmp_path / "missing"), None)


def test_unreachable_address_is_a_clear_error():
    address = f"http://127.0.0.1:{free_port()}"
    out = run_ardiff("submit", "--address", address, "--", "model-info", "--preset", "tiny", timeout=60)
    assert out.returncode == 2
    assert address in out.stderr and "cluster/start-local.sh" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.integration
def test_a_job_streams_its_output_and_succeeds(ray_head):
    out = run_ardiff("submit", "--address", ray_head.dashboard_url, "--", "model-info", "--preset", "tiny")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    job_id = JOB_ID.search(out.stdout).group(1)
    assert "model tiny: 1,108,768 parameters" in out.stdout
    assert f"job {job_id} succeeded" in out.stderr


@pytest.mark.integration
def test_a_failing_command_fails_the_submit_with_its_error(ray_head):
    out = run_ardiff("submit", "--address", ray_head.dashboard_url, "--", "model-info", "--preset", "nope")
    assert out.returncode == 1
    job_id = JOB_ID.search(out.stdout).group(1)
    assert "unknown model preset 'nope'" in out.stdout
    assert f"job {job_id} failed" in out.stderr and "ardiff exited with status 2" in out.stderr


@pytest.mark.integration
def test_working_dir_is_shipped_and_relative_paths_resolve_in_it(ray_head, tmp_path):
    (tmp_path / "shipped.yaml").write_text("model:\n  preset: commongen\n")
    out = run_ardiff("submit", "--address", ray_head.dashboard_url, "--working-dir", str(tmp_path),
                     "--runtime-env-json", '{"env_vars": {"OMP_NUM_THREADS": "1"}}',
                     "--", "model-info", "--recipe", "shipped.yaml")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "model commongen:" in out.stdout


@pytest.mark.integration
def test_no_wait_returns_after_submitting(ray_head):
    out = run_ardiff("submit", "--no-wait", "--address", ray_head.dashboard_url, "--", "model-info", "--preset", "tiny")
    assert out.returncode == 0, out.stderr[-3000:]
    job_id = JOB_ID.search(out.stdout).group(1)
    assert f"ray job logs --address {ray_head.dashboard_url} --follow {job_id}" in out.stdout
    assert "parameters" not in out.stdout
