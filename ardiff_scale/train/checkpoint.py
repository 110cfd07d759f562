"""Checkpoints that survive being interrupted.

Layout under `<output_dir>/checkpoints/`:
    step00000120/                 DeepSpeed's files (model, optimizer partitions, LR scheduler)
        ardiff-rank00000.pt       per-rank state: step, data reader, RNG states, EMA (partition)
        COMPLETE                  written last, by rank 0, after every rank has finished
    latest                        the tag of the newest COMPLETE checkpoint, replaced atomically

A write that is killed part way leaves a directory without COMPLETE: `latest` still names the previous
checkpoint, and `--resume auto` never picks an incomplete one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ardiff_scale.io import write_bytes

log = logging.getLogger("ardiff.train")

COMPLETE = "COMPLETE"
LATEST = "latest"
TAG = re.compile(r"^step(\d{8})$")


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def rank_file(directory: Path, rank: int) -> Path:
    return directory / f"ardiff-rank{rank:05d}.pt"


def _atomic_torch_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def complete_tags(root: Path) -> list[str]:
    """Tags of complete checkpoints, oldest first."""
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if TAG.match(d.name) and (d / COMPLETE).exists())


def find_resume(root: Path) -> str | None:
    """The checkpoint to continue from: `latest` if it is complete, else the newest complete one."""
    latest = root / LATEST
    if latest.exists():
        tag = latest.read_text().strip()
        if (root / tag / COMPLETE).exists():
            return tag
        log.warning("%s names %s, which is incomplete; looking for an older complete checkpoint", latest, tag)
    tags = complete_tags(root)
    return tags[-1] if tags else None


def save(engine, root: Path, step: int, rank_state: dict, world: int, keep: int) -> float:
    """Every rank calls this. Returns the seconds it took."""
    started = time.perf_counter()
    tag = tag_for(step)
    rank = dist.get_rank()
    directory = root / tag
    # universal_checkpoint_info lets DeepSpeed's ds_to_universal convert it for another world size.
    engine.save_checkpoint(str(root), tag=tag, save_latest=False,
                           client_state={"step": step, "universal_checkpoint_info": {"universal_checkpoint_version": 0.4}})
    _atomic_torch_save(rank_state, rank_file(directory, rank))
    dist.barrier()
    if rank == 0:
        info = {"step": step, "world_size": world, "time": time.time()}
        write_bytes(str(directory / COMPLETE), json.dumps(info).encode())
        write_bytes(str(root / LATEST), tag.encode())
        for old in complete_tags(root)[:-keep]:
            shutil.rmtree(root / old, ignore_errors=True)
    dist.barrier()
    return time.perf_counter() - started


def saved_world_size(directory: Path) -> int:
    return json.loads((directory / COMPLETE).read_text())["world_size"]


def load(engine, root: Path, tag: str, ds_tag: str | None = None) -> tuple[list[dict], int, float]:
    """Load DeepSpeed's state (from `ds_tag`, e.g. the universal form, if given) and return (every rank's
    saved state, saved world size, seconds).

    All ranks' states are returned so that a job on another world size can merge the data readers'
    positions; a rank on the same world size uses its own.
    """
    started = time.perf_counter()
    directory = root / tag
    world = saved_world_size(directory)
    path, _ = engine.load_checkpoint(str(root), tag=ds_tag or tag, load_module_strict=True)
    if path is None:
        raise RuntimeError(f"DeepSpeed could not load checkpoint {directory}")
    states = [torch.load(rank_file(directory, r), map_location="cpu", weights_only=False) for r in range(world)]
    return states, world, time.perf_counter() - started
