"""Launching `ardiff pretrain` the way users do, for the integration tests of tests/train.

Launches run inside `unshare -n` with only loopback up where the machine allows it: torch's rendezvous
store listens on every interface, and these tests must talk to nothing but 127.0.0.1.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from ardiff_scale.jobs.cluster import free_port

BIN = Path(sys.executable).parent
INSTRUMENTED = [str(Path(__file__).with_name("instrumented.py"))]  # records collectives and loads per rank


def _isolated() -> list[str]:
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else []


ISOLATE = _isolated() if shutil.which("unshare") and shutil.which("ip") else []


def _env(extra: dict | None = None) -> dict:
    """Read at each launch: tests set variables (AWS_*) after this module is imported. Without the rank
    variables that in-process tests leave behind (a world of one sets RANK=0 in this process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    return {**env, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1", **(extra or {})}


def launch(nproc: int, args: list[str], wait: bool = True, expect: int = 0, program: list[str] | None = None,
           env: dict | None = None):
    """`deepspeed --num_gpus nproc ardiff pretrain ARGS` (or `program ARGS`); returns the output when waited."""
    program = program or [str(BIN / "ardiff"), "pretrain"]
    cmd = [*ISOLATE, str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *program, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(env))
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, out[-4000:]
    return out


def single(args: list[str], expect: int = 0) -> str:
    """One bare `ardiff pretrain` process (a world of one, no ports)."""
    done = subprocess.run([str(BIN / "ardiff"), "pretrain", *args], capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert done.returncode == expect, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    """Training loss per step; the last row wins (a resumed run logs the steps after its checkpoint again)."""
    return {int(r["step"]): r["loss"] for r in metric_rows(run) if "loss" in r}


def records(directory: Path) -> dict[int, dict]:
    """What tests/train/instrumented.py recorded, per rank."""
    return {int(p.stem[len("rank"):]): json.loads(p.read_text()) for p in directory.glob("rank*.json")}


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launch and everything under it (a failed test must not leave ranks behind)."""
    import psutil

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        children = []
    for process in [*children, psutil.Process(proc.pid)] if proc.poll() is None else children:
        try:
            process.kill()
        except psutil.Error:
            pass
    proc.wait(timeout=30)


def wait_for_step(run: Path, step: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until a running launch has logged `step` in its metrics.jsonl (it must not exit before)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and max(losses(run), default=0) >= step:
            return
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.1)
    raise TimeoutError(f"step {step} not reached")
