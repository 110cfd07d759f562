"""`ardiff submit -- ARGS`: run `ardiff ARGS` as a Ray job and follow it to the end.

The same as `ray job submit --address URL [--working-dir DIR] -- python -m ardiff_scale.cli ARGS`, through
Ray's Job Submission API: the job runs with the cluster's `python` (on the head node unless --num-gpus or
--num-cpus ask for resources found elsewhere), its output streams back here, and the exit status is the
job's (0 when the ardiff process exited 0).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import TextIO

from ardiff_scale.errors import ArdiffError

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
# A head that has just started answers "No available agent" until its dashboard agent registers.
AGENT_WAIT_S = 60.0


def job_entrypoint(ardiff_args: list[str]) -> str:
    """The shell command the job runs: the cluster's python running this package's CLI."""
    return shlex.join(["python", "-m", "ardiff_scale.cli", *ardiff_args])


def resolve_address(address: str | None) -> str:
    """--address, else RAY_ADDRESS, else the local default; a bare host:port is taken as http."""
    address = address or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    return address if "://" in address else f"http://{address}"


def build_runtime_env(working_dir: str | None, runtime_env_json: str | None) -> dict | None:
    """The job's runtime environment: --runtime-env-json, with --working-dir as its working_dir."""
    runtime_env: dict = {}
    if runtime_env_json:
        try:
            runtime_env = json.loads(runtime_env_json)
        except json.JSONDecodeError as err:
            raise ArdiffError(f"--runtime-env-json is not valid JSON: {err} (got {runtime_env_json!r})") from None
        if not isinstance(runtime_env, dict):
            raise ArdiffError(f"--runtime-env-json must be a JSON object, e.g. "
                              f"'{{\"env_vars\": {{\"OMP_NUM_THREADS\": \"4\"}}}}' (got {runtime_env_json!r})")
    if working_dir:
        if "://" not in working_dir and not Path(working_dir).is_dir():
            raise ArdiffError(f"--working-dir {working_dir}: no such directory")
        runtime_env["working_dir"] = working_dir
    return runtime_env or None


def connect(address: str):
    """A JobSubmissionClient for the job API at `address`, or an ArdiffError saying how to get one."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    # Ray's client logs each file it leaves out of a working-dir upload and each closed log stream at INFO.
    logging.getLogger("ray").setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise ArdiffError(
            f"the Ray cluster at {address} requires a token ({err.message.splitlines()[0]}): "
            f"export RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the head's ~/.ray/auth_token>") from None
    except (ConnectionError, RuntimeError, ValueError, OSError) as err:
        raise ArdiffError(
            f"cannot reach a Ray job API at {address} ({_first_line(err)}). Start a local head with "
            f"cluster/start-local.sh (then export RAY_ADDRESS={DEFAULT_ADDRESS}), or pass --address with "
            f"the dashboard address of a running cluster, e.g. http://HEAD:8265") from None


def submit(ardiff_args: list[str], address: str | None = None, working_dir: str | None = None,
           runtime_env_json: str | None = None, wait: bool = True, num_cpus: float | None = None,
           num_gpus: float | None = None, out: TextIO | None = None) -> int:
    """Submit `ardiff ARDIFF_ARGS` as a job; with `wait`, stream its logs to `out` until it ends.

    Returns 0 when the job succeeded (or was only submitted), 1 when it failed or was stopped.
    num_cpus, num_gpus: resources reserved for the ardiff process itself; with GPUs Ray places it on a
    node that has them.
    """
    out = out or sys.stdout
    if ardiff_args[:1] == ["--"]:
        ardiff_args = ardiff_args[1:]
    if not ardiff_args:
        raise ArdiffError("nothing to submit: put the ardiff command after --, "
                          "e.g. ardiff submit -- model-info --preset tiny")
    address = resolve_address(address)
    runtime_env = build_runtime_env(working_dir, runtime_env_json)
    client = connect(address)
    if working_dir:
        log.info("uploading %s as the job's working directory", working_dir)
    job_id = _submit_when_ready(client, address, entrypoint=job_entrypoint(ardiff_args), runtime_env=runtime_env,
                                entrypoint_num_cpus=num_cpus, entrypoint_num_gpus=num_gpus)
    print(f"submitted job {job_id} to {address}", file=out, flush=True)
    if not wait:
        print(f"follow it with: ray job logs --address {address} --follow {job_id}\n"
              f"stop it with:   ray job stop --address {address} {job_id}", file=out, flush=True)
        return 0
    started = time.monotonic()
    try:
        follow_logs(client, job_id, out)
        info = _wait_until_done(client, job_id)
    except KeyboardInterrupt:
        log.warning("stopped following; job %s keeps running (ray job stop --address %s %s)",
                    job_id, address, job_id)
        raise
    except OSError as err:  # requests' connection errors are OSErrors
        raise ArdiffError(f"lost the connection to {address} while following job {job_id} ({_first_line(err)}); "
                          f"it may still be running: ray job status --address {address} {job_id}") from None
    status = info.status.value
    took = time.monotonic() - started
    if status == "SUCCEEDED":
        log.info("job %s succeeded in %.1f s", job_id, took)
        return 0
    exit_code = getattr(info, "driver_exit_code", None)
    log.error("job %s %s after %.1f s%s: %s", job_id, status.lower(), took,
              f" (ardiff exited with status {exit_code})" if exit_code is not None else "",
              _first_line(info.message or "no message").split(", last available logs")[0])
    return 1


def follow_logs(client, job_id: str, out: TextIO) -> None:
    """Copy the job's output to `out` as it arrives, until the job ends.

    Streams over the job API's websocket; if that breaks off, polls the full log instead and prints what
    was not printed yet.
    """
    import aiohttp  # Ray's job client streams with it

    printed = 0

    async def stream() -> None:
        nonlocal printed
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            printed += len(chunk)

    try:
        asyncio.run(stream())
        return
    except (RuntimeError, OSError, aiohttp.ClientError) as err:
        log.warning("log stream of job %s broke off (%s); polling instead", job_id, _first_line(err))
    while True:
        done = client.get_job_status(job_id).is_terminal()
        logs = client.get_job_logs(job_id)
        out.write(logs[printed:])
        out.flush()
        printed = len(logs)
        if done:
            return
        time.sleep(1.0)


def _wait_until_done(client, job_id: str, timeout: float = 60.0):
    """The job's info once its status is terminal (it can lag the end of the log stream briefly)."""
    deadline = time.monotonic() + timeout
    while True:
        info = client.get_job_info(job_id)
        if info.status.is_terminal() or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def _submit_when_ready(client, address: str, **job) -> str:
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            return client.submit_job(**job)
        except (RuntimeError, ValueError) as err:
            if "No available agent" not in str(err) or time.monotonic() > deadline:
                raise ArdiffError(f"the Ray job API at {address} refused the job: {_first_line(err)}") from None
            time.sleep(1.0)


def _first_line(err: object) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
