"""The launch recipes of cluster/: the Slurm script runs for real (its scheduler faked), the KubeRay manifests
are checked against the CRDs' field names and their entrypoint against ardiff's own parser and config."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jsonschema
import pytest
import yaml

from ardiff_scale.cli import build_parser
from ardiff_scale.config import load_config
from ardiff_scale.jobs.cluster import free_port

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))  # the loopback-isolated launch helpers
from launching import ISOLATE, kill_tree, losses, wait_for_step  # noqa: E402

from kuberay_schema import RAY_CLUSTER, RAY_JOB  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SBATCH = ROOT / "cluster" / "slurm" / "pretrain.sbatch"
RAYJOB = ROOT / "cluster" / "kuberay-pretrain-job.yaml"
RAYCLUSTER = ROOT / "cluster" / "kuberay-raycluster.yaml"

TINY = ["model.vocab_size=1000", "model.hidden_size=32", "model.num_heads=2", "model.encoder_layers=1",
        "model.decoder_layers=1", "model.embed_dim=16", "model.time_channels=16", "data.source_len=64",
        "data.target_len=16", "train.micro_batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
        "train.log_every=1", "tracking.enabled=false", "train.ema_rate=0.99", "data.num_workers=1"]

# Stand-ins for the scheduler only: torchrun, its rendezvous and the training below are real.
STAND_INS = {
    # One node: drop srun's own options, note the step's pid (for scancel) and become the step.
    "srun": """
        while [[ "$1" == -* ]]; do shift; done
        echo $$ > "$(dirname "$0")/step.pid"
        exec "$@"
    """,
    "scontrol": """
        case "$1 $2" in
            "show hostnames") echo 127.0.0.1 ;;
            requeue\\ *) echo "$2" >> "$(dirname "$0")/requeued" ;;
            *) echo "scontrol stand-in: $*" >&2; exit 1 ;;
        esac
    """,
    # `scancel --signal=SIG JOB`; Slurm signals every process of the step, this only its first (torchrun), so
    # the ranks hear of it only through torchrun's forwarding: the harder case.
    "scancel": """
        kill -s "${1#--signal=}" "$(cat "$(dirname "$0")/step.pid")"
    """,
}


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tok") / "tok.model"
    tokenizer.save(str(path))
    return path


def fake_slurm(directory: Path) -> Path:
    directory.mkdir()
    for name, body in STAND_INS.items():
        (directory / name).write_text("#!/bin/bash\n" + textwrap.dedent(body).lstrip())
        (directory / name).chmod(0o755)
    return directory


def sbatch(stand_ins: Path, args: list[str]) -> subprocess.Popen:
    """`bash pretrain.sbatch ARGS` as Slurm would start it on the first node of a one-node allocation."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env.update(SLURM_JOB_ID="4242", SLURM_NNODES="1", SLURM_JOB_NODELIST="127.0.0.1", GPUS_PER_NODE="2",
               RDZV_PORT=str(free_port()), RECIPE="tiny-cpu", VENV=str(Path(sys.executable).parents[1]),
               SHUTDOWN_TIMEOUT="60", PATH=f"{stand_ins}:{env['PATH']}", DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    return subprocess.Popen([*ISOLATE, "bash", str(SBATCH), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        kill_tree(proc)
    return out


def test_sbatch_script_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(SBATCH)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", str(SBATCH)], capture_output=True, text=True)
        assert done.returncode == 0, done.stdout
    # sbatch reads #SBATCH lines only before the first command.
    lines = SBATCH.read_text().splitlines()
    first_command = next(i for i, line in enumerate(lines[1:], 1) if line.strip() and not line.startswith("#"))
    assert all(i < first_command for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    assert "#SBATCH --requeue" in lines


@pytest.mark.integration
def test_sbatch_trains_with_two_torchrun_ranks(shard_dir, tok_path, tmp_path):
    out = tmp_path / "run"
    proc = sbatch(fake_slurm(tmp_path / "slurm"), [f"data.train={shard_dir}", f"data.tokenizer={tok_path}",
                                                   f"train.output_dir={out}", "train.max_steps=4", *TINY])
    log = finish(proc)
    assert proc.returncode == 0, log[-4000:]
    assert "rendezvous 127.0.0.1:" in log and "[rank 0] ardiff.train: step 4/4" in log
    assert json.loads((out / "checkpoints" / "step00000004" / "COMPLETE").read_text())["world_size"] == 2
    assert (out / "model" / "model.safetensors").exists()


@pytest.mark.integration
def test_sbatch_time_limit_warning_checkpoints_requeues_and_the_same_command_resumes(shard_dir, tok_path,
                                                                                     tmp_path):
    out = tmp_path / "run"
    stand_ins = fake_slurm(tmp_path / "slurm")
    args = [f"data.train={shard_dir}", f"data.tokenizer={tok_path}", f"train.output_dir={out}",
            "train.max_steps=400", *TINY]
    proc = sbatch(stand_ins, args)
    try:
        wait_for_step(out, 3, proc, timeout=180)
        time.sleep(0.5)  # the ranks' signal handlers are installed before step 1; give torchrun no race either
        proc.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 sends the batch shell
        log = finish(proc)
    finally:
        kill_tree(proc)
    assert "time limit in 300s: asking the ranks to checkpoint" in log, log[-4000:]
    assert (stand_ins / "requeued").read_text().split() == ["4242"], log[-4000:]
    stopped_at = int((out / "checkpoints" / "latest").read_text()[len("step"):])
    assert 3 <= stopped_at < 400, log[-4000:]
    assert "preempted" in log
    # The requeued job: the same script and arguments continue from that checkpoint to the end.
    resumed = sbatch(stand_ins, [*args[:-len(TINY)], "train.max_steps=" + str(stopped_at + 3), *TINY])
    log = finish(resumed)
    assert resumed.returncode == 0, log[-4000:]
    assert f"at step {stopped_at} " in log
    assert sorted(losses(out)) == list(range(1, stopped_at + 4))


def load_manifest(path: Path) -> dict:
    (document,) = list(yaml.safe_load_all(path.read_text()))
    return document


@pytest.mark.parametrize("path, schema", [(RAYJOB, RAY_JOB), (RAYCLUSTER, RAY_CLUSTER)], ids=["rayjob", "raycluster"])
def test_kuberay_manifests_use_the_crd_field_names(path, schema):
    jsonschema.validate(load_manifest(path), schema)


def test_the_schema_catches_a_misspelt_field():
    job = load_manifest(RAYJOB)
    job["spec"]["shutdownAfterJobFinish"] = job["spec"].pop("shutdownAfterJobFinishes")
    with pytest.raises(jsonschema.ValidationError, match="shutdownAfterJobFinish"):
        jsonschema.validate(job, RAY_JOB)
    job = load_manifest(RAYJOB)
    job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replica"] = 2
    with pytest.raises(jsonschema.ValidationError, match="replica"):
        jsonschema.validate(job, RAY_JOB)


def test_rayjob_entrypoint_is_an_ardiff_pretrain_that_fits_its_worker_group():
    spec = load_manifest(RAYJOB)["spec"]
    words = shlex.split(spec["entrypoint"])
    assert words[:4] == ["python", "-m", "ardiff_scale.cli", "pretrain"]
    args = build_parser().parse_args(words[3:])
    assert args.func.__name__ == "cmd_pretrain"
    flags = {"address": args.ray, "workers": args.workers, "gpus_per_worker": args.gpus_per_worker,
             "cpus_per_worker": args.cpus_per_worker, "max_failures": args.max_failures}
    config = load_config(args.recipe, [*args.overrides, *(f"ray.{k}={v}" for k, v in flags.items() if v is not None)])
    assert config.ray.address == "auto"
    # Pods share no disk: everything the ranks read and write is in object storage or behind a server.
    assert config.data.train.startswith("s3://") and config.data.tokenizer.startswith("s3://")
    assert config.train.output_dir.startswith("s3://")
    assert config.tracking.tracking_uri.startswith("http://")
    # One Ray Train worker per GPU of the fixed-size worker group, and the head trains nothing.
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    (container,) = group["template"]["spec"]["containers"]
    gpus = int(container["resources"]["limits"]["nvidia.com/gpu"])
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
    assert config.ray.workers == group["replicas"] * gpus and config.ray.gpus_per_worker == 1
    assert config.ray.cpus_per_worker * gpus <= int(container["resources"]["limits"]["cpu"])
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
