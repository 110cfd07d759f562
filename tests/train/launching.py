"""Launching `ardiff pretrain` the way users do, for the integration tests of tests/train.

Launches run inside `unshare -n` with only loopback up where the machine allows it: torch's rendezvous
store listens on every interface, and these tests must talk to nothing but 127.0.0.1.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from ardiff_scale.jobs.cluster import free_port

BIN = Path(sys.executable).parent


def _isolated() -> list[str]:
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True)
    return ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"] if probe.returncode == 0 else []


ISOLATE = _isolated() if shutil.which("unshare") and shutil.which("ip") else []
ENV = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}


def launch(nproc: int, args: list[str], wait: bool = True, expect: int = 0, program: list[str] | None = None):
    """`deepspeed --num_gpus nproc ardiff pretrain ARGS` (or `program ARGS`); returns the output when waited."""
    program = program or [str(BIN / "ardiff"), "pretrain"]
    cmd = [*ISOLATE, str(BIN / "deepspeed"), "--num_gpus", str(nproc), "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *program, *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == expect, out[-4000:]
    return out


def single(args: list[str], expect: int = 0) -> str:
    """One bare `ardiff pretrain` process (a world of one, no ports)."""
    done = subprocess.run([str(BIN / "ardiff"), "pretrain", *args], capture_output=True, text=True, env=ENV,
                          timeout=600)
    assert done.returncode == expect, (done.stdout + done.stderr)[-4000:]
    return done.stdout + done.stderr


def metric_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def losses(run: Path) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for r in metric_rows(run)}
