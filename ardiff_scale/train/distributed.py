"""What the ranks of a job agree on outside the model's own collectives: stop and save requests, the
checkpoint to resume, the output directory they share.

These are small host-side values. A process group created for NCCL has no CPU backend, and putting them on
the GPU would force a device sync per step, so they travel over a separate gloo group (`control_group`).
The default group stays exactly what DeepSpeed created; on CPU (gloo) the default group serves both.
"""

from __future__ import annotations

import secrets
import socket
from typing import Any

import torch
import torch.distributed as dist

from ardiff_scale.errors import ConfigError

_CONTROL: dict[str, Any] = {}


def control_group():
    """The gloo group for host-side agreement (None = the default group, when that is gloo already).
    Created once, by every rank in the same order, right after the process group."""
    if not dist.is_initialized():
        return None
    if "group" not in _CONTROL:
        _CONTROL["group"] = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    return _CONTROL["group"]


def agree_any(flags: list[bool]) -> list[bool]:
    """Each flag raised on any rank is raised on every rank: one small CPU all-reduce."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return list(flags)
    tensor = torch.tensor([float(f) for f in flags])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=control_group())
    return [bool(v) for v in tensor.tolist()]


def broadcast_from_main(value: Any) -> Any:
    """Rank 0's `value` (any picklable object) on every rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=control_group())
    return box[0]


def node_names() -> list[str]:
    """Collective: the hostname of every rank, in rank order (this host alone when not distributed)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [socket.gethostname()]
    names: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(names, socket.gethostname(), group=control_group())
    return names


def raise_together(error: Exception | None) -> None:
    """Collective: if any rank has an error, every rank raises (rank 0's message when it has one), so that
    no rank waits forever in the next collective for a rank that already gave up."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        if error:
            raise error
        return
    messages: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}",
                           group=control_group())
    if error is not None:
        raise error
    failed = [(rank, m) for rank, m in enumerate(messages) if m]
    if failed:
        rank, message = failed[0]
        raise ConfigError(f"rank {rank} failed: {message}")


def check_shared_directory(write_text, read_text, where: str) -> None:
    """Prove that every rank sees the same `where`: rank 0 writes a fresh nonce through `write_text`, every
    rank reads it back through `read_text`. Node-local disks fail here, at start-up, instead of hanging at
    the first resume or losing checkpoints. Collective."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    nonce = secrets.token_hex(16) if rank == 0 else None
    error: Exception | None = None
    if rank == 0:
        try:
            write_text(nonce)
        except OSError as err:
            error = ConfigError(f"cannot write to train.output_dir {where}: {err}")
    raise_together(error)
    nonce = broadcast_from_main(nonce)
    try:
        seen = read_text()
    except (OSError, FileNotFoundError):
        seen = None
    if seen != nonce:
        error = ConfigError(
            f"train.output_dir {where} is not the same directory on rank {rank} as on rank 0 (rank 0 wrote a "
            f"check file there that rank {rank} {'cannot find' if seen is None else 'sees with other contents'}). "
            "Every rank must see one shared output directory: use a shared filesystem (NFS, Lustre, GPFS, "
            "a mounted bucket) or an object-store URL such as s3://bucket/run, not a node-local disk")
    raise_together(error)
