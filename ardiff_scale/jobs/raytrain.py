"""Training on a Ray cluster: the pieces the suite's fine-tunes and `ardiff pretrain --ray`
(`pipelines/pretrain_ray.py`) share.

Ray Train's `TorchTrainer` places workers anywhere on the cluster and sets up torch.distributed among them;
this module says what each worker asks for (`scaling_config`, `task_options`), what a worker sets before
DeepSpeed starts (`enter_worker`), and how the driver connects and queries the cluster.

What every node must share is checked before anything starts (`check_shared_storage`): a local path is
written on the driver and read back by a task pinned to each node.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path

from ardiff_scale.errors import ArdiffError, ConfigError
from ardiff_scale.jobs.environment import describe, travelling_environment

log = logging.getLogger("ardiff.jobs")

GPU_POLICIES = ("auto", "always", "never")


# --- resources ------------------------------------------------------------------------------------------
def check_gpu_policy(policy: str) -> None:
    if policy not in GPU_POLICIES:
        raise ConfigError(f"GPU policy must be one of {', '.join(GPU_POLICIES)} (got {policy!r})")


def gpus_to_request(asked: float, cluster_gpus: float, policy: str = "auto") -> float:
    """GPUs per worker to reserve: what was asked, when the cluster has GPUs ("auto"), always or never.

    "auto" looks at the GPUs the cluster has now; on an autoscaling cluster whose GPU nodes are scaled to
    zero that is none, and "always" is the way to ask for them anyway (the autoscaler then adds a node).
    """
    check_gpu_policy(policy)
    if policy == "never" or asked <= 0:
        return 0.0
    if policy == "auto" and cluster_gpus <= 0:
        return 0.0
    return float(asked)


def scaling_config(workers: int, cpus_per_worker: float, gpus_per_worker: float):
    """Ray Train's ScalingConfig: `use_gpu` and a GPU resource per worker exactly when GPUs are requested
    (then Ray Train hands each worker its device and NCCL is the backend)."""
    from ray.train import ScalingConfig

    resources: dict[str, float] = {"CPU": cpus_per_worker}
    if gpus_per_worker > 0:
        resources["GPU"] = gpus_per_worker
    return ScalingConfig(num_workers=workers, use_gpu=gpus_per_worker > 0, resources_per_worker=resources)


def task_options(cpus: float, gpus: float) -> dict[str, float]:
    """`ray.remote` options for one task (an evaluation part)."""
    return {"num_cpus": cpus, "num_gpus": gpus} if gpus > 0 else {"num_cpus": cpus}


# --- inside a worker --------------------------------------------------------------------------------------
def enter_worker(threads: int) -> None:
    """Make a Ray Train worker look like a launcher's rank to the trainer.

    LOCAL_RANK is the index of the CUDA device Ray Train gave this worker among those it sees: DeepSpeed and
    `train.engine.device` pick the device by LOCAL_RANK, and Ray's assignment is the one that is right (it
    narrows CUDA_VISIBLE_DEVICES to the node's workers' GPUs). The accelerator follows the hardware.
    """
    import ray.train
    import torch

    context = ray.train.get_context()
    local_rank = context.get_local_rank()
    if torch.cuda.is_available():
        import ray.train.torch

        local_rank = ray.train.torch.get_device().index or 0
    os.environ.update(RANK=str(context.get_world_rank()), LOCAL_RANK=str(local_rank),
                      WORLD_SIZE=str(context.get_world_size()),
                      LOCAL_WORLD_SIZE=str(context.get_local_world_size()), OMP_NUM_THREADS=str(threads),
                      DS_ACCELERATOR="cuda" if torch.cuda.is_available() else "cpu")


# --- the driver -------------------------------------------------------------------------------------------
def connect(address: str | None) -> None:
    """ray.init, with the variables remote ranks need (environment.py) in the job's runtime environment."""
    import ray

    target = os.environ.get("RAY_ADDRESS", "") if address in (None, "", "auto") else address
    # A loopback head: this driver must register on 127.0.0.1 too, or Ray picks the machine's public address.
    loopback = target.split("://")[-1].startswith(("127.", "localhost"))
    travelling = travelling_environment()
    log.info("connecting to Ray at %s; passing to workers: %s", address or "a new local instance",
             describe(travelling))
    ray.init(address=address or None, log_to_driver=True, _node_ip_address="127.0.0.1" if loopback else None,
             runtime_env={"env_vars": travelling} if travelling else None)


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


def worker_nodes() -> list[dict]:
    """The alive nodes that can run work (some CPU or GPU), as ray.nodes() describes them."""
    import ray

    return [n for n in ray.nodes() if n.get("Alive") and (n["Resources"].get("CPU", 0) > 0
                                                         or n["Resources"].get("GPU", 0) > 0)]


def _read_back(path: str) -> tuple[str, str]:
    import socket

    try:
        return socket.gethostname(), Path(path).read_text()
    except OSError as err:
        return socket.gethostname(), f"ERROR {type(err).__name__}: {err}"


def blind_nodes(readings: dict[str, tuple[str, str]], token: str) -> list[str]:
    """The nodes whose reading of the probe file ({node address: (hostname, what it read)}) is not `token`,
    described for an error message."""
    blind = []
    for address, (host, seen) in readings.items():
        if seen != token:
            what = seen if seen.startswith("ERROR") else "another file"
            blind.append(f"{host} ({address}): {what}")
    return blind


def check_shared_storage(location: str, what: str, timeout: float = 120.0) -> None:
    """Refuse a local `location` that some node of the cluster cannot see.

    A URL (s3://, gs://, http://...) is reached through fsspec from anywhere and needs no check. A path is
    written here with a random token, then read back by a zero-CPU task pinned to each alive node; a node
    that sees another file or none fails the check, naming the node.
    """
    if "://" in location and not location.startswith("file://"):
        return
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    root = Path(location.removeprefix("file://")).resolve()
    root.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    probe = root / f".ardiff-shared-{token[:8]}"
    probe.write_text(token)
    try:
        nodes = worker_nodes()
        reader = ray.remote(num_cpus=0, max_retries=0)(_read_back)
        futures = {node["NodeManagerAddress"]: reader.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)).remote(str(probe))
            for node in nodes}
        started = time.monotonic()
        readings = {address: ray.get(future, timeout=max(1.0, timeout - (time.monotonic() - started)))
                    for address, future in futures.items()}
    finally:
        probe.unlink(missing_ok=True)
    blind = blind_nodes(readings, token)
    if blind:
        raise ArdiffError(f"{what} {root} is not shared by every node of the Ray cluster: {'; '.join(blind)}. "
                          f"Put it on a filesystem all nodes mount at the same path (NFS, Lustre, EFS...) or "
                          f"give an object-store URL (s3://bucket/path)")
    log.info("%s %s is visible from all %d node(s)", what, root, len(futures))
