"""A local, single-node Ray head on 127.0.0.1 for tests and the demo: start it, wait for its job API, stop it.

The head is `ray start --head --block` run from this interpreter's environment in a session of its own.
Stopping it sends SIGTERM to that one process (which shuts down what it started), then kills, by pid, anything
left in its session or naming its temp dir. It never runs `ray stop`, which stops every Ray process of this
user on the machine, including heads that other test sessions or people started.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from ardiff_scale.errors import ArdiffError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
# Exec'd in front of `ray start`: asks Linux for a SIGTERM when the process that started it dies (prctl
# PR_SET_PDEATHSIG survives exec). Done this way rather than with Popen's preexec_fn, which is unsafe in the
# presence of threads.
DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
                   "os.execv(sys.argv[1], sys.argv[1:])")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (another process may still take it)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports on 127.0.0.1 that were free a moment ago. Held open together while they are
    picked: one `free_port()` after another can hand out the same port twice, and Ray refuses a head whose
    components were given one port between them."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def local_ray_env() -> dict[str, str]:
    """The environment for a loopback-only head without authentication.

    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 keeps Ray's servers on the given node address instead of all
    interfaces. Ray 2.60 turns on token authentication by default, and then every job client needs the token
    from ~/.ray/auth_token; a head reachable only from this machine, living for one test session or demo,
    gains nothing from it, so RAY_AUTH_MODE=disabled. The interpreter's bin directory goes first on PATH so
    that a job's `python` is this environment's python.
    """
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    env["RAY_AUTH_MODE"] = "disabled"
    # On SIGTERM a node first drains for up to 30 s (for Serve replicas); a test head has nothing to drain.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


@dataclass
class LocalHead:
    """A running local head. `address` is the GCS address (host:port) for `ray.init`; `dashboard_url` is the
    job API's address for `ardiff submit --address` and `ray job submit --address`."""

    address: str
    dashboard_url: str
    temp_dir: Path
    process: subprocess.Popen = field(repr=False)
    owns_temp_dir: bool = field(default=False, repr=False)

    def stop(self, timeout: float = 30.0) -> None:
        """End the head and everything it started; safe to call twice.

        SIGTERM to `ray start --block` makes it end its children gracefully (its reaper and the kernel's
        parent-death signal catch what it misses); signalling the whole group at once would instead kill the
        raylet first and leave `ray start` waiting on it. Whatever is left is then killed.
        """
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                log.warning("`ray start` (pid %d) ignored SIGTERM for %.0f s; killing its process group",
                            self.process.pid, timeout)
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)
        _end_stragglers(self.process.pid, self.temp_dir, timeout)
        if self.owns_temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)


def start_local_head(port: int | None = None, dashboard_port: int | None = None, num_cpus: int = 2,
                     object_store_mb: int = 200, temp_dir: str | Path | None = None,
                     timeout: float = 120.0, die_with_parent: bool = True,
                     env: dict[str, str] | None = None) -> LocalHead:
    """Start a Ray head bound to 127.0.0.1 and return once its job API answers.

    port: the GCS port; dashboard_port: the dashboard and job API port (both default to free ports).
    Every other port the head opens is also picked free, so two heads (two test sessions) can run side by side.
    temp_dir: Ray's session directory root; the default is a fresh short directory under /tmp (Ray's Unix
    socket paths must stay under ~100 characters), removed again by `stop()`.
    env: extra environment of the head, which its workers (Ray Train's controller and workers among them)
    inherit: how tests tune Ray's own timings.
    die_with_parent: on Linux, SIGTERM the head when this process dies without calling `stop()` (a test run
    killed from outside), so no head outlives the tests that started it. Linux ties this to the calling
    thread: call from a thread that lives as long as the head should (the main thread).
    """
    owns_temp_dir = temp_dir is None
    temp_dir = Path(tempfile.mkdtemp(prefix="ardiff-ray-", dir="/tmp") if temp_dir is None else temp_dir)
    temp_dir.mkdir(parents=True, exist_ok=True)
    picked = free_ports(7)
    port = port or picked[0]
    dashboard_port = dashboard_port or picked[1]
    agent_port, client_port, agent_grpc_port, runtime_env_port, metrics_port = picked[2:]
    ray = Path(sys.executable).parent / "ray"
    command = [str(ray), "start", "--head", "--block", "--node-ip-address", HOST, "--port", str(port),
               "--dashboard-host", HOST, "--dashboard-port", str(dashboard_port), "--include-dashboard=true",
               "--num-cpus", str(num_cpus), "--object-store-memory", str(object_store_mb * 1024 * 1024),
               "--temp-dir", str(temp_dir), "--disable-usage-stats",
               "--ray-client-server-port", str(client_port),
               "--dashboard-agent-listen-port", str(agent_port),
               "--dashboard-agent-grpc-port", str(agent_grpc_port),
               "--runtime-env-agent-port", str(runtime_env_port),
               "--metrics-export-port", str(metrics_port)]
    if die_with_parent and sys.platform.startswith("linux"):
        command = [sys.executable, "-c", DIE_WITH_PARENT, *command]
    log_path = temp_dir / "ray-start.log"
    with open(log_path, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**local_ray_env(), **(env or {})}, start_new_session=True)
    head = LocalHead(address=f"{HOST}:{port}", dashboard_url=f"http://{HOST}:{dashboard_port}",
                     temp_dir=temp_dir, process=process, owns_temp_dir=owns_temp_dir)
    try:
        _wait_for_job_api(head, agent_port, log_path, timeout)
    except BaseException:
        head.stop()
        raise
    log.info("Ray head up: GCS %s, job API %s", head.address, head.dashboard_url)
    return head


def _wait_for_job_api(head: LocalHead, agent_port: int, log_path: Path, timeout: float) -> None:
    """Poll GET /api/version, then the dashboard agent's HTTP port: the job API hands each submission to the
    head node's agent and answers 500 "No available agent" until that agent is up."""
    deadline = time.monotonic() + timeout
    version_url = f"{head.dashboard_url}/api/version"
    for what, ready in ((version_url, lambda: _answers(version_url)),
                        (f"the dashboard agent on {HOST}:{agent_port}", lambda: _accepts(agent_port))):
        while not ready():
            if head.process.poll() is not None:
                raise ArdiffError(f"`ray start --head` exited with status {head.process.returncode}; "
                                  f"its output:\n{_tail(log_path)}")
            if time.monotonic() > deadline:
                raise ArdiffError(f"the local Ray head did not come up within {timeout:.0f} s (waiting for "
                                  f"{what}); `ray start` output:\n{_tail(log_path)}")
            time.sleep(0.5)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def _accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((HOST, port)) == 0


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no output)"


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _head_processes(session_id: int, temp_dir: Path) -> list[int]:
    """Pids (other than ours) in the head's session, or whose command line names its temp dir (Linux /proc).

    Ray's workers get process groups of their own but stay in the session `ray start` opened; a process that
    left the session as well still carries the session directory in its arguments.
    """
    pids = []
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if stat[0] != "Z" and (int(stat[3]) == session_id or str(temp_dir) in cmdline):
            pids.append(int(entry.name))
    return pids


def _end_stragglers(session_id: int, temp_dir: Path, timeout: float) -> None:
    pids = _head_processes(session_id, temp_dir)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5)
        while pids and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = [pid for pid in pids if not _gone(pid)]
        if not pids:
            return
    log.warning("Ray processes %s did not exit", pids)


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True
